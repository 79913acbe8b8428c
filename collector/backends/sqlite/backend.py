"""The query language answered from the SQLite file: SQL from compiler.py, rollups.py and
timeline.py, run by the Reader on read-only connections.

Each answer reads the catalog of partitions first, then asks one statement over the
partitions its window needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.backends.sqlite import compiler, rollups, timeline
from collector.backends.sqlite.compiler import Query
from collector.backends.sqlite.reader import Reader
from collector.backends.sqlite.sources import Source, check_field, sources_of
from collector.query.errors import QueryError
from collector.query.model import EVENT_COLUMNS, Filter, Result, Window
from collector.settings import ReaderSettings

EMPTY_USER = (None, None, 0, 0)


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

    async def sources(self) -> list[Source]:
        result = await self.reader.fetch(compiler.CATALOG, max_rows=1_000_000)
        return sources_of(result.rows)

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
        """From the rollups when they hold the answer, else from the events."""
        if group is not None:
            check_field(group)
        sources = await self.sources()
        query = rollup_count(
            sources, filters, window, distinct_users=distinct_users, group=group, limit=limit
        )
        if query is None:
            query = compiler.count_query(
                sources, filters, window, distinct_users=distinct_users, group=group, limit=limit
            )
        return await self.reader.fetch(query)

    async def bucket_counts(
        self,
        filters: Sequence[Filter],
        starts: Sequence[int],
        span: tuple[int, int],
        *,
        distinct_users: bool,
    ) -> Result:
        sources = await self.sources()
        query: Query | None = None
        if rollups.covers(filters):
            if distinct_users:
                query = rollups.bucket_users_query(sources, filters, starts, span)
            else:
                query = rollups.bucket_count_query(sources, filters, starts, span)
        if query is None:
            query = compiler.bucket_query(
                sources, filters, starts, span, distinct_users=distinct_users
            )
        return await self.reader.fetch(query, max_rows=compiler.MAX_BUCKETS)

    async def first_event_time(self, filters: Sequence[Filter]) -> int | None:
        sources = await self.sources()
        result = await self.reader.fetch(compiler.first_time_query(sources, filters))
        value = result.rows[0][0]
        return None if value is None else int(value)

    async def top(
        self, field: str, filters: Sequence[Filter], window: Window, limit: int
    ) -> Result:
        check_field(field)
        sources = await self.sources()
        if field == "action" and rollups.covers(filters):
            return await self._top_actions(sources, filters, window, limit)
        return await self.reader.fetch(compiler.top_query(sources, field, filters, window, limit))

    async def _top_actions(
        self, sources: Sequence[Source], filters: Sequence[Filter], window: Window, limit: int
    ) -> Result:
        """Events per action from hourly_counts; then, for the `limit` most frequent,
        distinct users from daily_users: short statements instead of a scan of the
        window's events."""
        since, until = window.since, window.until
        events = await self.reader.fetch(
            rollups.action_count_query(sources, filters, since, until, limit)
        )
        top = [(action, n) for action, n in events.rows if n]
        names = [action for action, _ in top]
        ids = await self.reader.fetch(compiler.action_ids_query(names), max_rows=len(names) + 1)
        users = await self.reader.fetch(
            rollups.users_by_action_query(sources, filters, since, until, ids.rows),
            max_rows=len(names) + 1,
        )
        distinct = dict(users.rows)
        rows = [(action, n, distinct.get(action, 0)) for action, n in top]
        seconds = events.seconds + ids.seconds + users.seconds
        return Result(rows, events.truncated, seconds, ("action", "events", "users"))

    async def events(
        self, filters: Sequence[Filter], window: Window, limit: int, *, descending: bool
    ) -> Result:
        sources = await self.sources()
        return await self.reader.fetch(
            compiler.events_query(sources, filters, window, limit, descending=descending)
        )

    async def user_summary(self, filters: Sequence[Filter], window: Window) -> Result:
        user, others = split_user(filters)
        sources = await self.sources()
        return await self.reader.fetch(timeline.summary_query(sources, user, others, window))

    async def user_events(self, filters: Sequence[Filter], window: Window, limit: int) -> Result:
        """The user's newest events: their keys through the by-user tables, partition by
        partition from the newest, until no older partition can hold a newer event; then
        the rows."""
        user, others = split_user(filters)
        sources = await self.sources()
        newest: list[tuple[int, int, int]] = []  # (ts, id, src)
        seconds = 0.0
        order = sorted(range(len(sources)), key=lambda i: -sources[i].max_ts)
        # The newest partition alone first (enough for a heavy user), then twice as many
        # each time, while the page is not full; once it is, one at a time.
        steps = [order[(1 << n) - 1 : (1 << (n + 1)) - 1] for n in range(len(order).bit_length())]
        while steps:
            chosen = [src for src in steps.pop(0) if src is not None]
            if not chosen:
                continue
            if len(newest) >= limit and newest[limit - 1][0] > sources[chosen[0]].max_ts:
                break
            if len(chosen) > 1 and len(newest) >= limit:
                steps[:0] = [[src] for src in chosen]
                continue
            query = timeline.newest_query(sources, user, others, window, limit, only=chosen)
            found = await self.reader.fetch(query)
            seconds += found.seconds
            newest = sorted(
                [*newest, *((ts, event_id, s) for s, ts, event_id in found.rows)], reverse=True
            )[:limit]
        by_source: dict[int, list[tuple[int, int]]] = {}
        for ts, event_id, src in newest:
            by_source.setdefault(src, []).append((ts, event_id))
        if not by_source:
            return Result([], False, seconds, EVENT_COLUMNS)
        found = await self.reader.fetch(timeline.rows_query(sources, by_source))
        return Result(found.rows, False, seconds + found.seconds, EVENT_COLUMNS)

    async def users(
        self, filters: Sequence[Filter], window: Window, minimum: int, limit: int
    ) -> Result:
        sources = await self.sources()
        return await self.reader.fetch(
            compiler.users_query(sources, filters, window, minimum, limit)
        )

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
        sources = await self.sources()
        query = compiler.by_id_query(
            sources, filters, window, (after, through), limit, newest_first=newest_first
        )
        return await self.reader.fetch(query, max_rows=limit)

    async def count_by_id(
        self, filters: Sequence[Filter], window: Window, after: int, through: int | None
    ) -> int:
        sources = await self.sources()
        result = await self.reader.fetch(
            compiler.count_by_id_query(sources, filters, window, (after, through))
        )
        return int(result.rows[0][0])

    async def max_event_id(self) -> int:
        result = await self.reader.fetch(compiler.max_id_query())
        return int(result.rows[0][0])

    async def quarantine(self, limit: int) -> Result:
        return await self.reader.fetch(compiler.quarantine_query(limit))

    async def sql(self, statement: str) -> Result:
        return await self.reader.fetch(Query(statement, (), ()), read_only_sql=True)


def rollup_count(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    window: Window,
    *,
    distinct_users: bool,
    group: str | None,
    limit: int,
) -> Query | None:
    """The rollup query that answers this count, if any."""
    if not rollups.covers(filters):
        return None
    since, until = window.since, window.until
    if group is None:
        if distinct_users:
            return rollups.unique_query(sources, filters, since, until)
        return rollups.total_count_query(sources, filters, since, until)
    if group == "action" and not distinct_users:
        return rollups.action_count_query(sources, filters, since, until, limit)
    return None


def split_user(filters: Sequence[Filter]) -> tuple[str, list[Filter]]:
    """The user of USER's filters (the api puts it last) and the other filters."""
    *others, mine = filters
    if mine.field != "user" or mine.negated or len(mine.values) != 1:
        raise QueryError("INTERNAL", "a user's events need exactly one user")
    return mine.values[0], others


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
