"""How events are laid out in the database file: partition tables, their names and DDL,
and the `events` view over them. Pure: SQL text only.

Events live in one table per UTC day of their `ts` (`events_20261204`), clustered by
(ts, id) so a time window reads a contiguous range and needs no index of its own. Events
whose `ts` is far from the day they arrive on go to `events_late`. Each partition has a
companion `<name>_by_user` table, (action, user, ts, id), filled behind the writer by
the indexer: per-user and per-action access. A database made before partitions keeps its
old table as `legacy_events` until its rows are moved.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from collector.clock import DAY_MS

LATE = "events_late"
LEGACY = "legacy_events"
VIEW = "events"
BY_USER_SUFFIX = "_by_user"
NO_USER = 0  # the user key of events without a user, in the by-user tables
ANY_ACTION = 0  # the action key of daily_users rows that count a user once per day
# SQLite allows 500 terms in a compound SELECT; past this many partitions the view is built
# from one view per year.
FLAT_VIEW_MAX_TERMS = 400
# Ids are grouped in blocks of 2**BLOCK_BITS for the id -> time map (table `blocks`).
BLOCK_BITS = 12

VIEW_COLUMNS = ("id", "ts", "received_at", "user_id", "action", "value", "extra", "msg_id")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    kind: str  # day | late | legacy
    day: int | None  # UTC day number (ts // DAY_MS) of a day partition

    @property
    def by_user(self) -> str:
        return self.name + BY_USER_SUFFIX

    @property
    def mapped(self) -> bool:
        """Holds dictionary ids (every kind but legacy, which keeps text)."""
        return self.kind != "legacy"


def day_of(ts: int) -> int:
    return ts // DAY_MS


def day_name(day: int) -> str:
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return f"events_{date:%Y%m%d}"


def day_partition(day: int) -> Partition:
    return Partition(day_name(day), "day", day)


def partition_ddl(partition: Partition) -> list[str]:
    return [
        f"CREATE TABLE {partition.name} ("
        " ts INTEGER NOT NULL,"
        " id INTEGER NOT NULL,"
        " received_after INTEGER NOT NULL,"
        " user INTEGER,"
        " action INTEGER NOT NULL,"
        " value,"
        " extra TEXT,"
        " msg_id TEXT,"
        " PRIMARY KEY (ts, id)) WITHOUT ROWID",
        f"CREATE TABLE {partition.by_user} ("
        " action INTEGER NOT NULL,"
        " user INTEGER NOT NULL,"
        " ts INTEGER NOT NULL,"
        " id INTEGER NOT NULL,"
        " PRIMARY KEY (action, user, ts, id)) WITHOUT ROWID",
    ]


def drop_ddl(partition: Partition) -> list[str]:
    return [f"DROP TABLE IF EXISTS {partition.by_user}", f"DROP TABLE IF EXISTS {partition.name}"]


def view_term(partition: Partition) -> str:
    if not partition.mapped:
        return f"SELECT {', '.join(VIEW_COLUMNS)} FROM {partition.name}"
    return (
        "SELECT p.id, p.ts, p.ts + p.received_after, u.name, a.name, p.value, p.extra, p.msg_id"
        f" FROM {partition.name} p LEFT JOIN users u ON u.id = p.user"
        " JOIN actions a ON a.id = p.action"
    )


YEAR_VIEWS = "SELECT name FROM sqlite_master WHERE type = 'view' AND name GLOB 'events_[0-9]*'"


def view_ddl(partitions: Sequence[Partition], year_views: Iterable[str] = ()) -> list[str]:
    """Statements that drop the `events` view and the `year_views` it was built from, and
    build it again over `partitions` (from one view per year of day partitions when there
    are too many for one compound SELECT)."""
    statements = [f"DROP VIEW IF EXISTS {VIEW}"]
    statements += [f"DROP VIEW IF EXISTS {name}" for name in year_views]
    columns = ", ".join(VIEW_COLUMNS)
    if not partitions:
        empty = ", ".join(f"NULL AS {column}" for column in VIEW_COLUMNS)
        statements.append(f"CREATE VIEW {VIEW} ({columns}) AS SELECT {empty} WHERE 0")
        return statements
    if len(partitions) <= FLAT_VIEW_MAX_TERMS:
        body = " UNION ALL ".join(view_term(p) for p in partitions)
        statements.append(f"CREATE VIEW {VIEW} ({columns}) AS {body}")
        return statements
    terms = []
    for year, members in by_year(partitions).items():
        if year is None:
            terms += [view_term(p) for p in members]
            continue
        name = f"{VIEW}_{year}"
        body = " UNION ALL ".join(view_term(p) for p in members)
        statements.append(f"CREATE VIEW {name} ({columns}) AS {body}")
        terms.append(f"SELECT {columns} FROM {name}")
    statements.append(f"CREATE VIEW {VIEW} ({columns}) AS {' UNION ALL '.join(terms)}")
    return statements


def by_year(partitions: Iterable[Partition]) -> dict[int | None, list[Partition]]:
    years: dict[int | None, list[Partition]] = {}
    for partition in partitions:
        year = None if partition.day is None else day_year(partition.day)
        years.setdefault(year, []).append(partition)
    return years


def day_year(day: int) -> int:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).year
