"""The query port against an in-process daemon: framing, errors, verbs, formats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

from collector.testing import QueryClient, StartedDaemon, TcpClient, running_daemon


def at(iso_day: str, hour: int = 12) -> msgpack.Timestamp:
    moment = datetime.fromisoformat(iso_day).replace(hour=hour, tzinfo=UTC)
    return msgpack.Timestamp(int(moment.timestamp()), 0)


SEED = [
    {"action": "signup", "user_id": "u1", "ts": at("2024-05-01", 9), "extra": {"plan": "pro"}},
    {"action": "login", "user_id": "u1", "ts": at("2024-05-01", 10), "value": 3},
    {"action": "login", "user_id": "u2", "ts": at("2024-05-01", 11), "value": 4},
    {"action": "click", "user_id": "u2", "ts": at("2024-05-03", 8), "value": "buy button"},
    {
        "action": "click",
        "user_id": "u3",
        "ts": at("2024-05-03", 9),
        "extra": {"page": {"path": "/a"}},
    },
    {"action": "OK", "user_id": "u3", "ts": at("2024-05-03", 10)},
]


@pytest.fixture
async def daemon(db_path: Path) -> AsyncIterator[StartedDaemon]:
    async with running_daemon(db_path) as running:
        client = await TcpClient.connect(running.tcp)
        await client.send({"events": SEED, "ack": "seed"})
        assert (await client.reply())["stored"] == len(SEED)
        await client.close()
        yield running


@pytest.fixture
async def query(daemon: StartedDaemon) -> AsyncIterator[QueryClient]:
    client = await QueryClient.connect(daemon.query)
    yield client
    await client.close()


def column(lines: list[str], index: int) -> list[str]:
    return [line.split()[index] for line in lines[1:]]


async def test_ping_and_pipelined_commands_answer_in_order(query: QueryClient) -> None:
    await query.send("PING", "count", "ping")
    assert await query.reply() == ([], "OK PONG")
    data, status = await query.reply()
    assert data == ["events", "6"]
    assert status.startswith("OK 1 rows")
    assert await query.reply() == ([], "OK PONG")


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("FROB", "ERR UNKNOWN unknown verb FROB; try HELP"),
        ('COUNT action="signup', "ERR SYNTAX unbalanced quote at column 14"),
        ("COUNT since=yesterdayy", "ERR ARG"),
        ("COUNT bogus=1", "ERR ARG COUNT does not take bogus="),
        ("EVENTS limit=0", "ERR ARG limit= must be a positive integer, got '0'"),
        ("EVENTS limit=99999999", "ERR LIMIT"),
        ("FORMAT xml", "ERR ARG usage: FORMAT text|json"),
        ("", "ERR SYNTAX empty line; try HELP"),
    ],
)
async def test_errors_are_one_status_line(query: QueryClient, line: str, status: str) -> None:
    data, reply = await query.ask(line)
    assert data == []
    assert reply.startswith(status)


async def test_a_line_over_the_limit_is_refused_and_the_connection_lives(
    query: QueryClient,
) -> None:
    await query.send("COUNT action=" + "x" * 10_000, "PING")
    assert await query.reply() == ([], "ERR LIMIT line longer than 8192 bytes")
    assert await query.reply() == ([], "OK PONG")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("COUNT", "6"),
        ("COUNT action=login", "2"),
        ("COUNT action=login,signup", "3"),
        ("COUNT action!=login", "4"),
        ("COUNT action=log*", "2"),
        ("COUNT value=3", "1"),
        ('COUNT value="buy button"', "1"),
        ("COUNT extra.plan=pro", "1"),
        ("COUNT extra.page.path=/a", "1"),
        ("COUNT extra.plan!=pro", "5"),
        ("COUNT user=u3", "2"),
        ("COUNT on=2024-05-01", "3"),
        ("COUNT since=2024-05-02", "3"),
        ("COUNT until=2024-05-01T10:30Z", "2"),
        ("COUNT on=2024-05-01 tz=America/New_York", "3"),
        ("UNIQUE", "3"),
        ("UNIQUE on=2024-05-03", "2"),
    ],
)
async def test_count_and_unique_with_filters(query: QueryClient, line: str, expected: str) -> None:
    data, status = await query.ask(line)
    assert status.startswith("OK")
    assert data[1:] == [expected]


async def test_count_by_day_lists_empty_days(query: QueryClient) -> None:
    data, _ = await query.ask("COUNT by=day since=2024-04-30 until=2024-05-04")
    assert data[0].split() == ["bucket", "events"]
    assert [line.split() for line in data[1:]] == [
        ["2024-04-30", "0"],
        ["2024-05-01", "3"],
        ["2024-05-02", "0"],
        ["2024-05-03", "3"],
    ]


async def test_time_buckets_are_clipped_to_the_window(query: QueryClient) -> None:
    data, _ = await query.ask("COUNT by=day since=2024-05-01T10:30Z until=2024-05-03T08:30Z")
    assert [line.split() for line in data[1:]] == [
        ["2024-05-01", "1"],
        ["2024-05-02", "0"],
        ["2024-05-03", "1"],
    ]


async def test_unique_by_day_in_json(query: QueryClient) -> None:
    data, _ = await query.ask("UNIQUE by=day since=2024-05-01 until=2024-05-04 format=json")
    assert [json.loads(line) for line in data] == [
        {"bucket": "2024-05-01", "users": 2},
        {"bucket": "2024-05-02", "users": 0},
        {"bucket": "2024-05-03", "users": 2},
    ]


async def test_count_by_field(query: QueryClient) -> None:
    data, _ = await query.ask("COUNT by=action format=json")
    assert [json.loads(line) for line in data] == [
        {"action": "click", "events": 2},
        {"action": "login", "events": 2},
        {"action": "OK", "events": 1},
        {"action": "signup", "events": 1},
    ]


async def test_top_gives_events_and_users(query: QueryClient) -> None:
    await query.ask("FORMAT json")
    data, status = await query.ask("TOP user n=2")
    assert [json.loads(line) for line in data] == [
        {"user": "u1", "events": 2, "users": 1},
        {"user": "u2", "events": 2, "users": 1},
    ]
    assert status.startswith("OK 2 rows")


async def test_events_newest_first_with_times_and_stuffing(query: QueryClient) -> None:
    data, _ = await query.ask("EVENTS limit=2")
    assert data[0].split()[:5] == ["id", "ts", "received_at", "user_id", "action"]
    # The action "OK" would read as a status line; it arrives stuffed and unstuffed here.
    assert data[1].split()[1] == "2024-05-03T10:00:00.000Z"
    assert data[1].split()[4] == "OK"
    assert data[2].split()[4] == "click"


async def test_events_in_json_keep_types(query: QueryClient) -> None:
    data, _ = await query.ask("EVENTS action=login order=asc format=json")
    rows = [json.loads(line) for line in data]
    assert [(r["user_id"], r["value"]) for r in rows] == [("u1", 3), ("u2", 4)]
    assert rows[0]["ts"] == "2024-05-01T10:00:00.000Z"
    data, _ = await query.ask("EVENTS extra.plan=pro format=json")
    assert json.loads(data[0])["extra"] == {"plan": "pro"}
    data, _ = await query.ask("EVENTS extra.plan=pro")
    assert data[1].split()[-1] == '{"plan":"pro"}'


async def test_quarantine_lists_rejected_input(daemon: StartedDaemon, query: QueryClient) -> None:
    client = await TcpClient.connect(daemon.tcp)
    await client.send({"events": [{"value": 1}], "ack": "bad"})
    assert (await client.reply())["rejected"] == 1
    await client.close()
    data, _ = await query.ask("QUARANTINE format=json")
    [row] = [json.loads(line) for line in data]
    assert row["reason"] == "action is missing"
    assert row["source"].startswith("tcp:127.0.0.1:")


async def test_stats_reports_counters_and_database(query: QueryClient) -> None:
    data, _ = await query.ask("STATS format=json")
    values = {r["name"]: r["value"] for r in map(json.loads, data)}
    assert values["events_in_database"] == 6
    assert values["events_stored"] == 6
    assert values["oldest_event"] == "2024-05-01T09:00:00.000Z"
    assert values["database_bytes"] > 0


async def test_help_lists_every_verb_and_quit_closes(query: QueryClient) -> None:
    data, status = await query.ask("help")
    assert any(line.startswith("COUNT") for line in data)
    assert status.startswith("OK")
    assert await query.ask("QUIT") == ([], "OK bye")
    assert await query.reader.read() == b""


async def test_user_gives_summary_then_timeline(query: QueryClient) -> None:
    data, status = await query.ask("USER u2 format=json")
    summary, *timeline = [json.loads(line) for line in data]
    assert summary == {
        "user": "u2",
        "first_seen": "2024-05-01T11:00:00.000Z",
        "last_seen": "2024-05-03T08:00:00.000Z",
        "events": 2,
        "actions": 2,
    }
    assert [e["action"] for e in timeline] == ["click", "login"]
    assert status.startswith("OK 2 of 2 events")


async def test_user_with_filters_and_unknown_user(query: QueryClient) -> None:
    data, _ = await query.ask("USER u1 action=login format=json")
    assert json.loads(data[0])["events"] == 1
    assert await query.ask("USER nobody") == ([], "ERR ARG no events for user 'nobody'")


@pytest.mark.parametrize(
    ("line", "users"),
    [
        ("USERS", ["u1", "u2", "u3"]),
        ("USERS min=2", ["u1", "u2", "u3"]),
        ("USERS action=login", ["u1", "u2"]),
        ("USERS action=click,login min=2", ["u2"]),
        ("USERS on=2024-05-03 action!=OK", ["u2", "u3"]),
    ],
)
async def test_users_lists_cohorts(query: QueryClient, line: str, users: list[str]) -> None:
    data, _ = await query.ask(line + " format=json")
    assert sorted(json.loads(row)["user"] for row in data) == users


async def test_sql_reads_and_reports_columns(query: QueryClient) -> None:
    data, status = await query.ask(
        "SQL SELECT action, count(*) AS n FROM events GROUP BY action ORDER BY n DESC, action"
    )
    assert data[0].split() == ["action", "n"]
    assert [line.split() for line in data[1:3]] == [["click", "2"], ["login", "2"]]
    assert status.startswith("OK 4 rows")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO events (ts, received_at, action) VALUES (1, 1, 'x')",
        "DELETE FROM events",
        "UPDATE events SET action = 'x'",
        "ATTACH DATABASE '/tmp/other.db' AS other",
        "PRAGMA journal_mode = DELETE",
        "DROP TABLE events",
        "CREATE TABLE t (x)",
        "WITH d AS (DELETE FROM events RETURNING id) SELECT * FROM d",
        "SELECT 1; DELETE FROM events",
    ],
)
async def test_sql_refuses_anything_but_reading(query: QueryClient, statement: str) -> None:
    data, status = await query.ask("SQL " + statement)
    assert data == []
    assert status.startswith("ERR ARG")
    data, _ = await query.ask("COUNT")
    assert data[1:] == ["6"]


async def test_sql_row_cap_and_timeout(db_path: Path) -> None:
    async with running_daemon(db_path, query_max_rows=3, query_timeout_ms=200.0) as daemon:
        client = await QueryClient.connect(daemon.query)
        data, status = await client.ask(
            "SQL WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 10) "
            "SELECT i FROM n"
        )
        assert data == ["i", "1", "2", "3"]
        assert status.endswith("(more rows not shown)")
        forever = "SQL WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        data, status = await client.ask(forever + "SELECT count(*) FROM n")
        assert (data, status) == ([], "ERR TIMEOUT query stopped after 0.2s")
        assert await client.ask("PING") == ([], "OK PONG")
        await client.close()


async def test_sql_can_be_switched_off(db_path: Path) -> None:
    async with running_daemon(db_path, query_sql_enabled=False) as daemon:
        client = await QueryClient.connect(daemon.query)
        _, status = await client.ask("SQL SELECT 1")
        assert status.startswith("ERR UNKNOWN the SQL verb is switched off")
        await client.close()


async def test_auth_is_required_when_a_token_is_set(db_path: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    async with running_daemon(db_path, query_token_file=str(token_file)) as daemon:
        client = await QueryClient.connect(daemon.query)
        assert await client.ask("PING") == ([], "OK PONG")
        assert await client.ask("COUNT") == ([], "ERR AUTH authenticate first: AUTH TOKEN")
        assert await client.ask("AUTH wrong") == ([], "ERR AUTH wrong token")
        assert await client.ask("STATS") == ([], "ERR AUTH authenticate first: AUTH TOKEN")
        assert await client.ask("AUTH s3cret-token") == ([], "OK authenticated")
        data, status = await client.ask("COUNT")
        assert (data, status[:2]) == (["events", "0"], "OK")
        await client.close()
        other = await QueryClient.connect(daemon.query)
        assert (await other.ask("EVENTS"))[1].startswith("ERR AUTH")
        await other.close()


async def test_export_jsonl_streams_every_event_in_commit_order(query: QueryClient) -> None:
    data, status = await query.ask("EXPORT action=click,login")
    rows = [json.loads(line) for line in data]
    assert [(r["id"], r["action"]) for r in rows] == [
        (2, "login"),
        (3, "login"),
        (4, "click"),
        (5, "click"),
    ]
    assert rows[3]["extra"] == {"page": {"path": "/a"}}
    assert status == "OK 4 events exported"


async def test_export_csv_has_a_header_and_one_line_per_event(query: QueryClient) -> None:
    data, status = await query.ask("EXPORT format=csv on=2024-05-01")
    assert data[0] == "id,ts,received_at,user_id,action,value,extra"
    assert [line.split(",")[4] for line in data[1:]] == ["signup", "login", "login"]
    assert data[1].endswith('"{""plan"":""pro""}"')
    assert status == "OK 3 events exported"


async def test_export_pages_through_more_than_one_chunk(db_path: Path) -> None:
    batch = [{"action": "bulk", "value": i} for i in range(2500)]
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": batch, "ack": "bulk"})
        assert (await client.reply())["stored"] == 2500
        await client.close()
        query = await QueryClient.connect(daemon.query)
        data, status = await query.ask("EXPORT")
        assert [json.loads(line)["value"] for line in data] == list(range(2500))
        assert status == "OK 2500 events exported"
        await query.close()


async def test_tail_sends_the_last_events_then_new_ones_until_a_line(
    daemon: StartedDaemon, query: QueryClient
) -> None:
    await query.send("TAIL n=2 action!=login format=json")
    first = [json.loads(await query.reader.readline()) for _ in range(2)]
    assert [e["action"] for e in first] == ["click", "OK"]
    assert json.loads(await query.reader.readline()) == {"live": True}
    client = await TcpClient.connect(daemon.tcp)
    await client.send({"events": [{"action": "login"}, {"action": "late", "value": 1}], "ack": "a"})
    assert (await client.reply())["stored"] == 2
    await client.close()
    late = json.loads(await query.reader.readline())
    assert (late["action"], late["value"]) == ("late", 1)
    await query.send("stop")
    data, status = await query.reply()
    assert (data, status) == ([], "OK 3 events, 0 missed")
    assert await query.ask("PING") == ([], "OK PONG")


async def test_a_text_tail_says_when_it_is_live(daemon: StartedDaemon, query: QueryClient) -> None:
    await query.send("TAIL n=0 user=u9")
    live = await query.reader.readline()
    assert live == b"# live: new events follow as they are committed; send any line to stop\r\n"
    client = await TcpClient.connect(daemon.tcp)
    await client.send({"events": [{"action": "late", "user_id": "u9", "value": 5}], "ack": "a"})
    assert (await client.reply())["stored"] == 1
    await client.close()
    words = (await query.reader.readline()).decode().split()
    assert (words[0], words[3:6]) == ("7", ["u9", "late", "5"])
    await query.send("stop")
    assert await query.reply() == ([], "OK 1 events, 0 missed")


async def test_a_stalled_tail_reader_never_slows_ingestion(db_path: Path) -> None:
    total = 30_000
    async with running_daemon(db_path) as daemon:
        tail = await QueryClient.connect(daemon.query)
        await tail.send("PING", "TAIL n=0 action=flood format=json")
        assert await tail.reply() == ([], "OK PONG")
        assert json.loads(await tail.reader.readline()) == {"live": True}
        # The tail reader reads nothing while 30,000 events are ingested and acknowledged.
        sender = await TcpClient.connect(daemon.tcp)
        for batch in range(total // 1000):
            events = [{"action": "flood", "value": batch * 1000 + i} for i in range(1000)]
            await sender.send({"events": events, "ack": str(batch)})
            assert (await sender.reply())["stored"] == 1000
        await sender.close()
        assert daemon.stats.events_stored == total
        # Then it catches up: every event was either sent or counted as missed.
        seen = 0
        async with asyncio.timeout(30):
            while seen < total:
                line = json.loads(await tail.reader.readline())
                seen += line.get("missed", 1)
        await tail.send("stop")
        _, status = await tail.reply()
        sent, missed = (int(word) for word in status.replace(",", "").split()[1::2][:2])
        assert (sent + missed, seen) == (total, total)
        await tail.close()


async def test_query_connections_over_the_limit_are_told_busy(db_path: Path) -> None:
    async with running_daemon(db_path, query_max_connections=1) as daemon:
        first = await QueryClient.connect(daemon.query)
        assert await first.ask("PING") == ([], "OK PONG")
        second = await QueryClient.connect(daemon.query)
        assert await second.reply() == ([], "ERR BUSY too many query connections; try again later")
        assert await second.reader.read() == b""
        assert await first.ask("PING") == ([], "OK PONG")
        await first.close()
        await second.close()


async def test_idle_query_connection_is_closed(db_path: Path) -> None:
    async with running_daemon(db_path, query_idle_timeout=0.2) as daemon:
        client = await QueryClient.connect(daemon.query)
        assert await client.reply() == ([], "ERR TIMEOUT idle for 0.2s; closing")
        async with asyncio.timeout(10):
            assert await client.reader.read() == b""
        await client.close()


async def test_yesterday_depends_on_the_time_zone(db_path: Path) -> None:
    today_utc = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    moments = {"early": -23, "mid": -12, "late": 2}  # hours from the start of today, UTC
    seed = [
        {
            "action": "visit",
            "user_id": user,
            "ts": msgpack.Timestamp(int(today_utc.timestamp()) + hours * 3600, 0),
        }
        for user, hours in moments.items()
    ]
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": seed, "ack": "s"})
        assert (await client.reply())["stored"] == 3
        await client.close()
        query = await QueryClient.connect(daemon.query)
        # New York is 4 or 5 hours behind UTC: its yesterday ends at 04:00 or 05:00 UTC today.
        for line, users in [
            ("USERS on=yesterday", ["early", "mid"]),
            ("USERS on=yesterday tz=America/New_York", ["late", "mid"]),
        ]:
            data, _ = await query.ask(line + " format=json")
            assert sorted(json.loads(row)["user"] for row in data) == users
        data, _ = await query.ask("UNIQUE on=yesterday tz=America/New_York")
        assert data[1:] == ["2"]
        await query.close()
