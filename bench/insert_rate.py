"""Insert speed into a large database against an empty one: the writer's commits and the
indexer behind them, timed apart.

    python -m bench.insert_rate [DB ...] [--rows 200000] [--empty] [--tomorrow]

Each DB (built by `bench.dataset`) is copied to a temporary file and read back once (so
the copy is not still being written back while it is timed); `--empty` adds a new empty
database. Then --rows new events (the dataset's skewed users and actions, times of now) are
committed in transactions of 5,000 rows as the writer commits them, and the indexer then
takes them into the by-user tables and daily_users. Prints rows/s of each, and of both.
With --tomorrow the events are of tomorrow, a day no database holds yet: the rates then
depend on the size of the database alone, not on how full today's partition already is.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import bulk_writer
from bench.dataset import make_events
from collector.clock import DAY_MS

TRANSACTION_ROWS = 5_000


def copy_of(source: Path | None, workdir: Path) -> Path:
    target = workdir / "events.db"
    if source is not None:
        shutil.copyfile(source, target)
        with target.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    return target


def measure(source: Path | None, rows: int, tomorrow: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        path = copy_of(source, Path(tmp))
        writer = bulk_writer(path)
        now = time.time_ns() // 1_000_000
        at = now + DAY_MS if tomorrow else now
        settings = argparse.Namespace(seed=7, users=200_000, actions=50, days=1, events=rows)
        events = [
            (at - 1000 + i // 100, at, *row[2:]) for i, row in enumerate(make_events(settings, now))
        ]
        started = time.perf_counter()
        for first in range(0, len(events), TRANSACTION_ROWS):
            chunk = events[first : first + TRANSACTION_ROWS]
            writer.store(chunk, at_ms=at)
        committed = time.perf_counter()
        writer.index()
        indexed = time.perf_counter()
        writer.conn.close()
    count = len(events)
    return {
        "commit": count / (committed - started),
        "index": count / (indexed - committed),
        "both": count / (indexed - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path, nargs="*", help="databases built by bench.dataset")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--empty", action="store_true", help="also an empty database")
    parser.add_argument("--tomorrow", action="store_true", help="events of a day not held yet")
    args = parser.parse_args()
    targets: list[Path | None] = [None] if args.empty or not args.db else []
    targets += args.db
    print(f"{'database':<40} {'commit rows/s':>14} {'index rows/s':>13} {'both rows/s':>12}")
    for target in targets:
        rates = measure(target, args.rows, args.tomorrow)
        name = "(empty)" if target is None else str(target)
        print(
            f"{name:<40} {rates['commit']:>14,.0f} {rates['index']:>13,.0f}"
            f" {rates['both']:>12,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
