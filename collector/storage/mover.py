"""Behind the writer, after an upgrade: the rows of `legacy_events` (the table of a
database made before partitions) move into day partitions, a chunk per transaction, with
their ids, their dictionary ids, their by-user entries and their daily_users rows. Ingest
and queries go on meanwhile: queries read what is left of `legacy_events` as it is."""

from __future__ import annotations

from collector.clock import DAY_MS
from collector.storage.catalog import Catalog, PartitionState, late_partition, partition_for_day
from collector.storage.commit import create_partitions, rebuild_view
from collector.storage.indexer import index_rows
from collector.storage.layout import BLOCK_BITS, LEGACY
from collector.storage.plan import Fetch, Plan, Run

# Legacy rows with a day outside these years go to events_late, not to a day partition of
# their own (a stray ts of 1970 would otherwise make a table of its own).
FIRST_DAY = 10_957  # 2000-01-01
DAYS_AHEAD = 2

CHUNK_BY_DAY = (
    f"SELECT ts / {DAY_MS} AS day, count(*), min(ts), max(ts), min(id), max(id)"
    f" FROM {LEGACY} WHERE id >= ? AND id < ? GROUP BY day"
)


def move_step(catalog: Catalog, max_ids: int, now_ms: int) -> Plan[int]:
    """Move the legacy rows of the next `max_ids` ids; return how many moved."""
    legacy = catalog.legacy
    if legacy is None:
        return 0
    if not legacy.rows or legacy.min_id is None:
        yield from finish(catalog)
        return 0
    low = legacy.min_id
    # Ids past the old table's are those of commits made since the upgrade, in the same
    # partitions: the chunk ends at the last old id, so move_day indexes moved rows only.
    last = legacy.max_id if legacy.max_id is not None else low
    high = min(low + max_ids, last + 1)
    days = yield Fetch(CHUNK_BY_DAY, (low, high))
    last_day = now_ms // DAY_MS + DAYS_AHEAD
    targets = [
        partition_for_day(day) if FIRST_DAY <= day <= last_day else late_partition()
        for day, *_ in days
    ]
    created = list({p.name: p for p in targets if p.name not in catalog.live}.values())
    if created:
        yield from create_partitions(catalog, created)
    moved = 0
    for (day, count, min_ts, max_ts, min_id, max_id), target in zip(days, targets, strict=True):
        state = catalog.live[target.name]
        moved += yield from move_day(state, (low, high, day * DAY_MS, (day + 1) * DAY_MS))
        state.add(count, min_ts, max_ts, min_id, max_id)
        yield state.saved()
    yield Run(
        f"INSERT OR IGNORE INTO event_ids (msg_id, day) SELECT msg_id, ts / {DAY_MS}"
        f" FROM {LEGACY} WHERE id >= ? AND id < ? AND msg_id IS NOT NULL",
        (low, high),
    )
    yield Run(f"DELETE FROM {LEGACY} WHERE id >= ? AND id < ?", (low, high))
    legacy.rows -= moved
    legacy.min_id = high if legacy.rows else None
    yield legacy.saved()
    return moved


def move_day(state: PartitionState, bounds: tuple[int, int, int, int]) -> Plan[int]:
    """Move the legacy rows of one UTC day and id range `bounds` (low id, high id, first
    and last ms of the day) into the partition of `state`, and index them."""
    name = state.partition.name
    legacy_rows = "l.id >= ? AND l.id < ? AND l.ts >= ? AND l.ts < ?"
    yield Run(
        f"INSERT OR IGNORE INTO actions (name) SELECT DISTINCT action FROM {LEGACY} l"
        f" WHERE {legacy_rows}",
        bounds,
    )
    moved = yield Run(
        f"INSERT INTO {name} (ts, id, received_after, user, action, value, extra, msg_id)"
        " SELECT l.ts, l.id, l.received_at - l.ts, u.id, a.id, l.value, l.extra, l.msg_id"
        f" FROM {LEGACY} l LEFT JOIN users u ON u.name = l.user_id"
        f" JOIN actions a ON a.name = l.action WHERE {legacy_rows}",
        bounds,
    )
    yield Run(
        f"INSERT INTO blocks (part, block, min_ts, max_ts) SELECT ?, l.id >> {BLOCK_BITS},"
        f" min(l.ts), max(l.ts) FROM {LEGACY} l WHERE {legacy_rows} GROUP BY 2"
        " ON CONFLICT (part, block) DO UPDATE SET min_ts = min(min_ts, excluded.min_ts),"
        " max_ts = max(max_ts, excluded.max_ts)",
        (name, *bounds),
    )
    yield from index_rows(state, "id >= ? AND id < ? AND ts >= ? AND ts < ?", bounds)
    return int(moved)


def finish(catalog: Catalog) -> Plan[None]:
    """The legacy table is empty: drop it and its catalog row."""
    yield Run(f"DROP TABLE {LEGACY}")
    yield Run("DELETE FROM partitions WHERE name = ?", (LEGACY,))
    del catalog.live[LEGACY]
    yield from rebuild_view(catalog)
