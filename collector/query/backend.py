"""What a store must answer for the query language: the Backend protocol.

The embedded SQLite file (collector.backends.sqlite) implements it; so can a scale-out
store. Arguments are typed and already checked (collector.query.api does that once for
every backend); results are rows with times in epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from collector.query.model import Filter, Result, Window


class Backend(Protocol):
    async def close(self) -> None: ...

    async def storage_summary(self) -> dict[str, Any]:
        """events_in_database, oldest and newest event time (ms or None), and sizes."""
        ...

    async def count(
        self,
        filters: Sequence[Filter],
        window: Window,
        *,
        distinct_users: bool,
        group: str | None,
        limit: int,
    ) -> Result:
        """Events (or distinct users) in the window, in all or per value of `group`."""
        ...

    async def bucket_counts(
        self,
        filters: Sequence[Filter],
        starts: Sequence[int],
        span: tuple[int, int],
        *,
        distinct_users: bool,
    ) -> Result:
        """(bucket start, n) per bucket, empty ones included; the buckets start at `starts`
        and the last ends at span[1]; the first is clipped to span[0]."""
        ...

    async def first_event_time(self, filters: Sequence[Filter]) -> int | None: ...

    async def top(
        self, field: str, filters: Sequence[Filter], window: Window, limit: int
    ) -> Result: ...

    async def events(
        self, filters: Sequence[Filter], window: Window, limit: int, *, descending: bool
    ) -> Result:
        """Events in time order (ties by id), as EVENT_COLUMNS."""
        ...

    async def user_summary(self, filters: Sequence[Filter], window: Window) -> Result:
        """One row: first and last event time, events, distinct actions; the user is the
        last filter (user=ID)."""
        ...

    async def user_events(self, filters: Sequence[Filter], window: Window, limit: int) -> Result:
        """The user's newest `limit` events, newest first, as EVENT_COLUMNS; the user is the
        last filter."""
        ...

    async def users(
        self, filters: Sequence[Filter], window: Window, minimum: int, limit: int
    ) -> Result: ...

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
        """Events with after < id <= through in commit (id) order, for paging."""
        ...

    async def count_by_id(
        self, filters: Sequence[Filter], window: Window, after: int, through: int | None
    ) -> int: ...

    async def max_event_id(self) -> int: ...

    async def quarantine(self, limit: int) -> Result: ...

    async def sql(self, statement: str) -> Result:
        """A read-only statement of the store's own SQL."""
        ...
