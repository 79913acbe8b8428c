"""The query language answered from the SQLite file: SQL from compiler.py and rollups.py,
run by the Reader on read-only connections."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.backends.sqlite import compiler, rollups
from collector.backends.sqlite.compiler import Query
from collector.backends.sqlite.reader import Reader
from collector.query.model import Filter, Result, Window
from collector.settings import ReaderSettings


class SqliteBackend:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    @classmethod
    def open(cls, path: str | Path, **settings: Any) -> SqliteBackend:
        """A backend on the database at `path`, with the default query settings (time
        limit, row cap, concurrency) unless given: for programs and notebooks."""
        return cls(Reader(ReaderSettings(path=Path(path), **settings)))

    async def close(self) -> None:
        await self.reader.close()

    @property
    def path(self) -> Path:
        return self.reader.settings.path

    async def storage_summary(self) -> dict[str, Any]:
        result = await self.reader.fetch(compiler.summary_query())
        count, oldest, newest = result.rows[0]
        return {
            "events_in_database": count,
            "oldest_event": oldest,
            "newest_event": newest,
            "database_bytes": file_size(self.path),
            "wal_bytes": file_size(self.path.with_name(self.path.name + "-wal")),
        }

    async def count(
        self,
        filters: Sequence[Filter],
        window: Window,
        *,
        distinct_users: bool,
        group: str | None,
        limit: int,
    ) -> Result:
        """From the rollups when they hold the answer (event counts by action), else from
        events."""
        query: Query | None = None
        if not distinct_users and rollups.covers(filters):
            if group is None:
                query = rollups.total_count_query(filters, window.since, window.until)
            elif group == "action":
                query = rollups.action_count_query(filters, window.since, window.until, limit)
        if query is None:
            where = compiler.build_where(filters, window.since, window.until)
            query = compiler.count_query(where, distinct_users, group, limit)
        return await self.reader.fetch(query)

    async def bucket_counts(
        self,
        filters: Sequence[Filter],
        starts: Sequence[int],
        span: tuple[int, int],
        *,
        distinct_users: bool,
    ) -> Result:
        if not distinct_users and rollups.covers(filters):
            query = rollups.bucket_count_query(filters, starts, span)
        else:
            query = compiler.bucket_query(filters, distinct_users, starts, span)
        return await self.reader.fetch(query, max_rows=compiler.MAX_BUCKETS)

    async def first_event_time(self, filters: Sequence[Filter]) -> int | None:
        result = await self.reader.fetch(compiler.first_time_query(filters))
        value = result.rows[0][0]
        return None if value is None else int(value)

    async def top(
        self, field: str, filters: Sequence[Filter], window: Window, limit: int
    ) -> Result:
        where = compiler.build_where(filters, window.since, window.until)
        return await self.reader.fetch(compiler.top_query(where, field, limit))

    async def events(
        self, filters: Sequence[Filter], window: Window, limit: int, *, descending: bool
    ) -> Result:
        where = compiler.build_where(filters, window.since, window.until)
        return await self.reader.fetch(compiler.events_query(where, limit, descending))

    async def user_summary(self, filters: Sequence[Filter], window: Window) -> Result:
        where = compiler.build_where(filters, window.since, window.until)
        return await self.reader.fetch(compiler.user_summary_query(where))

    async def users(
        self, filters: Sequence[Filter], window: Window, minimum: int, limit: int
    ) -> Result:
        where = compiler.build_where(filters, window.since, window.until)
        return await self.reader.fetch(compiler.users_query(where, minimum, limit))

    async def events_by_id(
        self,
        filters: Sequence[Filter],
        window: Window,
        after: int,
        through: int | None,
        limit: int,
        *,
        newest_first: bool = False,
    ) -> Result:
        where = compiler.id_range_where(filters, window.since, window.until, after, through)
        query = compiler.events_query(where, limit, descending=newest_first, order_by="id")
        return await self.reader.fetch(query, max_rows=limit)

    async def count_by_id(
        self, filters: Sequence[Filter], window: Window, after: int, through: int | None
    ) -> int:
        where = compiler.id_range_where(filters, window.since, window.until, after, through)
        result = await self.reader.fetch(compiler.count_where_query(where))
        return int(result.rows[0][0])

    async def max_event_id(self) -> int:
        result = await self.reader.fetch(compiler.max_id_query())
        return int(result.rows[0][0])

    async def quarantine(self, limit: int) -> Result:
        return await self.reader.fetch(compiler.quarantine_query(limit))

    async def sql(self, statement: str) -> Result:
        return await self.reader.fetch(Query(statement, (), ()), read_only_sql=True)


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
