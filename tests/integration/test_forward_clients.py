"""Real Fluentd clients (PyPI fluent-logger) against a running daemon, and the UDP
heartbeat that Fluentd senders use to tell whether a server is alive."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
from fluent import asyncsender, sender

from collector.config import Address
from collector.testing import (
    DaemonProcess,
    QueryClient,
    count_rows,
    event_rows,
    running_daemon,
    send_udp,
    wait_until,
)


def emit_all(client: sender.FluentSender, events: list[tuple[str, dict[str, Any]]]) -> None:
    try:
        for label, record in events:
            assert client.emit(label, record), client.last_error
    finally:
        client.close()


def logins(count: int) -> list[tuple[str, dict[str, Any]]]:
    return [("login", {"user_id": f"u{i}", "value": i, "plan": "pro"}) for i in range(count)]


def assert_logins(rows: list[tuple[Any, ...]], count: int) -> None:
    assert [row[1:] for row in rows] == [
        (f"u{i}", "app.login", i, {"plan": "pro", "tag": "app.login"}, None) for i in range(count)
    ]


async def test_fluent_sender_with_integer_time(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        host, port = daemon.tcp
        before = int(time.time())
        await asyncio.to_thread(emit_all, sender.FluentSender("app", host, port), logins(25))
        after = int(time.time())
        await wait_until(lambda: daemon.stats.events_stored == 25)
        assert daemon.stats.forward_requests == 25
    rows = event_rows(db_path)
    assert_logins(rows, 25)
    assert all(before * 1000 <= row[0] <= after * 1000 and row[0] % 1000 == 0 for row in rows)


async def test_fluent_sender_with_nanosecond_precision(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        host, port = daemon.tcp
        client = sender.FluentSender("app", host, port, nanosecond_precision=True)
        before = time.time_ns() // 1_000_000
        await asyncio.to_thread(emit_all, client, logins(25))
        after = time.time_ns() // 1_000_000
        await wait_until(lambda: daemon.stats.events_stored == 25)
    rows = event_rows(db_path)
    assert_logins(rows, 25)
    assert all(before <= row[0] <= after for row in rows)
    assert any(row[0] % 1000 for row in rows)  # milliseconds survive, unlike integer time


async def test_fluent_sender_explicit_times_and_an_action_field(db_path: Path) -> None:
    def send(host: str, port: int) -> None:
        client = sender.FluentSender("shop", host, port, nanosecond_precision=True)
        try:
            assert client.emit_with_time("order", 1_441_588_984, {"action": "purchase"})
            assert client.emit_with_time("order", 1_441_588_984.125, {"user_id": 7})
        finally:
            client.close()

    async with running_daemon(db_path) as daemon:
        await asyncio.to_thread(send, *daemon.tcp)
        await wait_until(lambda: daemon.stats.events_stored == 2)
    assert event_rows(db_path) == [
        (1_441_588_984_000, None, "purchase", None, {"tag": "shop.order"}, None),
        (1_441_588_984_125, "7", "shop.order", None, {"tag": "shop.order"}, None),
    ]


async def test_the_tag_is_queryable_as_extra_tag(db_path: Path) -> None:
    events = [("login", {"user_id": "a"}), ("logout", {"user_id": "a"}), ("login", {})]
    async with running_daemon(db_path) as daemon:
        client = sender.FluentSender("app", *daemon.tcp)
        await asyncio.to_thread(emit_all, client, events)
        await wait_until(lambda: daemon.stats.events_stored == 3)
        query = await QueryClient.connect(daemon.query)
        data, status = await query.ask("COUNT by=extra.tag format=json")
        assert status.startswith("OK")
        assert [json.loads(line) for line in data] == [
            {"extra.tag": "app.login", "events": 2},
            {"extra.tag": "app.logout", "events": 1},
        ]
        data, _ = await query.ask("COUNT extra.tag=app.login")
        assert data[1:] == ["2"]
        await query.close()


async def test_async_fluent_sender(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        host, port = daemon.tcp
        client = asyncsender.FluentSender("app", host, port, queue_maxsize=1000)
        # close() waits until the sender thread has sent everything queued.
        await asyncio.to_thread(emit_all, client, logins(60))
        await wait_until(lambda: daemon.stats.events_stored == 60)
    assert_logins(event_rows(db_path), 60)


async def test_fluent_sender_to_a_daemon_process_with_a_configured_mapping(
    db_path: Path,
) -> None:
    daemon = DaemonProcess(
        db_path,
        args=["--forward-tag-key", "fluent_tag", "--forward-user-field", "uid"],
        env={"COLLECTOR_FORWARD_VALUE_FIELD": "amount"},
    ).start()
    try:
        client = sender.FluentSender("billing", daemon.tcp.host, daemon.tcp.port)
        events = [("charge", {"uid": "c1", "amount": 9.5, "value": "kept"})] * 3
        await asyncio.to_thread(emit_all, client, events)
        await wait_until(lambda: count_rows(db_path) == 3, within=20)
    finally:
        assert daemon.stop() == 0
    expected = ("c1", "billing.charge", 9.5, {"value": "kept", "fluent_tag": "billing.charge"})
    assert [row[1:5] for row in event_rows(db_path)] == [expected] * 3


# --- UDP heartbeat -------------------------------------------------------------------------


async def receive(sock: socket.socket) -> tuple[bytes, Any]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 64), 10)


async def test_heartbeats_are_answered_with_one_zero_byte(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        address: Address = daemon.udp
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            for heartbeat in (b"\x00", b"", b"\xc0"):
                sock.sendto(heartbeat, address)
                data, sender_address = await receive(sock)
                assert data == b"\x00"
                assert sender_address == (address.host, address.port)
            assert daemon.stats.udp_heartbeats == 3
    assert count_rows(db_path, "quarantine") == 0


async def test_event_datagrams_are_never_answered(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            # A native event, a forward-shaped array and garbage, then a heartbeat: the
            # heartbeat's answer is the only datagram that comes back.
            for payload in (b"\x81\xa6action\xa2ok", b"\x93\xa3app\x01\x80", b"\xc1\xc1"):
                sock.sendto(payload, daemon.udp)
            sock.sendto(b"\x00", daemon.udp)
            assert (await receive(sock))[0] == b"\x00"
            await wait_until(lambda: daemon.stats.events_stored == 1)
            assert daemon.stats.datagrams_received == 4
            try:
                extra = sock.recv(64)
            except BlockingIOError:
                extra = None
            assert extra is None


async def test_events_and_heartbeats_from_one_sender_are_told_apart(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, {"action": "still-native"}, b"\x00")
        await wait_until(lambda: daemon.stats.events_stored == 1)
        await wait_until(lambda: daemon.stats.udp_heartbeats == 1)
    assert count_rows(db_path, where="action = 'still-native'") == 1


async def test_a_forward_request_over_udp_is_quarantined_whole_once(db_path: Path) -> None:
    message = msgpack.packb(["app", 1_441_588_984, {"k": 1}])
    forward_mode = msgpack.packb(["app", [[1_441_588_984, {}], [1_441_588_985, {}]], {}])
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, message, forward_mode, {"action": "native"})
        await wait_until(lambda: daemon.stats.quarantined == 2 and daemon.stats.events_stored == 1)
        assert daemon.stats.events_rejected == 2
        assert daemon.stats.decode_errors == 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT source, reason, raw FROM quarantine ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [(reason, raw) for _, reason, raw in rows] == [
        ("Fluentd forward requests need TCP", message),
        ("Fluentd forward requests need TCP", forward_mode),
    ]
    assert all(source.startswith("udp:127.0.0.1:") for source, _, _ in rows)
