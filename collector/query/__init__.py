"""The query side: the query language (parser, times, filters), its Python face
(collector.query.api, re-exported here) and the line protocol of the query port.

    from collector import query
    from collector.backends.sqlite.backend import SqliteBackend

    backend = SqliteBackend.open("data/events.db")
    by_day = await query.count(backend, window=query.Window(since=...), by="day", limit=100)
"""

from collector.query.api import (
    UserHistory,
    count,
    events,
    events_after,
    export,
    latest_events,
    max_event_id,
    quarantine,
    sql,
    storage_summary,
    top,
    unique,
    user,
    users,
)
from collector.query.backend import Backend
from collector.query.errors import QueryError
from collector.query.model import ALL_TIME, Filter, Result, Window

__all__ = [
    "ALL_TIME",
    "Backend",
    "Filter",
    "QueryError",
    "Result",
    "UserHistory",
    "Window",
    "count",
    "events",
    "events_after",
    "export",
    "latest_events",
    "max_event_id",
    "quarantine",
    "sql",
    "storage_summary",
    "top",
    "unique",
    "user",
    "users",
]
