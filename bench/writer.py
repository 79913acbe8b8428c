"""Insert strategies of the writer, alone and next to a busy Python thread.

    python -m bench.writer [--rows 100000] [--batch 5000] [--switch-interval-ms 5] [--ids]
    python -m bench.writer --statements [--rows 1000000] [--batch 2000]

Compares binding the rows into the commit's staging table with `executemany` of a one-row
INSERT and with the writer's multi-row statements (`schema.insert_plan`), and the writer's
whole commit (`storage.commit.commit_plan`: staging, dedup, dictionaries, the partition, the
hourly rollup), in transactions of --batch rows on a fresh database. "busy" runs a second
thread that spins in Python, as the event loop does under load: it shows what each GIL
release inside sqlite3 costs the inserting thread.

--statements instead times every statement of the whole commit, and then of the indexer
taking the same rows into the by-user table and daily_users, and prints each one's
microseconds per row, largest first.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.common import bulk_writer
from collector.events import Row
from collector.storage import schema
from collector.storage.background import INDEX_CHUNK_IDS
from collector.storage.bulk import BulkWriter
from collector.storage.commit import CLEAR_STAGING, commit_plan, with_known_ids
from collector.storage.indexer import index_step, next_backlog
from collector.storage.plan import Fetch, Plan, RunMany

Strategy = Callable[[BulkWriter, list[Row]], None]


def one_row_executemany(writer: BulkWriter, rows: list[Row]) -> None:
    conn = writer.conn
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(schema.INSERT_EVENT, with_known_ids(writer.catalog, rows))
    conn.execute(CLEAR_STAGING)
    conn.execute("COMMIT")


def multi_row(writer: BulkWriter, rows: list[Row]) -> None:
    conn = writer.conn
    conn.execute("BEGIN IMMEDIATE")
    for sql, params in schema.insert_plan(with_known_ids(writer.catalog, rows)):
        conn.executemany(sql, params)
    conn.execute(CLEAR_STAGING)
    conn.execute("COMMIT")


def whole_commit(writer: BulkWriter, rows: list[Row]) -> None:
    writer.store(rows, at_ms=rows[-1][0])


def make_rows(first: int, count: int, with_ids: bool) -> list[Row]:
    base = 1_700_000_000_000
    return [
        (
            base + n // 10,
            base + n // 10,
            str(n * 7919 % 100_000),
            "click",
            12.5,
            '{"page":"/p/3","ms":123,"variant":"B"}',
            f"id-{n:012d}" if with_ids else None,
        )
        for n in range(first, first + count)
    ]


def rows_per_second(strategy: Strategy, args: argparse.Namespace, busy: bool) -> float:
    path = Path(tempfile.mkdtemp(prefix="collector-bench-")) / "events.db"
    writer = bulk_writer(path)
    batches = [make_rows(n, args.batch, args.ids) for n in range(0, args.rows, args.batch)]
    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=(stop,), daemon=True)
    if busy:
        spinner.start()
    started = time.perf_counter()
    inserted = 0
    for rows in batches:
        strategy(writer, rows)
        inserted += len(rows)
        if time.perf_counter() - started > args.max_seconds:
            break
    elapsed = time.perf_counter() - started
    stop.set()
    writer.conn.close()
    return inserted / elapsed


def spin(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def timed_transaction(
    conn: sqlite3.Connection, plan: Plan[object], times: defaultdict[str, float]
) -> None:
    """The plan in one transaction, each statement's time added to `times` by its text."""
    conn.execute("BEGIN IMMEDIATE")
    result: object = None
    while True:
        try:
            step = plan.send(result)
        except StopIteration:
            break
        started = time.perf_counter()
        if isinstance(step, Fetch):
            result = conn.execute(step.sql, step.params).fetchall()
        elif isinstance(step, RunMany):
            result = conn.executemany(step.sql, step.params).rowcount
        else:
            result = conn.execute(step.sql, step.params).rowcount
        times[step.sql[:72]] += time.perf_counter() - started
    conn.execute("COMMIT")


def statement_profile(args: argparse.Namespace) -> None:
    path = Path(tempfile.mkdtemp(prefix="collector-bench-")) / "events.db"
    writer = bulk_writer(path)
    commit_times: defaultdict[str, float] = defaultdict(float)  # seconds, by statement
    for first in range(0, args.rows, args.batch):
        rows = make_rows(first, args.batch, args.ids)
        plan = commit_plan(writer.catalog, [rows], [], rows[-1][0], 1)
        timed_transaction(writer.conn, plan, commit_times)
    index_times: defaultdict[str, float] = defaultdict(float)
    while next_backlog(writer.catalog) is not None:
        timed_transaction(writer.conn, index_step(writer.catalog, INDEX_CHUNK_IDS), index_times)
    for title, times in (("commit", commit_times), ("indexer", index_times)):
        total = sum(times.values())
        print(f"{title}: {total / args.rows * 1e6:.2f} us/row in SQLite")
        for sql, seconds in sorted(times.items(), key=lambda item: -item[1])[:8]:
            print(f"  {seconds / args.rows * 1e6:6.3f} us/row  {sql}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--ids", action="store_true", help="a unique msg_id on every row")
    parser.add_argument("--switch-interval-ms", type=float, default=5.0)
    parser.add_argument(
        "--max-seconds", type=float, default=15.0, help="stop a run after this long"
    )
    parser.add_argument(
        "--statements", action="store_true", help="time each statement of a commit and the indexer"
    )
    args = parser.parse_args()
    if args.statements:
        statement_profile(args)
        return
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    strategies: dict[str, Strategy] = {
        "executemany, one row per statement": one_row_executemany,
        "multi-row statements (insert_plan)": multi_row,
        "the whole commit (commit_plan)": whole_commit,
    }
    print(f"sqlite {sqlite3.sqlite_version}, switch interval {args.switch_interval_ms} ms")
    for busy in (False, True):
        for name, strategy in strategies.items():
            rate = rows_per_second(strategy, args, busy)
            print(f"{'busy' if busy else 'alone':5s}  {name:36s} {rate:>10,.0f} rows/s")


if __name__ == "__main__":
    main()
