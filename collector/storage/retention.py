"""Retention: whole UTC days older than `retention_days` are dropped, in short steps.

1. The day is retired, in one transaction: its catalog row is marked dropped (queries and
   the `events` view stop reading it at once), and its `hourly_counts` rows, its `blocks`
   and the late events up to its end go with it.
2. Its two tables are emptied and dropped, a step each (a large one is emptied
   PURGE_CHUNK rows at a time first, so no step holds the write lock long).
3. Its `daily_users` rows and the dedup ids (`event_ids`) of dropped days follow, a chunk
   per step. Until then queries do not read them: every rollup query is narrowed to the
   times the live partitions hold.

Dropped pages are reused by SQLite; `collector compact` gives them back to the filesystem.
While an upgraded database still has rows in its old table, retention waits.
"""

from __future__ import annotations

from collector.clock import DAY_MS
from collector.storage.catalog import Catalog, PartitionState
from collector.storage.commit import rebuild_view
from collector.storage.layout import LATE, day_name
from collector.storage.plan import Fetch, Plan, Run

CHUNK = 20_000
# A table of up to this many rows is dropped in one step (about 25 ms on the bench's
# machine); a larger one is emptied CHUNK rows at a time first.
DROP_AT_ONCE_ROWS = 100_000


def expired(catalog: Catalog, cutoff_day: int) -> bool:
    """Whether anything is older than `cutoff_day` (the first day kept), or a dropped day
    is still being cleared away."""
    if catalog.legacy is not None:
        return False
    if catalog.retired or oldest_day_before(catalog, cutoff_day) is not None:
        return True
    late = catalog.live.get(LATE)
    return late is not None and late.min_ts is not None and late.min_ts < cutoff_day * DAY_MS


def oldest_day_before(catalog: Catalog, cutoff_day: int) -> int | None:
    days = [
        s.partition.day
        for s in catalog.live.values()
        if s.partition.kind == "day" and s.partition.day is not None
    ]
    oldest = min(days, default=None)
    return oldest if oldest is not None and oldest < cutoff_day else None


def retention_step(catalog: Catalog, cutoff_day: int) -> Plan[str | None]:
    """One step of retention; what it did, or None when nothing is left to do."""
    if catalog.legacy is not None:
        return None
    oldest = oldest_day_before(catalog, cutoff_day)
    if oldest is not None:
        name = day_name(oldest)
        yield from retire_day(catalog, catalog.live[name], oldest)
        return f"retired {name}"
    late = catalog.live.get(LATE)
    if late is not None and late.min_ts is not None and late.min_ts < cutoff_day * DAY_MS:
        yield from drop_late_before(late, cutoff_day * DAY_MS)
        yield Run("DELETE FROM hourly_counts WHERE hour < ?", (cutoff_day * DAY_MS,))
        return "late events"
    if catalog.retired:
        return (yield from purge_step(catalog))
    return (yield from forget_step(cutoff_day))


def retire_day(catalog: Catalog, state: PartitionState, day: int) -> Plan[None]:
    """The oldest day: out of the catalog and the view, with the late events and the hourly
    counts up to its end (no live partition holds anything older)."""
    name, end = state.partition.name, (day + 1) * DAY_MS
    yield Run("UPDATE partitions SET dropped_at = ? WHERE name = ?", (end, name))
    yield Run("DELETE FROM blocks WHERE part = ?", (name,))
    del catalog.live[name]
    catalog.retired[state.partition] = state.rows
    late = catalog.live.get(LATE)
    if late is not None and late.min_ts is not None and late.min_ts < end:
        yield from drop_late_before(late, end)
    yield Run("DELETE FROM hourly_counts WHERE hour < ?", (end,))
    yield from rebuild_view(catalog)


def drop_late_before(late: PartitionState, end: int) -> Plan[None]:
    """Late events before `end`, with their by-user entries."""
    by_user = late.partition.by_user
    yield Run(f"DELETE FROM {by_user} WHERE ts < ?", (end,))
    yield Run(f"DELETE FROM {LATE} WHERE ts < ?", (end,))
    ((rows, min_ts, max_ts),) = yield Fetch(f"SELECT count(*), min(ts), max(ts) FROM {LATE}")
    late.rows, late.min_ts, late.max_ts = rows, min_ts, max_ts
    yield late.saved()


def purge_step(catalog: Catalog) -> Plan[str]:
    """Empty or drop the next table of a retired partition, by-user table first."""
    partition, rows = next(iter(catalog.retired.items()))
    keys = ((partition.by_user, "action, user, ts, id"), (partition.name, "ts, id"))
    for table, key in keys:
        exists = yield Fetch(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        )
        if not exists:
            continue
        if rows > DROP_AT_ONCE_ROWS:
            emptied = yield Run(
                f"DELETE FROM {table} WHERE ({key}) <="
                f" (SELECT {key} FROM {table} ORDER BY {key} LIMIT 1 OFFSET ?)",
                (CHUNK - 1,),
            )
            if emptied:
                return f"emptied {CHUNK:,} rows of {table}"
            yield Run(f"DELETE FROM {table}")
        yield Run(f"DROP TABLE {table}")
        return f"dropped {table}"
    yield Run("UPDATE partitions SET purged_at = dropped_at WHERE name = ?", (partition.name,))
    del catalog.retired[partition]
    return f"purged {partition.name}"


def forget_step(cutoff_day: int) -> Plan[str | None]:
    """The daily_users rows, then the dedup ids, of dropped days: a chunk."""
    gone = yield Run(
        "DELETE FROM daily_users WHERE (day, action, user) <="
        " (SELECT day, action, user FROM daily_users WHERE day < ?"
        " ORDER BY day, action, user LIMIT 1 OFFSET ?)",
        (cutoff_day, CHUNK - 1),
    )
    if not gone:
        gone = yield Run("DELETE FROM daily_users WHERE day < ?", (cutoff_day,))
    if gone:
        return "daily_users"
    gone = yield Run(
        "DELETE FROM event_ids WHERE msg_id IN"
        " (SELECT msg_id FROM event_ids WHERE day < ? LIMIT ?)",
        (cutoff_day, CHUNK),
    )
    return "event_ids" if gone else None
