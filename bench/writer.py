"""Insert strategies of the writer, alone and next to a busy Python thread.

    python -m bench.writer [--rows 100000] [--batch 5000] [--switch-interval-ms 5] [--ids]

Compares `executemany` of a one-row INSERT with the writer's multi-row statements
(`schema.insert_plan`), in transactions of --batch rows on a fresh database with the real
schema. "busy" runs a second thread that spins in Python, as the event loop does under load:
it shows what each GIL release inside sqlite3 costs the inserting thread.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import writer_connection
from collector.events import Row
from collector.storage import schema
from collector.storage.writer import prepare_database

Strategy = Callable[[sqlite3.Connection, list[Row]], None]


def one_row_executemany(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.executemany(schema.INSERT_EVENT, rows)


def multi_row(conn: sqlite3.Connection, rows: list[Row]) -> None:
    for sql, params in schema.insert_plan(rows):
        conn.executemany(sql, params)


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
    prepare_database(path, "normal")
    conn = writer_connection(path, check_same_thread=False)
    batches = [make_rows(n, args.batch, args.ids) for n in range(0, args.rows, args.batch)]
    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=(stop,), daemon=True)
    if busy:
        spinner.start()
    started = time.perf_counter()
    inserted = 0
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        strategy(conn, rows)
        conn.execute("COMMIT")
        inserted += len(rows)
        if time.perf_counter() - started > args.max_seconds:
            break
    elapsed = time.perf_counter() - started
    stop.set()
    conn.close()
    return inserted / elapsed


def spin(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--ids", action="store_true", help="a unique msg_id on every row")
    parser.add_argument("--switch-interval-ms", type=float, default=5.0)
    parser.add_argument(
        "--max-seconds", type=float, default=15.0, help="stop a run after this long"
    )
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    strategies: dict[str, Strategy] = {
        "executemany, one row per statement": one_row_executemany,
        "multi-row statements (insert_plan)": multi_row,
    }
    print(f"sqlite {sqlite3.sqlite_version}, switch interval {args.switch_interval_ms} ms")
    for busy in (False, True):
        for name, strategy in strategies.items():
            rate = rows_per_second(strategy, args, busy)
            print(f"{'busy' if busy else 'alone':5s}  {name:36s} {rate:>10,.0f} rows/s")


if __name__ == "__main__":
    main()
