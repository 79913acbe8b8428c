"""The daemon's storage over time: days dropped by retention at start, a database of the
previous layout upgraded while ingest goes on, and `collector compact`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from collector.clock import DAY_MS, now_ms
from collector.storage import schema
from collector.testing import (
    QueryClient,
    TcpClient,
    read_rows,
    running_daemon,
    wait_until,
)

TODAY = now_ms() // DAY_MS * DAY_MS + 1000  # a second into today, UTC


def events_on(days_ago: int, count: int, action: str) -> list[dict[str, object]]:
    ts = (TODAY - days_ago * DAY_MS) / 1000
    return [
        {"action": action, "user_id": f"u{n}", "ts": ts, "id": f"{action}-{n}"}
        for n in range(count)
    ]


async def store(address: object, events: list[dict[str, object]]) -> None:
    client = await TcpClient.connect(address)  # type: ignore[arg-type]
    await client.send({"events": events, "ack": "all"})
    reply = await client.reply()
    await client.close()
    assert reply["stored"] == len(events)


async def count(query: QueryClient, line: str) -> str:
    data, status = await query.ask(line)
    assert status.startswith("OK"), status
    return data[1]


async def test_retention_drops_whole_days_with_their_rollups(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        await store(daemon.tcp, events_on(0, 3, "today") + events_on(1, 4, "yesterday"))
        # Three days ago is late (late_after_days=1): the late partition, not a day's.
        await store(daemon.tcp, events_on(3, 5, "older") + events_on(6, 6, "oldest"))
    parts = {name for (name,) in read_rows(db_path, "SELECT name FROM partitions")}
    assert "events_late" in parts and len(parts) == 3
    async with running_daemon(db_path, retention_days=2) as daemon:
        query = await QueryClient.connect(daemon.query)
        await wait_until(lambda: read_rows(db_path, "SELECT count(*) FROM events")[0][0] == 7)
        assert await count(query, "COUNT") == "7"
        assert await count(query, "COUNT action=older,oldest") == "0"
        assert await count(query, "UNIQUE") == "4"
        await query.close()
    hourly = read_rows(db_path, "SELECT sum(events) FROM hourly_counts")[0][0]
    assert hourly == 7
    oldest_day = read_rows(db_path, "SELECT min(day) FROM daily_users")[0][0]
    assert oldest_day == TODAY // DAY_MS - 1


def old_database(path: Path, rows: int) -> None:
    """A database of the layout before partitions (migrations 1 and 2) holding `rows`."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrations = schema.MIGRATIONS
    try:
        schema.MIGRATIONS = migrations[:2]
        schema.migrate(conn)
    finally:
        schema.MIGRATIONS = migrations
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (ts, received_at, user_id, action, value, extra, msg_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (TODAY - n * 60_000, TODAY, f"u{n % 7}", f"a{n % 3}", n, None, f"old-{n}")
            for n in range(rows)
        ],
    )
    conn.execute("COMMIT")
    conn.close()


async def test_an_old_database_is_upgraded_while_ingest_goes_on(db_path: Path) -> None:
    old_database(db_path, 50_000)
    async with running_daemon(db_path) as daemon:
        # The old rows are queried as they move; a repeated id of an old event is a duplicate.
        await store(daemon.tcp, [{"action": "new", "user_id": "u1", "id": "fresh"}])
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": [{"action": "a0", "id": "old-0"}], "ack": "again"})
        assert (await client.reply())["duplicates"] == 1
        await client.close()
        query = await QueryClient.connect(daemon.query)
        assert await count(query, "COUNT") == "50001"
        await wait_until(
            lambda: (
                not read_rows(db_path, "SELECT count(*) FROM partitions WHERE kind = 'legacy'")[0][
                    0
                ]
            ),
            within=60,
        )
        assert await count(query, "COUNT") == "50001"
        assert await count(query, "UNIQUE") == "7"
        assert await count(query, "COUNT action=a1") == str(len(range(1, 50_000, 3)))
        await query.close()
    tables = {name for (name,) in read_rows(db_path, "SELECT name FROM sqlite_master")}
    assert "legacy_events" not in tables
    ids = read_rows(db_path, "SELECT min(id), max(id) FROM events WHERE action != 'new'")
    assert ids == [(1, 50_000)]


@pytest.mark.parametrize("old_layout", [False, True])
def test_compact_gives_freed_pages_back(db_path: Path, old_layout: bool) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    if old_layout:
        conn.execute("PRAGMA auto_vacuum = NONE")
    else:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,) for _ in range(2000)])
    conn.execute("COMMIT")
    conn.execute("DROP TABLE filler")
    conn.close()
    before = db_path.stat().st_size
    result = subprocess.run(
        [sys.executable, "-m", "collector", "compact", "--db", str(db_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    after = db_path.stat().st_size
    assert after < before / 4
    assert ("rebuilt with VACUUM" in result.stdout) is old_layout
    mode = read_rows(db_path, "PRAGMA auto_vacuum")[0][0]
    assert mode == 2  # incremental from now on
