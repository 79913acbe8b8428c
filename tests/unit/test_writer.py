"""collector.storage.writer.Writer with a real SQLite file and a real EventBuffer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.buffer import CommitResult, EventBuffer, Group, QuarantineRow
from collector.events import ROW_OVERHEAD_BYTES, Row
from collector.settings import BufferSettings, WriterSettings
from collector.stats import Stats
from collector.storage import schema
from collector.storage.writer import Writer, prepare_database
from collector.testing import wait_until

ALL_MIGRATIONS = [migration.version for migration in schema.MIGRATIONS]

LONG_AGE = 3600.0  # a batch age no test waits for
WITHIN = 10.0  # seconds allowed for any awaited condition


class FakeClock:
    """A monotonic clock that moves only when told to; counts how often it is read."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def row(i: int, msg_id: str | None = None, **changes: Any) -> Row:
    values: dict[str, Any] = {
        "ts": 1_700_000_000_000 + i,
        "received_at": 1_700_000_001_000,
        "user_id": f"u{i}",
        "action": "act",
        "value": i,
        "extra": None,
        "msg_id": msg_id,
    }
    values.update(changes)
    return (
        values["ts"],
        values["received_at"],
        values["user_id"],
        values["action"],
        values["value"],
        values["extra"],
        values["msg_id"],
    )


def rows(count: int, start: int = 0) -> list[Row]:
    return [row(i) for i in range(start, start + count)]


def size_of(new_rows: list[Row]) -> int:
    """Buffer bytes for rows, roughly as ingest accounts them."""
    return sum(ROW_OVERHEAD_BYTES + len(r[3]) for r in new_rows)


def quarantine(reason: str, raw: bytes = b"\xc1") -> QuarantineRow:
    return (1_700_000_002_000, "udp:127.0.0.1:5000", reason, raw)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read through a fresh connection, as any outside reader would."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@dataclass
class Running:
    path: Path
    writer: Writer
    buffer: EventBuffer
    stats: Stats
    task: asyncio.Task[None]

    def add(self, new_rows: list[Row], quarantined: Iterable[QuarantineRow] = ()) -> None:
        """Unacknowledged input, as UDP delivers it."""
        records = list(quarantined)
        nbytes = size_of(new_rows) + sum(len(q[3]) for q in records)
        self.buffer.add_rows(new_rows, records, nbytes, len(records))

    def add_acked(
        self, new_rows: list[Row], quarantined: Iterable[QuarantineRow] = ()
    ) -> asyncio.Future[CommitResult]:
        """An acknowledged batch, as TCP delivers it; the future gets its CommitResult."""
        records = list(quarantined)
        result: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        nbytes = size_of(new_rows)
        group = Group(new_rows, records, self.buffer.clock(), nbytes, len(records))
        group.on_commit = result.set_result
        self.buffer.add(group)
        return result

    def count(self, table: str = "events") -> int:
        return int(query(self.path, f"SELECT count(*) FROM {table}")[0][0])

    async def wait_for_commits(self, expected: int) -> None:
        """Wait until the writer has finished `expected` commits (counted after COMMIT)."""
        await wait_until(lambda: self.stats.batches_committed >= expected, within=WITHIN)
        assert self.stats.batches_committed == expected

    async def stop(self) -> None:
        self.writer.stop()
        await asyncio.wait_for(asyncio.shield(self.task), WITHIN)


StartWriter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_writer(tmp_path: Path) -> AsyncIterator[StartWriter]:
    started: list[Running] = []

    async def start(
        *,
        batch_size: int,
        batch_max_age: float,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 100_000,
        low_water: float = 0.5,
    ) -> Running:
        stats = Stats()
        limits = BufferSettings(max_events, 1 << 30, low_water, eager_acks=False)
        buffer = EventBuffer(limits, stats, wake_at=batch_size, clock=clock)
        path = tmp_path / "events.db"
        settings = WriterSettings(path, batch_size=batch_size, batch_max_age=batch_max_age)
        writer = Writer(settings, buffer, stats, clock=clock)
        applied = await writer.open()
        task = asyncio.create_task(writer.run())
        running = Running(path, writer, buffer, stats, task)
        started.append(running)  # before any assertion, so teardown always closes it
        assert applied in (ALL_MIGRATIONS, [])
        return running

    yield start
    for running in started:
        running.writer.stop()
        try:
            await asyncio.wait_for(running.task, WITHIN)
        finally:
            await running.writer.close()


# --- opening -------------------------------------------------------------------------------


def test_prepare_database_creates_directory_wal_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "events.db"
    assert prepare_database(path, "normal") == ALL_MIGRATIONS
    assert path.exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [version for (version,) in versions] == ALL_MIGRATIONS
    finally:
        conn.close()
    assert prepare_database(path, "full") == []


async def test_open_reports_the_migrations_applied(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    for expected in (ALL_MIGRATIONS, []):
        stats = Stats()
        buffer = EventBuffer(BufferSettings(10, 10_000, 0.5), stats)
        writer = Writer(WriterSettings(path, batch_size=1, batch_max_age=0.01), buffer, stats)
        try:
            assert await writer.open() == expected
        finally:
            await writer.close()


async def test_db_before_open_is_an_error(tmp_path: Path) -> None:
    stats = Stats()
    buffer = EventBuffer(BufferSettings(10, 10_000, 0.5), stats)
    settings = WriterSettings(tmp_path / "x.db", batch_size=1, batch_max_age=0.01)
    writer = Writer(settings, buffer, stats)
    with pytest.raises(RuntimeError, match="not open"):
        _ = writer.db
    await writer.close()  # closing a writer that never opened is harmless


# --- batching by size ----------------------------------------------------------------------


async def test_batch_size_rows_commit_without_waiting_for_the_age(
    start_writer: StartWriter,
) -> None:
    running = await start_writer(batch_size=5, batch_max_age=LONG_AGE)
    running.add(rows(5))
    await running.wait_for_commits(1)
    assert running.count() == 5
    assert running.stats.events_stored == 5
    assert running.stats.events_duplicate == 0


async def test_writer_waiting_for_age_wakes_when_batch_size_is_reached(
    start_writer: StartWriter,
) -> None:
    clock = FakeClock()  # frozen: the batch never ages
    running = await start_writer(batch_size=5, batch_max_age=LONG_AGE, clock=clock)
    reads = clock.reads
    running.add([row(0)])
    # the writer woke up, read the clock and now waits for more rows or the age
    await wait_until(lambda: clock.reads >= reads + 2, within=WITHIN)
    assert running.count() == 0
    for i in range(1, 5):
        running.add([row(i)])
    await running.wait_for_commits(1)
    assert running.count() == 5


async def test_each_full_batch_is_its_own_commit(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=4, batch_max_age=LONG_AGE)
    running.add(rows(4))
    await running.wait_for_commits(1)
    running.add(rows(4, start=4))
    await running.wait_for_commits(2)
    assert running.count() == 8
    values = [v for (v,) in query(running.path, "SELECT value FROM events ORDER BY id")]
    assert values == list(range(8))


async def test_fewer_than_batch_size_rows_wait_for_the_age(start_writer: StartWriter) -> None:
    """With a frozen clock the batch never ages: the writer keeps re-checking (every
    batch_max_age of real time) and commits nothing until the clock moves on."""
    clock = FakeClock()
    running = await start_writer(batch_size=10, batch_max_age=0.05, clock=clock)
    running.add(rows(3))
    reads = clock.reads
    await wait_until(lambda: clock.reads >= reads + 5, within=WITHIN)
    assert running.count() == 0
    assert running.stats.batches_committed == 0
    assert running.buffer.pending_events == 3

    clock.advance(0.06)
    await running.wait_for_commits(1)
    assert running.count() == 3
    assert running.stats.latency.max == pytest.approx(0.06)


async def test_commit_by_age(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.2)
    running.add(rows(2))
    await running.wait_for_commits(1)
    assert running.count() == 2
    # the writer's own measure of the batch's age when it committed
    assert running.stats.latency.max >= 0.2
    assert running.stats.latency.total == 2


# --- acknowledged groups -------------------------------------------------------------------


async def test_acked_group_counts_duplicates_within_the_group(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.01)
    batch = [row(0, "a"), row(1, "a"), row(2, "b"), row(3), row(4)]
    group = running.add_acked(batch, [quarantine("bad 1"), quarantine("bad 2")])
    result = await asyncio.wait_for(group, WITHIN)
    assert result == CommitResult(stored=4, duplicates=1, rejected=2)
    assert running.count() == 4
    assert running.count("quarantine") == 2
    stored = query(running.path, "SELECT value, msg_id FROM events ORDER BY id")
    assert stored == [(0, "a"), (2, "b"), (3, None), (4, None)]


async def test_acked_groups_count_duplicates_across_commits(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.01)
    first = await asyncio.wait_for(running.add_acked([row(0, "a"), row(1, "b"), row(2)]), WITHIN)
    assert first == CommitResult(3, 0, 0)
    second = await asyncio.wait_for(
        running.add_acked([row(3, "a"), row(4, "c"), row(5, "b"), row(6)]), WITHIN
    )
    assert second == CommitResult(2, 2, 0)
    assert running.count() == 5
    assert running.stats.batches_committed == 2
    assert running.stats.events_stored == 5
    assert running.stats.events_duplicate == 2


async def test_acked_and_unacked_groups_in_one_commit_are_counted_apart(
    start_writer: StartWriter,
) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=LONG_AGE)
    running.add([row(0, "x"), row(1)])
    first = running.add_acked([row(2, "x"), row(3, "y")])
    running.add([row(4, "y"), row(5, "w")])
    second = running.add_acked([row(6, "y"), row(7, "z"), row(8, "w")])
    await running.stop()  # flushes everything in one commit
    assert first.result() == CommitResult(1, 1, 0)
    assert second.result() == CommitResult(1, 2, 0)
    assert running.stats.batches_committed == 1
    assert running.stats.events_stored == 5
    assert running.stats.events_duplicate == 4
    stored = query(running.path, "SELECT value, msg_id FROM events ORDER BY id")
    assert stored == [(0, "x"), (1, None), (3, "y"), (5, "w"), (7, "z")]


async def test_acked_group_without_rows_is_still_acknowledged(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.01)
    group = running.add_acked([], [quarantine("r1", b"\x01"), quarantine("r2", b"\x02")])
    assert await asyncio.wait_for(group, WITHIN) == CommitResult(0, 0, 2)
    assert running.count() == 0
    assert running.count("quarantine") == 2


async def test_empty_acked_group_is_acknowledged(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.01)
    assert await asyncio.wait_for(running.add_acked([]), WITHIN) == CommitResult(0, 0, 0)


# --- what is stored ------------------------------------------------------------------------


async def test_rows_are_stored_as_given(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=6, batch_max_age=LONG_AGE)
    given = [
        row(0, "m0", value="text", extra='{"a":[1,2]}'),
        row(1, value=2**63 - 1, user_id=None),
        row(2, value=-2.5),
        row(3, value=True),
        row(4, value=None, extra="{}"),
        row(5, "m5", action="é" * 200),
    ]
    running.add(given)
    await running.wait_for_commits(1)
    stored = query(
        running.path,
        "SELECT ts, received_at, user_id, action, value, extra, msg_id FROM events ORDER BY id",
    )
    expected = [r if r[4] is not True else (*r[:4], 1, *r[5:]) for r in given]
    assert stored == expected


async def test_quarantine_records_are_written(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=0.01)
    running.add([], [quarantine("action is missing", b"\x81\xa1x\x01")])
    running.add([row(0)], [quarantine("not valid msgpack", b"\xc1\xc1")])
    await wait_until(lambda: running.stats.quarantined >= 2, within=WITHIN)
    assert running.stats.quarantined == 2
    assert running.count() == 1
    stored = query(
        running.path, "SELECT received_at, source, reason, raw FROM quarantine ORDER BY id"
    )
    assert stored == [
        (1_700_000_002_000, "udp:127.0.0.1:5000", "action is missing", b"\x81\xa1x\x01"),
        (1_700_000_002_000, "udp:127.0.0.1:5000", "not valid msgpack", b"\xc1\xc1"),
    ]


# --- the buffer after a commit -------------------------------------------------------------


async def test_commit_releases_the_buffer_and_wakes_paused_producers(
    start_writer: StartWriter,
) -> None:
    running = await start_writer(batch_size=10, batch_max_age=LONG_AGE, max_events=10)
    room = asyncio.Event()
    running.add(rows(10))
    assert running.buffer.full()
    running.buffer.wait_for_room("connection", room.set)
    await asyncio.wait_for(room.wait(), WITHIN)
    assert running.count() == 10
    assert running.stats.buffer_events == 0
    assert running.stats.buffer_bytes == 0
    assert not running.buffer.full()


# --- stop and close ------------------------------------------------------------------------


async def test_stop_flushes_everything_without_waiting_for_the_age(
    start_writer: StartWriter,
) -> None:
    running = await start_writer(batch_size=1000, batch_max_age=LONG_AGE)
    running.add(rows(3), [quarantine("bad")])
    acked = running.add_acked(rows(2, start=3))
    await running.stop()
    assert running.task.done()
    assert running.count() == 5
    assert running.count("quarantine") == 1
    assert acked.result() == CommitResult(2, 0, 0)
    assert running.stats.buffer_events == 0
    assert not running.buffer.groups


async def test_stop_flushes_in_batches_of_whole_groups(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=3, batch_max_age=LONG_AGE)
    running.add(rows(2))
    acked = [running.add_acked([row(i)]) for i in range(2, 8)]
    await running.stop()
    assert running.count() == 8
    # take(3) per commit: [2 rows + 1], [1 + 1 + 1], [1 + 1]
    assert running.stats.batches_committed == 3
    assert [future.result() for future in acked] == [CommitResult(1, 0, 0)] * 6


async def test_stop_of_an_idle_writer_returns(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=10, batch_max_age=LONG_AGE)
    await running.stop()
    assert running.task.done()
    assert running.count() == 0


async def test_close_checkpoints_the_wal(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=50, batch_max_age=LONG_AGE)
    running.add(rows(50))
    await running.wait_for_commits(1)
    wal = running.path.with_name(running.path.name + "-wal")
    assert wal.exists()
    assert wal.stat().st_size > 0
    await running.stop()
    await running.writer.close()
    assert not wal.exists() or wal.stat().st_size == 0
    assert running.count() == 50
    await running.writer.close()  # a second close is harmless


# --- commit failures -----------------------------------------------------------------------


async def test_failed_commit_is_retried_until_it_succeeds(start_writer: StartWriter) -> None:
    running = await start_writer(batch_size=2, batch_max_age=LONG_AGE)
    await running.writer.db.execute("PRAGMA busy_timeout = 0")
    blocker = sqlite3.connect(running.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        acked = running.add_acked([row(0, "a"), row(1, "a")])
        await wait_until(lambda: running.stats.commit_errors >= 2, within=WITHIN)
        assert not acked.done()
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert await asyncio.wait_for(acked, WITHIN) == CommitResult(1, 1, 0)
    assert running.count() == 1
    assert running.stats.batches_committed == 1
