"""The single writer: group commit from the buffer to SQLite, on aiosqlite's thread.

A commit happens when `batch_size` events are buffered, when the oldest buffered event is
`batch_max_age` old, or (with eager acks) as soon as a batch awaits its ack, whichever comes
first; batches arriving during a commit are grouped into the next one. Each commit is one
BEGIN IMMEDIATE transaction. Acknowledgements are released only after COMMIT returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import structlog

from collector.buffer import CommitResult, EventBuffer, Group
from collector.commits import CommitSignal
from collector.events import Row
from collector.settings import WriterSettings
from collector.stats import Stats
from collector.storage import schema

log = structlog.get_logger("collector.writer")

RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 5.0


def prepare_database(path: Path, synchronous: str) -> list[int]:
    """Create the directory and the database, switch to WAL, apply migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in schema.writer_pragmas(synchronous):
            conn.execute(pragma)
        return schema.migrate(conn)
    finally:
        conn.close()


class Writer:
    def __init__(
        self,
        settings: WriterSettings,
        buffer: EventBuffer,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.buffer = buffer
        self.stats = stats
        self.clock = clock
        self.stopping = False
        self.commits = CommitSignal()
        # The writer's wake-ups, rung by the buffer: a group is queued, a commit is due.
        self.work_arrived = asyncio.Event()
        self.commit_due = asyncio.Event()
        buffer.wake_at = settings.batch_size
        buffer.has_work.ring = self.work_arrived.set
        buffer.batch_ready.ring = self.commit_due.set
        # When the commit now in progress (retries included) began; None between commits.
        self.commit_started: float | None = None
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("writer is not open")
        return self._db

    async def open(self) -> list[int]:
        settings = self.settings
        applied = await asyncio.to_thread(prepare_database, settings.path, settings.synchronous)
        self._db = await aiosqlite.connect(settings.path, isolation_level=None)
        for pragma in schema.writer_pragmas(settings.synchronous):
            await self._db.execute(pragma)
        return applied

    async def run(self) -> None:
        """Commit until stopped and the buffer is empty."""
        buffer = self.buffer
        while True:
            if not buffer.has_work.is_set():
                if self.stopping:
                    return
                self.work_arrived.clear()
                await self.work_arrived.wait()
                continue
            await self._wait_for_batch()
            groups = buffer.take(self.settings.batch_size)
            await self._commit_until_done(groups)
            buffer.release(groups)

    def stop(self) -> None:
        """Flush what is buffered without waiting for size or age, then return from run()."""
        self.stopping = True
        self.work_arrived.set()
        self.commit_due.set()

    async def close(self) -> None:
        if self._db is None:
            return
        db, self._db = self._db, None
        try:
            await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await db.close()

    async def _wait_for_batch(self) -> None:
        buffer = self.buffer
        while not self.stopping and not buffer.commit_due():
            oldest = buffer.oldest_received()
            if oldest is None:
                return
            remaining = oldest + self.settings.batch_max_age - self.clock()
            if remaining <= 0:
                return
            self.commit_due.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.commit_due.wait(), remaining)

    async def _commit_until_done(self, groups: list[Group]) -> None:
        """Retry a failed commit with backoff: what was received is never dropped here."""
        delay = RETRY_FIRST_DELAY
        self.commit_started = self.clock()
        while True:
            try:
                await self._commit(groups)
                self.commit_started = None
                return
            except sqlite3.Error as exc:
                self.stats.commit_errors += 1
                log.error("commit failed, will retry", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _commit(self, groups: list[Group]) -> None:
        if self.settings.delay:
            await asyncio.sleep(self.settings.delay)
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            stored_by_group, stored = await self._insert_groups(groups)
            quarantine = [record for group in groups for record in group.quarantine]
            if quarantine:
                await db.executemany(schema.INSERT_QUARANTINE, quarantine)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.execute("ROLLBACK")
            raise
        self._committed(groups, stored, stored_by_group, len(quarantine))

    async def _insert_groups(self, groups: list[Group]) -> tuple[dict[int, int], int]:
        """Insert rows in arrival order: each acknowledged group on its own (its counts go
        into its ack), each run of unacknowledged groups together. Returns the rows stored
        per acknowledged group and in all."""
        stored_by_group: dict[int, int] = {}
        stored = 0
        run: list[Row] = []
        for group in groups:
            if group.on_commit is None:
                run.extend(group.rows)
                continue
            if run:
                stored += await self._insert(run)
                run = []
            stored_by_group[id(group)] = await self._insert(group.rows)
            stored += stored_by_group[id(group)]
        if run:
            stored += await self._insert(run)
        return stored_by_group, stored

    async def _insert(self, rows: list[Row]) -> int:
        """Insert rows; return how many were stored (rowcount leaves out duplicates ignored
        and the rows the rollup triggers write, which total_changes would include)."""
        stored = 0
        for sql, params in schema.insert_plan(rows):
            # Not closed: that would be one more hop to the database thread per statement;
            # the finished INSERT holds nothing open.
            stored += (await self.db.executemany(sql, params)).rowcount
        return stored

    def _committed(
        self,
        groups: list[Group],
        stored: int,
        stored_by_group: dict[int, int],
        quarantined: int,
    ) -> None:
        stats = self.stats
        now = self.clock()
        stats.batches_committed += 1
        stats.events_stored += stored
        stats.events_duplicate += sum(group.events for group in groups) - stored
        stats.quarantined += quarantined
        if stored:
            self.commits.notify()
        for group in groups:
            stats.latency.record(now - group.received, max(group.events, 1))
            if group.on_commit is not None:
                group_stored = stored_by_group[id(group)]
                group.on_commit(
                    CommitResult(group_stored, group.events - group_stored, group.rejected)
                )
