"""Brute force: seeded random histories stored through the writer's plans, and every answer
of the query API compared exactly with the same question answered in Python from the rows
that should be stored (the oracle).

A history is several commits made at different times, some on either side of a UTC
midnight, with late events (days before their commit), events days ahead of it, events
without a user, repeated msg_ids within a commit and across commits, and a message sent
3000 times (its ids push the next commits into other id blocks). Each history is checked
at several stages: before the indexer ran (every partition is all tail), part-way through
it, after it; after retention dropped days (then more commits, then retention again); for
a database made by migrations 1 and 2 and then upgraded, while its old table still holds
every old row, part-way through the move and after it; and for an upgraded database of
more than 500 days. At every stage the same questions must get the oracle's answers, so
the answers of the stages of one history are identical. The tables themselves are checked
too: the `events` view, each partition and its catalog row, the dictionaries,
`hourly_counts`, the by-user tables, `daily_users` and the dedup ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import random
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector import query
from collector.backends.sqlite.backend import SqliteBackend
from collector.clock import now_ms
from collector.events import Row
from collector.query import Filter, QueryError, Window
from collector.settings import WriterSettings
from collector.storage import background, indexer, mover, retention, schema
from collector.storage.bulk import BulkWriter
from collector.storage.plan import Plan

HOUR = 3_600_000
DAY = 24 * HOUR
START = 1_714_521_600_000  # 2024-05-01T00:00Z: day 0 of the histories
FIRST_DAY = START // DAY
LATE = "events_late"
LEGACY = "legacy_events"
# The mover sends old rows before 2000-01-01 (and past the day after tomorrow) to LATE.
MOVER_FIRST_DAY = (dt.date(2000, 1, 1) - dt.date(1970, 1, 1)).days
ALL_MIGRATIONS = schema.MIGRATIONS
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_MS = dt.timedelta(milliseconds=1)


def at(day: int, hours: int = 0, minutes: int = 0, ms: int = 0) -> int:
    """Epoch ms of `day` days after START (negative: before), plus a time of day."""
    return START + day * DAY + hours * HOUR + minutes * 60_000 + ms


def day_table(day: int) -> str:
    return f"events_{dt.date(1970, 1, 1) + dt.timedelta(days=day):%Y%m%d}"


def table_day(name: str) -> int:
    date = dt.datetime.strptime(name.removeprefix("events_"), "%Y%m%d").date()
    return (date - dt.date(1970, 1, 1)).days


# --- histories ------------------------------------------------------------------------

ACTIONS = ("view", "click", "search", "signup", "buy", "logout")
ACTION_WEIGHTS = (30, 25, 12, 5, 5, 8)
USERS = tuple(f"u{n}" for n in range(30))
# Several days apart, and pairs on either side of a UTC midnight.
COMMIT_TIMES = (
    at(2, 9),
    at(2, 23, 50),
    at(3, 0, 5),
    at(4, 14),
    at(5, 23, 59, 59_999),
    at(6),
    at(6, 18),
    at(8, 10),
)
ROWS_PER_COMMIT = 350


def random_ts(rng: random.Random, at_ms: int) -> int:
    kind = rng.random()
    if kind < 0.6:  # the last day and a half
        return at_ms - rng.randrange(36 * HOUR)
    if kind < 0.72:  # days before: late
        return at_ms - rng.randrange(2 * DAY, 7 * DAY)
    if kind < 0.8:  # later today, tomorrow
        return at_ms + rng.randrange(30 * HOUR)
    if kind < 0.86:  # days ahead: late
        return at_ms + rng.randrange(2 * DAY, 6 * DAY)
    day = at_ms // DAY + rng.choice((-3, -2, -1, 0, 1, 2))
    return day * DAY + rng.choice((0, 1, -1, HOUR, DAY // 2))  # on and about midnights


def random_value(rng: random.Random) -> Any:
    kind = rng.random()
    if kind < 0.45:
        return rng.randrange(-2, 8)
    if kind < 0.65:
        return f"v{rng.randrange(4)}"
    if kind < 0.9:
        return None
    return 2.5


def random_extra(rng: random.Random) -> str | None:
    if rng.random() < 0.6:
        return None
    return json.dumps({"plan": rng.choice(("free", "pro")), "n": rng.randrange(3)})


def random_rows(rng: random.Random, at_ms: int, count: int, pool: int) -> list[Row]:
    """`count` rows as a commit made at `at_ms` receives them; msg_ids are drawn from
    `pool` names, and now and then a row repeats the msg_id of the row before it."""
    rows: list[Row] = []
    for _ in range(count):
        user = None if rng.random() < 0.12 else rng.choice(USERS[: rng.choice((4, 30))])
        msg_id = f"m{rng.randrange(pool)}" if rng.random() < 0.5 else None
        if rows and rng.random() < 0.04:
            msg_id = rows[-1][6] or msg_id
        action = rng.choices(ACTIONS, ACTION_WEIGHTS)[0]
        ts = random_ts(rng, at_ms)
        received = at_ms - rng.randrange(5000)
        rows.append((ts, received, user, action, random_value(rng), random_extra(rng), msg_id))
    return rows


# --- the oracle -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    id: int
    ts: int
    received_at: int
    user: str | None
    action: str
    value: Any
    extra: str | None
    msg_id: str | None
    home: str  # the table that holds it

    @property
    def row(self) -> tuple[Any, ...]:
        """As the query API gives events (EVENT_COLUMNS)."""
        return (self.id, self.ts, self.received_at, self.user, self.action, self.value, self.extra)

    @property
    def view_row(self) -> tuple[Any, ...]:
        return (*self.row, self.msg_id)


class Oracle:
    """What should be stored, kept in Python: ids in arrival order (a commit's rows take
    consecutive ids, repeats included, as the writer numbers its staging rows), the first
    row of each msg_id among the stored events, each row in the table of its UTC day
    when that day is near the commit's, else in events_late."""

    def __init__(self, late_after_days: int) -> None:
        self.late_after_days = late_after_days
        self.events: dict[int, Event] = {}
        self.by_msg_id: dict[str, int] = {}
        self.next_id = 1
        self.max_id = 0  # the highest id ever stored, dropped or not
        self.users: set[str] = set()
        self.actions: set[str] = set()
        self.legacy_next = 0  # the first old id the mover has not reached
        self.legacy_last = 0
        self.repeats_within = 0  # rows dropped as repeats of a row of their own commit
        self.repeats_across = 0  # ... of a row stored before
        self.repeats_of_old = 0  # ... of a row of the table of migrations 1-2

    def _add(self, event: Event) -> None:
        self.events[event.id] = event
        if event.msg_id is not None:
            self.by_msg_id[event.msg_id] = event.id
        self.max_id = max(self.max_id, event.id)
        if event.user is not None:
            self.users.add(event.user)
        self.actions.add(event.action)

    def _repeat(self, msg_id: str | None, first_new_id: int) -> bool:
        if msg_id is None or msg_id not in self.by_msg_id:
            return False
        earlier = self.by_msg_id[msg_id]
        if earlier >= first_new_id:
            self.repeats_within += 1
        else:
            self.repeats_across += 1
            self.repeats_of_old += earlier <= self.legacy_last
        return True

    def commit(self, rows: Sequence[Row], at_ms: int) -> int:
        base = self.next_id - 1
        today = at_ms // DAY
        stored = 0
        for number, row in enumerate(rows, 1):
            if self._repeat(row[6], base + 1):
                continue
            day = row[0] // DAY
            near = today - self.late_after_days <= day <= today + 1
            self._add(Event(base + number, *row, home=day_table(day) if near else LATE))
            stored += 1
        self.next_id += len(rows)
        return stored

    def old_insert(self, rows: Sequence[Row]) -> None:
        """INSERT OR IGNORE into the table of migrations 1-2: a repeated msg_id takes no id."""
        for row in rows:
            if not self._repeat(row[6], self.next_id):
                self._add(Event(self.next_id, *row, home=LEGACY))
                self.next_id += 1

    def upgraded(self) -> None:
        old = [event.id for event in self.events.values() if event.home == LEGACY]
        self.legacy_next, self.legacy_last = min(old), max(old)

    def move(self, max_ids: int, now: int) -> None:
        """One mover step: the old ids of the next chunk go to their day (or late)."""
        low = self.legacy_next
        high = min(low + max_ids, self.legacy_last + 1)
        for event in list(self.events.values()):
            if event.home == LEGACY and low <= event.id < high:
                day = event.ts // DAY
                near = MOVER_FIRST_DAY <= day <= now // DAY + 2
                self.events[event.id] = dataclasses.replace(
                    event, home=day_table(day) if near else LATE
                )
        self.legacy_next = high

    def move_all(self, now: int) -> None:
        while any(event.home == LEGACY for event in self.events.values()):
            self.move(20_000, now)

    def retention_steps(self, cutoff_day: int) -> list[str]:
        """What retention_step returns, call after call, until it returns None (the steps
        that clear daily_users, which depend on what was indexed, left out): each day
        before the cutoff retired, oldest first; the late events left before the cutoff;
        each retired day's two tables dropped and the day purged; the dedup ids of the
        dropped events."""
        days = sorted(
            {
                e.ts // DAY
                for e in self.events.values()
                if e.home not in (LATE, LEGACY) and e.ts // DAY < cutoff_day
            }
        )
        steps = [f"retired {day_table(day)}" for day in days]
        end = (days[-1] + 1) * DAY if days else 0
        cutoff = cutoff_day * DAY
        if any(e.home == LATE and end <= e.ts < cutoff for e in self.events.values()):
            steps.append("late events")
        for day in days:
            table = day_table(day)
            steps += [f"dropped {table}_by_user", f"dropped {table}", f"purged {table}"]
        if any(e.msg_id is not None and e.ts < cutoff for e in self.events.values()):
            steps.append("event_ids")
        return steps

    def retain(self, cutoff_day: int) -> None:
        for event in list(self.events.values()):
            if event.ts < cutoff_day * DAY:
                del self.events[event.id]
                if event.msg_id is not None:
                    del self.by_msg_id[event.msg_id]


# --- questions answered in Python -----------------------------------------------------


@functools.cache
def pattern(value: str) -> re.Pattern[str]:
    """A filter value: `*` is the only wildcard."""
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


def field_text(event: Event, name: str) -> str | None:
    """The field as a filter or a grouping sees it: text, or None when absent."""
    if name == "action":
        return event.action
    if name == "user":
        return event.user
    if name == "value":
        return None if event.value is None else str(event.value)
    key = name.removeprefix("extra.")
    found = None if event.extra is None else json.loads(event.extra).get(key)
    return None if found is None else str(found)


def passes(event: Event, filters: Sequence[Filter]) -> bool:
    for flt in filters:
        text = field_text(event, flt.field)
        hit = text is not None and any(pattern(v).fullmatch(text) for v in flt.values)
        if flt.negated and text is not None and hit:
            return False
        if not flt.negated and not hit:
            return False
    return True


def within(ts: int, since: int | None, until: int | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


def ranked(counts: dict[str | None, Any]) -> list[tuple[Any, ...]]:
    """Most first, then by the group as SQLite orders text (None first)."""

    def key(item: tuple[str | None, Any]) -> tuple[Any, ...]:
        group, value = item
        first = value[0] if isinstance(value, tuple) else value
        return (-first, group is not None, group or "")

    return [
        (group, *value) if isinstance(value, tuple) else (group, value)
        for group, value in sorted(counts.items(), key=key)
    ]


def distinct_users(events: Iterable[Event]) -> int:
    return len({event.user for event in events if event.user is not None})


def grouped(events: Iterable[Event], field: str) -> dict[str | None, list[Event]]:
    groups: dict[str | None, list[Event]] = {}
    for event in events:
        groups.setdefault(field_text(event, field), []).append(event)
    return groups


def local_starts(since: int, until: int, unit: str, zone: dt.tzinfo) -> list[int]:
    """Starts of the calendar hours or days of `zone` that overlap [since, until)."""
    local = (EPOCH + since * ONE_MS).astimezone(zone)
    if unit == "day":
        first = dt.datetime.combine(local.date(), dt.time(), tzinfo=zone)
    else:
        first = local.replace(minute=0, second=0, microsecond=0)
    starts: list[int] = []
    current = first
    while (ms := (current - EPOCH) // ONE_MS) < until:
        starts.append(ms)
        if unit == "day":
            current = dt.datetime.combine(current.date() + dt.timedelta(days=1), dt.time(), zone)
        else:
            current = (current.astimezone(dt.UTC) + dt.timedelta(hours=1)).astimezone(zone)
    return starts


# --- scenarios --------------------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    name: str
    path: Path
    oracle: Oracle
    indexed: bool  # the indexer has nothing left to do
    retention_runs: list[tuple[list[str], list[str]]] = dataclasses.field(default_factory=list)
    old_rows: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    cache: dict[Any, list[Event]] = dataclasses.field(default_factory=dict)

    @property
    def events(self) -> list[Event]:
        return sorted(self.oracle.events.values(), key=lambda event: event.id)

    def matching(
        self, filters: Sequence[Filter], since: int | None = None, until: int | None = None
    ) -> list[Event]:
        """The stored events that match, in id order."""
        key = (tuple(filters), since, until)
        if key not in self.cache:
            self.cache[key] = [
                e for e in self.events if within(e.ts, since, until) and passes(e, filters)
            ]
        return self.cache[key]


def store(writer: BulkWriter, oracle: Oracle, rows: Sequence[Row], at_ms: int) -> None:
    expected = oracle.commit(rows, at_ms)
    assert writer.store(rows, at_ms=at_ms) == expected


def store_burst(writer: BulkWriter, oracle: Oracle, at_ms: int, name: str) -> None:
    """One message sent 3000 times: one event stored, 3000 ids taken, so that the ids of
    the next commits are in other blocks (BLOCK_BITS) than those before."""
    row = (at_ms - HOUR, at_ms, "u0", "view", name, None, name)
    store(writer, oracle, [row] * 3000, at_ms)


def index_steps(writer: BulkWriter, steps: int, max_ids: int) -> None:
    for _ in range(steps):
        writer.transaction(indexer.index_step(writer.catalog, max_ids))


def purged_day(day: int) -> list[str]:
    """The retention steps of one small day."""
    table = day_table(day)
    return [f"retired {table}", f"dropped {table}_by_user", f"dropped {table}", f"purged {table}"]


def retain(writer: BulkWriter, oracle: Oracle, cutoff_day: int) -> tuple[list[str], list[str]]:
    """Retention to the end; what it dropped, step by step, and what the oracle expects."""
    expected = oracle.retention_steps(cutoff_day)
    done: list[str] = []
    while (
        dropped := writer.transaction(retention.retention_step(writer.catalog, cutoff_day))
    ) is not None:
        done.append(dropped)
        assert len(done) <= 100
    oracle.retain(cutoff_day)
    left = writer.conn.execute("SELECT count(*) FROM daily_users WHERE day < ?", (cutoff_day,))
    assert left.fetchone() == (0,)
    return [step for step in done if step != "daily_users"], expected


FRESH_STAGES = ("tails", "part-way", "indexed", "retained", "retained-indexed")
UPGRADE_STAGES = ("legacy", "moving", "moved")
FRESH = [f"{stage}-{seed}" for seed in (1, 2) for stage in FRESH_STAGES]
UPGRADED = [f"{stage}-{seed}" for seed in (3, 4) for stage in UPGRADE_STAGES]
RETAINED = [name for name in FRESH if name.startswith("retained")]
SCENARIOS = [*FRESH, *UPGRADED, "long-5"]
CUTOFF_DAY = FIRST_DAY + 5


def build_fresh(conn: sqlite3.Connection, scenario: Scenario, stage: str, seed: int) -> None:
    """The commits of COMMIT_TIMES (the indexer a few small steps after some of them,
    but for `tails`), then the stage's own work."""
    rng = random.Random(seed)
    schema.migrate(conn)
    oracle = scenario.oracle
    writer = BulkWriter(conn, late_after_days=oracle.late_after_days)
    pool = len(COMMIT_TIMES) * ROWS_PER_COMMIT * 4 // 5
    for number, at_ms in enumerate(COMMIT_TIMES):
        if number in (3, 6):
            store_burst(writer, oracle, at_ms, f"burst-{number}")
        store(writer, oracle, random_rows(rng, at_ms, ROWS_PER_COMMIT, pool), at_ms)
        if stage != "tails" and number in (2, 5):
            index_steps(writer, 3, 400)
    if stage == "tails":
        return
    index_steps(writer, 2, 400)
    assert indexer.next_backlog(writer.catalog) is not None
    if stage == "indexed":
        writer.index()
        scenario.indexed = True
    if not stage.startswith("retained"):
        return
    before = set(oracle.by_msg_id)
    scenario.retention_runs.append(retain(writer, oracle, CUTOFF_DAY))
    # A commit after retention: msg_ids of dropped events are free again, those of kept
    # events still repeat; its late rows before the cutoff wait for the next retention.
    dropped = sorted(before - set(oracle.by_msg_id))[:40]
    kept = sorted(oracle.by_msg_id)[:40]
    assert len(dropped) == len(kept) == 40
    repeats = [*dropped, *kept]
    rows = [
        (*row[:6], repeats[n]) if n < len(repeats) else row
        for n, row in enumerate(random_rows(rng, at(8, 11), 300, pool))
    ]
    repeated_before = oracle.repeats_across
    store(writer, oracle, rows, at(8, 11))
    assert oracle.repeats_across - repeated_before >= 40
    index_steps(writer, 2, 150)
    if stage == "retained-indexed":
        writer.index()
        scenario.retention_runs.append(retain(writer, oracle, CUTOFF_DAY))
        writer.index()
        scenario.indexed = True


def odd_old_rows() -> list[Row]:
    """Old rows the mover sends to events_late: before 2000, and in 2099."""
    before_2000 = MOVER_FIRST_DAY * DAY - 1
    in_2099 = (dt.date(2099, 6, 1) - dt.date(1970, 1, 1)).days * DAY + 5
    return [
        (5, 6, "u1", "archive", 1, None, "m-odd-1970"),
        (before_2000, before_2000, "u2", "archive", None, None, "m-odd-1999"),
        (in_2099, in_2099, None, "archive", "far", None, None),
    ]


def build_upgraded(conn: sqlite3.Connection, scenario: Scenario, stage: str, seed: int) -> None:
    """A database made by migrations 1 and 2, its table filled as their writer did, then
    migrated; commits since then repeat msg_ids of old rows."""
    rng = random.Random(seed)
    oracle = scenario.oracle
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", ALL_MIGRATIONS[:2])
        assert schema.migrate(conn) == [1, 2]
    pool = 2000
    old = [row for day in range(4) for row in random_rows(rng, at(day, 13), 300, pool)]
    old += odd_old_rows()
    rng.shuffle(old)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO events (ts, received_at, user_id, action, value, extra, msg_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    conn.execute("COMMIT")
    oracle.old_insert(old)
    scenario.old_rows = conn.execute(
        "SELECT id, ts, received_at, user_id, action, value, extra, msg_id FROM events ORDER BY id"
    ).fetchall()
    assert scenario.old_rows == [event.view_row for event in scenario.events]
    assert schema.migrate(conn) == [3]
    oracle.upgraded()
    writer = BulkWriter(conn)
    old_ids = sorted(m for m in (e.msg_id for e in scenario.events) if m is not None)

    def new_rows(at_ms: int) -> list[Row]:
        rows = random_rows(rng, at_ms, 300, pool * 2)
        repeats = rng.sample(old_ids, 30)
        return [(*row[:6], repeats[n]) if n < 30 else row for n, row in enumerate(rows)]

    now = now_ms()
    store(writer, oracle, new_rows(at(4, 9)), at(4, 9))
    store_burst(writer, oracle, at(4, 10), "burst")
    if stage != "legacy":
        for _ in range(2):
            writer.transaction(mover.move_step(writer.catalog, 250, now))
            oracle.move(250, now)
    store(writer, oracle, new_rows(at(4, 23, 59)), at(4, 23, 59))
    if stage != "legacy":
        index_steps(writer, 2, 150)
        writer.transaction(mover.move_step(writer.catalog, 250, now))
        oracle.move(250, now)
        assert writer.catalog.legacy is not None
    store(writer, oracle, new_rows(at(5, 0, 1)), at(5, 0, 1))
    if stage == "moved":
        writer.index()
        oracle.move_all(now_ms())
        assert writer.catalog.legacy is None
        # Every old msg_id still repeats.
        store(writer, oracle, new_rows(at(5, 6)), at(5, 6))
        writer.index()
        scenario.indexed = True


LONG_DAYS = 510


def build_long(conn: sqlite3.Connection, scenario: Scenario, seed: int) -> None:
    """An upgraded database with events on each of LONG_DAYS days: after the move, more
    partitions than one compound SELECT may name (the events view is made of one view per
    year, and each query groups its arms); then two commits, the last one not indexed."""
    rng = random.Random(seed)
    oracle = scenario.oracle
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", ALL_MIGRATIONS[:2])
        assert schema.migrate(conn) == [1, 2]
    old: list[Row] = []
    for day in range(-LONG_DAYS, 9):
        for number in range(3):
            ts = at(day) + rng.randrange(DAY)
            user = rng.choice(USERS[:8]) if rng.random() < 0.9 else None
            action = rng.choices(ACTIONS, ACTION_WEIGHTS)[0]
            old.append((ts, ts + 5, user, action, number, None, f"old-{day}-{number}"))
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (ts, received_at, user_id, action, value, extra, msg_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    conn.execute("COMMIT")
    oracle.old_insert(old)
    assert schema.migrate(conn) == [3]
    oracle.upgraded()
    writer = BulkWriter(conn)
    pool = 1000
    store(writer, oracle, random_rows(rng, at(8, 10), 300, pool), at(8, 10))
    writer.index()
    oracle.move_all(now_ms())
    store(writer, oracle, random_rows(rng, at(8, 20), 300, pool), at(8, 20))


@functools.cache
def built(name: str, directory: Path) -> Scenario:
    stage, seed = name.rsplit("-", 1)
    # The second history routes events two days back to their day's partition.
    late_after_days = 2 if seed == "2" else 1
    scenario = Scenario(name, directory / f"{name}.db", Oracle(late_after_days), indexed=False)
    conn = sqlite3.connect(scenario.path, isolation_level=None)
    try:
        if stage == "long":
            build_long(conn, scenario, int(seed))
        elif stage in UPGRADE_STAGES:
            build_upgraded(conn, scenario, stage, int(seed))
        else:
            build_fresh(conn, scenario, stage, int(seed))
    finally:
        conn.close()
    return scenario


@pytest.fixture(scope="session")
def scenarios_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oracle")


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest, scenarios_dir: Path) -> Scenario:
    """A stored history at one stage (built once, read by every test)."""
    return built(request.param, scenarios_dir)


@pytest.fixture
async def backend(scenario: Scenario) -> AsyncIterator[SqliteBackend]:
    opened = SqliteBackend.open(scenario.path)
    yield opened
    await opened.close()


@pytest.fixture
def db(scenario: Scenario) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{scenario.path}?mode=ro", uri=True)
    yield conn
    conn.close()


# --- windows and filters --------------------------------------------------------------

WINDOWS = {
    "all": (None, None),
    "whole-days": (at(2), at(7)),
    "ragged": (at(2, 5, 17, 3), at(6, 3, 0, 1)),
    "one-day": (at(4), at(5)),
    "in-a-day": (at(4, 1, 0, 5), at(4, 20)),
    "in-an-hour": (at(5, 7, 0, 1), at(5, 7, 59)),
    "midnight": (at(3, 22), at(4, 2)),
    "since": (at(5, 12), None),
    "until": (None, at(3, 0, 0, 1)),
    "empty": (at(3), at(3)),
    "quiet": (at(-30, 1), at(-30, 5)),  # within one day, before most histories begin
}
BUCKET_WINDOWS = {
    name: WINDOWS[name] for name in ("whole-days", "ragged", "one-day", "in-a-day", "midnight")
} | {"wide": (at(-7), at(15))}
ZONES = ("UTC", "Asia/Kolkata", "America/New_York")


def f(field: str, *values: str, negated: bool = False) -> Filter:
    return Filter(field, negated, values)


FILTERS = {
    "none": [],
    "click": [f("action", "click")],
    "click-buy": [f("action", "click", "buy")],
    "not-click": [f("action", "click", negated=True)],
    "s*": [f("action", "s*")],
    "u1*": [f("user", "u1*")],
    "not-u3": [f("user", "u3", negated=True)],
    "value-3": [f("value", "3")],
    "not-v1-2.5": [f("value", "v1", "2.5", negated=True)],
    "pro": [f("extra.plan", "pro")],
    "view-u2": [f("action", "view"), f("user", "u2")],
}
ACTION_FILTERS = ("none", "click", "click-buy", "not-click", "s*")


def zone_of(name: str) -> dt.tzinfo:
    return dt.UTC if name == "UTC" else ZoneInfo(name)


def window_of(name: str, zone: str = "UTC") -> Window:
    since, until = WINDOWS[name] if name in WINDOWS else BUCKET_WINDOWS[name]
    return Window(since, until, zone_of(zone))


# --- the query API against the oracle ---------------------------------------------------


@pytest.mark.parametrize("window", WINDOWS)
async def test_count(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name, filters in FILTERS.items():
        found = scenario.matching(filters, since, until)
        ask = functools.partial(query.count, backend, filters=filters, window=window_of(window))
        assert (await ask(limit=100)).rows == [(len(found),)], name
        for by in ("action", "user", "value", "extra.plan"):
            expected = ranked({k: len(v) for k, v in grouped(found, by).items()})
            assert (await ask(by=by, limit=100)).rows == expected, (name, by)
            assert (await ask(by=by, limit=2)).rows == expected[:2], (name, by)


@pytest.mark.parametrize("window", WINDOWS)
async def test_unique(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name in (*ACTION_FILTERS, "u1*", "pro"):
        filters = FILTERS[name]
        found = scenario.matching(filters, since, until)
        ask = functools.partial(query.unique, backend, filters=filters, window=window_of(window))
        assert (await ask(limit=100)).rows == [(distinct_users(found),)], name
        for by in ("action", "value"):
            expected = ranked({k: distinct_users(v) for k, v in grouped(found, by).items()})
            assert (await ask(by=by, limit=100)).rows == expected, (name, by)


@pytest.mark.parametrize("window", BUCKET_WINDOWS)
@pytest.mark.parametrize("zone", ZONES)
async def test_counts_by_time(
    scenario: Scenario, backend: SqliteBackend, window: str, zone: str
) -> None:
    since, until = BUCKET_WINDOWS[window]
    for unit in ("day", "hour"):
        starts = local_starts(since, until, unit, window_of(window, zone).zone)
        stops = [*starts[1:], until]
        for name in ("none", "click", "not-click", "u1*"):
            found = scenario.matching(FILTERS[name], since, until)
            per_bucket = [
                [e for e in found if start <= e.ts < stop]
                for start, stop in zip(starts, stops, strict=True)
            ]
            pairs = list(zip(starts, per_bucket, strict=True))
            events = [(start, len(bucket)) for start, bucket in pairs]
            users = [(start, distinct_users(bucket)) for start, bucket in pairs]
            args = {"filters": FILTERS[name], "window": window_of(window, zone), "by": unit}
            assert (await query.count(backend, **args, limit=10)).rows == events, (name, unit)
            assert (await query.unique(backend, **args, limit=10)).rows == users, (name, unit)


async def test_counts_by_day_from_the_first_event(
    scenario: Scenario, backend: SqliteBackend
) -> None:
    """Without since=, the buckets start at the first matching event."""
    clicks = FILTERS["click"]
    until = at(6)
    first = min(event.ts for event in scenario.matching(clicks))
    for zone in ZONES:
        window = Window(None, until, zone_of(zone))
        starts = local_starts(first, until, "day", window.zone)
        found = scenario.matching(clicks, first, until)
        stops = [*starts[1:], until]
        buckets = [[e for e in found if a <= e.ts < b] for a, b in zip(starts, stops, strict=True)]
        result = await query.count(backend, filters=clicks, window=window, by="day", limit=10)
        pairs = list(zip(starts, buckets, strict=True))
        assert result.rows == [(a, len(b)) for a, b in pairs], zone
        result = await query.unique(backend, filters=clicks, window=window, by="day", limit=10)
        assert result.rows == [(a, distinct_users(b)) for a, b in pairs], zone


@pytest.mark.parametrize("window", WINDOWS)
async def test_top(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name in (*ACTION_FILTERS, "u1*", "pro"):
        filters = FILTERS[name]
        found = scenario.matching(filters, since, until)
        for field in ("action", "user"):
            expected = ranked(
                {k: (len(v), distinct_users(v)) for k, v in grouped(found, field).items()}
            )
            for n in (4, 100):
                result = await query.top(
                    backend, field, filters=filters, window=window_of(window), n=n
                )
                assert result.rows == expected[:n], (name, field, n)


@pytest.mark.parametrize("window", WINDOWS)
async def test_users(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name in ("none", "click", "not-click", "u1*", "pro"):
        filters = FILTERS[name]
        per_user = grouped(scenario.matching(filters, since, until), "user")
        per_user.pop(None, None)
        for minimum in (1, 30):
            ranking = ranked({u: len(v) for u, v in per_user.items() if len(v) >= minimum})
            for limit in (5, 100):
                result = await query.users(
                    backend, filters=filters, window=window_of(window), minimum=minimum, limit=limit
                )
                assert result.rows == ranking[:limit], (name, minimum, limit)


@pytest.mark.parametrize("window", ["all", "ragged", "in-a-day", "since", "until"])
async def test_user(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    everyone = Counter(e.user for e in scenario.events if e.user is not None)
    busiest, quietest = everyone.most_common()[0][0], everyone.most_common()[-1][0]
    for user in (busiest, quietest, "nobody"):
        for name in ("none", "not-click", "pro"):
            filters = FILTERS[name]
            mine = [e for e in scenario.matching(filters, since, until) if e.user == user]
            ask = functools.partial(
                query.user, backend, user, filters=filters, window=window_of(window)
            )
            if not mine:
                with pytest.raises(QueryError, match="no events for user"):
                    await ask()
                continue
            newest = sorted(mine, key=lambda e: (e.ts, e.id), reverse=True)
            actions = len({e.action for e in mine})
            expected = (min(e.ts for e in mine), max(e.ts for e in mine), len(mine), actions)
            for limit in (3, 1000) if name == "none" else (1000,):
                history = await ask(limit=limit)
                summary = (history.first_seen, history.last_seen, history.events, history.actions)
                assert summary == expected, (user, name)
                assert history.timeline.rows == [e.row for e in newest[:limit]], (user, name)


@pytest.mark.parametrize("window", WINDOWS)
async def test_events(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name in ("none", "not-click", "u1*", "pro", "view-u2"):
        filters = FILTERS[name]
        in_order = sorted(scenario.matching(filters, since, until), key=lambda e: (e.ts, e.id))
        for descending in (True, False):
            ordered = in_order[::-1] if descending else in_order
            for limit in (25, 10_000):
                result = await query.events(
                    backend,
                    filters=filters,
                    window=window_of(window),
                    limit=limit,
                    descending=descending,
                )
                assert result.rows == [e.row for e in ordered[:limit]], (name, descending, limit)


@pytest.mark.parametrize("window", ["all", "ragged", "in-a-day", "since"])
async def test_export(scenario: Scenario, backend: SqliteBackend, window: str) -> None:
    since, until = WINDOWS[window]
    for name in ("none", "click", "not-u3", "pro"):
        filters = FILTERS[name]
        pages = [
            page async for page in query.export(backend, filters=filters, window=window_of(window))
        ]
        exported = [row for page in pages for row in page]
        assert exported == [e.row for e in scenario.matching(filters, since, until)], name
        assert all(page for page in pages)


async def test_events_after_an_id(scenario: Scenario, backend: SqliteBackend) -> None:
    top = scenario.oracle.max_id
    assert await query.max_event_id(backend) == top
    for name in ("none", "u1*", "not-click"):
        filters = FILTERS[name]
        found = scenario.matching(filters)
        for after in (0, 1, top // 2, top - 1000, top - 999, top - 1001, top - 5, top, top + 3):
            new = await query.events_after(backend, filters=filters, after=after)
            if top <= after:
                assert (new.rows, new.skipped, new.last_id) == ([], 0, after)
                continue
            first = max(after, top - 1000)
            rows = [e.row for e in found if first < e.id <= top]
            skipped = sum(1 for e in found if after < e.id <= first)
            assert (new.rows, new.skipped, new.last_id) == (rows, skipped, top), (name, after)
            # Every event after `after` is either given or counted.
            assert len(new.rows) + new.skipped == sum(1 for e in found if e.id > after)
        for n in (1, 7, 1500, 100_000):
            latest = await query.latest_events(backend, filters=filters, n=n)
            assert latest == [e.row for e in found[-n:]], (name, n)


async def test_storage_summary(scenario: Scenario, backend: SqliteBackend) -> None:
    summary = await query.storage_summary(backend)
    times = [event.ts for event in scenario.events]
    got = (summary["events_in_database"], summary["oldest_event"], summary["newest_event"])
    assert got == (len(times), min(times), max(times))


# --- the tables against the oracle ----------------------------------------------------


def dictionary(db: sqlite3.Connection, table: str) -> dict[str, int]:
    rows = db.execute(f"SELECT name, id FROM {table}").fetchall()
    assert len({name for name, _ in rows}) == len(rows)
    return dict(rows)


def test_the_events_view_holds_exactly_the_stored_events(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    view = db.execute("SELECT * FROM events ORDER BY id").fetchall()
    assert view == [event.view_row for event in scenario.events]


def test_dictionaries_hold_each_name_once(scenario: Scenario, db: sqlite3.Connection) -> None:
    """Every name stored, once, even when its events were dropped since."""
    assert set(dictionary(db, "users")) == scenario.oracle.users
    assert set(dictionary(db, "actions")) == scenario.oracle.actions
    assert 0 not in dictionary(db, "users").values()
    assert 0 not in dictionary(db, "actions").values()


def tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND (name GLOB 'events_*' OR name = ?)",
        (LEGACY,),
    )
    return {name for (name,) in rows}


def test_each_partition_holds_exactly_its_events(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    homes: dict[str, list[Event]] = {}
    for event in scenario.events:
        homes.setdefault(event.home, []).append(event)
    present = tables(db)
    partitions = {t for t in present if not t.endswith("_by_user")}
    assert partitions == set(homes) | ({LATE} & present)
    assert present - partitions == {f"{t}_by_user" for t in partitions - {LEGACY}}
    catalog = {
        name: rest
        for name, *rest in db.execute(
            "SELECT name, rows, min_ts, max_ts, min_id, max_id FROM partitions"
            " WHERE dropped_at IS NULL"
        )
    }
    assert set(catalog) == partitions
    for name in partitions:
        rows = db.execute(f"SELECT id, ts FROM {name} ORDER BY id").fetchall()
        assert rows == [(e.id, e.ts) for e in homes.get(name, [])], name
        count, min_ts, max_ts, min_id, max_id = catalog[name]
        assert count == len(rows), name
        if name.startswith("events_2"):
            assert {ts // DAY for _, ts in rows} == {table_day(name)}
            ids, times = [i for i, _ in rows], [ts for _, ts in rows]
            assert (min_ts, max_ts, min_id, max_id) == (min(times), max(times), min(ids), max(ids))
        elif rows:
            # events_late and the old table: bounds (retention narrows the times of late
            # events, not their ids; the mover narrows neither for the old table).
            times = [ts for _, ts in rows]
            assert min_ts <= min(times) and max_ts >= max(times), name
            assert min_id <= rows[0][0] and max_id >= rows[-1][0], name
            if name == LATE:
                assert (min_ts, max_ts) == (min(times), max(times))


def test_hourly_counts_equal_the_events(scenario: Scenario, db: sqlite3.Connection) -> None:
    table = {
        (hour, action): events
        for hour, action, events in db.execute(
            "SELECT h.hour, a.name, h.events FROM hourly_counts h"
            " LEFT JOIN actions a ON a.id = h.action"
        )
    }
    view = Counter(
        (ts - ts % HOUR, action) for ts, action in db.execute("SELECT ts, action FROM events")
    )
    oracle = Counter((e.ts - e.ts % HOUR, e.action) for e in scenario.events)
    assert table == dict(view) == dict(oracle)


def test_indexed_tables_hold_exactly_the_rows_below_each_watermark(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    """The by-user table of each partition and daily_users hold the rows with ids up to
    the partition's indexed_through, and nothing else; after the indexer ran, all rows."""
    users, actions = dictionary(db, "users"), dictionary(db, "actions")
    marks = dict(
        db.execute(
            "SELECT name, indexed_through FROM partitions"
            " WHERE dropped_at IS NULL AND kind != 'legacy'"
        ).fetchall()
    )
    indexed = [e for e in scenario.events if e.home in marks and e.id <= marks[e.home]]
    if scenario.indexed:
        assert indexed == [e for e in scenario.events if e.home != LEGACY]
        assert len(indexed) == len(scenario.events)
    elif scenario.name.startswith("part-way"):
        assert 0 < len(indexed) < len(scenario.events)
    for name in marks:
        by_user = db.execute(f"SELECT action, user, ts, id FROM {name}_by_user").fetchall()
        expected = [
            (actions[e.action], 0 if e.user is None else users[e.user], e.ts, e.id)
            for e in indexed
            if e.home == name
        ]
        assert sorted(by_user) == sorted(expected), name
    assert daily_users(db) == expected_daily_users(indexed, users, actions)
    if scenario.indexed:
        # The same from the events view alone.
        view = [
            Event(i, ts, 0, user, action, None, None, None, "")
            for i, ts, user, action in db.execute("SELECT id, ts, user_id, action FROM events")
        ]
        assert daily_users(db) == expected_daily_users(view, users, actions)


def daily_users(db: sqlite3.Connection) -> list[tuple[int, ...]]:
    return db.execute(
        "SELECT day, action, user, first_ms, last_ms FROM daily_users ORDER BY 1, 2, 3"
    ).fetchall()


def expected_daily_users(
    events: Iterable[Event], users: dict[str, int], actions: dict[str, int]
) -> list[tuple[int, ...]]:
    spans: dict[tuple[int, int, int], tuple[int, int]] = {}
    for e in events:
        if e.user is None:
            continue
        day, offset = divmod(e.ts, DAY)
        for action in (actions[e.action], 0):
            key = (day, action, users[e.user])
            low, high = spans.get(key, (offset, offset))
            spans[key] = (min(low, offset), max(high, offset))
    return sorted((*key, low, high) for key, (low, high) in spans.items())


def test_dedup_ids_are_those_of_the_stored_events(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    """event_ids holds the msg_id and day of every stored event that has one (the old
    table's own unique index answers for the rows it still holds)."""
    table = dict(db.execute("SELECT msg_id, day FROM event_ids").fetchall())
    expected = {
        e.msg_id: e.ts // DAY for e in scenario.events if e.msg_id is not None and e.home != LEGACY
    }
    assert table == expected


# --- the histories, retention and the upgrade -------------------------------------------


@pytest.mark.parametrize("scenario", ["tails-1", "tails-2"], indirect=True)
def test_the_histories_hold_every_kind_of_event(scenario: Scenario) -> None:
    oracle = scenario.oracle
    stored = scenario.events
    assert len(stored) > 2000
    assert oracle.repeats_within > 0 and oracle.repeats_across > 0
    assert any(e.user is None for e in stored)
    late = [e for e in stored if e.home == LATE]
    commit_days = {t // DAY for t in COMMIT_TIMES}
    assert any(e.ts // DAY < min(commit_days) - 2 for e in late)
    assert any(e.ts // DAY > max(commit_days) + 1 for e in late)
    assert len({e.home for e in stored if e.home != LATE}) >= 6


@pytest.mark.parametrize("scenario", RETAINED, indirect=True)
def test_retention_drops_every_day_before_the_cutoff_and_only_those(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    (done, expected), *again = scenario.retention_runs
    assert done == expected
    days = [name.removeprefix("retired ") for name in done if name.startswith("retired ")]
    assert len(days) >= 3 and done[-1] == "event_ids"
    if again:
        # The second time, only late events (of the commit after the first) were left.
        [(second, second_expected)] = again
        assert second == second_expected
        assert "late events" in second
        assert min(e.ts for e in scenario.events) >= CUTOFF_DAY * DAY
        left = (
            ("hourly_counts", "hour", CUTOFF_DAY * DAY),
            ("daily_users", "day", CUTOFF_DAY),
            ("event_ids", "day", CUTOFF_DAY),
            ("events", "ts", CUTOFF_DAY * DAY),
        )
        for table, column, first_kept in left:
            sql = f"SELECT count(*) FROM {table} WHERE {column} < ?"
            assert db.execute(sql, (first_kept,)).fetchone() == (0,), table
    dropped = db.execute("SELECT name FROM partitions WHERE dropped_at IS NOT NULL").fetchall()
    assert sorted(name for (name,) in dropped) == days
    for (name,) in dropped:
        assert table_day(name) < CUTOFF_DAY
        assert db.execute("SELECT count(*) FROM blocks WHERE part = ?", (name,)).fetchone() == (0,)


@pytest.mark.parametrize("scenario", UPGRADED, indirect=True)
def test_upgrade_keeps_every_old_row_with_its_id(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    last_old = scenario.oracle.legacy_last
    assert last_old == len(scenario.old_rows)
    view = db.execute("SELECT * FROM events WHERE id <= ? ORDER BY id", (last_old,)).fetchall()
    assert view == scenario.old_rows
    left = db.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (LEGACY,)).fetchone()
    old_left = sum(1 for e in scenario.events if e.home == LEGACY)
    stage = scenario.name.rsplit("-", 1)[0]
    if stage == "legacy":
        assert (left, old_left) == ((1,), len(scenario.old_rows))
    elif stage == "moving":
        assert left == (1,) and 0 < old_left < len(scenario.old_rows)
    else:
        assert (left, old_left) == ((0,), 0)
    assert {e.home for e in scenario.events if e.action == "archive"} <= {LEGACY, LATE}


@pytest.mark.parametrize("scenario", UPGRADED, indirect=True)
def test_old_msg_ids_still_drop_repeated_events(scenario: Scenario) -> None:
    """Each commit after the upgrade repeats 30 old msg_ids: none of those rows is stored,
    whether the old row is still in the old table or moved (the counts the writer gave
    were checked against the oracle's as the history was stored)."""
    commits = 4 if scenario.name.startswith("moved") else 3
    assert scenario.oracle.repeats_of_old >= commits * 30
    old_msg_ids = {row[7] for row in scenario.old_rows if row[7] is not None}
    for event in scenario.events:
        if event.id > scenario.oracle.legacy_last:
            assert event.msg_id not in old_msg_ids


# --- a day dropped while it is still near ------------------------------------------------


async def test_a_dropped_day_comes_back_when_its_events_arrive_again(tmp_path: Path) -> None:
    """With retention_days no more than late_after_days, retention can drop a day that a
    commit still routes to its own partition: the day's partition is made again, and the
    next retention drops it again."""
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn)
    writer = BulkWriter(conn, late_after_days=1)
    oracle = Oracle(1)
    store(writer, oracle, [(at(0, 5), at(0, 5), "u1", "view", 1, None, "a")], at(0, 6))
    store(writer, oracle, [(at(1, 5), at(1, 5), "u2", "view", 2, None, "b")], at(1, 6))
    writer.index()
    done, expected = retain(writer, oracle, FIRST_DAY + 1)
    assert done == expected == [*purged_day(FIRST_DAY), "event_ids"]
    again = [
        (at(0, 7), at(1, 7), "u3", "click", 3, None, "a"),
        (at(1, 8), at(1, 8), None, "buy", 4, None, "b"),
    ]
    store(writer, oracle, again, at(1, 9))
    assert [e.home for e in sorted(oracle.events.values(), key=lambda e: e.id)] == [
        day_table(FIRST_DAY + 1),
        day_table(FIRST_DAY),
    ]
    view = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    assert view == [e.view_row for e in sorted(oracle.events.values(), key=lambda e: e.id)]
    backend = SqliteBackend.open(path)
    try:
        assert (await query.count(backend, limit=10)).rows == [(2,)]
        assert (await query.unique(backend, window=Window(at(0), at(2)), limit=10)).rows == [(2,)]
        writer.index()
        assert (await query.unique(backend, window=Window(at(0), at(2)), limit=10)).rows == [(2,)]
        assert (await query.top(backend, "action")).rows == [("click", 1, 1), ("view", 1, 1)]
        done, expected = retain(writer, oracle, FIRST_DAY + 1)
        assert done == expected == [*purged_day(FIRST_DAY), "event_ids"]
        assert (await query.count(backend, limit=10)).rows == [(1,)]
        assert (await query.events(backend)).rows == [e.row for e in oracle.events.values()]
    finally:
        await backend.close()
        conn.close()


@pytest.mark.parametrize("scenario", ["long-5"], indirect=True)
def test_more_partitions_than_one_compound_select_may_name(
    scenario: Scenario, db: sqlite3.Connection
) -> None:
    """The other tests ask every question of this history too; here, that it is one."""
    (days,) = db.execute(
        "SELECT count(*) FROM partitions WHERE kind = 'day' AND dropped_at IS NULL"
    ).fetchone()
    assert days > 500
    views = db.execute("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
    assert [name for (name,) in views] == ["events", "events_2022", "events_2023", "events_2024"]


class AsyncWriter:
    """The writer's face that Background uses, over a BulkWriter."""

    def __init__(self, writer: BulkWriter) -> None:
        self.writer = writer

    @property
    def catalog(self) -> Any:
        return self.writer.catalog

    async def transaction(self, plan: Plan[Any]) -> Any:
        return self.writer.transaction(plan)


async def test_background_retention_drops_the_days_then_their_dedup_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background asks for retention steps while there is anything before the cutoff:
    the days, the late events, and then the dedup ids of what was dropped."""
    now = at(10, 12)
    monkeypatch.setattr(background, "now_ms", lambda: now)
    conn = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    schema.migrate(conn)
    writer = BulkWriter(conn)
    oracle = Oracle(1)
    rng = random.Random(7)
    for day in range(3, 11):
        rows = random_rows(rng, at(day, 12), 50, 10_000)
        store(
            writer, oracle, [(*row[:6], f"d{day}-{n}") for n, row in enumerate(rows)], at(day, 12)
        )
    writer.index()
    settings = WriterSettings(
        path=tmp_path / "events.db",
        batch_size=100,
        batch_max_age=0.1,
        synchronous="normal",
        delay=0.0,
        retention_days=3,
        late_after_days=1,
    )
    ticks = iter(range(1000))
    work = background.Background(AsyncWriter(writer), settings, lambda: float(next(ticks)))
    cutoff_day = FIRST_DAY + 10 - 3 + 1
    expected = oracle.retention_steps(cutoff_day)
    assert len(expected) >= 5 and expected[-1] == "event_ids"
    before = sorted(oracle.events.values(), key=lambda e: e.id)
    dropped_id = next(e.msg_id for e in before if e.ts < cutoff_day * DAY)
    kept_id = next(e.msg_id for e in before if e.ts >= cutoff_day * DAY)
    daily = conn.execute("SELECT count(*) FROM daily_users WHERE day < ?", (cutoff_day,))
    clearing_daily_users = 1 if daily.fetchone()[0] else 0
    done = 0
    while await work.step():
        done += 1
        assert done <= 100
    assert done == len(expected) + clearing_daily_users
    oracle.retain(cutoff_day)
    view = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    assert view == [e.view_row for e in sorted(oracle.events.values(), key=lambda e: e.id)]
    ids = dict(conn.execute("SELECT msg_id, day FROM event_ids").fetchall())
    assert ids == {e.msg_id: e.ts // DAY for e in oracle.events.values() if e.msg_id}
    assert min(ids.values()) >= cutoff_day
    # A repeat of a dropped event's msg_id is stored again; one of a kept event is not.
    again = [(at(10, 13), at(10, 13), None, "view", 1, None, m) for m in (dropped_id, kept_id)]
    store(writer, oracle, again, now)
    repeats = conn.execute(
        "SELECT msg_id, count(*) FROM events WHERE msg_id IN (?, ?) GROUP BY msg_id ORDER BY 1",
        (dropped_id, kept_id),
    ).fetchall()
    assert repeats == sorted([(dropped_id, 1), (kept_id, 1)])
    assert conn.execute("SELECT ts FROM events WHERE msg_id = ?", (dropped_id,)).fetchone() == (
        at(10, 13),
    )
    conn.close()
