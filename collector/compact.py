"""`collector compact`: give the space of dropped days back to the filesystem.

Retention drops whole days; SQLite keeps their pages free for the next events, so the file
stops growing but does not shrink. A database made with partitions uses incremental auto
vacuum: compact then frees the pages a step at a time, each step a short write
transaction, so it can run beside the daemon (whose commits wait at most one step). A
database made before that has no auto vacuum: compact rebuilds it with VACUUM, which holds
the write lock for the whole rebuild (the daemon's commits wait and retry meanwhile; run it
while the daemon is stopped) and turns incremental auto vacuum on for later.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

PAGES_PER_STEP = 2048
INCREMENTAL = 2  # PRAGMA auto_vacuum
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class CompactResult:
    before_bytes: int
    after_bytes: int
    seconds: float
    rebuilt: bool  # VACUUM (the database had no incremental auto vacuum)


class CompactError(Exception):
    """The database cannot be compacted; the message says why."""


def compact(path: Path) -> CompactResult:
    if not path.exists():
        raise CompactError(f"no database at {path}")
    started = time.monotonic()
    before = database_bytes(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        rebuilt = mode != INCREMENTAL
        if rebuilt:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        else:
            while conn.execute("PRAGMA freelist_count").fetchone()[0]:
                conn.execute(f"PRAGMA incremental_vacuum({PAGES_PER_STEP})")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise CompactError(f"cannot compact {path}: {exc}") from exc
    finally:
        conn.close()
    return CompactResult(before, database_bytes(path), time.monotonic() - started, rebuilt)


def database_bytes(path: Path) -> int:
    """The file and its WAL."""
    wal = path.with_name(path.name + "-wal")
    return os.stat(path).st_size + (os.stat(wal).st_size if wal.exists() else 0)
