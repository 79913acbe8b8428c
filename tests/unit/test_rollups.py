"""The rollups (`hourly_counts`, kept by every commit; `daily_users`, kept by the indexer)
and the queries answered from them.

Every rollup answer is compared with the same question answered from the events alone
(the raw queries of compiler.py) and with a count in Python over the stored rows, on a
real SQLite file with seeded random events stored in several commits (some of them late),
before the indexer ran, part-way through it and after it; with windows that do not fall
on whole hours, and time zones whose days do not start on a UTC hour.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.backends.sqlite import compiler, rollups, sources
from collector.backends.sqlite.sources import Source
from collector.events import Row
from collector.query import timeexpr
from collector.query.model import Filter, Window
from collector.storage import indexer, schema
from collector.storage.bulk import BulkWriter

HOUR = 3_600_000
DAY = 24 * HOUR
START = 1_714_521_600_000  # 2024-05-01T00:00Z
ACTIONS = ("signup", "login", "click", "buy", "logout")
COMMITS = 5  # the random rows are stored in this many commits, two days apart


def random_rows(count: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    rows: list[Row] = []
    for number in range(count):
        ts = START + rng.randrange(10 * DAY)
        user = None if rng.random() < 0.1 else f"u{rng.randrange(40)}"
        msg_id = f"m{rng.randrange(count)}" if rng.random() < 0.3 else None
        rows.append((ts, ts + number, user, rng.choice(ACTIONS), number, None, msg_id))
    return rows


def store_in_commits(writer: BulkWriter, rows: list[Row]) -> int:
    """The rows in COMMITS commits, the k-th made at noon of day 2k + 1: the rows of days
    more than one day away from their commit go to events_late."""
    size = -(-len(rows) // COMMITS)
    stored = 0
    for k in range(COMMITS):
        chunk = rows[k * size : (k + 1) * size]
        stored += writer.store(chunk, at_ms=START + (2 * k + 1) * DAY + 12 * HOUR)
    return stored


STAGES = ["tails", "part-way", "indexed"]
ALL_MIGRATIONS = schema.MIGRATIONS


@pytest.fixture(scope="module", params=STAGES)
def conn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sqlite3.Connection]:
    """3000 random events, the indexer not run (every partition is all tail), run a few
    small steps, or run to the end. Tests only read."""
    path = tmp_path_factory.mktemp("rollups") / "events.db"
    connection = sqlite3.connect(path, isolation_level=None)
    schema.migrate(connection)
    writer = BulkWriter(connection)
    store_in_commits(writer, random_rows(3000, seed=1))
    if request.param == "part-way":
        for _ in range(4):
            writer.transaction(indexer.index_step(writer.catalog, 250))
        assert indexer.next_backlog(writer.catalog) is not None
    elif request.param == "indexed":
        writer.index()
        assert indexer.next_backlog(writer.catalog) is None
    yield connection
    connection.close()


def source_list(conn: sqlite3.Connection) -> list[Source]:
    return sources.sources_of(conn.execute(compiler.CATALOG.sql).fetchall())


def stored_rows(conn: sqlite3.Connection) -> list[tuple[int, str | None, str]]:
    """(ts, user, action) of every stored event, from the `events` view."""
    return conn.execute("SELECT ts, user_id, action FROM events ORDER BY id").fetchall()


def hourly_from_events(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    return conn.execute(
        "SELECT ts - ts % 3600000 AS h, action, count(*) FROM events GROUP BY h, action"
        " ORDER BY h, action"
    ).fetchall()


def rollup_table(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
    """hourly_counts with action names (a LEFT JOIN: an unknown action id shows as None)."""
    return conn.execute(
        "SELECT h.hour, a.name, h.events FROM hourly_counts h LEFT JOIN actions a"
        " ON a.id = h.action ORDER BY h.hour, a.name"
    ).fetchall()


def test_commits_keep_the_hourly_rollup_equal_to_the_events(conn: sqlite3.Connection) -> None:
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    # Duplicate ids were dropped by the commits, and so were they by the rollups.
    assert stored < 3000
    assert stored == 3000 - duplicates(random_rows(3000, seed=1))
    hourly = rollup_table(conn)
    assert sum(events for _, _, events in hourly) == stored
    assert hourly == hourly_from_events(conn)
    # Some events went to the late partition, some to day partitions.
    late = conn.execute("SELECT count(*) FROM events_late").fetchone()[0]
    assert 0 < late < stored


def duplicates(rows: Sequence[Row]) -> int:
    """Rows whose msg_id came earlier (each row is unique: its value is its number)."""
    seen: set[str] = set()
    repeated = 0
    for row in rows:
        msg_id = row[6]
        if msg_id is not None:
            repeated += msg_id in seen
            seen.add(msg_id)
    return repeated


def old_insert(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Rows into the table of migrations 1 and 2, as the writer of those days did."""
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO events (ts, received_at, user_id, action, value, extra, msg_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")


def test_upgrading_an_older_database_keeps_the_rollups_equal_to_the_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    assert schema.migrate(connection) == [1]
    old_insert(connection, random_rows(500, seed=2))
    monkeypatch.setattr(schema, "MIGRATIONS", ALL_MIGRATIONS[:2])
    assert schema.migrate(connection) == [2]
    old_hourly = connection.execute(
        "SELECT hour, action, events FROM hourly_counts ORDER BY hour, action"
    ).fetchall()
    assert old_hourly == hourly_from_events(connection)
    old_insert(connection, random_rows(500, seed=3))
    # The trigger of migration 2 keeps it for rows inserted afterwards.
    after_trigger = connection.execute(
        "SELECT hour, action, events FROM hourly_counts ORDER BY hour, action"
    ).fetchall()
    assert after_trigger == hourly_from_events(connection)
    assert sum(events for *_, events in after_trigger) > sum(events for *_, events in old_hourly)
    monkeypatch.undo()
    assert schema.migrate(connection) == [3]
    # The old rows are in legacy_events now; the rollup names actions by id.
    assert connection.execute("SELECT count(*) FROM legacy_events").fetchone()[0] > 0
    assert rollup_table(connection) == hourly_from_events(connection) == after_trigger
    writer = BulkWriter(connection)
    store_in_commits(writer, random_rows(500, seed=4))
    assert rollup_table(connection) == hourly_from_events(connection)
    writer.index()
    assert connection.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'legacy_events'"
    ).fetchone() == (0,)
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
OPEN_WINDOWS = [(None, None), (START + 7, None), (None, START), (None, START + 4 * DAY + 1)]
MORE_WINDOWS = [
    (START + 3 * DAY, START + 4 * DAY),  # one whole UTC day
    (START + 3 * DAY + 7 * HOUR, START + 3 * DAY + 19 * HOUR + 5),  # inside one day
    (START + 4 * DAY - 1, START + 5 * DAY + 1),  # a day and two ms
]


def fetch(conn: sqlite3.Connection, query: compiler.Query) -> list[tuple[Any, ...]]:
    return conn.execute(query.sql, query.params).fetchall()


def action_matches(action: str, filters: Sequence[Filter]) -> bool:
    """The action filters in Python: each filter is one of its values (`*` a wildcard),
    or none of them when negated."""
    for flt in filters:
        assert flt.field == "action"
        hit = any(re.fullmatch(".*".join(map(re.escape, v.split("*"))), action) for v in flt.values)
        if hit == flt.negated:
            return False
    return True


def brute_force(
    rows: list[tuple[int, str | None, str]],
    filters: Sequence[Filter],
    since: int | None,
    until: int | None,
) -> list[tuple[int, str | None, str]]:
    return [
        row
        for row in rows
        if (since is None or row[0] >= since)
        and (until is None or row[0] < until)
        and action_matches(row[2], filters)
    ]


def per_action(matching: list[tuple[int, str | None, str]]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for _, _, action in matching:
        counts[action] = counts.get(action, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def users_per_action(matching: list[tuple[int, str | None, str]]) -> list[tuple[str, int]]:
    users: dict[str, set[str]] = {}
    for _, user, action in matching:
        if user is not None:
            users.setdefault(action, set()).add(user)
    return sorted((action, len(names)) for action, names in users.items())


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/New_York"])
@pytest.mark.parametrize("unit", ["hour", "day", "week"])
def test_bucket_counts_match_the_events(
    conn: sqlite3.Connection,
    filters: list[Filter],
    window: tuple[int, int],
    zone: str,
    unit: str,
) -> None:
    since, until = window
    starts = timeexpr.bucket_starts(since, until, unit, ZoneInfo(zone))
    if since == until:
        # The empty window has no bucket: the verb answers it without a query.
        assert starts == []
        return
    listed = source_list(conn)
    matching = brute_force(stored_rows(conn), filters, since, until)
    stops = [*starts[1:], until]
    events = [
        (start, sum(1 for ts, _, _ in matching if start <= ts < stop))
        for start, stop in zip(starts, stops, strict=True)
    ]
    users = [
        (start, len({u for ts, u, _ in matching if start <= ts < stop and u is not None}))
        for start, stop in zip(starts, stops, strict=True)
    ]
    raw = compiler.bucket_query(listed, filters, starts, window, distinct_users=False)
    assert fetch(conn, raw) == events
    rollup = rollups.bucket_count_query(listed, filters, starts, window)
    assert rollup is not None
    assert fetch(conn, rollup) == events
    raw_users = compiler.bucket_query(listed, filters, starts, window, distinct_users=True)
    assert fetch(conn, raw_users) == users
    rollup_users = rollups.bucket_users_query(listed, filters, starts, window)
    assert rollup_users is not None
    assert fetch(conn, rollup_users) == users


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("window", [*WINDOWS, *OPEN_WINDOWS, *MORE_WINDOWS])
def test_total_and_per_action_counts_match_the_events(
    conn: sqlite3.Connection, filters: list[Filter], window: tuple[int | None, int | None]
) -> None:
    since, until = window
    listed = source_list(conn)
    matching = brute_force(stored_rows(conn), filters, since, until)
    as_window = Window(since, until)

    def raw(distinct_users: bool, group: str | None, limit: int = 100) -> compiler.Query:
        return compiler.count_query(
            listed, filters, as_window, distinct_users=distinct_users, group=group, limit=limit
        )

    total = [(len(matching),)]
    assert fetch(conn, raw(False, None)) == total
    assert fetch(conn, rollups.total_count_query(listed, filters, since, until)) == total
    actions = per_action(matching)
    assert fetch(conn, raw(False, "action")) == actions
    assert fetch(conn, rollups.action_count_query(listed, filters, since, until, 100)) == actions
    assert fetch(conn, rollups.action_count_query(listed, filters, since, until, 2)) == actions[:2]


def users_by_action(
    conn: sqlite3.Connection,
    listed: list[Source],
    filters: list[Filter],
    since: int | None,
    until: int | None,
) -> list[tuple[object, ...]]:
    """Distinct users per action from the rollups, for every action of the dictionary (as
    TOP asks for its top n), leaving out those with none."""
    actions = conn.execute("SELECT id, name FROM actions ORDER BY id").fetchall()
    query = rollups.users_by_action_query(listed, filters, since, until, actions)
    return [row for row in fetch(conn, query) if row[1]]


@pytest.mark.parametrize("filters", FILTER_CASES)
@pytest.mark.parametrize("window", [*WINDOWS, *OPEN_WINDOWS, *MORE_WINDOWS])
def test_distinct_users_match_the_events(
    conn: sqlite3.Connection, filters: list[Filter], window: tuple[int | None, int | None]
) -> None:
    since, until = window
    listed = source_list(conn)
    matching = brute_force(stored_rows(conn), filters, since, until)
    as_window = Window(since, until)
    users = [(len({user for _, user, _ in matching if user is not None}),)]
    raw = compiler.count_query(
        listed, filters, as_window, distinct_users=True, group=None, limit=100
    )
    assert fetch(conn, raw) == users
    assert fetch(conn, rollups.unique_query(listed, filters, since, until)) == users
    by_action = users_per_action(matching)
    raw_by_action = compiler.count_query(
        listed, filters, as_window, distinct_users=True, group="action", limit=100
    )
    assert sorted(fetch(conn, raw_by_action)) == by_action
    rollup_by_action = users_by_action(conn, listed, filters, since, until)
    assert sorted(rollup_by_action) == by_action


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


def test_day_split_gives_the_edges_within_their_days() -> None:
    first = START // DAY
    assert rollups.day_split(START, START + DAY) == (first, 0, first, DAY)
    assert rollups.day_split(START + 5, START + 2 * DAY + 7) == (first, 5, first + 2, 7)
    assert rollups.day_split(START + DAY - 1, START + DAY + 1) == (first, DAY - 1, first + 1, 1)
    # Within one day (but not the whole of it): no split, the events answer.
    assert rollups.day_split(START + 1, START + DAY) is None
    assert rollups.day_split(START, START + DAY - 1) is None


@pytest.mark.parametrize("indexed", [False, True])
def test_a_user_counts_once_when_one_partition_holds_the_window(
    tmp_path: Path, indexed: bool
) -> None:
    """One source: its arm is the whole query, with no UNION to merge a user's rows."""
    connection = sqlite3.connect(tmp_path / "one.db", isolation_level=None)
    schema.migrate(connection)
    writer = BulkWriter(connection)
    rows: list[Row] = [
        (START + n * HOUR, START + n * HOUR, f"u{n % 2}", ACTIONS[n % 3], n, None, None)
        for n in range(6)
    ]
    assert writer.store(rows, at_ms=START) == 6
    if indexed:
        writer.index()
    listed = source_list(connection)
    assert [source.name for source in listed] == ["events_20240501"]
    windows = [
        (START, START + 5 * HOUR, 1),  # the hour of u1's click is not in it
        (START, START + DAY, 2),
        (None, None, 2),
    ]
    for since, until, clicked in windows:
        raw = compiler.count_query(
            listed, [], Window(since, until), distinct_users=True, group=None, limit=10
        )
        assert fetch(connection, raw) == [(2,)]
        assert fetch(connection, rollups.unique_query(listed, [], since, until)) == [(2,)]
        by_action = users_by_action(connection, listed, [], since, until)
        expected = [("click", clicked), ("login", 2), ("signup", 2)]
        assert sorted(by_action) == expected
    connection.close()


def test_past_the_rollup_bucket_limit_the_events_answer(conn: sqlite3.Connection) -> None:
    """One term per bucket: past MAX_ROLLUP_BUCKETS the raw bucket query answers (a
    compound SELECT may not have more than 500 terms)."""
    listed = source_list(conn)
    most = rollups.MAX_ROLLUP_BUCKETS
    starts = [START + n * HOUR for n in range(most + 1)]
    window = (START, starts[-1] + HOUR)
    assert rollups.bucket_count_query(listed, [], starts, window) is None
    assert rollups.bucket_users_query(listed, [], starts, window) is None
    at_most = (START, starts[-2] + HOUR)
    raw = compiler.bucket_query(listed, [], starts[:-1], at_most, distinct_users=False)
    rollup = rollups.bucket_count_query(listed, [], starts[:-1], at_most)
    assert rollup is not None
    assert fetch(conn, rollup) == fetch(conn, raw)
    assert sum(n for _, n in fetch(conn, raw)) == len(brute_force(stored_rows(conn), [], *at_most))


@pytest.mark.parametrize("window", [(START + 20 * DAY, START + 20 * DAY + HOUR), (0, 5)])
def test_a_window_that_no_partition_overlaps(
    conn: sqlite3.Connection, window: tuple[int, int]
) -> None:
    listed = source_list(conn)
    since, until = window
    assert all(not source.overlaps(since, until) for source in listed)
    assert fetch(conn, rollups.total_count_query(listed, [], since, until)) == [(0,)]
    assert fetch(conn, rollups.action_count_query(listed, [], since, until, 10)) == []
    assert fetch(conn, rollups.unique_query(listed, [], since, until)) == [(0,)]
    assert users_by_action(conn, listed, [], since, until) == []
