"""Build a realistic dataset for query benchmarks, through the bulk path.

    python -m bench.dataset DB [--events 10000000] [--users 200000] [--actions 50] [--days 30]

Writes straight into a new database with the daemon's own commit and indexer
(`storage.bulk.BulkWriter`), much faster than the ingest path, as if each chunk had been
committed when its last event happened. Activity is skewed: user weights and action weights
follow a power law (a few heavy users, a few common actions), event times cover the last
--days days up to now, in time order; `extra` is compact JSON, as the daemon stores it.
A progress line is printed every few seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import bulk_writer
from collector.events import Row

DAY_MS = 86_400_000
CHUNK = 50_000
PAGES = [f"/p/{n}" for n in range(40)]


def skewed_weights(count: int, exponent: float) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def make_events(args: argparse.Namespace, now_ms: int) -> Iterator[Row]:
    rng = random.Random(args.seed)
    users = [f"u{n}" for n in range(args.users)]
    actions = [f"action_{n:02d}" for n in range(args.actions)]
    user_weights = list(itertools.accumulate(skewed_weights(args.users, 1.1)))
    action_weights = list(itertools.accumulate(skewed_weights(args.actions, 1.0)))
    per_day = args.events // args.days
    start = now_ms - args.days * DAY_MS
    for day in range(args.days):
        times = sorted(rng.randrange(DAY_MS) for _ in range(per_day))
        chosen_users = rng.choices(users, cum_weights=user_weights, k=per_day)
        chosen_actions = rng.choices(actions, cum_weights=action_weights, k=per_day)
        for offset, user, action in zip(times, chosen_users, chosen_actions, strict=True):
            ts = start + day * DAY_MS + offset
            yield (ts, ts, user, action, rng.randrange(1000), extra(rng), None)


def extra(rng: random.Random) -> str | None:
    if rng.random() < 0.3:
        return None
    return json.dumps(
        {"page": rng.choice(PAGES), "ms": rng.randrange(5, 5000)}, separators=(",", ":")
    )


PROGRESS_SECONDS = 5.0


def load(path: Path, rows: Iterator[Row], expected: int) -> int:
    writer = bulk_writer(path)
    total = 0
    started = last = time.perf_counter()
    while chunk := list(itertools.islice(rows, CHUNK)):
        writer.store(chunk, at_ms=chunk[-1][0])
        total += len(chunk)
        if time.perf_counter() - last >= PROGRESS_SECONDS:
            last = time.perf_counter()
            progress(total, expected, last - started)
    print(f"stored {total:,} events in {time.perf_counter() - started:.0f} s; indexing")
    writer.index()
    writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.conn.execute("ANALYZE")
    writer.conn.close()
    return total


def progress(done: int, expected: int, seconds: float) -> None:
    share = done / expected if expected else 1.0
    bar = "#" * int(share * 30)
    print(f"[{bar:<30}] {done:,} / {expected:,} events, {seconds:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path, help="database file to create (must not exist)")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--actions", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.db.exists():
        parser.error(f"{args.db} exists; choose a new path")
    started = time.perf_counter()
    expected = args.events // args.days * args.days
    total = load(args.db, make_events(args, time.time_ns() // 1_000_000), expected)
    elapsed = time.perf_counter() - started
    size_mb = args.db.stat().st_size / 1e6
    print(f"{total:,} events in {elapsed:.0f} s ({total / elapsed:,.0f}/s), {size_mb:,.0f} MB")


if __name__ == "__main__":
    main()
