"""`collector backup DEST`: an online, consistent copy of the live database.

The copy is made with SQLite's backup API inside one read transaction on the source, so it
is one snapshot: every event committed before the backup began, nothing half-written. In
WAL mode a reader never blocks the writer, so ingestion goes on meanwhile (the WAL grows
until the backup ends, then the next checkpoint catches up). Without that transaction the
backup would restart each time the daemon commits, and might never finish.

The copy is written to a temporary file beside DEST, checked, made durable, and only then
renamed to DEST, so DEST is either absent or a complete database.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PAGES_PER_STEP = 4096


class BackupError(Exception):
    """A backup that was refused or failed; DEST is left untouched."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    events: int
    bytes: int
    seconds: float


def backup(
    source: Path,
    dest: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy the database at `source` to `dest`; refuse to overwrite unless `force`."""
    started = time.monotonic()
    check_paths(source, dest, force)
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        # Owner-only from the start, like the live database (UMask=0077 in the unit): a
        # copy in a shared directory must not be readable by everyone.
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        events = copy_snapshot(source, temp, progress)
        sync_file(temp)
        os.replace(temp, dest)
        sync_file(dest.parent)
    finally:
        temp.unlink(missing_ok=True)
    return BackupResult(dest, events, dest.stat().st_size, time.monotonic() - started)


def check_paths(source: Path, dest: Path, force: bool) -> None:
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if dest.exists() and source.resolve() == dest.resolve():
        raise BackupError("the destination is the live database itself")
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory; name the backup file")
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists; use --force to replace it")
    if not dest.parent.is_dir():
        raise BackupError(f"no directory {dest.parent}")


def copy_snapshot(source: Path, temp: Path, progress: Callable[[int, int], None] | None) -> int:
    """Copy one snapshot of `source` into a new single-file database; return its events."""
    uri = f"file:{urllib.parse.quote(str(source.resolve()))}?mode=ro"
    src = sqlite3.connect(uri, uri=True, isolation_level=None)
    dst = sqlite3.connect(temp, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout = 5000")
        # The snapshot: a read transaction held until every page is copied.
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        src.backup(dst, pages=PAGES_PER_STEP, progress=step_reporter(progress))
        src.execute("COMMIT")
        # A standalone file: no -wal beside it to lose when it is moved or copied.
        dst.execute("PRAGMA journal_mode = DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the copy failed its check: {check}")
        return int(dst.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error as exc:
        raise BackupError(f"backup failed: {exc}") from exc
    finally:
        dst.close()
        src.close()


def step_reporter(
    progress: Callable[[int, int], None] | None,
) -> Callable[[int, int, int], object] | None:
    if progress is None:
        return None

    def report(status: int, remaining: int, total: int) -> None:
        progress(total - remaining, total)

    return report


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
