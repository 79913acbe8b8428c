"""The rollup table (migration 2) and the queries answered from it.

Every rollup answer is compared with the same question answered from `events` alone, on a
real SQLite file with seeded random events, windows that do not fall on whole hours, and
time zones whose days do not start on a UTC hour.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.backends.sqlite import compiler, rollups
from collector.events import Row
from collector.query import timeexpr
from collector.query.parser import Filter
from collector.storage import schema

HOUR = 3_600_000
DAY = 24 * HOUR
START = 1_714_521_600_000  # 2024-05-01T00:00Z
ACTIONS = ("signup", "login", "click", "buy", "logout")


def random_rows(count: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    rows: list[Row] = []
    for number in range(count):
        ts = START + rng.randrange(10 * DAY)
        user = None if rng.random() < 0.1 else f"u{rng.randrange(40)}"
        msg_id = f"m{rng.randrange(count)}" if rng.random() < 0.3 else None
        rows.append((ts, ts + number, user, rng.choice(ACTIONS), number, None, msg_id))
    return rows


def insert(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.execute("BEGIN")
    for sql, params in schema.insert_plan(rows):
        conn.executemany(sql, params)
    conn.execute("COMMIT")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    schema.migrate(connection)
    insert(connection, random_rows(3000, seed=1))
    yield connection
    connection.close()


def hourly_from_events(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    return conn.execute(
        "SELECT ts - ts % 3600000 AS h, action, count(*) FROM events GROUP BY h, action"
        " ORDER BY h, action"
    ).fetchall()


def rollup_table(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    return conn.execute("SELECT * FROM hourly_counts ORDER BY hour, action").fetchall()


def test_triggers_keep_the_rollups_equal_to_the_events(conn: sqlite3.Connection) -> None:
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    # Duplicate ids were ignored by INSERT OR IGNORE, and so were they by the rollups.
    assert stored < 3000
    hourly = rollup_table(conn)
    assert sum(events for _, _, events in hourly) == stored
    assert hourly == hourly_from_events(conn)


def test_upgrading_a_version_1_database_fills_the_rollups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    assert schema.migrate(connection) == [1]
    insert(connection, random_rows(500, seed=2))
    monkeypatch.undo()
    assert schema.migrate(connection) == [2]
    assert rollup_table(connection) == hourly_from_events(connection)
    insert(connection, random_rows(500, seed=3))
    assert rollup_table(connection) == hourly_from_events(connection)
    connection.close()


FILTER_CASES = [
    [],
    [Filter("action", False, ("login",))],
    [Filter("action", False, ("login", "buy"))],
    [Filter("action", True, ("click",))],
    [Filter("action", False, ("log*",))],
]
WINDOWS = [
    (START, START + 10 * DAY),  # whole days
    (START + 90 * 60_000 + 17, START + 3 * DAY + 45 * 60_000),  # ragged edges
    (START + 5 * HOUR + 1, START + 5 * HOUR + 59 * 60_000),  # inside one hour
    (START + 2 * DAY, START + 2 * DAY),  # empty
]


def fetch(conn: sqlite3.Connection, query: compiler.Query) -> list[tuple[object, ...]]:
    return conn.execute(query.sql, query.params).fetchall()


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/New_York"])
@pytest.mark.parametrize("unit", ["hour", "day", "week"])
def test_bucket_counts_match_the_events_table(
    conn: sqlite3.Connection,
    filters: list[Filter],
    window: tuple[int, int],
    zone: str,
    unit: str,
) -> None:
    since, until = window
    if since >= until:
        return  # the verb answers an empty window without a query
    starts = timeexpr.bucket_starts(since, until, unit, ZoneInfo(zone))
    expected = fetch(conn, compiler.bucket_query(filters, False, starts, window))
    assert fetch(conn, rollups.bucket_count_query(filters, starts, window)) == expected


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("window", [*WINDOWS, (None, None), (START + 7, None), (None, START)])
def test_total_and_per_action_counts_match_the_events_table(
    conn: sqlite3.Connection, filters: list[Filter], window: tuple[int | None, int | None]
) -> None:
    since, until = window
    where = compiler.build_where(filters, since, until)
    total = fetch(conn, compiler.count_query(where, False, None, 100))
    assert fetch(conn, rollups.total_count_query(filters, since, until)) == total
    per_action = fetch(conn, compiler.count_query(where, False, "action", 100))
    assert fetch(conn, rollups.action_count_query(filters, since, until, 100)) == per_action
    assert fetch(conn, rollups.action_count_query(filters, since, until, 2)) == per_action[:2]


@pytest.mark.parametrize(
    ("filters", "covered"),
    [
        ([], True),
        ([Filter("action", True, ("a", "b*"))], True),
        ([Filter("action", False, ("a",)), Filter("user", False, ("u1",))], False),
        ([Filter("extra.plan", False, ("pro",))], False),
        ([Filter("value", False, ("3",))], False),
    ],
)
def test_rollups_cover_action_filters_only(filters: list[Filter], covered: bool) -> None:
    assert rollups.covers(filters) is covered


def test_hour_split_keeps_whole_hours_inside_the_window() -> None:
    assert rollups.hour_split(START, START + 3 * HOUR) == (START, START + 3 * HOUR)
    assert rollups.hour_split(START + 1, START + 3 * HOUR - 1) == (START + HOUR, START + 2 * HOUR)
    # A window inside one hour has no whole hour: everything comes from the first edge.
    assert rollups.hour_split(START + 1, START + 2) == (START + 2, START + 2)
