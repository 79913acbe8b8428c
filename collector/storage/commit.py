"""One group commit as a plan: rows in, stored counts out.

The rows are bound once, as the codec made them, into a temporary `staging` table; every
step after that runs inside SQLite, where the event loop's GIL is not needed: duplicates by
`id` are removed, the dictionaries learn new names, each row goes to the partition of its
UTC day (or to `events_late`), and the hourly rollup, the id -> time map (`blocks`) and the
catalog are brought up to date. The by-user tables and `daily_users` are the indexer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from typing import TypeVar

from collector.buffer import QuarantineRow
from collector.clock import DAY_MS, HOUR_MS
from collector.events import Row
from collector.storage import schema
from collector.storage.catalog import (
    Catalog,
    PartitionState,
    late_partition,
    new_partition,
    partition_for_day,
)
from collector.storage.layout import (
    BLOCK_BITS,
    LEGACY,
    YEAR_VIEWS,
    Partition,
    partition_ddl,
    view_ddl,
)
from collector.storage.plan import Fetch, Plan, Run, RunMany

STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS staging (ts INTEGER NOT NULL, received_at INTEGER NOT NULL,"
    " user_id TEXT, action TEXT NOT NULL, value, extra TEXT, msg_id TEXT, user INTEGER,"
    " action_id INTEGER)"
)
CLEAR_STAGING = "DELETE FROM staging"

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a commit's rows go: a partition and the staging rows for it (a condition on
    ts, `{t}` standing for the table's alias)."""

    partition: Partition
    condition: str
    params: tuple[int, ...]


def commit_plan(
    catalog: Catalog,
    runs: Sequence[Sequence[Row]],
    quarantine: Sequence[QuarantineRow],
    now_ms: int,
    late_after_days: int,
) -> Plan[list[int]]:
    """Store each run of rows (a run's stored count is reported apart, for its ack) and the
    quarantine records; return the rows stored per run."""
    total = sum(len(run) for run in runs)
    base = catalog.next_id - 1  # staging rowid n becomes event id base + n
    for run in runs:
        for sql, params in schema.insert_plan(with_known_ids(catalog, run)):
            yield RunMany(sql, params)
    deduplicated = False
    if total and (yield Fetch("SELECT 1 FROM staging WHERE msg_id IS NOT NULL LIMIT 1")):
        deduplicated = True
        yield from drop_duplicates(catalog)
    if total:
        yield from learn_names(catalog)
        yield from route(catalog, base, now_ms, late_after_days)
    stored = [len(run) for run in runs]
    if deduplicated:
        stored = yield from count_stored(runs)
    if quarantine:
        yield RunMany(schema.INSERT_QUARANTINE, quarantine)
    yield Run(CLEAR_STAGING)
    catalog.next_id = base + total + 1
    return stored


def drop_duplicates(catalog: Catalog) -> Plan[None]:
    """Rows whose `id` is already stored, or came earlier in this commit, are dropped."""
    yield Run(
        "DELETE FROM staging WHERE msg_id IS NOT NULL AND rowid NOT IN"
        " (SELECT min(rowid) FROM staging WHERE msg_id IS NOT NULL GROUP BY msg_id)"
    )
    yield Run(
        "DELETE FROM staging WHERE msg_id IN"
        " (SELECT s.msg_id FROM staging s JOIN event_ids e ON e.msg_id = s.msg_id)"
    )
    if catalog.legacy is not None:
        yield Run(
            "DELETE FROM staging WHERE msg_id IN"
            f" (SELECT s.msg_id FROM staging s JOIN {LEGACY} l ON l.msg_id = s.msg_id)"
        )
    yield Run(
        "INSERT INTO event_ids (msg_id, day) SELECT msg_id, ts / ? FROM staging"
        " WHERE msg_id IS NOT NULL",
        (DAY_MS,),
    )


def with_known_ids(catalog: Catalog, run: Sequence[Row]) -> list[tuple[object, ...]]:
    """Staging rows: each row with the ids of its user and action when the writer has them
    in memory."""
    user_id, action_id = catalog.users.ids.get, catalog.actions.ids.get
    return [(*row, user_id(row[2]), action_id(row[3])) for row in run]  # type: ignore[arg-type]


def learn_names(catalog: Catalog) -> Plan[None]:
    """Names not known in memory: added to their dictionary if new, their ids put in
    staging and learned."""
    yield Run(
        "INSERT OR IGNORE INTO actions (name) SELECT DISTINCT action FROM staging"
        " WHERE action_id IS NULL"
    )
    learned = yield Fetch(
        "UPDATE staging SET action_id = (SELECT id FROM actions WHERE name = staging.action)"
        " WHERE action_id IS NULL RETURNING action, action_id"
    )
    catalog.actions.learn(learned)
    yield Run(
        "INSERT OR IGNORE INTO users (name) SELECT DISTINCT user_id FROM staging"
        " WHERE user IS NULL AND user_id IS NOT NULL"
    )
    learned = yield Fetch(
        "UPDATE staging SET user = (SELECT id FROM users WHERE name = staging.user_id)"
        " WHERE user IS NULL AND user_id IS NOT NULL RETURNING user_id, user"
    )
    catalog.users.learn(learned)


# One pass over the staged rows for everything a commit keeps count of: the hourly rollup
# (hour, action), the id -> time map (block) and each partition's extent (day, from hour).
GROUPS_QUERY = (
    f"SELECT ts - ts % {HOUR_MS}, action_id, (? + rowid) >> {BLOCK_BITS}, count(*), min(ts),"
    " max(ts), min(rowid), max(rowid) FROM staging GROUP BY 1, 2, 3"
)
HOURLY_UPSERT = (
    "INSERT INTO hourly_counts (hour, action, events) VALUES (?, ?, ?)"
    " ON CONFLICT (hour, action) DO UPDATE SET events = events + excluded.events"
)
BLOCKS_UPSERT = (
    "INSERT INTO blocks (part, block, min_ts, max_ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (part, block) DO UPDATE SET min_ts = min(min_ts, excluded.min_ts),"
    " max_ts = max(max_ts, excluded.max_ts)"
)


@dataclass(slots=True)
class Extent:
    """Rows, times and ids (min, max) of a part of a commit."""

    rows: int
    min_ts: int
    max_ts: int
    low: int
    high: int

    def widen(self, rows: int, min_ts: int, max_ts: int, low: int, high: int) -> None:
        self.rows += rows
        self.min_ts, self.max_ts = min(self.min_ts, min_ts), max(self.max_ts, max_ts)
        self.low, self.high = min(self.low, low), max(self.high, high)


def merge(into: dict[K, Extent], key: K, row: Sequence[int]) -> None:
    if key in into:
        into[key].widen(*row)
    else:
        into[key] = Extent(*row)


@dataclass(slots=True)
class Summary:
    """A commit's rows counted by (hour, action), by day and by (day, id block)."""

    hourly: dict[tuple[int, int], int] = field(default_factory=dict)
    days: dict[int, Extent] = field(default_factory=dict)
    blocks: dict[tuple[int, int], Extent] = field(default_factory=dict)

    def add(self, hour: int, action: int, block: int, extent: Sequence[int]) -> None:
        self.hourly[hour, action] = self.hourly.get((hour, action), 0) + extent[0]
        merge(self.days, hour // DAY_MS, extent)
        merge(self.blocks, (hour // DAY_MS, block), extent)

    def blocks_of(self, part: str, days: list[int]) -> list[tuple[str, int, int, int]]:
        """Rows of `blocks` for the commit's rows of these days, stored in `part`."""
        extents: dict[int, Extent] = {}
        for (day, block), extent in self.blocks.items():
            if day in days:
                merge(extents, block, astuple(extent))
        return [(part, block, e.min_ts, e.max_ts) for block, e in extents.items()]


def route(catalog: Catalog, base: int, now_ms: int, late_after_days: int) -> Plan[None]:
    """Each row to the partition of its day while that day is near today (late_after_days
    before it, one after), else to events_late; then the hourly rollup and the blocks."""
    today = now_ms // DAY_MS
    hot = (today - late_after_days, today + 1)
    summary = Summary()
    for hour, action, block, *extent in (yield Fetch(GROUPS_QUERY, (base,))):
        summary.add(hour, action, block, extent)
    targets: dict[str, tuple[Target, list[int]]] = {}
    for day in sorted(summary.days):
        target = day_target(day) if hot[0] <= day <= hot[1] else late_target(hot)
        targets.setdefault(target.partition.name, (target, []))[1].append(day)
    created = [t.partition for t, _ in targets.values() if t.partition.name not in catalog.live]
    if created:
        yield from create_partitions(catalog, created)
    for name, (target, days) in targets.items():
        extents = [summary.days[day] for day in days]
        yield from insert_into(catalog.live[name], target, base, extents)
        yield RunMany(BLOCKS_UPSERT, summary.blocks_of(name, days))
    yield RunMany(HOURLY_UPSERT, [(*key, events) for key, events in summary.hourly.items()])


def day_target(day: int) -> Target:
    bounds = (day * DAY_MS, (day + 1) * DAY_MS)
    return Target(partition_for_day(day), "{t}ts >= ? AND {t}ts < ?", bounds)


def late_target(hot: tuple[int, int]) -> Target:
    bounds = (hot[0] * DAY_MS, (hot[1] + 1) * DAY_MS)
    return Target(late_partition(), "NOT ({t}ts >= ? AND {t}ts < ?)", bounds)


def create_partitions(catalog: Catalog, partitions: Sequence[Partition]) -> Plan[None]:
    """New partition tables, their catalog rows and the view over them all."""
    for partition in partitions:
        for statement in partition_ddl(partition):
            yield Run(statement)
        yield new_partition(partition, catalog.next_id - 1)
        catalog.live[partition.name] = PartitionState(
            partition, indexed_through=catalog.next_id - 1
        )
    yield from rebuild_view(catalog)


def rebuild_view(catalog: Catalog) -> Plan[None]:
    year_views = [name for (name,) in (yield Fetch(YEAR_VIEWS))]
    for statement in view_ddl(catalog.partitions(), year_views):
        yield Run(statement)


def insert_into(
    state: PartitionState, target: Target, base: int, extents: list[Extent]
) -> Plan[None]:
    yield Run(
        f"INSERT INTO {state.partition.name}"
        " (ts, id, received_after, user, action, value, extra, msg_id)"
        " SELECT ts, ? + rowid, received_at - ts, user, action_id, value, extra, msg_id"
        f" FROM staging WHERE {target.condition.format(t='')}",
        (base, *target.params),
    )
    for e in extents:
        state.add(e.rows, e.min_ts, e.max_ts, base + e.low, base + e.high)
    yield state.saved()


def count_stored(runs: Sequence[Sequence[Row]]) -> Plan[list[int]]:
    """Rows of each run left in staging once duplicates are gone."""
    filters, params = [], []
    low = 1
    for run in runs:
        filters.append("count(*) FILTER (WHERE rowid BETWEEN ? AND ?)")
        params += [low, low + len(run) - 1]
        low += len(run)
    (counts,) = yield Fetch(f"SELECT {', '.join(filters)} FROM staging", params)
    return [int(count) for count in counts]
