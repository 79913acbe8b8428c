"""Migration 3: from one `events` table to day partitions.

The dictionaries, the catalog and the rollups are created; `hourly_counts` is rewritten
with action ids; an old `events` table that holds rows becomes `legacy_events`, which the
writer moves into partitions in the background while ingest goes on (storage/mover.py).
Only the user dictionary is filled before the daemon starts, from the old table, so that
every query can name users by id at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import structlog

from collector.storage.layout import LEGACY, YEAR_VIEWS, Partition, view_ddl

PARTITIONS_SQL = """
CREATE TABLE actions (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE partitions (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    day             INTEGER,
    rows            INTEGER NOT NULL DEFAULT 0,
    min_ts          INTEGER,
    max_ts          INTEGER,
    min_id          INTEGER,
    max_id          INTEGER,
    indexed_through INTEGER NOT NULL DEFAULT 0,
    dropped_at      INTEGER,
    purged_at       INTEGER
);
CREATE TABLE blocks (
    part    TEXT NOT NULL,
    block   INTEGER NOT NULL,
    min_ts  INTEGER NOT NULL,
    max_ts  INTEGER NOT NULL,
    PRIMARY KEY (part, block)
) WITHOUT ROWID;
CREATE TABLE event_ids (msg_id TEXT PRIMARY KEY, day INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX event_ids_day ON event_ids (day);
CREATE TABLE daily_users (
    day      INTEGER NOT NULL,
    action   INTEGER NOT NULL,
    user     INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL,
    events   INTEGER NOT NULL,
    PRIMARY KEY (day, action, user)
) WITHOUT ROWID;
CREATE TABLE hourly_counts_by_id (
    hour    INTEGER NOT NULL,
    action  INTEGER NOT NULL,
    events  INTEGER NOT NULL,
    PRIMARY KEY (hour, action)
) WITHOUT ROWID;
DROP TRIGGER events_rollup_hour;
INSERT INTO actions (name) SELECT DISTINCT action FROM hourly_counts ORDER BY action;
INSERT INTO hourly_counts_by_id (hour, action, events)
    SELECT h.hour, a.id, h.events FROM hourly_counts h JOIN actions a ON a.name = h.action;
DROP TABLE hourly_counts;
ALTER TABLE hourly_counts_by_id RENAME TO hourly_counts;
"""


log = structlog.get_logger("collector.storage")

PROGRESS_LOG_SECONDS = 5.0
PROGRESS_CHECK_STEPS = 1_000_000  # SQLite VM steps between two looks at the clock


def progress_logger(what: str, clock: Callable[[], float] = time.monotonic) -> Callable[[], int]:
    """A progress handler for a long statement: a log line every few seconds."""
    started = last = clock()

    def report() -> int:
        nonlocal last
        now = clock()
        if now - last >= PROGRESS_LOG_SECONDS:
            last = now
            log.info("upgrade in progress", step=what, seconds=round(now - started))
        return 0  # go on

    return report


def to_partitions(conn: sqlite3.Connection) -> None:
    (has_rows,) = conn.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()
    partitions: list[Partition] = []
    if not has_rows:
        conn.execute("DROP TABLE events")
    else:
        log.info("upgrade started: events move to day partitions, users are named first")
        conn.execute(f"ALTER TABLE events RENAME TO {LEGACY}")
        conn.set_progress_handler(progress_logger("naming users"), PROGRESS_CHECK_STEPS)
        try:
            conn.execute(
                "INSERT OR IGNORE INTO users (name) SELECT DISTINCT user_id FROM"
                f" {LEGACY} WHERE user_id IS NOT NULL"
            )
        finally:
            conn.set_progress_handler(None, 0)
        conn.execute(
            "INSERT INTO partitions (name, kind, rows, min_ts, max_ts, min_id, max_id)"
            f" SELECT ?, 'legacy', count(*), min(ts), max(ts), min(id), max(id) FROM {LEGACY}",
            (LEGACY,),
        )
        partitions.append(Partition(LEGACY, "legacy", None))
    year_views = [name for (name,) in conn.execute(YEAR_VIEWS)]
    for statement in view_ddl(partitions, year_views):
        conn.execute(statement)
