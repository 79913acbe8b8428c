"""The single writer: group commit from the buffer to SQLite, on aiosqlite's thread.

A commit happens when `batch_size` events are buffered, when the oldest buffered event is
`batch_max_age` old, or (with eager acks) as soon as a batch awaits its ack, whichever comes
first; batches arriving during a commit are grouped into the next one. Each commit is one
BEGIN IMMEDIATE transaction (storage/commit.py). Acknowledgements are released only after
COMMIT returns. Between commits the writer does the background work of
storage/background.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import structlog

from collector.buffer import CommitResult, EventBuffer, Group
from collector.clock import now_ms
from collector.commits import CommitSignal
from collector.events import Row
from collector.settings import WriterSettings
from collector.stats import Stats
from collector.storage import schema
from collector.storage.background import Background
from collector.storage.catalog import Catalog, load_catalog
from collector.storage.commit import CLEAR_STAGING, STAGING_DDL, commit_plan
from collector.storage.plan import Plan, run_async, transaction_async

T = TypeVar("T")

log = structlog.get_logger("collector.writer")

RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 5.0
# Background work that failed, or is waiting on the clock (retention), is tried again after
# this long when nothing else happens.
BACKGROUND_RETRY_SECONDS = 1.0


def prepare_database(path: Path, synchronous: str) -> list[int]:
    """Create the directory and the database, switch to WAL, apply migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Only a new file takes it (before its first table): dropped days then give their
        # pages back to the filesystem through `collector compact` without a full VACUUM.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
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
        self.catalog = Catalog()
        self.background = Background(self, settings, clock)
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
        await self._db.execute(STAGING_DDL)
        await self._db.execute(CLEAR_STAGING)
        self.catalog = await run_async(self._db, load_catalog())
        return applied

    async def run(self) -> None:
        """Commit until stopped and the buffer is empty; background work in between."""
        buffer = self.buffer
        background = self.background
        while True:
            # Cleared before looking, so a group queued during a background step still
            # ends the wait below at once.
            self.work_arrived.clear()
            if not buffer.has_work.is_set():
                if self.stopping:
                    return
                if background.pending() and await self._background_step():
                    continue
                idle = None if not background.pending() else BACKGROUND_RETRY_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.work_arrived.wait(), idle)
                continue
            await self._wait_for_batch()
            groups = buffer.take(self.settings.batch_size)
            await self._commit_until_done(groups)
            buffer.release(groups)
            if not self.stopping and background.due_between_commits():
                await self._background_step()

    async def _background_step(self) -> bool:
        """One step of background work; a failure is logged and retried later, it never
        stops the commits."""
        try:
            return await self.background.step()
        except sqlite3.Error as exc:
            self.stats.commit_errors += 1
            log.error("background step failed, will retry", error=str(exc))
            return False

    async def transaction(self, plan: Plan[T]) -> T:
        """Run a plan of background work in a transaction of its own."""
        self.commit_started = self.clock()
        try:
            return await self._transaction(plan)
        finally:
            self.commit_started = None

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
        runs, acked = runs_of(groups)
        quarantine = [record for group in groups for record in group.quarantine]
        plan = commit_plan(self.catalog, runs, quarantine, now_ms(), self.settings.late_after_days)
        stored_per_run = await self._transaction(plan)
        stored_by_group = {group: stored_per_run[run] for group, run in acked.items()}
        self._committed(groups, sum(stored_per_run), stored_by_group, len(quarantine))

    async def _transaction(self, plan: Plan[T]) -> T:
        """Run `plan` in one BEGIN IMMEDIATE transaction. On failure the catalog is read
        again: the plan may have changed it for what was rolled back. A plan with nothing
        to do takes no lock."""
        db = self.db
        try:
            return await transaction_async(db, plan)
        except BaseException:
            self.catalog.forget_names()
            with contextlib.suppress(sqlite3.Error, ValueError):
                await db.execute(CLEAR_STAGING)
                self.catalog = await run_async(db, load_catalog())
            raise

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


def runs_of(groups: list[Group]) -> tuple[list[list[Row]], dict[int, int]]:
    """The rows to insert, in arrival order: each acknowledged group as a run of its own
    (its counts go into its ack), each stretch of unacknowledged groups as one run; and, by
    the id() of each acknowledged group, its run."""
    runs: list[list[Row]] = []
    acked: dict[int, int] = {}  # id(group) -> its run
    open_run: list[Row] | None = None
    for group in groups:
        if group.on_commit is None:
            if open_run is None:
                open_run = []
                runs.append(open_run)
            open_run.extend(group.rows)
            continue
        open_run = None
        acked[id(group)] = len(runs)
        runs.append(group.rows)
    return runs, acked
