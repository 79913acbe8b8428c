"""Retention: whole UTC days older than `retention_days` are dropped, one day per
transaction, with everything derived from them.

Dropping a day partition frees its pages at once (SQLite reuses them; `collector compact`
gives them back to the filesystem). In the same transaction go the day's late events, its
rows of `hourly_counts`, `daily_users` and `blocks`, so the rollups always agree with the
events. The dedup ids (`event_ids`) of dropped days go afterwards, a chunk per
transaction. While an upgraded database still has rows in its old table, retention waits
for them to be moved.
"""

from __future__ import annotations

from collector.clock import DAY_MS
from collector.storage.catalog import Catalog, PartitionState
from collector.storage.commit import rebuild_view
from collector.storage.layout import LATE, day_name, drop_ddl
from collector.storage.plan import Fetch, Plan, Run

IDS_CHUNK = 50_000


def expired(catalog: Catalog, cutoff_day: int) -> bool:
    """Whether anything is older than `cutoff_day` (the first day kept)."""
    if catalog.legacy is not None:
        return False
    if any(
        s.partition.kind == "day" and s.partition.day is not None and s.partition.day < cutoff_day
        for s in catalog.live.values()
    ):
        return True
    late = catalog.live.get(LATE)
    return late is not None and late.min_ts is not None and late.min_ts < cutoff_day * DAY_MS


def retention_step(catalog: Catalog, cutoff_day: int) -> Plan[str | None]:
    """Drop the oldest day before `cutoff_day` (or, when only late events are that old,
    those); return what was dropped. Expired dedup ids go a chunk at a time after that."""
    days = sorted(
        s.partition.day
        for s in catalog.live.values()
        if s.partition.kind == "day" and s.partition.day is not None
    )
    oldest = days[0] if days and days[0] < cutoff_day else None
    if oldest is not None:
        state = catalog.live[day_name(oldest)]
        yield from drop_day(catalog, state, oldest)
        return state.partition.name
    late = catalog.live.get(LATE)
    if late is not None and late.min_ts is not None and late.min_ts < cutoff_day * DAY_MS:
        yield from drop_late_before(late, cutoff_day * DAY_MS)
        yield from drop_rollups_before(cutoff_day * DAY_MS)
        return LATE
    deleted = yield Run(
        "DELETE FROM event_ids WHERE msg_id IN"
        " (SELECT msg_id FROM event_ids WHERE day < ? LIMIT ?)",
        (cutoff_day, IDS_CHUNK),
    )
    return "event_ids" if deleted else None


def drop_day(catalog: Catalog, state: PartitionState, day: int) -> Plan[None]:
    """The oldest day partition, the late events up to its end, and every rollup row up
    to its end (no live partition holds anything older)."""
    end = (day + 1) * DAY_MS
    for statement in drop_ddl(state.partition):
        yield Run(statement)
    yield Run("DELETE FROM blocks WHERE part = ?", (state.partition.name,))
    yield Run("UPDATE partitions SET dropped_at = ? WHERE name = ?", (end, state.partition.name))
    del catalog.live[state.partition.name]
    late = catalog.live.get(LATE)
    if late is not None and late.min_ts is not None and late.min_ts < end:
        yield from drop_late_before(late, end)
    yield from drop_rollups_before(end)
    yield from rebuild_view(catalog)


def drop_late_before(late: PartitionState, end: int) -> Plan[None]:
    """Late events before `end`, with their by-user entries."""
    by_user = late.partition.by_user
    yield Run(f"DELETE FROM {by_user} WHERE id IN (SELECT id FROM {LATE} WHERE ts < ?)", (end,))
    yield Run(f"DELETE FROM {LATE} WHERE ts < ?", (end,))
    ((rows, min_ts, max_ts),) = yield Fetch(f"SELECT count(*), min(ts), max(ts) FROM {LATE}")
    late.rows, late.min_ts, late.max_ts = rows, min_ts, max_ts
    yield late.saved()


def drop_rollups_before(end: int) -> Plan[None]:
    yield Run("DELETE FROM hourly_counts WHERE hour < ?", (end,))
    yield Run("DELETE FROM daily_users WHERE day < ?", (end // DAY_MS,))
