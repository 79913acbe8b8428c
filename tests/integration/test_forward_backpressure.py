"""Forward requests against a slow writer: pausing and resuming a connection, and a
connection reset while it is paused, with requests still waiting to be decoded.

A paused connection does not read, so the daemon learns of a reset when it writes an ack.
From then on a request that asks for an ack is not stored (its ack can never be sent and
the sender resends it); one that does not is kept while the buffer has room; the rest
is discarded and counted.
"""

from __future__ import annotations

import gzip
import socket
import sqlite3
import struct
from pathlib import Path
from typing import Any

import msgpack

from collector.testing import StartedDaemon, TcpClient, count_rows, running_daemon, wait_until

T = 1_441_588_984


def entries(count: int) -> list[list[Any]]:
    return [[T, {"n": i}] for i in range(count)]


def forward(tag: str, count: int, chunk: str | None = None) -> bytes:
    option = {"chunk": chunk} if chunk else {}
    return bytes(msgpack.packb([tag, entries(count), option]))


def packed_forward(tag: str, count: int, chunk: str) -> bytes:
    blob = b"".join(msgpack.packb(entry) for entry in entries(count))
    return bytes(msgpack.packb([tag, blob, {"chunk": chunk}]))


def compressed_forward(tag: str, count: int, chunk: str) -> bytes:
    blob = gzip.compress(b"".join(msgpack.packb(entry) for entry in entries(count)))
    return bytes(msgpack.packb([tag, blob, {"compressed": "gzip", "chunk": chunk}]))


def reset(client: TcpClient) -> None:
    """Close with an RST: the daemon's next write to the connection fails."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


def rows_by_tag(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT json_extract(extra, '$.tag'), count(*) FROM events GROUP BY 1"
        ).fetchall()
    finally:
        conn.close()
    return {str(tag): int(count) for tag, count in found}


async def test_forward_requests_pause_resume_and_are_all_acked_in_order(db_path: Path) -> None:
    modes = (forward, packed_forward, compressed_forward)
    requests = [modes[i % 3](f"app.{i % 3}", 25, f"c{i}") for i in range(120)]
    async with running_daemon(
        db_path, writer_delay_ms=20.0, batch_size=200, buffer_max_events=500
    ) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(*requests, forward("app.noack", 25))
        assert [await client.reply(within=60) for _ in requests] == [
            {"ack": f"c{i}"} for i in range(120)
        ]
        await wait_until(lambda: daemon.stats.events_stored == 121 * 25)
        stats = daemon.stats
        assert stats.tcp_pauses > 0
        assert stats.buffer_events_peak <= 500 + 25 - 1  # one request past the limit, at most
        assert (stats.forward_requests, stats.forward_events) == (121, 121 * 25)
        assert (stats.acks_sent, stats.decode_errors) == (120, 0)
        assert (stats.tcp_discarded_bytes, stats.tcp_unackable_dropped) == (0, 0)
        await client.close()
    assert rows_by_tag(db_path) == {"app.0": 1000, "app.1": 1000, "app.2": 1000, "app.noack": 25}


async def reset_while_paused(daemon: StartedDaemon, stream: bytes) -> None:
    """Send the stream, wait until the connection pauses, reset it before any commit."""
    client = await TcpClient.connect(daemon.tcp)
    await client.send(stream)
    await wait_until(lambda: daemon.stats.tcp_pauses == 1)
    assert daemon.stats.events_stored == 0  # the writer is still sleeping on its first commit
    reset(client)
    await wait_until(lambda: daemon.stats.tcp_connections_open == 0)
    await wait_until(lambda: daemon.stats.buffer_events == 0)


async def test_a_reset_while_paused_keeps_what_needs_no_ack_while_there_is_room(
    db_path: Path,
) -> None:
    """The buffer (50 events) is full with a1 and a2; the writer commits a1 alone, its ack
    fails, and a2 still holds 45 events: the connection is lost with room for 5."""
    first, second = forward("a1", 10, "a1"), forward("a2", 45, "a2")
    waiting = [forward("ack.0", 10, "k0"), forward("noack.0", 10)]
    for n in range(1, 20):
        waiting += [forward(f"ack.{n}", 10, f"k{n}"), forward(f"noack.{n}", 10)]
    stream = first + second + b"".join(waiting)
    async with running_daemon(
        db_path, buffer_max_events=50, batch_size=10, writer_delay_ms=500.0
    ) as daemon:
        await reset_while_paused(daemon, stream)
        stats = daemon.stats
        assert rows_by_tag(db_path) == {"a1": 10, "a2": 45, "noack.0": 10}
        assert stats.tcp_unackable_dropped == 1  # ack.0
        assert stats.tcp_discarded_bytes == len(b"".join(waiting[2:]))
        assert stats.tcp_truncated_bytes == 0
        assert stats.tcp_objects_received == 4
        assert (stats.forward_requests, stats.forward_events) == (3, 65)
        assert stats.events_received == stats.events_stored == 65
        assert stats.buffer_events_peak == 55
        assert stats.acks_sent == 1  # a1's, written into the reset connection
    assert count_rows(db_path) == 65


async def test_requests_decoded_after_an_ack_could_not_be_sent_are_not_stored(
    db_path: Path,
) -> None:
    """a1 fills the buffer; its ack fails, the buffer empties and the connection resumes
    decoding before it learns it is lost: what asks for an ack is dropped from then on,
    what does not is stored until the buffer is full, and the rest is discarded."""
    first = forward("a1", 60, "a1")
    waiting: list[bytes] = []
    for n in range(20):
        waiting += [forward(f"noack.{n}", 10), packed_forward(f"ack.{n}", 10, f"k{n}")]
    stream = first + b"".join(waiting)
    async with running_daemon(db_path, buffer_max_events=50, writer_delay_ms=500.0) as daemon:
        await reset_while_paused(daemon, stream)
        stats = daemon.stats
        assert rows_by_tag(db_path) == {"a1": 60, **{f"noack.{n}": 10 for n in range(5)}}
        assert stats.tcp_unackable_dropped == 4  # ack.0 to ack.3
        assert stats.tcp_discarded_bytes == len(b"".join(waiting[9:]))
        assert stats.tcp_objects_received == 10
        assert stats.buffer_events_peak == 60
    assert count_rows(db_path) == 110
