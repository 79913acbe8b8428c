"""Bytes per stored event, by kind of table.

    python -m bench.size DB

Sums the pages of every table and index (SQLite's `dbstat`) into: the partitions' rows,
the by-user tables, `daily_users`, the dedup ids, and everything else; divides by the
number of events in the `events` view.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from collector.storage.layout import BY_USER_SUFFIX

KINDS = ("event rows", "by-user tables", "daily_users", "event_ids", "other")


def kind_of(table: str) -> str:
    if table.startswith("events_") and table.endswith(BY_USER_SUFFIX):
        return "by-user tables"
    if table.startswith("events_") or table == "legacy_events":
        return "event rows"
    if table in ("daily_users", "event_ids"):
        return table
    if table.startswith("sqlite_autoindex_event_ids") or table == "event_ids_day":
        return "event_ids"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path)
    args = parser.parse_args()
    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    sizes = dict.fromkeys(KINDS, 0)
    for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
        sizes[kind_of(name)] += size
    total = args.db.stat().st_size
    print(
        f"{events:,} events, file {total / 1e6:,.1f} MB: {total / max(events, 1):.1f} bytes/event"
    )
    for kind, size in sizes.items():
        print(f"  {kind:16s} {size / 1e6:10,.1f} MB {size / max(events, 1):7.1f} bytes/event")


if __name__ == "__main__":
    main()
