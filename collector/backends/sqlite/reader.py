"""Read-only access for queries: own connections, a time limit, a row cap.

Queries run on threads, never on the event loop, and never on the writer's connection. Each
query is one statement in autocommit mode, so its read snapshot ends with it and long-lived
readers cannot hold back the writer's checkpoints.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

from collector.backends.sqlite.compiler import Query
from collector.query.errors import QueryError
from collector.query.model import Result
from collector.settings import ReaderSettings

PROGRESS_STEPS = 10_000
BUSY_WAIT_SECONDS = 2.0
# How long close() waits for queries still running on their threads (they are interrupted).
QUERIES_CLOSE_WAIT_SECONDS = 5.0

# What a user's own SQL may do: read tables and call functions, nothing else (no writes,
# no ATTACH, no PRAGMA, no schema changes).
SQL_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


def read_only_authorizer(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in SQL_READ_ACTIONS else sqlite3.SQLITE_DENY


def open_read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    return conn


class Reader:
    def __init__(self, settings: ReaderSettings) -> None:
        # Replaced at reload; the number of slots stays as it was at start.
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.idle: list[sqlite3.Connection] = []
        # Connections whose query runs on a thread, with that query's future.
        self.busy: dict[sqlite3.Connection, asyncio.Future[Result]] = {}
        self.closed = False

    @property
    def max_rows(self) -> int:
        return self.settings.max_rows

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    async def fetch(
        self, query: Query, max_rows: int | None = None, read_only_sql: bool = False
    ) -> Result:
        most = self.settings.max_rows
        cap = most if max_rows is None else min(max_rows, most)
        if self.closed:
            raise QueryError("BUSY", "the daemon is stopping")
        try:
            await asyncio.wait_for(self.slots.acquire(), BUSY_WAIT_SECONDS)
        except TimeoutError:
            raise QueryError("BUSY", "every query slot is in use; try again") from None
        conn = self.idle.pop() if self.idle else open_read_only(self.settings.path)
        timeout = self.settings.timeout
        work = asyncio.ensure_future(
            asyncio.to_thread(self._run, conn, query, cap, timeout, read_only_sql)
        )
        self.busy[conn] = work
        work.add_done_callback(lambda _: self._release(conn))
        try:
            # A cancelled caller must not hand the connection back while its thread still
            # uses it (closing it then could crash SQLite): the thread's end releases it.
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            conn.interrupt()
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        work = self.busy.pop(conn)
        if not work.cancelled():
            work.exception()  # retrieved here, in case its caller was cancelled
        if self.closed:
            conn.close()
        else:
            self.idle.append(conn)
        self.slots.release()

    def _run(
        self, conn: sqlite3.Connection, query: Query, cap: int, timeout: float, read_only_sql: bool
    ) -> Result:
        started = time.monotonic()
        deadline = started + timeout
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
        if read_only_sql:
            conn.set_authorizer(read_only_authorizer)
        cursor = None
        try:
            cursor = conn.execute(query.sql, query.params)
            rows = cursor.fetchmany(cap + 1)
            columns = query.columns or tuple(d[0] for d in cursor.description or ())
        except sqlite3.Error as exc:
            raise query_error(exc, timeout, read_only_sql) from None
        finally:
            if cursor is not None:
                cursor.close()
            conn.set_progress_handler(None, 0)
            conn.set_authorizer(None)
        return Result(rows[:cap], len(rows) > cap, time.monotonic() - started, columns)

    async def close(self) -> None:
        """Interrupt the queries still running, wait for their threads, close everything."""
        self.closed = True
        for conn in self.busy:
            conn.interrupt()
        if self.busy:
            await asyncio.wait(list(self.busy.values()), timeout=QUERIES_CLOSE_WAIT_SECONDS)
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def query_error(exc: sqlite3.Error, timeout: float, users_sql: bool) -> QueryError:
    text = str(exc)
    if "interrupted" in text:
        return QueryError("TIMEOUT", f"query stopped after {timeout:g}s")
    if "not authorized" in text or "readonly" in text or "read-only" in text:
        return QueryError("ARG", f"refused: queries are read-only ({text})")
    if users_sql:
        return QueryError("ARG", f"SQL error: {text}")
    return QueryError("INTERNAL", f"database error: {text}")
