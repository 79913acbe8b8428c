"""AsyncTracker in the daemon's own event loop (the in-process daemon): no threads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Literal

import msgpack
import pytest
from collector_client import AsyncTracker
from test_tracker_support import (
    FIXED_CLOCK,
    WAIT,
    distinct_ids,
    stored_events,
    udp_receiver,
    wait_for,
)

from collector.config import Address
from collector.testing import DaemonProcess, count_rows, running_daemon, wait_until

QUICK_RETRY = {"backoff_initial": 0.02, "backoff_max": 0.2}


async def test_udp_events_are_stored_exactly(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        port = daemon.udp.port
        async with AsyncTracker("127.0.0.1", port, "udp", clock=lambda: FIXED_CLOCK) as tracker:
            for i in range(500):
                tracker.track("scroll", user_id=i, value=i / 2, extra={"depth": {"px": i}})
            tracker.track("open", ts=1_600_000_000.125, id="open-1")
            result = await tracker.flush(WAIT)
            assert (result.complete, result.pending) == (True, 0)
            await wait_until(lambda: count_rows(db_path) == 501, within=WAIT)
            stats = tracker.stats()
    rows = stored_events(db_path)
    assert [(r["user_id"], r["value"], r["extra"]) for r in rows[:500]] == [
        (str(i), i / 2, {"depth": {"px": i}}) for i in range(500)
    ]
    assert all(row["ts"] == row["received_at"] for row in rows[:500])
    skew = rows[500]["received_at"] - round(FIXED_CLOCK * 1000)
    assert (rows[500]["ts"], rows[500]["msg_id"]) == (1_600_000_000_125 + skew, "open-1")
    assert (stats.queued, stats.sent, stats.dropped, stats.pending) == (501, 501, 0, 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("collector-")]


async def test_tcp_events_are_acknowledged(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        port = daemon.tcp.port
        async with AsyncTracker("127.0.0.1", port, "tcp", batch_size=64) as tracker:
            for i in range(1000):
                tracker.track("tap", user_id=i % 10, value=i)
            tracker.track("x" * 201)  # rejected by the daemon
            assert (await tracker.flush(WAIT)).complete
            stats = tracker.stats()
        assert count_rows(db_path) == 1000  # acknowledged, so committed
    assert [row["value"] for row in stored_events(db_path)] == list(range(1000))
    assert (stats.queued, stats.sent, stats.acknowledged, stats.rejected) == (1001, 1001, 1001, 1)
    assert (stats.dropped, stats.retries, stats.pending) == (0, 0, 0)


async def test_tcp_survives_a_daemon_restart_and_stores_each_event_once(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        port = daemon.tcp.port
        tracker = AsyncTracker("127.0.0.1", port, "tcp", batch_size=50, **QUICK_RETRY)
        for i in range(1000):
            tracker.track("before", value=i)
        assert (await tracker.flush(WAIT)).complete
        for i in range(1000):  # some are in flight when the daemon stops
            tracker.track("around", value=i)
    for i in range(300):
        tracker.track("while_down", value=i)
    assert not (await tracker.flush(0.1)).complete
    async with running_daemon(db_path, tcp=Address("127.0.0.1", port)):
        assert (await tracker.flush(WAIT)).complete
        await tracker.close()
    assert count_rows(db_path) == 2300 and distinct_ids(db_path) == 2300
    stats = tracker.stats()
    assert (stats.acknowledged, stats.dropped) == (2300, 0)
    assert stats.errors > 0


async def test_tcp_reconnects_quietly_after_the_daemon_closes_an_idle_connection(
    db_path: Path,
) -> None:
    async with (
        running_daemon(db_path, tcp_idle_timeout=0.2) as daemon,
        AsyncTracker("127.0.0.1", daemon.tcp.port, "tcp") as tracker,
    ):
        tracker.track("first")
        assert (await tracker.flush(WAIT)).complete
        await wait_until(lambda: daemon.stats.tcp_idle_closed == 1, within=WAIT)
        await wait_until(lambda: daemon.stats.tcp_connections_open == 0, within=WAIT)
        tracker.track("second")
        assert (await tracker.flush(WAIT)).complete
        stats = tracker.stats()
    assert (stats.acknowledged, stats.errors, stats.retries) == (2, 0, 0)


async def test_tcp_sends_a_batch_again_when_its_ack_does_not_come() -> None:
    received: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # everything, until the tracker hangs up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tracker = AsyncTracker("127.0.0.1", port, "tcp", ack_timeout=0.2, **QUICK_RETRY)
    tracker.track("unanswered", id="u-1")
    tracker.track("unanswered", id="u-2")
    await tracker.flush(0)
    await wait_until(lambda: len(received) >= 2, within=WAIT)
    await tracker.close(0)
    server.close()
    await server.wait_closed()
    envelopes = [msgpack.unpackb(data) for data in received[:2]]
    assert [[e["id"] for e in envelope["events"]] for envelope in envelopes] == [["u-1", "u-2"]] * 2
    assert envelopes[0]["ack"] != envelopes[1]["ack"]
    stats = tracker.stats()
    assert (stats.sent, stats.acknowledged, stats.dropped) == (2, 0, 2)
    assert stats.retries >= 2 and stats.errors >= 1


async def test_a_full_queue_drops_the_oldest_when_told(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        port = daemon.udp.port
        tracker = AsyncTracker(
            "127.0.0.1", port, max_queue=10, overflow="drop_oldest", linger_ms=60_000
        )
        for i in range(25):  # no await: the sender cannot run meanwhile
            tracker.track("burst", value=i)
        assert (tracker.stats().dropped, tracker.stats().pending) == (15, 10)
        assert (await tracker.close(WAIT)).complete
        await wait_until(lambda: count_rows(db_path) == 10, within=WAIT)
    assert [row["value"] for row in stored_events(db_path)] == list(range(15, 25))


async def test_a_datagram_that_fills_up_goes_out_from_track() -> None:
    received: list[bytes] = []

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received.append(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    tracker = AsyncTracker("127.0.0.1", port, "udp", linger_ms=60_000)
    tracker.track("first")  # starts the sender, which opens its socket
    await tracker.flush(WAIT)
    for i in range(200):
        tracker.track("fill", value=i, extra={"pad": "x" * 50})
    await wait_until(lambda: len(received) >= 10, within=WAIT)  # well before the linger time
    await tracker.close(WAIT)
    transport.close()
    events = [e for datagram in received for e in msgpack.unpackb(datagram)]
    assert [e["value"] for e in events[1:]] == list(range(200))
    assert all(len(datagram) <= 1400 for datagram in received)


def test_track_outside_an_event_loop_raises_every_time_and_queues_nothing() -> None:
    with udp_receiver() as receiver:
        tracker = AsyncTracker("127.0.0.1", receiver.getsockname()[1])
        for _ in range(3):
            with pytest.raises(RuntimeError, match="needs a running event loop"):
                tracker.track("nowhere")
        assert tracker.stats().queued == 0

        async def in_a_loop() -> None:
            tracker.track("somewhere")
            assert (await tracker.close(WAIT)).complete

        asyncio.run(in_a_loop())
        assert msgpack.unpackb(receiver.recv(65536))[0]["action"] == "somewhere"
        assert (tracker.stats().queued, tracker.stats().sent) == (1, 1)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_one_tracker_serves_two_event_loops_in_turn(
    db_path: Path, transport: Literal["udp", "tcp"]
) -> None:
    # The first loop ends without close(), events still queued: the second loop gets a
    # sender of its own, which sends them with its own.
    daemon = DaemonProcess(db_path).start()
    address = daemon.udp if transport == "udp" else daemon.tcp
    assert address is not None
    tracker = AsyncTracker("127.0.0.1", address.port, transport, linger_ms=60_000)

    async def first() -> None:
        for i in range(10):
            tracker.track("first", value=i)
        assert (await tracker.flush(WAIT)).complete
        for i in range(10, 20):
            tracker.track("first", value=i)  # left queued when the loop ends

    async def second() -> None:
        for i in range(10):
            tracker.track("second", value=i)
        assert (await tracker.flush(WAIT)).complete
        assert (await tracker.close(WAIT)).complete

    try:
        asyncio.run(first())
        asyncio.run(second())
        wait_for(lambda: count_rows(db_path) >= 30)
    finally:
        daemon.stop()
    stats = tracker.stats()
    done = stats.sent if transport == "udp" else stats.acknowledged
    assert (stats.queued, done, stats.dropped, stats.pending) == (30, 30, 0, 0)
    assert count_rows(db_path) == 30 and distinct_ids(db_path) == 30
