"""What a schema change costs the writer: insert speed into a copy of a large database.

    python -m bench.schema_cost DB [--rows 200000] [--variant NAME ...]

DB is a database built by `bench.dataset` (ten million events). For each variant the
script copies DB, shapes the copy, then inserts --rows new events with skewed random users
(the dataset's distribution) in transactions of 5,000 rows through `schema.insert_plan`,
as the writer does, and prints rows/s:

- plain: the events table and its indexes, no triggers (rollup triggers are dropped);
- rollups: every migration, so the rollup triggers run on each insert;
- daily-users: rollups plus the distinct users of each UTC day (day, user_id);
- user-rollup: rollups plus a per-user table (user, action, first, last, events);
- user-index: plain plus an index on (user_id, ts, action).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import insert_transaction, writer_connection
from bench.dataset import make_events
from collector.storage import schema

TRANSACTION_ROWS = 5_000
VARIANTS = ("plain", "rollups", "daily-users", "user-rollup", "user-index")
DAILY_USERS = """
CREATE TABLE daily_users (day INTEGER NOT NULL, user_id TEXT NOT NULL,
    PRIMARY KEY (day, user_id)) WITHOUT ROWID;
INSERT INTO daily_users SELECT DISTINCT ts - ts % 86400000, user_id FROM events
    WHERE user_id IS NOT NULL;
CREATE TRIGGER events_rollup_day AFTER INSERT ON events WHEN new.user_id IS NOT NULL BEGIN
    INSERT OR IGNORE INTO daily_users VALUES (new.ts - new.ts % 86400000, new.user_id);
END;
"""
# A per-user rollup that would answer USER's summary from a few rows; measured, not adopted
# (docs/performance.md).
USER_ROLLUP = """
        CREATE TABLE user_actions (
            user_id   TEXT NOT NULL,
            action    TEXT NOT NULL,
            first_ts  INTEGER NOT NULL,
            last_ts   INTEGER NOT NULL,
            events    INTEGER NOT NULL,
            PRIMARY KEY (user_id, action)
        ) WITHOUT ROWID;
        INSERT INTO user_actions (user_id, action, first_ts, last_ts, events)
            SELECT user_id, action, min(ts), max(ts), count(*) FROM events
            WHERE user_id IS NOT NULL GROUP BY 1, 2;
        CREATE TRIGGER events_rollup_user AFTER INSERT ON events
        WHEN new.user_id IS NOT NULL BEGIN
            INSERT INTO user_actions (user_id, action, first_ts, last_ts, events)
                VALUES (new.user_id, new.action, new.ts, new.ts, 1)
                ON CONFLICT (user_id, action) DO UPDATE SET
                    first_ts = min(first_ts, excluded.first_ts),
                    last_ts = max(last_ts, excluded.last_ts),
                    events = events + 1;
        END;
"""


def shape(conn: sqlite3.Connection, variant: str) -> None:
    if variant == "rollups":
        schema.migrate(conn)
        return
    if variant == "daily-users":
        schema.migrate(conn)
        for statement in schema.split_statements(DAILY_USERS):
            conn.execute(statement)
        return
    if variant == "user-rollup":
        schema.migrate(conn)
        for statement in schema.split_statements(USER_ROLLUP):
            conn.execute(statement)
        return
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    for (name,) in triggers.fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    if variant == "user-index":
        conn.execute("CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, action)")


def insert_rate(path: Path, rows: int, seed: int) -> float:
    conn = writer_connection(path)
    events_args = argparse.Namespace(seed=seed, users=200_000, actions=50, days=1, events=rows)
    batch = list(make_events(events_args, time.time_ns() // 1_000_000))
    started = time.perf_counter()
    for first in range(0, len(batch), TRANSACTION_ROWS):
        insert_transaction(conn, batch[first : first + TRANSACTION_ROWS])
    elapsed = time.perf_counter() - started
    conn.close()
    return len(batch) / elapsed


def settle(path: Path) -> None:
    """Write the fresh copy back and read it once, so every variant starts alike: no
    writeback of the copy under way, the whole file in the page cache."""
    os.sync()
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path, help="a database built by bench.dataset")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--variant", choices=VARIANTS, action="append")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.db.parent) as scratch:
        for variant in args.variant or VARIANTS:
            copy = Path(scratch) / f"{variant}.db"
            shutil.copyfile(args.db, copy)
            settle(copy)
            with sqlite3.connect(copy, isolation_level=None) as conn:
                shape(conn, variant)
            conn.close()
            rate = insert_rate(copy, args.rows, args.seed)
            print(f"{variant:>10}: {rate:>9,.0f} rows/s ({args.rows:,} rows)")
            copy.unlink()


if __name__ == "__main__":
    main()
