"""Upgrading a database of the previous layout while ingestion goes on.

    python -m bench.upgrade OLD.db [--rate 20000] [--timeout 3600]

Copies OLD.db (a database made before migration 3, for example by `bench.dataset` on an
older release) to a temporary directory and starts the daemon on the copy. Reports how long
the start took (the blocking part of the migration), then offers --rate events/s of
acknowledged TCP batches while the old events are moved into their partitions in the
background, and reports how long the move took, how often it logged its progress, what was
acknowledged meanwhile, and whether every old and new event is in `events` afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.queries import IngestLoad
from collector.testing import DaemonProcess


def old_event_count(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def records(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in list(daemon.log_lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def watch_progress(daemon: DaemonProcess, timeout: float) -> tuple[float, list[float]]:
    """Seconds until the move finished, and when each progress line arrived."""
    started = time.monotonic()
    seen: list[float] = []
    while time.monotonic() - started < timeout:
        progress = [r for r in records(daemon, "upgrade in progress") if "step" not in r]
        while len(seen) < len(progress):
            seen.append(time.monotonic() - started)
        if records(daemon, "upgrade finished: every old event is in its partition"):
            return time.monotonic() - started, seen
        time.sleep(0.2)
    raise TimeoutError(f"the move did not finish in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="collector-upgrade-"))
    copy = work / "events.db"
    shutil.copyfile(args.db, copy)
    old = old_event_count(copy)
    daemon = DaemonProcess(copy)
    began = time.monotonic()
    daemon.start(timeout=args.timeout)
    start_s = time.monotonic() - began
    start_lines = len([r for r in records(daemon, "upgrade in progress") if "step" in r])
    load = IngestLoad(daemon.tcp, args.rate)
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    try:
        move_s, progress = watch_progress(daemon, args.timeout)
    finally:
        load.stop.set()
        sender.join(timeout=30)
        daemon.stop()
    with sqlite3.connect(copy) as conn:
        total = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    gaps = [b - a for a, b in zip([0.0, *progress], progress, strict=False)]
    print(f"old events                 {old:,}")
    print(f"daemon start (migration)   {start_s:.1f} s, {start_lines} progress lines")
    print(f"background move            {move_s:.1f} s, {len(progress)} progress lines,")
    print(f"                           longest gap {max(gaps, default=0.0):.1f} s")
    print(f"ingest during the move     {load.sent:,} sent, {load.acked:,} acknowledged")
    print(f"events afterwards          {total:,} (old + acknowledged = {old + load.acked:,})")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
