"""What the writer does between commits: drop days past retention, move the rows of an
upgraded database's old table into partitions, and index what was committed.

Each step is one short transaction on the writer's connection. Steps run whenever the
buffer is empty; while commits follow one another without a pause, a step still runs after
a commit once the writer has spent four times that step's length on commits, so background
work gets about a fifth of the writer under a burst and never holds a commit back for longer
than one step. Once more than INDEX_BACKLOG_ROWS wait for the indexer, it gets half the
writer: ingest slows to what commits and indexing together sustain (the buffer fills, TCP
pauses, UDP sheds and counts) instead of leaving an ever longer unindexed tail for every
query to scan.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from collector.clock import DAY_MS, now_ms
from collector.settings import WriterSettings
from collector.storage.catalog import Catalog
from collector.storage.indexer import index_backlog, index_step, next_backlog
from collector.storage.mover import move_step
from collector.storage.plan import Plan
from collector.storage.retention import expired, retention_step

log = structlog.get_logger("collector.writer")

INDEX_CHUNK_IDS = 20_000
MOVE_CHUNK_IDS = 20_000
FOREGROUND_SHARE = 4  # commits may take this many times a step's length between steps
BACKLOG_FOREGROUND_SHARE = 1  # the same once the index backlog is long
INDEX_BACKLOG_ROWS = 1_000_000
RETENTION_CHECK_SECONDS = 60.0
PROGRESS_LOG_SECONDS = 5.0


class Transactions(Protocol):
    catalog: Catalog

    def transaction(self, plan: Plan[Any]) -> Awaitable[Any]: ...


class Background:
    def __init__(
        self,
        writer: Transactions,
        settings: WriterSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.settings = settings
        self.clock = clock
        self.last_step_end = 0.0
        self.last_step_seconds = 0.0
        self.retention_due_at = 0.0
        self.moved = 0
        self.last_progress_log = 0.0
        # A day was dropped: retention steps go on until none is left, the dedup ids of the
        # dropped days included (expired() does not see those).
        self.purging = False

    def pending(self) -> bool:
        catalog = self.writer.catalog
        return (
            catalog.legacy is not None
            or next_backlog(catalog) is not None
            or self.clock() >= self.retention_due_at
        )

    def due_between_commits(self) -> bool:
        spent = self.clock() - self.last_step_end
        share = FOREGROUND_SHARE
        if index_backlog(self.writer.catalog) > INDEX_BACKLOG_ROWS:
            share = BACKLOG_FOREGROUND_SHARE
        return self.pending() and spent >= share * self.last_step_seconds

    async def step(self) -> bool:
        """Run one step; False when there was nothing to do."""
        started = self.clock()
        try:
            done = await self._step()
        finally:
            self.last_step_end = self.clock()
            self.last_step_seconds = self.last_step_end - started
        return done

    async def _step(self) -> bool:
        writer = self.writer
        if self.clock() >= self.retention_due_at:
            if await self._retention():
                return True
            self.retention_due_at = self.clock() + RETENTION_CHECK_SECONDS
        if writer.catalog.legacy is not None:
            moved = await writer.transaction(move_step(writer.catalog, MOVE_CHUNK_IDS, now_ms()))
            self._report_move(moved)
            return True
        if next_backlog(writer.catalog) is None:
            return False  # no transaction (and no write lock) for nothing
        return bool(await writer.transaction(index_step(writer.catalog, INDEX_CHUNK_IDS))) or (
            next_backlog(writer.catalog) is not None
        )

    async def _retention(self) -> bool:
        days = self.settings.retention_days
        if not days:
            return False
        today = now_ms() // DAY_MS
        # Never a day that still takes events (late_after_days): it would come back.
        cutoff = min(today - days + 1, today - self.settings.late_after_days)
        if not self.purging and not expired(self.writer.catalog, cutoff):
            return False
        done = await self.writer.transaction(retention_step(self.writer.catalog, cutoff))
        self.purging = bool(done)
        if done and done.startswith("retired "):
            log.info("retention dropped a day", partition=done[8:], retention_days=days)
        return bool(done)

    def _report_move(self, moved: int) -> None:
        self.moved += moved
        legacy = self.writer.catalog.legacy
        now = self.clock()
        if legacy is None:
            log.info("upgrade finished: every old event is in its partition", moved=self.moved)
        elif now - self.last_progress_log >= PROGRESS_LOG_SECONDS:
            self.last_progress_log = now
            log.info("upgrade in progress", moved=self.moved, left=legacy.rows)
