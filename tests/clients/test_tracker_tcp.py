"""Tracker over TCP: acknowledged delivery, a full queue, a daemon that goes away and comes
back (in-process, and a real process killed in the middle of a stream), a silent peer."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from collector_client import Tracker, TrackerError
from collector_client._wire import AckReader
from test_tracker_support import (
    FIXED_CLOCK,
    WAIT,
    distinct_ids,
    refused_tcp_port,
    stored_events,
    wait_for,
)

from collector.config import Address
from collector.testing import DaemonProcess, count_rows, running_daemon, wait_until

QUICK_RETRY = {"backoff_initial": 0.02, "backoff_max": 0.2}


def tcp_tracker(port: int, **options: Any) -> Tracker:
    return Tracker("127.0.0.1", port, "tcp", **{**QUICK_RETRY, **options})


async def flush(tracker: Tracker) -> None:
    result = await asyncio.to_thread(tracker.flush, WAIT)
    assert result.complete and result.pending == 0


async def test_acknowledged_events_are_in_the_database_with_exact_fields(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        tracker = tcp_tracker(daemon.tcp.port, clock=lambda: FIXED_CLOCK, batch_size=7)
        for i in range(50):
            tracker.track("click", user_id=i, value=i * 1.5, extra={"page": {"path": f"/{i}"}})
        tracker.track("signup", user_id="u-1", ts=1_600_000_000, id="signup-u-1")
        await flush(tracker)
        # Acknowledged means committed: no waiting for the rows.
        rows = stored_events(db_path)
        stats = tracker.stats()
        tracker.close()
    assert len(rows) == 51
    assert [(r["user_id"], r["value"], r["extra"]) for r in rows[:50]] == [
        (str(i), i * 1.5, {"page": {"path": f"/{i}"}}) for i in range(50)
    ]
    assert all(row["ts"] == row["received_at"] for row in rows[:50])  # ts == sent_at
    skew = rows[50]["received_at"] - round(FIXED_CLOCK * 1000)
    assert (rows[50]["ts"], rows[50]["msg_id"]) == (1_600_000_000_000 + skew, "signup-u-1")
    assert (stats.queued, stats.sent, stats.acknowledged, stats.dropped) == (51, 51, 51, 0)
    assert (stats.rejected, stats.retries, stats.errors, stats.pending) == (0, 0, 0, 0)


async def test_events_the_daemon_rejects_are_acknowledged_and_counted(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        tracker = tcp_tracker(daemon.tcp.port)
        tracker.track("fine")
        tracker.track("x" * 201)  # longer than the daemon allows
        tracker.track("fine", value=float("nan"))
        await flush(tracker)
        stats = tracker.stats()
        tracker.close()
    assert (stats.acknowledged, stats.rejected, stats.dropped) == (3, 2, 0)
    assert count_rows(db_path) == 1
    assert count_rows(db_path, "quarantine") == 2


async def test_an_event_sent_twice_with_its_id_is_stored_once(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        tracker = tcp_tracker(daemon.tcp.port)
        tracker.track("order", id="order-7")
        tracker.track("order", id="order-7")
        await flush(tracker)
        assert tracker.stats().acknowledged == 2
        tracker.close()
    assert count_rows(db_path) == 1


async def test_an_idle_connection_closed_by_the_daemon_is_no_error(db_path: Path) -> None:
    async with running_daemon(db_path, tcp_idle_timeout=0.2) as daemon:
        tracker = tcp_tracker(daemon.tcp.port)
        tracker.track("first")
        await flush(tracker)
        await wait_until(lambda: daemon.stats.tcp_idle_closed == 1, within=WAIT)
        await wait_until(lambda: daemon.stats.tcp_connections_open == 0, within=WAIT)
        tracker.track("second")  # on a new connection
        await flush(tracker)
        stats = tracker.stats()
        tracker.close()
    assert (stats.acknowledged, stats.errors, stats.retries) == (2, 0, 0)
    assert count_rows(db_path) == 2


@pytest.mark.parametrize(
    ("overflow", "kept"),
    [("drop_newest", range(0, 100)), ("drop_oldest", range(150, 250))],
)
async def test_a_full_queue_drops_as_configured_and_counts(
    db_path: Path, overflow: str, kept: range
) -> None:
    async with running_daemon(db_path) as daemon:
        # The 100 events that fit wait in one open batch, due in a minute: none leaves before
        # flush(), whatever the sender thread does meanwhile.
        port = daemon.tcp.port
        tracker = tcp_tracker(port, max_queue=100, overflow=overflow, linger_ms=60_000)
        for i in range(250):
            tracker.track("queued", value=i)
        stats = tracker.stats()
        assert (stats.queued, stats.dropped, stats.pending, stats.sent) == (250, 150, 100, 0)
        await flush(tracker)
        tracker.close()
    assert [row["value"] for row in stored_events(db_path)] == list(kept)
    assert tracker.stats().acknowledged == 100


def test_track_stays_fast_while_the_daemon_is_down() -> None:
    with refused_tcp_port() as port:
        tracker = tcp_tracker(port, max_queue=1000)
        calls = threading.Thread(
            target=lambda: [tracker.track("t", value=i) for i in range(10_000)]
        )
        calls.start()
        calls.join(WAIT)
        assert not calls.is_alive()
        result = tracker.flush(0.2)
        stats = tracker.stats()
        wait_for(lambda: tracker.stats().errors >= 1)
        tracker.close(0)
    assert (result.complete, result.pending) == (False, 1000)
    assert (stats.queued, stats.dropped, stats.pending, stats.acknowledged) == (
        10_000,
        9000,
        1000,
        0,
    )
    assert tracker.stats().dropped == 10_000  # what close() gave up is counted too


async def test_a_stopped_and_restarted_daemon_gets_every_event_once(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        port = daemon.tcp.port
        tracker = tcp_tracker(port, batch_size=50)
        for i in range(1000):
            tracker.track("before", value=i)
        await flush(tracker)
        for i in range(1000):  # some of these are in flight when the daemon stops
            tracker.track("around", value=i)
    for i in range(500):
        tracker.track("while_down", value=i)
    async with running_daemon(db_path, tcp=Address("127.0.0.1", port)):
        await flush(tracker)
        tracker.close()
    assert count_rows(db_path) == 2500 and distinct_ids(db_path) == 2500
    assert tracker.stats().acknowledged == 2500


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_daemon_process_stopped_mid_stream_gets_every_event_once(
    db_path: Path, stop: signal.Signals
) -> None:
    # Commits (and so acks) every 300 ms: batches are surely in flight when it stops.
    slow_acks = ["--eager-ack-commit", "false", "--batch-max-age-ms", "300"]
    first = DaemonProcess(db_path, slow_acks).start()
    port = first.tcp.port
    tracker = tcp_tracker(port, batch_size=100, max_queue=100_000)
    try:
        for i in range(3000):
            tracker.track("stream", value=i)
        wait_for(lambda: tracker.stats().acknowledged >= 100)
        for i in range(3000, 6000):
            tracker.track("stream", value=i)
        first.signal(stop)
        first.wait()
        for i in range(6000, 9000):
            tracker.track("stream", value=i)
        second = DaemonProcess(db_path, [*slow_acks, "--tcp", f"127.0.0.1:{port}"]).start()
        try:
            assert tracker.flush(WAIT * 2).complete
        finally:
            second.stop()
        stats = tracker.stats()
    finally:
        tracker.close(0)
    assert count_rows(db_path) == 9000 and distinct_ids(db_path) == 9000
    assert sorted(row["value"] for row in stored_events(db_path)) == list(range(9000))
    assert (stats.acknowledged, stats.dropped, stats.sent) == (9000, 0, 9000)
    assert stats.errors > 0  # the connection lost, the refused reconnections
    if stop == signal.SIGKILL:  # batches in flight were lost with it, and sent again
        assert stats.retries > 0


class SilentPeer:
    """A TCP server that reads everything and never answers."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.open = 0

    async def swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while data := await reader.read(65536):
                self.received += data
        finally:
            self.open -= 1
            writer.close()

    def envelopes(self) -> list[dict[str, Any]]:
        return list(msgpack.Unpacker(io.BytesIO(bytes(self.received))))


@pytest.fixture
async def silent_peer() -> AsyncIterator[tuple[int, SilentPeer]]:
    peer = SilentPeer()
    server = await asyncio.start_server(peer.swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], peer
    await wait_until(lambda: peer.open == 0, within=WAIT)
    server.close()
    await server.wait_closed()


async def test_a_batch_without_ack_is_sent_again_with_the_same_ids(
    silent_peer: tuple[int, SilentPeer],
) -> None:
    port, peer = silent_peer
    tracker = tcp_tracker(port, ack_timeout=0.2, linger_ms=60_000)
    for i in range(3):
        tracker.track("unanswered", value=i)
    # flush(0.0) returns at once, and what it found queued is due: sent without the linger.
    assert not await asyncio.to_thread(tracker.flush, 0.0)
    await wait_until(lambda: len(peer.envelopes()) >= 3, within=WAIT)
    tracker.close(0)
    envelopes = peer.envelopes()
    assert peer.connections >= 3  # each resend on a new connection
    assert len({e["ack"] for e in envelopes}) == len(envelopes)  # a fresh token each time
    ids = {tuple(event["id"] for event in e["events"]) for e in envelopes}
    assert len(ids) == 1  # the same events, the same ids
    sent_at = [e["events"][0]["sent_at"] for e in envelopes]
    assert sent_at == sorted(sent_at) and sent_at[0] < sent_at[-1]  # the time of each send
    stats = tracker.stats()
    assert (stats.sent, stats.acknowledged, stats.dropped) == (3, 0, 3)
    assert stats.retries >= 3 * (len(envelopes) - 1)  # one more may be on its way


def test_many_threads_track_at_once_and_every_event_is_stored_once(db_path: Path) -> None:
    daemon = DaemonProcess(db_path).start()
    tracker = tcp_tracker(daemon.tcp.port, max_queue=100_000)
    try:
        threads = [
            threading.Thread(
                target=lambda n=n: [tracker.track(f"t{n}", value=i) for i in range(2000)]
            )
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert tracker.flush(WAIT).complete
        stats = tracker.stats()
    finally:
        tracker.close(0)
        daemon.stop()
    assert (stats.queued, stats.acknowledged, stats.dropped) == (16_000, 16_000, 0)
    assert count_rows(db_path) == 16_000 and distinct_ids(db_path) == 16_000
    assert count_rows(db_path, where="action = 't3'") == 2000


GARBAGE_PEER = """
import socket, sys, threading

def answer(conn):
    with conn:
        while conn.recv(65536):
            conn.sendall(b"\\xc1")  # a byte msgpack never uses

server = socket.socket(fileno=int(sys.argv[1]))
while True:
    threading.Thread(target=answer, args=(server.accept()[0],), daemon=True).start()
"""


@contextmanager
def garbage_peer() -> Iterator[int]:
    """A TCP peer that answers whatever it receives with garbage, in a process of its own so
    that its replies arrive while this process is busy in track(). Its listening socket is
    bound here and handed over: no port is left free in between."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        fd = server.fileno()
        peer = subprocess.Popen([sys.executable, "-c", GARBAGE_PEER, str(fd)], pass_fds=[fd])
        try:
            yield server.getsockname()[1]
        finally:
            peer.kill()
            peer.wait()


def test_a_reply_that_is_not_msgpack_is_a_tracker_error() -> None:
    tracker = Tracker("127.0.0.1", 9, "tcp")  # never started
    for garbage in (b"\xc1", b"\xdb" + (1 << 20).to_bytes(4, "big") + b"x" * 70_000):
        with pytest.raises(TrackerError, match="not msgpack"):
            AckReader(tracker).feed(garbage)


def test_a_peer_that_answers_garbage_never_makes_track_raise() -> None:
    reported: list[Exception] = []
    with garbage_peer() as port:
        # Batches of one: track() itself writes each, and reads the replies that came.
        tracker = tcp_tracker(
            port, batch_size=1, backoff_initial=0.01, backoff_max=0.02, on_error=reported.append
        )
        for i in range(100_000):
            tracker.track("answered", value=i)  # raises nothing, whatever comes back
            if tracker.stats().errors >= 20:
                break
        wait_for(lambda: tracker.stats().errors >= 20)
        stats = tracker.stats()
        tracker.close(0)
    assert stats.acknowledged == 0
    # Each garbage reply drops the connection, counted; on_error hears of one a second.
    assert 1 <= len(reported) < stats.errors
    assert isinstance(reported[0], TrackerError) and "not msgpack" in str(reported[0])


def test_a_batch_the_daemon_always_refuses_is_split_then_its_event_dropped(
    db_path: Path,
) -> None:
    # The daemon closes any connection that sends it an object over 1024 bytes: batches of
    # about 8 KB are split until they fit; the one event that never fits is dropped.
    daemon = DaemonProcess(db_path, ["--tcp-max-buffer-bytes", "1024"]).start()
    reported: list[Exception] = []
    tracker = tcp_tracker(
        daemon.tcp.port, max_batch_bytes=8192, max_in_flight=1, max_attempts=2,
        backoff_initial=0.01, backoff_max=0.05, on_error=reported.append,
    )  # fmt: skip
    try:
        for i in range(100):
            tracker.track("fits", value=i, extra={"pad": "x" * 80})
            if i == 50:
                tracker.track("huge", id="huge-1", extra={"pad": "x" * 1500})
        assert tracker.flush(WAIT).complete
        stats = tracker.stats()
    finally:
        tracker.close(0)
        daemon.stop()
    assert (stats.queued, stats.acknowledged, stats.dropped, stats.pending) == (101, 100, 1, 0)
    assert stats.sent == 101 and stats.retries > 0
    assert count_rows(db_path) == 100 and distinct_ids(db_path) == 100
    assert sorted(row["value"] for row in stored_events(db_path)) == list(range(100))
    [dropped] = [error for error in reported if isinstance(error, TrackerError)]
    assert "'huge' (id 'huge-1') dropped" in str(dropped)
    assert "tcp_max_buffer_bytes" in str(dropped)
