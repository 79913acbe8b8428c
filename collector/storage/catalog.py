"""The writer's picture of the `partitions` table: which partitions exist, what they hold,
how far the indexer has come, and the next event id. Loaded at open; kept in step by the
plans that change it, and loaded again after a failed transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.storage.layout import LATE, LEGACY, Partition, day_partition
from collector.storage.names import ACTION_NAMES, USER_NAMES, Names
from collector.storage.plan import Fetch, Plan, Run


@dataclass(slots=True)
class PartitionState:
    partition: Partition
    rows: int = 0
    min_ts: int | None = None
    max_ts: int | None = None
    min_id: int | None = None
    max_id: int | None = None
    indexed_through: int = 0

    def add(self, rows: int, min_ts: int, max_ts: int, min_id: int, max_id: int) -> None:
        self.rows += rows
        self.min_ts = min_ts if self.min_ts is None else min(self.min_ts, min_ts)
        self.max_ts = max_ts if self.max_ts is None else max(self.max_ts, max_ts)
        self.min_id = min_id if self.min_id is None else min(self.min_id, min_id)
        self.max_id = max_id if self.max_id is None else max(self.max_id, max_id)

    def saved(self) -> Run:
        return Run(
            "UPDATE partitions SET rows = ?, min_ts = ?, max_ts = ?, min_id = ?, max_id = ?,"
            " indexed_through = ? WHERE name = ?",
            (
                self.rows,
                self.min_ts,
                self.max_ts,
                self.min_id,
                self.max_id,
                self.indexed_through,
                self.partition.name,
            ),
        )

    @property
    def backlog(self) -> bool:
        """Rows the indexer has still to take into the by-user table and daily_users."""
        return (
            self.partition.mapped and self.max_id is not None and self.indexed_through < self.max_id
        )


@dataclass
class Catalog:
    live: dict[str, PartitionState] = field(default_factory=dict)
    # Dropped by retention (queries and the view no longer read them) with their tables
    # still to be emptied and dropped, a step at a time; by catalog rows.
    retired: dict[Partition, int] = field(default_factory=dict)
    next_id: int = 1
    users: Names = field(default_factory=lambda: Names(USER_NAMES))
    actions: Names = field(default_factory=lambda: Names(ACTION_NAMES))

    def forget_names(self) -> None:
        """After a failed transaction: ids learned in it may have been rolled back."""
        self.users.ids.clear()
        self.actions.ids.clear()

    def partitions(self) -> list[Partition]:
        return [state.partition for state in self.live.values()]

    @property
    def legacy(self) -> PartitionState | None:
        return self.live.get(LEGACY)


SELECT_CATALOG = (
    "SELECT name, kind, day, rows, min_ts, max_ts, min_id, max_id, indexed_through,"
    " dropped_at, purged_at FROM partitions ORDER BY coalesce(day, -1), name"
)


def load_catalog() -> Plan[Catalog]:
    rows = yield Fetch(SELECT_CATALOG)
    catalog = Catalog()
    highest = 0
    for name, kind, day, count, min_ts, max_ts, min_id, max_id, indexed, dropped, purged in rows:
        highest = max(highest, max_id or 0)
        partition = Partition(name, kind, day)
        if dropped is None:
            state = PartitionState(partition, count, min_ts, max_ts)
            state.min_id, state.max_id, state.indexed_through = min_id, max_id, indexed
            catalog.live[name] = state
        elif purged is None:
            catalog.retired[partition] = count
    catalog.next_id = highest + 1
    return catalog


def new_partition(partition: Partition, indexed_through: int) -> Run:
    """The catalog row of a new partition; a day dropped by retention keeps its row, which
    starts afresh when events of that day arrive again (late_after_days >= retention_days)."""
    return Run(
        "INSERT INTO partitions (name, kind, day, indexed_through) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET rows = 0, min_ts = NULL, max_ts = NULL,"
        " min_id = NULL, max_id = NULL, indexed_through = excluded.indexed_through,"
        " dropped_at = NULL, purged_at = NULL",
        (partition.name, partition.kind, partition.day, indexed_through),
    )


def late_partition() -> Partition:
    return Partition(LATE, "late", None)


def partition_for_day(day: int) -> Partition:
    return day_partition(day)
