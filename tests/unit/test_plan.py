"""Plans run as one transaction, on sqlite3 and through aiosqlite's worker thread.

`transaction_async` relies on aiosqlite's private `_execute` and `_conn`; these tests are
the guard that fails if an aiosqlite release changes them."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from collector.storage.plan import Fetch, Plan, Run, RunMany, transaction_async, transaction_sync


def fill(values: list[int], fail_after: bool = False) -> Plan[int]:
    yield Run("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    changed = yield RunMany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    if fail_after:
        raise RuntimeError("plan failed")
    rows = yield Fetch("SELECT count(*) FROM t")
    assert rows[0][0] >= changed
    return int(rows[0][0])


def nothing() -> Plan[str]:
    return "idle"
    yield Run("SELECT 1")  # pragma: no cover  (makes this a generator)


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()
        if tables[0] == 0:
            return 0
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def test_sync_transaction_commits_every_step(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert transaction_sync(conn, fill([1, 2, 3])) == 3
    assert not conn.in_transaction
    assert count_rows(path) == 3


def test_sync_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    conn = sqlite3.connect(path, isolation_level=None)
    transaction_sync(conn, fill([1]))
    with pytest.raises(RuntimeError, match="plan failed"):
        transaction_sync(conn, fill([2, 3], fail_after=True))
    assert not conn.in_transaction
    assert count_rows(path) == 1


def test_a_plan_without_statements_takes_no_lock(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    assert transaction_sync(conn, nothing()) == "idle"
    other.execute("ROLLBACK")


async def test_async_transaction_runs_on_the_aiosqlite_thread(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    threads: list[str] = []

    def traced() -> Plan[int]:
        threads.append(threading.current_thread().name)
        return (yield from fill([4, 5]))

    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await transaction_async(db, traced()) == 2
        assert not db.in_transaction
    assert threads == [threads[0]] and threads[0] != threading.current_thread().name
    assert count_rows(path) == 2


async def test_async_transaction_rolls_back_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await transaction_async(db, fill([1]))
        with pytest.raises(RuntimeError, match="plan failed"):
            await transaction_async(db, fill([2, 3], fail_after=True))
        assert not db.in_transaction
        assert await transaction_async(db, fill([6])) == 2
    assert count_rows(path) == 2


async def test_async_transaction_on_a_closed_connection_is_a_clear_error(tmp_path: Path) -> None:
    db = await aiosqlite.connect(tmp_path / "p.db", isolation_level=None)
    await db.close()
    with pytest.raises(ValueError):
        await transaction_async(db, fill([1]))
