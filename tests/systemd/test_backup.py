"""`collector backup DEST`: a consistent copy while ingestion goes on."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from systemd_helpers import Sender

from collector import backup as backup_module
from collector.backup import BackupError, backup
from collector.testing import DaemonProcess, count_rows, wait_until


def values(db: Path) -> set[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT value FROM events")}
    finally:
        conn.close()


def run_backup(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "collector", "backup", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


async def test_backup_during_ingestion_is_consistent_and_complete(
    db_path: Path, tmp_path: Path
) -> None:
    daemon = DaemonProcess(db_path, ["--batch-max-age-ms", "5"]).start()
    sender = Sender((daemon.udp.host, daemon.udp.port))
    sender.start()
    dest = tmp_path / "copy.db"
    try:
        await wait_until(lambda: count_rows(db_path) >= 500, within=30)
        committed_before = values(db_path)
        result = await asyncio.to_thread(run_backup, str(dest), "--db", str(db_path))
        assert result.returncode == 0, result.stderr
        # Ingestion went on during and after the backup.
        after = count_rows(db_path)
        await wait_until(lambda: count_rows(db_path) > after, within=30)
    finally:
        sender.done.set()
        sender.join()
        assert daemon.stop() == 0
    copy = sqlite3.connect(dest)
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    copy.close()
    copied = values(dest)
    assert committed_before <= copied
    assert copied <= values(db_path)
    assert result.stdout.startswith(f"backup of {db_path} written to {dest}: {len(copied)} events")
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []


def test_backup_refuses_to_overwrite_without_force(db_path: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(db_path).start()  # creates the schema
    assert daemon.stop() == 0
    dest = tmp_path / "copy.db"
    dest.write_text("keep me")
    refused = run_backup(str(dest), "--db", str(db_path))
    assert refused.returncode == 1
    assert "exists; use --force to replace it" in refused.stderr
    assert dest.read_text() == "keep me"
    assert run_backup(str(dest), "--db", str(db_path), "--force").returncode == 0
    assert count_rows(dest) == 0


def test_backup_refusals(db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no database at"):
        backup(db_path, tmp_path / "x.db")
    sqlite3.connect(db_path).execute("CREATE TABLE events (value)").connection.close()
    with pytest.raises(BackupError, match="is the live database itself"):
        backup(db_path, db_path, force=True)
    with pytest.raises(BackupError, match="is a directory"):
        backup(db_path, tmp_path)
    with pytest.raises(BackupError, match="no directory"):
        backup(db_path, tmp_path / "missing" / "x.db")


def test_commits_between_backup_steps_do_not_restart_or_enter_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "live.db"
    writer = sqlite3.connect(live, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE events (value, padding)")
    writer.executemany("INSERT INTO events VALUES (?, zeroblob(500))", [(i,) for i in range(2000)])
    monkeypatch.setattr(backup_module, "PAGES_PER_STEP", 1)
    steps: list[int] = []

    def commit_meanwhile(done: int, total: int) -> None:
        steps.append(done)
        writer.execute("INSERT INTO events VALUES (-1, NULL)")

    result = backup(live, tmp_path / "copy.db", progress=commit_meanwhile)
    writer.close()
    # One page per step, a commit after each: a backup without its snapshot would restart.
    assert len(steps) > 100
    assert steps == sorted(steps)
    assert result.events == 2000


def test_a_backup_is_readable_by_its_owner_only(db_path: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(db_path).start()
    assert daemon.stop() == 0
    previous = os.umask(0o022)  # a umask that would leave a new file world-readable
    try:
        backup(db_path, tmp_path / "copy.db")
    finally:
        os.umask(previous)
    assert (tmp_path / "copy.db").stat().st_mode & 0o777 == 0o600
