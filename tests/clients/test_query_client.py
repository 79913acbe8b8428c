"""collector_client against a real daemon: the API in-process, the CLI as a subprocess.

The client blocks, so API calls run in `asyncio.to_thread` while the test's event loop keeps
the in-process daemon serving.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from collector_client import query
from collector_client.query import QueryClient, QueryError, TailStream

from collector.config import Address
from collector.testing import DaemonProcess, StartedDaemon, TcpClient, running_daemon, wait_until

IO_TIMEOUT = 10.0
TOKEN_VARIABLE = "COLLECTOR_QUERY_TOKEN"


def at(iso_day: str, hour: int = 12, second: int = 0) -> msgpack.Timestamp:
    moment = datetime.fromisoformat(iso_day).replace(hour=hour, tzinfo=UTC)
    return msgpack.Timestamp(int((moment + timedelta(seconds=second)).timestamp()), 0)


SEED = [
    {"action": "signup", "user_id": "u1", "ts": at("2024-05-01", 9), "extra": {"plan": "pro"}},
    {"action": "login", "user_id": "u1", "ts": at("2024-05-01", 10), "value": 3},
    {"action": "login", "user_id": "u2", "ts": at("2024-05-01", 11), "value": 4},
    {"action": "click", "user_id": "u2", "ts": at("2024-05-03", 8), "value": "buy button"},
    {"action": "click", "user_id": "u3", "ts": at("2024-05-03", 9), "extra": {"page": "/a"}},
    {"action": "OK", "user_id": "u3", "ts": at("2024-05-03", 10)},
]


def stored(
    event_id: int, ts: str, user: str, action: str, *, value: Any = None, extra: Any = None
) -> dict[str, Any]:
    """An event as the daemon answers it, without `received_at`."""
    return {
        "id": event_id,
        "ts": ts,
        "user_id": user,
        "action": action,
        "value": value,
        "extra": extra,
    }


async def ingest(address: Address | None, events: list[dict[str, Any]], ack: str = "seed") -> None:
    """Send one acknowledged batch; return once the daemon says every event is stored."""
    assert address is not None
    client = await TcpClient.connect(address)
    try:
        await client.send({"events": events, "ack": ack})
        assert (await client.reply())["stored"] == len(events)
    finally:
        await client.close()


def client_of(daemon: StartedDaemon, token: str | None = None) -> QueryClient:
    address = daemon.query
    return QueryClient(address.host, address.port, timeout=IO_TIMEOUT, token=token)


def without_received_at(row: dict[str, Any]) -> dict[str, Any]:
    """An event as stored, minus the ingestion time, which no test can know in advance."""
    assert isinstance(row.pop("received_at"), str)
    return row


def take(stream: Iterator[Any], count: int) -> list[Any]:
    return list(itertools.islice(stream, count))


@pytest.fixture
async def daemon(db_path: Path) -> AsyncIterator[StartedDaemon]:
    async with running_daemon(db_path) as running:
        await ingest(running.tcp, SEED)
        yield running


@pytest.fixture
async def client(daemon: StartedDaemon) -> AsyncIterator[QueryClient]:
    client = client_of(daemon)
    yield client
    client.close()


# The API


async def test_run_returns_the_rows_as_dicts(client: QueryClient) -> None:
    assert await asyncio.to_thread(client.run, "COUNT by=action") == [
        {"action": "click", "events": 2},
        {"action": "login", "events": 2},
        {"action": "OK", "events": 1},
        {"action": "signup", "events": 1},
    ]
    rows = await asyncio.to_thread(client.run, "EVENTS action=login order=asc")
    assert [without_received_at(row) for row in rows] == [
        stored(2, "2024-05-01T10:00:00.000Z", "u1", "login", value=3),
        stored(3, "2024-05-01T11:00:00.000Z", "u2", "login", value=4),
    ]
    assert await asyncio.to_thread(client.run, "TOP user n=1 on=2024-05-03") == [
        {"user": "u3", "events": 2, "users": 1}
    ]


async def test_run_gets_json_from_sql_and_leaves_the_session_in_text(client: QueryClient) -> None:
    # SQL takes the rest of its line, so the client switches the session format around it.
    sql = "SQL SELECT action, count(*) AS n FROM events GROUP BY action ORDER BY n DESC, action"
    assert await asyncio.to_thread(client.run, sql) == [
        {"action": "click", "n": 2},
        {"action": "login", "n": 2},
        {"action": "OK", "n": 1},
        {"action": "signup", "n": 1},
    ]
    data, status = await asyncio.to_thread(client.run_raw, "COUNT")
    assert (data, status.split()[:3]) == (["events", "6"], ["OK", "1", "rows"])


async def test_run_raw_removes_the_dot_stuffing(client: QueryClient) -> None:
    words = "SELECT 1 AS k, 'OK' AS word UNION ALL SELECT 2, '.dot' UNION ALL SELECT 3, 'ERR x'"
    data, status = await asyncio.to_thread(
        client.run_raw, f"SQL SELECT word FROM ({words}) ORDER BY k"
    )
    assert data == ["word", "OK", ".dot", "ERR x"]
    assert status.startswith("OK 3 rows ")


async def test_lines_split_across_reads_are_put_back_together(
    client: QueryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "RECV_BYTES", 1)  # every CR, LF and UTF-8 byte read alone
    data, _ = await asyncio.to_thread(client.run_raw, "SQL SELECT 'héllo wörld' AS greeting")
    assert data == ["greeting", "héllo wörld"]
    rows = await asyncio.to_thread(client.run, "EVENTS action=signup")
    assert [without_received_at(row) for row in rows] == [
        stored(1, "2024-05-01T09:00:00.000Z", "u1", "signup", extra={"plan": "pro"})
    ]


async def test_an_err_reply_raises_query_error_and_the_connection_lives_on(
    client: QueryClient,
) -> None:
    with pytest.raises(QueryError) as unknown:
        await asyncio.to_thread(client.run, "FROB")
    assert (unknown.value.error_class, unknown.value.message) == (
        "UNKNOWN",
        "unknown verb FROB; try HELP",
    )
    assert str(unknown.value) == "ERR UNKNOWN unknown verb FROB; try HELP"
    with pytest.raises(QueryError) as bad_option:
        await asyncio.to_thread(client.run, "COUNT bogus=1")
    assert (bad_option.value.error_class, bad_option.value.message) == (
        "ARG",
        "COUNT does not take bogus= (options: since, until, on, tz, by, limit)",
    )
    with pytest.raises(QueryError) as bad_export:
        await asyncio.to_thread(list, client.export("bogus=1"))
    assert bad_export.value.error_class == "ARG"
    assert await asyncio.to_thread(client.run_raw, "FROB") == (
        [],
        "ERR UNKNOWN unknown verb FROB; try HELP",
    )
    assert await asyncio.to_thread(client.run, "COUNT") == [{"events": 6}]


@pytest.mark.parametrize("token", ["s3cret", 'with spaces, "quotes", a=b and \\'])
async def test_a_token_authenticates_the_connection(db_path: Path, token: str) -> None:
    async with running_daemon(db_path, query_token=token) as daemon:
        await ingest(daemon.tcp, SEED)
        authenticated = client_of(daemon, token=token)
        assert await asyncio.to_thread(authenticated.run, "COUNT") == [{"events": 6}]
        authenticated.close()
        anonymous = client_of(daemon)
        with pytest.raises(QueryError) as refused:
            await asyncio.to_thread(anonymous.run, "COUNT")
        assert (refused.value.error_class, refused.value.message) == (
            "AUTH",
            "authenticate first: AUTH TOKEN",
        )
        anonymous.close()
        wrong = client_of(daemon, token="wrong")
        with pytest.raises(QueryError) as wrong_token:
            await asyncio.to_thread(wrong.connect)
        assert (wrong_token.value.error_class, wrong_token.value.message) == ("AUTH", "wrong token")


async def test_export_yields_every_event_while_reading(db_path: Path) -> None:
    padding = "x" * 200  # each line far longer than a read could hold many of
    bulk = [
        {"action": "bulk", "user_id": f"u{i % 7}", "ts": at("2024-05-02", 0, i), "value": i}
        for i in range(2500)
    ]
    async with running_daemon(db_path) as daemon:
        for event in bulk:
            event["extra"] = {"pad": padding}
        await ingest(daemon.tcp, bulk)
        client = client_of(daemon)
        events = client.export("action=bulk")
        first = await asyncio.to_thread(next, events)
        assert without_received_at(first) == stored(
            1, "2024-05-02T00:00:00.000Z", "u0", "bulk", value=0, extra={"pad": padding}
        )
        read_for_first = client.bytes_received
        assert read_for_first <= 2 * query.RECV_BYTES
        rest = await asyncio.to_thread(list, events)
        assert client.bytes_received > 4 * read_for_first  # the rest came after the first
        assert [
            (e["id"], e["ts"], e["user_id"], e["value"], e["extra"]) for e in [first, *rest]
        ] == [
            (
                i + 1,
                f"2024-05-02T00:{i // 60:02d}:{i % 60:02d}.000Z",
                f"u{i % 7}",
                i,
                {"pad": padding},
            )
            for i in range(2500)
        ]
        assert client.last_status == "OK 2500 events exported"
        assert await asyncio.to_thread(client.run_raw, "PING") == ([], "OK PONG")
        client.close()


async def test_an_export_left_unfinished_does_not_spoil_the_next_command(
    client: QueryClient,
) -> None:
    events = client.export()
    first = await asyncio.to_thread(next, events)
    assert first["id"] == 1
    events.close()  # the reply cannot be cancelled, so the client reconnects
    assert await asyncio.to_thread(client.run, "COUNT") == [{"events": 6}]
    abandoned = client.export()
    await asyncio.to_thread(next, abandoned)
    assert await asyncio.to_thread(client.run, "UNIQUE") == [{"users": 3}]


async def test_tail_yields_events_committed_while_it_runs(
    daemon: StartedDaemon, client: QueryClient
) -> None:
    stream = await asyncio.to_thread(client.tail, "action!=login", 2, IO_TIMEOUT)
    first = await asyncio.to_thread(take, stream, 2)
    assert [without_received_at(e) for e in first] == [
        stored(5, "2024-05-03T09:00:00.000Z", "u3", "click", extra={"page": "/a"}),
        stored(6, "2024-05-03T10:00:00.000Z", "u3", "OK"),
    ]
    # The TAIL has answered its first lines, so it now waits for new commits.
    waiting = asyncio.ensure_future(asyncio.to_thread(take, stream, 2))
    late = [
        {"action": "login", "user_id": "u4", "ts": at("2024-05-04", 8)},
        {"action": "late", "user_id": "u4", "ts": at("2024-05-04", 9), "value": 1},
        {"action": "later", "user_id": "u5", "ts": at("2024-05-04", 10), "value": 2.5},
    ]
    await ingest(daemon.tcp, late, ack="late")
    arrived = await asyncio.wait_for(waiting, IO_TIMEOUT)
    assert [without_received_at(e) for e in arrived] == [
        stored(8, "2024-05-04T09:00:00.000Z", "u4", "late", value=1),
        stored(9, "2024-05-04T10:00:00.000Z", "u5", "later", value=2.5),
    ]
    assert await asyncio.to_thread(stream.stop) == "OK 4 events, 0 missed"
    assert await asyncio.to_thread(client.run_raw, "PING") == ([], "OK PONG")
    assert await asyncio.to_thread(client.run, "COUNT") == [{"events": 9}]


async def test_wait_live_tells_when_a_tail_listens_and_keeps_the_last_events(
    daemon: StartedDaemon, client: QueryClient
) -> None:
    stream = await asyncio.to_thread(client.tail, "user=u3", 1, IO_TIMEOUT)
    assert stream.live is False
    assert await asyncio.to_thread(stream.wait_live) is True
    assert stream.live is True
    # Only now is it certain that an event committed next will be streamed.
    later = {"action": "later", "user_id": "u3", "ts": at("2024-05-04", 10)}
    await ingest(daemon.tcp, [later], ack="later")
    events = await asyncio.to_thread(take, stream, 2)
    assert [(e["id"], e["action"]) for e in events] == [(6, "OK"), (7, "later")]
    assert await asyncio.to_thread(stream.stop) == "OK 2 events, 0 missed"


async def test_tail_says_what_a_slow_reader_missed(
    daemon: StartedDaemon, client: QueryClient
) -> None:
    stream = await asyncio.to_thread(client.tail, "action=flood,signup", 1, IO_TIMEOUT)
    [signup] = await asyncio.to_thread(take, stream, 1)
    assert signup["action"] == "signup"
    # One batch, one commit: the TAIL sends the newest 1,000 and says it skipped the rest.
    flood = [{"action": "flood", "ts": at("2024-05-05", 0, i), "value": i} for i in range(2500)]
    await ingest(daemon.tcp, flood, ack="flood")
    lines = await asyncio.to_thread(take, stream, 1001)
    assert lines[0] == {"missed": 1500}
    assert [e["value"] for e in lines[1:]] == list(range(1500, 2500))
    assert await asyncio.to_thread(stream.stop) == "OK 1001 events, 1500 missed"
    assert await asyncio.to_thread(client.run_raw, "PING") == ([], "OK PONG")


async def test_a_quiet_tail_times_out_and_can_still_be_stopped(client: QueryClient) -> None:
    stream = await asyncio.to_thread(client.tail, "", 1, 0.2)
    [newest] = await asyncio.to_thread(take, stream, 1)
    assert newest["action"] == "OK"
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(next, stream)
    assert await asyncio.to_thread(stream.stop) == "OK 1 events, 0 missed"
    assert await asyncio.to_thread(client.run, "COUNT") == [{"events": 6}]


async def test_a_tail_ends_with_its_block_or_before_the_next_command(
    client: QueryClient,
) -> None:
    def tail_in_a_block() -> dict[str, Any]:
        with client.tail(n=1, wait=IO_TIMEOUT) as stream:
            return next(stream)

    assert (await asyncio.to_thread(tail_in_a_block))["id"] == 6
    abandoned: TailStream[Any] = await asyncio.to_thread(client.tail, "user=u1", 2, IO_TIMEOUT)
    assert [e["id"] for e in await asyncio.to_thread(take, abandoned, 2)] == [1, 2]
    assert await asyncio.to_thread(client.run, "UNIQUE") == [{"users": 3}]
    assert abandoned.status == "OK 2 events, 0 missed"
    refused = await asyncio.to_thread(client.tail, "bogus=1")
    with pytest.raises(QueryError) as bad_option:
        await asyncio.to_thread(next, refused)
    assert bad_option.value.message == "TAIL does not take bogus= (options: n, tz)"
    assert await asyncio.to_thread(client.run_raw, "PING") == ([], "OK PONG")


async def test_a_connection_closed_while_idle_is_opened_again(db_path: Path) -> None:
    async with running_daemon(db_path, query_idle_timeout=0.2) as daemon:
        client = client_of(daemon)
        assert await asyncio.to_thread(client.run_raw, "PING") == ([], "OK PONG")
        await wait_until(lambda: not daemon.queries.connections, within=IO_TIMEOUT)
        assert await asyncio.to_thread(client.run, "COUNT") == [{"events": 0}]
        client.close()


def test_a_silent_daemon_raises_timeout_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        client = QueryClient("127.0.0.1", silent.getsockname()[1], timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.run("PING")
        assert time.monotonic() - started < 5
        client.close()


# The CLI, as a subprocess against a daemon running as one


def collector_query(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    return subprocess.run(
        [sys.executable, "-m", "collector_client.query_cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def start_daemon_process(db: Path, token: str = "") -> DaemonProcess:
    process = DaemonProcess(db, env={TOKEN_VARIABLE: token}).start()
    try:
        asyncio.run(ingest(process.tcp, SEED))
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def daemon_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    process = start_daemon_process(tmp_path_factory.mktemp("cli") / "events.db")
    yield process
    process.stop()


def port_args(process: DaemonProcess) -> list[str]:
    return ["-H", process.query.host, "-p", str(process.query.port)]


def test_cli_prints_the_data_lines_of_a_command(daemon_process: DaemonProcess) -> None:
    result = collector_query(*port_args(daemon_process), "COUNT", "by=action")
    assert (result.returncode, result.stderr) == (0, "")
    # "OK      1" arrives dot-stuffed and is printed as the daemon meant it.
    assert result.stdout == "action  events\nclick   2\nlogin   2\nOK      1\nsignup  1\n"


def test_cli_prints_an_err_line_on_stderr_and_exits_1(daemon_process: DaemonProcess) -> None:
    result = collector_query(*port_args(daemon_process), "COUNT bogus=1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "ERR ARG COUNT does not take bogus= (options: since, until, on, tz, by, limit)\n"
    )


def test_cli_exits_2_when_nothing_listens() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed_soon:
        port = closed_soon.getsockname()[1]
    result = collector_query("-p", str(port), "PING")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"collector-query: cannot connect to 127.0.0.1:{port}: ")


def test_cli_runs_piped_lines_in_order(daemon_process: DaemonProcess) -> None:
    commands = "PING\nCOUNT action=login\n\nFROB\nUNIQUE on=2024-05-03\nSQL SELECT 'OK' AS x\n"
    result = collector_query(*port_args(daemon_process), stdin=commands)
    assert result.returncode == 1
    assert result.stdout == "events\n2\nusers\n2\nx\nOK\n"
    assert result.stderr == "ERR UNKNOWN unknown verb FROB; try HELP\n"
    good = collector_query(*port_args(daemon_process), stdin="PING\r\nUNIQUE\r\n")
    assert (good.returncode, good.stdout, good.stderr) == (0, "users\n3\n", "")


def test_cli_json_output(daemon_process: DaemonProcess) -> None:
    result = collector_query(*port_args(daemon_process), "--json", "TOP", "action", "n=2")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        '{"action": "click", "events": 2, "users": 2}\n'
        '{"action": "login", "events": 2, "users": 2}\n'
    )
    piped = collector_query(
        *port_args(daemon_process),
        "--json",
        stdin="SQL SELECT count(*) AS n FROM events\nCOUNT format=text\n",
    )
    assert (piped.returncode, piped.stdout) == (0, '{"n": 6}\nevents\n6\n')


def test_cli_reads_the_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    process = start_daemon_process(tmp_path / "events.db", token="s3cret")
    try:
        token_file = tmp_path / "token"
        token_file.write_text("s3cret\n")
        by_file = collector_query(*port_args(process), "--token-file", str(token_file), "COUNT")
        assert (by_file.returncode, by_file.stdout) == (0, "events\n6\n")
        by_env = collector_query(*port_args(process), "COUNT", env={TOKEN_VARIABLE: "s3cret"})
        assert (by_env.returncode, by_env.stdout) == (0, "events\n6\n")
        without = collector_query(*port_args(process), "COUNT")
        assert (without.returncode, without.stderr) == (
            1,
            "ERR AUTH authenticate first: AUTH TOKEN\n",
        )
        wrong = collector_query(*port_args(process), "COUNT", env={TOKEN_VARIABLE: "nope"})
        assert (wrong.returncode, wrong.stderr) == (1, "ERR AUTH wrong token\n")
    finally:
        process.stop()


def read_until(fd: int, done: Callable[[bytes], bool], within: float = IO_TIMEOUT) -> bytes:
    """Bytes read from `fd` until `done(all read so far)`; TimeoutError after `within` s."""
    deadline = time.monotonic() + within
    data = b""
    while not done(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"only got {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a terminal whose other side has closed
                chunk = b""
            if not chunk:
                raise EOFError(f"closed after {data!r}")
            data += chunk
    return data


def test_cli_tail_streams_until_ctrl_c(tmp_path: Path) -> None:
    daemon = start_daemon_process(tmp_path / "events.db")  # its own: this test adds an event
    clean = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    command = [sys.executable, "-m", "collector_client.query_cli", *port_args(daemon)]
    process = subprocess.Popen(
        [*command, "--json", "TAIL", "n=1", "user=u9,u3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = read_until(process.stdout.fileno(), lambda data: data.endswith(b"\n"))
        assert json.loads(first)["action"] == "OK"
        later = {"action": "tailed", "user_id": "u9", "ts": at("2024-05-06"), "value": 7}
        asyncio.run(ingest(daemon.tcp, [later], ack="tail"))
        second = read_until(process.stdout.fileno(), lambda data: data.endswith(b"\n"))
        assert without_received_at(json.loads(second)) == stored(
            7, "2024-05-06T12:00:00.000Z", "u9", "tailed", value=7
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(IO_TIMEOUT) == 0
        assert (process.stdout.read(), process.stderr.read()) == (b"", b"")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        daemon.stop()


def test_cli_prompt_on_a_terminal_keeps_history(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    primary, secondary = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    process = subprocess.Popen(
        [sys.executable, "-m", "collector_client.query_cli", *port_args(daemon_process)],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**clean, "HOME": str(tmp_path), "TERM": "dumb"},
    )
    os.close(secondary)
    try:
        screen = read_until(primary, lambda data: data.endswith(b"collector> "))
        for line in (b"UNIQUE on=2024-05-01\n", b"FROB\n"):
            os.write(primary, line)
            screen += read_until(primary, lambda data: data.endswith(b"collector> "))
        os.write(primary, b"\x04")  # Ctrl-D at an empty prompt
        assert process.wait(IO_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    text = screen.decode().replace("\r\n", "\n")
    assert "\nusers\n2\nOK 1 rows " in text
    assert "\nERR UNKNOWN unknown verb FROB; try HELP\ncollector> " in text
    history = (tmp_path / ".collector_query_history").read_text().splitlines()
    assert history[-2:] == ["UNIQUE on=2024-05-01", "FROB"]
