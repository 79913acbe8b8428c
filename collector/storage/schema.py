"""Database layout: pragmas and numbered migrations, each recorded in the transaction
that applies it, so a migration is either wholly applied and recorded or not at all."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, NamedTuple

from collector.storage import upgrade


class Migration(NamedTuple):
    version: int
    name: str
    sql: str
    # Steps that need Python (reading what is there first), run after `sql` in the same
    # transaction.
    run: Callable[[sqlite3.Connection], None] | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events and quarantine",
        """
        CREATE TABLE events (
            id          INTEGER PRIMARY KEY,
            ts          INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            user_id     TEXT,
            action      TEXT NOT NULL,
            value,
            extra       TEXT,
            msg_id      TEXT
        );
        CREATE INDEX events_ts ON events (ts);
        CREATE UNIQUE INDEX events_msg_id ON events (msg_id) WHERE msg_id IS NOT NULL;
        CREATE TABLE quarantine (
            id          INTEGER PRIMARY KEY,
            received_at INTEGER NOT NULL,
            source      TEXT NOT NULL,
            reason      TEXT NOT NULL,
            raw         BLOB NOT NULL
        );
        CREATE INDEX quarantine_received_at ON quarantine (received_at);
        """,
    ),
    Migration(
        2,
        "rollup: events per hour and action",
        """
        CREATE TABLE hourly_counts (
            hour    INTEGER NOT NULL,
            action  TEXT NOT NULL,
            events  INTEGER NOT NULL,
            PRIMARY KEY (hour, action)
        ) WITHOUT ROWID;
        INSERT INTO hourly_counts (hour, action, events)
            SELECT ts - ts % 3600000, action, count(*) FROM events GROUP BY 1, 2;
        CREATE TRIGGER events_rollup_hour AFTER INSERT ON events BEGIN
            INSERT INTO hourly_counts (hour, action, events)
                VALUES (new.ts - new.ts % 3600000, new.action, 1)
                ON CONFLICT (hour, action) DO UPDATE SET events = events + 1;
        END;
        """,
    ),
    Migration(
        3,
        "partitions by day, dictionaries, distinct users per day",
        upgrade.PARTITIONS_SQL,
        upgrade.to_partitions,
    ),
)


EVENT_COLUMNS = ("ts", "received_at", "user_id", "action", "value", "extra", "msg_id")
# A row in the commit's staging table: the event and the dictionary ids of its user and
# action when the writer knows them (NULL for SQLite to look up).
STAGING_COLUMNS = (*EVENT_COLUMNS, "user", "action_id")
# Rows per INSERT statement, largest first. Python's sqlite3 releases the GIL around every
# statement step, and under load each release costs a wait for the event loop thread to
# hand the GIL back; a multi-row INSERT makes that one wait per few hundred rows instead of
# one per row. A fixed ladder of sizes keeps the set of prepared statements small.
INSERT_CHUNK_SIZES = (500, 50, 5, 1)


@functools.cache
def insert_events_sql(rows: int) -> str:
    values = ",".join(["(" + ",".join("?" * len(STAGING_COLUMNS)) + ")"] * rows)
    return f"INSERT INTO staging ({', '.join(STAGING_COLUMNS)}) VALUES {values}"


INSERT_EVENT = insert_events_sql(1)


def insert_plan(rows: Sequence[Sequence[Any]]) -> list[tuple[str, list[list[Any]]]]:
    """Statements and their parameter lists (for executemany) that put `rows` into the
    commit's staging table, in order."""
    plan: list[tuple[str, list[list[Any]]]] = []
    start = 0
    for size in INSERT_CHUNK_SIZES:
        count = (len(rows) - start) // size
        if count:
            params = [
                list(chain.from_iterable(rows[first : first + size]))
                for first in range(start, start + count * size, size)
            ]
            plan.append((insert_events_sql(size), params))
            start += count * size
    return plan


INSERT_QUARANTINE = "INSERT INTO quarantine (received_at, source, reason, raw) VALUES (?, ?, ?, ?)"


# The WAL file is truncated back to this after a checkpoint that emptied it.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def writer_pragmas(synchronous: str) -> list[str]:
    return [
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {synchronous.upper()}",
        "PRAGMA busy_timeout = 5000",
        "PRAGMA cache_size = -32768",
        "PRAGMA foreign_keys = ON",
        "PRAGMA temp_store = MEMORY",
        f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
    ]


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations in order; return the versions applied now.

    `conn` must be in autocommit mode (isolation_level=None): each migration runs in its own
    BEGIN IMMEDIATE ... COMMIT, together with the row that records it.
    """
    done = applied_versions(conn)
    newly: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            if migration.run is not None:
                migration.run(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, int(time.time() * 1000)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        newly.append(migration.version)
    return newly


def split_statements(script: str) -> list[str]:
    """Split a migration script into statements; a trigger body's inner ';' does not end
    its CREATE TRIGGER (sqlite3.complete_statement knows)."""
    statements: list[str] = []
    current = ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            text = current.strip().removesuffix(";").strip()
            if text:
                statements.append(text)
            current = ""
    return statements
