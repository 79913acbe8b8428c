"""The writer's plans on a plain sqlite3 connection, for loading many events at once
(bench/dataset.py), for tests, and for tools that write while the daemon is stopped."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TypeVar

from collector.clock import now_ms
from collector.events import Row
from collector.storage.background import INDEX_CHUNK_IDS, MOVE_CHUNK_IDS
from collector.storage.catalog import Catalog, load_catalog
from collector.storage.commit import CLEAR_STAGING, STAGING_DDL, commit_plan
from collector.storage.indexer import index_step, next_backlog
from collector.storage.mover import move_step
from collector.storage.plan import Plan, run_sync, transaction_sync

T = TypeVar("T")


class BulkWriter:
    """Stores rows and runs the background work to the end, each in its own transaction.
    The connection must be in autocommit mode (isolation_level=None) and migrated."""

    def __init__(self, conn: sqlite3.Connection, late_after_days: int = 1) -> None:
        self.conn = conn
        self.late_after_days = late_after_days
        conn.execute(STAGING_DDL)
        conn.execute(CLEAR_STAGING)
        self.catalog: Catalog = run_sync(conn, load_catalog())

    def transaction(self, plan: Plan[T]) -> T:
        try:
            return transaction_sync(self.conn, plan)
        except BaseException:
            self.conn.execute(CLEAR_STAGING)
            self.catalog = run_sync(self.conn, load_catalog())
            raise

    def store(self, rows: Sequence[Row], at_ms: int | None = None) -> int:
        """Store rows as one commit made at `at_ms` (now by default); return how many were
        stored (duplicates by id are not)."""
        when = now_ms() if at_ms is None else at_ms
        plan = commit_plan(self.catalog, [rows], [], when, self.late_after_days)
        return sum(self.transaction(plan))

    def index(self) -> None:
        """Move an upgraded database's old rows, then index everything."""
        while self.catalog.legacy is not None:
            self.transaction(move_step(self.catalog, MOVE_CHUNK_IDS, now_ms()))
        while next_backlog(self.catalog) is not None:
            self.transaction(index_step(self.catalog, INDEX_CHUNK_IDS))
