"""The query language as Python functions: typed arguments in, rows out.

The line protocol's verbs call these, and so can programs and tests:

    from collector import query
    result = await query.count(backend, filters=[Filter("action", False, ("signup",))],
                               window=Window(since=..., until=...), by="day")

What every store answers the same way (default windows, bucket calendars, limits, paging)
is decided here, once; the store (a `Backend`) only runs the questions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from collector.clock import now_ms
from collector.query import timeexpr
from collector.query.backend import Backend
from collector.query.errors import QueryError
from collector.query.model import ALL_TIME, TIME_UNITS, Filter, Result, Window

CHUNK_ROWS = 1000  # events per page of EXPORT and TAIL


async def count(
    backend: Backend,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    by: str | None = None,
    limit: int,
) -> Result:
    """Number of events, in all or per value of `by` (a field, or a time unit: then rows
    are (bucket start ms, events) with empty buckets included)."""
    return await measure(backend, filters, window, by, limit, distinct_users=False)


async def unique(
    backend: Backend,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    by: str | None = None,
    limit: int,
) -> Result:
    """Number of distinct users, as count()."""
    return await measure(backend, filters, window, by, limit, distinct_users=True)


async def measure(
    backend: Backend,
    filters: Sequence[Filter],
    window: Window,
    by: str | None,
    limit: int,
    *,
    distinct_users: bool,
) -> Result:
    if by in TIME_UNITS:
        return await bucket_counts(backend, filters, window, by, distinct_users=distinct_users)
    return await backend.count(
        filters, window, distinct_users=distinct_users, group=by, limit=limit
    )


async def bucket_counts(
    backend: Backend, filters: Sequence[Filter], window: Window, unit: str, *, distinct_users: bool
) -> Result:
    """Counts per calendar bucket of window.zone. Without since= the buckets start at the
    first matching event; without until= they end now."""
    end = window.until if window.until is not None else now_ms()
    start = window.since if window.since is not None else await backend.first_event_time(filters)
    if start is None or start >= end:
        return Result([], columns=("bucket", "users" if distinct_users else "events"))
    starts = timeexpr.bucket_starts(start, end, unit, window.zone)
    return await backend.bucket_counts(filters, starts, (start, end), distinct_users=distinct_users)


async def top(
    backend: Backend,
    field: str,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    n: int = 10,
) -> Result:
    """The most frequent values of `field`, with their events and distinct users."""
    return await backend.top(field, filters, window, n)


async def events(
    backend: Backend,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    limit: int = 100,
    descending: bool = True,
) -> Result:
    return await backend.events(filters, window, limit, descending=descending)


@dataclass(frozen=True, slots=True)
class UserHistory:
    first_seen: int
    last_seen: int
    events: int
    actions: int
    timeline: Result  # newest first


async def user(
    backend: Backend,
    user_id: str,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    limit: int = 100,
) -> UserHistory:
    """One user's summary and timeline; QueryError when the user has no matching event."""
    mine = (*filters, Filter("user", False, (user_id,)))
    summary = await backend.user_summary(mine, window)
    first, last, total, actions = summary.rows[0]
    if not total:
        raise QueryError("ARG", f"no events for user {user_id!r}")
    timeline = await backend.user_events(mine, window, limit)
    return UserHistory(first, last, total, actions, timeline)


async def users(
    backend: Backend,
    *,
    filters: Sequence[Filter] = (),
    window: Window = ALL_TIME,
    minimum: int = 1,
    limit: int,
) -> Result:
    """The users with at least `minimum` matching events, most active first."""
    return await backend.users(filters, window, minimum, limit)


async def quarantine(backend: Backend, *, limit: int = 20) -> Result:
    return await backend.quarantine(limit)


async def storage_summary(backend: Backend) -> dict[str, Any]:
    return await backend.storage_summary()


async def sql(backend: Backend, statement: str) -> Result:
    return await backend.sql(statement)


async def export(
    backend: Backend, *, filters: Sequence[Filter] = (), window: Window = ALL_TIME
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Every matching event in commit order, a range of ids at a time, in short queries."""
    after, top = 0, await backend.max_event_id()
    while after < top:
        through = after + CHUNK_ROWS
        page = await backend.events_by_id(filters, window, after, through, CHUNK_ROWS)
        if page.rows:
            yield page.rows
        after = through


async def latest_events(
    backend: Backend, *, filters: Sequence[Filter] = (), n: int
) -> list[tuple[Any, ...]]:
    """The last `n` matching events in commit order, oldest first: ranges of the newest
    ids, widened until they hold `n` (ids are in commit order, not the stores' order)."""
    if n == 0:
        return []
    top = await backend.max_event_id()
    span = max(n, CHUNK_ROWS)
    while True:
        first = max(0, top - span)
        page = await backend.events_by_id(filters, ALL_TIME, first, top, n, newest_first=True)
        if len(page.rows) >= n or first == 0:
            return list(reversed(page.rows))
        span *= 4


@dataclass(frozen=True, slots=True)
class NewEvents:
    rows: list[tuple[Any, ...]]
    skipped: int  # newer events than a chunk holds, passed over
    last_id: int


async def events_after(
    backend: Backend, *, filters: Sequence[Filter] = (), after: int
) -> NewEvents:
    """Events committed after id `after`, through the newest id now; when more than a
    chunk of ids arrived, only the newest chunk's events and how many earlier ones were
    skipped (a slow reader misses events, ingestion never waits). Every matching event with
    an id in (after, last_id] is either in `rows` or counted in `skipped`."""
    top = await backend.max_event_id()
    if top <= after:
        return NewEvents([], 0, after)
    first = max(after, top - CHUNK_ROWS)
    page = await backend.events_by_id(filters, ALL_TIME, first, top, CHUNK_ROWS)
    skipped = await backend.count_by_id(filters, ALL_TIME, after, first) if first > after else 0
    return NewEvents(page.rows, skipped, top)


async def max_event_id(backend: Backend) -> int:
    return await backend.max_event_id()
