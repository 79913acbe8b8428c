"""collector.query as a Python library: typed arguments in, rows out, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collector import query
from collector.backends.sqlite.backend import SqliteBackend
from collector.events import Row
from collector.query import Filter, QueryError, Window
from collector.storage import schema
from collector.storage.bulk import BulkWriter

HOUR = 3_600_000
START = 1_714_521_600_000  # 2024-05-01T00:00Z


def rows() -> list[Row]:
    """u1: signup then 2 clicks; u2: 3 clicks; u3: 1 buy; one per hour from START."""
    plan = [
        ("u1", "signup"),
        ("u1", "click"),
        ("u2", "click"),
        ("u2", "click"),
        ("u1", "click"),
        ("u2", "click"),
        ("u3", "buy"),
    ]
    return [
        (START + n * HOUR, START + n * HOUR, user, action, n, None, None)
        for n, (user, action) in enumerate(plan)
    ]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn)
    BulkWriter(conn).store(rows(), at_ms=START + 6 * HOUR)
    conn.close()
    opened = SqliteBackend.open(path)
    yield opened
    await opened.close()


async def test_count_in_all_and_by_action(backend: SqliteBackend) -> None:
    total = await query.count(backend, limit=100)
    assert (total.columns, total.rows) == (("events",), [(7,)])
    by_action = await query.count(backend, by="action", limit=100)
    assert by_action.rows == [("click", 5), ("buy", 1), ("signup", 1)]


async def test_count_by_day_gives_bucket_starts_in_ms(backend: SqliteBackend) -> None:
    window = Window(since=START, until=START + 48 * HOUR)
    result = await query.count(backend, window=window, by="day", limit=100)
    assert result.rows == [(START, 7), (START + 24 * HOUR, 0)]


async def test_unique_with_a_filter_and_a_window(backend: SqliteBackend) -> None:
    clicks = [Filter("action", False, ("click",))]
    result = await query.unique(backend, filters=clicks, limit=100)
    assert result.rows == [(2,)]
    early = Window(since=START, until=START + 2 * HOUR)
    assert (await query.unique(backend, filters=clicks, window=early, limit=100)).rows == [(1,)]


async def test_top_users(backend: SqliteBackend) -> None:
    result = await query.top(backend, "user", n=2)
    assert result.rows == [("u1", 3, 1), ("u2", 3, 1)]


async def test_user_history_newest_first(backend: SqliteBackend) -> None:
    history = await query.user(backend, "u1", limit=2)
    assert (history.first_seen, history.last_seen) == (START, START + 4 * HOUR)
    assert (history.events, history.actions) == (3, 2)
    assert [row[4] for row in history.timeline.rows] == ["click", "click"]
    assert [row[1] for row in history.timeline.rows] == [START + 4 * HOUR, START + HOUR]


async def test_an_unknown_user_is_an_error(backend: SqliteBackend) -> None:
    with pytest.raises(QueryError, match="no events for user 'nobody'"):
        await query.user(backend, "nobody")


async def test_users_with_a_minimum(backend: SqliteBackend) -> None:
    result = await query.users(backend, minimum=3, limit=10)
    assert result.rows == [("u1", 3), ("u2", 3)]


async def test_export_pages_every_event_in_commit_order(backend: SqliteBackend) -> None:
    pages = [page async for page in query.export(backend)]
    assert [row[0] for page in pages for row in page] == [1, 2, 3, 4, 5, 6, 7]


async def test_events_after_an_id(backend: SqliteBackend) -> None:
    new = await query.events_after(backend, after=5)
    assert ([row[0] for row in new.rows], new.skipped, new.last_id) == ([6, 7], 0, 7)
    assert [row[0] for row in await query.latest_events(backend, n=2)] == [6, 7]
    assert await query.max_event_id(backend) == 7


async def test_storage_summary_and_sql(backend: SqliteBackend) -> None:
    summary = await query.storage_summary(backend)
    assert (summary["events_in_database"], summary["oldest_event"]) == (7, START)
    assert summary["newest_event"] == START + 6 * HOUR
    assert summary["database_bytes"] > 0
    result = await query.sql(backend, "SELECT count(DISTINCT user_id) AS n FROM events")
    assert (result.columns, result.rows) == (("n",), [(3,)])
