"""collector.query.reader: a query cancelled while its thread runs, and closing the reader.

The query runs on a thread; its caller may be cancelled (a client disconnects, the daemon
stops). The connection must stay out of use until that thread is done: closing it from the
loop while SQLite still runs a statement on it could crash the process.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.backends.sqlite.compiler import Query
from collector.backends.sqlite.reader import Reader
from collector.query.errors import QueryError
from collector.settings import ReaderSettings
from collector.storage import schema
from collector.testing import wait_until

# Runs for minutes unless interrupted.
ENDLESS = Query(
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n",
    (),
    ("max",),
)


@pytest.fixture
def reader(tmp_path: Path) -> Reader:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn)
    conn.close()
    return Reader(ReaderSettings(path, timeout=600.0, max_rows=100, concurrency=2))


async def test_a_cancelled_query_keeps_its_connection_until_its_thread_ends(
    reader: Reader,
) -> None:
    task = asyncio.ensure_future(reader.fetch(ENDLESS))
    await wait_until(lambda: len(reader.busy) == 1, within=5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancelling interrupts the statement; only when the thread has finished does the
    # connection go back to the idle list.
    await wait_until(lambda: not reader.busy, within=5.0)
    assert len(reader.idle) == 1
    result = await reader.fetch(Query("SELECT count(*) FROM events", (), ("n",)))
    assert result.rows == [(0,)]
    await reader.close()


async def test_close_interrupts_running_queries_and_closes_every_connection(
    reader: Reader,
) -> None:
    running = asyncio.ensure_future(reader.fetch(ENDLESS))
    await wait_until(lambda: len(reader.busy) == 1, within=5.0)
    [conn] = reader.busy
    await asyncio.wait_for(reader.close(), 10.0)
    assert (reader.busy, reader.idle) == ({}, [])
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
    with pytest.raises(QueryError) as failed:
        await running
    assert failed.value.error_class == "TIMEOUT"  # interrupted, reported as stopped
    with pytest.raises(QueryError) as refused:
        await reader.fetch(Query("SELECT 1", (), ("one",)))
    assert refused.value.error_class == "BUSY"
