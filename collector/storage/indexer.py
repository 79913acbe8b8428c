"""Behind the writer: the by-user tables and `daily_users` for what is committed.

A commit only appends to a partition (cheap: its rows arrive nearly in (ts, id) order).
The indexer then takes the partition's rows past its `indexed_through` id, a chunk per
transaction, into `<partition>_by_user` (action, user, ts, id) and into `daily_users`
(distinct users per UTC day and action, with the first and last time and the number of
events of each, and per day for any action). Queries read the indexed part from those and
the rest (normally one or two commits' worth) from the partition itself, so answers are
exact at every moment.
"""

from __future__ import annotations

from collector.clock import DAY_MS
from collector.storage.catalog import Catalog, PartitionState
from collector.storage.layout import ANY_ACTION, BLOCK_BITS, NO_USER
from collector.storage.plan import Fetch, Plan, Run

DAILY_UPSERT = (
    " ON CONFLICT (day, action, user) DO UPDATE SET first_ms = min(first_ms, excluded.first_ms),"
    " last_ms = max(last_ms, excluded.last_ms), events = events + excluded.events"
)


def next_backlog(catalog: Catalog) -> PartitionState | None:
    """The partition with the oldest rows not yet indexed."""
    waiting = [state for state in catalog.live.values() if state.backlog]
    return min(waiting, key=lambda state: state.indexed_through, default=None)


def index_backlog(catalog: Catalog) -> int:
    """Ids committed and not yet indexed, over every partition."""
    return sum(
        state.max_id - state.indexed_through
        for state in catalog.live.values()
        if state.backlog and state.max_id is not None
    )


def index_step(catalog: Catalog, max_ids: int) -> Plan[int]:
    """Index the next chunk of at most `max_ids` ids of one partition; return how many
    rows were indexed (0 when nothing waits)."""
    state = next_backlog(catalog)
    if state is None:
        return 0
    assert state.max_id is not None
    low, high = state.indexed_through, min(state.max_id, state.indexed_through + max_ids)
    name = state.partition.name
    ((min_ts, max_ts),) = yield Fetch(
        "SELECT min(min_ts), max(max_ts) FROM blocks WHERE part = ? AND block BETWEEN ? AND ?",
        (name, (low + 1) >> BLOCK_BITS, high >> BLOCK_BITS),
    )
    indexed = 0
    if min_ts is not None:
        rows = "ts BETWEEN ? AND ? AND id > ? AND id <= ?"
        params = (min_ts, max_ts, low, high)
        indexed = yield from index_rows(state, rows, params)
    state.indexed_through = high
    yield state.saved()
    return int(indexed)


def index_rows(state: PartitionState, rows: str, params: tuple[int, ...]) -> Plan[int]:
    """The by-user entries and daily_users rows of the partition rows matching `rows`."""
    name = state.partition.name
    indexed = yield Run(
        f"INSERT INTO {state.partition.by_user} (action, user, ts, id)"
        f" SELECT action, coalesce(user, {NO_USER}), ts, id FROM {name} WHERE {rows}",
        params,
    )
    for action, group in (("action", "action, user"), (str(ANY_ACTION), "user")):
        yield Run(
            "INSERT INTO daily_users (day, action, user, first_ms, last_ms, events)"
            f" SELECT ts / {DAY_MS} AS d, {action}, user, min(ts) % {DAY_MS},"
            f" max(ts) % {DAY_MS}, count(*) FROM {name} WHERE {rows} AND user IS NOT NULL"
            f" GROUP BY d, {group}" + DAILY_UPSERT,
            params,
        )
    return int(indexed)
