"""One group commit as a plan: rows in, stored counts out.

The rows are bound once, as the codec made them, into a temporary `staging` table; every
step after that runs inside SQLite, where the event loop's GIL is not needed: duplicates by
`id` are removed, the dictionaries learn new names, each row goes to the partition of its
UTC day (or to `events_late`), and the hourly rollup, the id -> time map (`blocks`) and the
catalog are brought up to date. The by-user tables and `daily_users` are the indexer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    " user_id TEXT, action TEXT NOT NULL, value, extra TEXT, msg_id TEXT)"
)
CLEAR_STAGING = "DELETE FROM staging"


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
        for sql, params in schema.insert_plan(run):
            yield RunMany(sql, params)
    deduplicated = False
    if total and (yield Fetch("SELECT 1 FROM staging WHERE msg_id IS NOT NULL LIMIT 1")):
        deduplicated = True
        yield from drop_duplicates(catalog)
    if total:
        yield from learn_names()
        yield from route(catalog, base, now_ms, late_after_days)
        yield Run(HOURLY_ROLLUP)
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


def learn_names() -> Plan[None]:
    yield Run("INSERT OR IGNORE INTO actions (name) SELECT DISTINCT action FROM staging")
    yield Run(
        "INSERT OR IGNORE INTO users (name) SELECT DISTINCT user_id FROM staging"
        " WHERE user_id IS NOT NULL"
    )


ROUTE_QUERY = (
    "SELECT ts / ? AS day, count(*), min(ts), max(ts), min(rowid), max(rowid)"
    " FROM staging GROUP BY day"
)


def route(catalog: Catalog, base: int, now_ms: int, late_after_days: int) -> Plan[None]:
    """Each row to the partition of its day while that day is near today (late_after_days
    before it, one after), else to events_late."""
    today = now_ms // DAY_MS
    hot = (today - late_after_days, today + 1)
    days = yield Fetch(ROUTE_QUERY, (DAY_MS,))
    targets: dict[str, tuple[Target, list[tuple[int, int, int, int, int]]]] = {}
    for day, count, min_ts, max_ts, low, high in days:
        target = day_target(day) if hot[0] <= day <= hot[1] else late_target(hot)
        entry = targets.setdefault(target.partition.name, (target, []))
        entry[1].append((count, min_ts, max_ts, base + low, base + high))
    created = [t.partition for t, _ in targets.values() if t.partition.name not in catalog.live]
    if created:
        yield from create_partitions(catalog, created)
    for target, parts in targets.values():
        yield from insert_into(catalog.live[target.partition.name], target, base, parts)


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
    state: PartitionState,
    target: Target,
    base: int,
    parts: list[tuple[int, int, int, int, int]],
) -> Plan[None]:
    name = state.partition.name
    yield Run(
        f"INSERT INTO {name} (ts, id, received_after, user, action, value, extra, msg_id)"
        " SELECT s.ts, ? + s.rowid, s.received_at - s.ts, u.id, a.id, s.value, s.extra,"
        " s.msg_id FROM staging s LEFT JOIN users u ON u.name = s.user_id"
        f" JOIN actions a ON a.name = s.action WHERE {target.condition.format(t='s.')}",
        (base, *target.params),
    )
    yield Run(
        f"INSERT INTO blocks (part, block, min_ts, max_ts) SELECT ?, (? + rowid) >> {BLOCK_BITS},"
        f" min(ts), max(ts) FROM staging WHERE {target.condition.format(t='')} GROUP BY 2"
        " ON CONFLICT (part, block) DO UPDATE SET min_ts = min(min_ts, excluded.min_ts),"
        " max_ts = max(max_ts, excluded.max_ts)",
        (name, base, *target.params),
    )
    for count, min_ts, max_ts, low, high in parts:
        state.add(count, min_ts, max_ts, low, high)
    yield state.saved()


HOURLY_ROLLUP = (
    f"INSERT INTO hourly_counts (hour, action, events) SELECT s.ts - s.ts % {HOUR_MS}, a.id,"
    " count(*) FROM staging s JOIN actions a ON a.name = s.action GROUP BY 1, 2"
    " ON CONFLICT (hour, action) DO UPDATE SET events = events + excluded.events"
)


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
