"""What partitions cost the writer: the commit that opens a new day, and dropping old days.

    python -m bench.partitions DB [--days 3] [--rows 5000]

DB is a database built by `bench.dataset`; it is copied first. On the copy:
- switch: commits of --rows events just before UTC midnight, then the first commit after
  it, which creates the new day's partition and rebuilds the `events` view; their times;
- retention: the --days oldest days dropped, one transaction each (as the writer drops
  them), with the time of each (a commit waits at most that long) and of all.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import bulk_writer
from collector.clock import DAY_MS, now_ms
from collector.storage.bulk import BulkWriter
from collector.storage.retention import retention_step


def rows_at(ts: int, count: int) -> list[tuple[int, int, str, str, int, None, None]]:
    return [(ts, ts, f"u{n % 5000}", f"action_{n % 50:02d}", n, None, None) for n in range(count)]


def timed_store(writer: BulkWriter, ts: int, count: int) -> float:
    started = time.perf_counter()
    writer.store(rows_at(ts, count), at_ms=ts)
    return time.perf_counter() - started


def switch(writer: BulkWriter, rows: int) -> tuple[list[float], float]:
    """Ordinary commits just before tomorrow, then the one that opens it."""
    midnight = (now_ms() // DAY_MS + 1) * DAY_MS
    before = [timed_store(writer, midnight - 1000, rows) for _ in range(5)]
    return before, timed_store(writer, midnight + 1000, rows)


def retention(writer: BulkWriter, days: int) -> list[tuple[str, float]]:
    oldest = min(s.partition.day for s in writer.catalog.live.values() if s.partition.day)
    drops: list[tuple[str, float]] = []
    while True:
        started = time.perf_counter()
        dropped = writer.transaction(retention_step(writer.catalog, oldest + days))
        if dropped is None:
            return drops
        drops.append((dropped, time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--days", type=int, default=3, help="oldest days to drop")
    parser.add_argument("--rows", type=int, default=5000, help="events per commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        path = Path(tmp) / "events.db"
        shutil.copyfile(args.db, path)
        writer = bulk_writer(path)
        before, opening = switch(writer, args.rows)
        median = statistics.median(before) * 1000
        print(f"commits of {args.rows:,} events: median {median:.1f} ms; opening a new day:"
              f" {opening * 1000:.1f} ms")  # fmt: skip
        drops = retention(writer, args.days)
        for name, seconds in drops:
            print(f"retention step {name}: {seconds * 1000:.1f} ms")
        total = sum(seconds for _, seconds in drops)
        print(f"{len(drops)} steps, longest {max(s for _, s in drops) * 1000:.1f} ms,"
              f" all {total * 1000:.1f} ms")  # fmt: skip
        writer.conn.close()


if __name__ == "__main__":
    main()
