"""A slow writer: TCP pauses and loses nothing, UDP drops and counts, memory stays bounded."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import msgpack

from collector.testing import TcpClient, count_rows, running_daemon, wait_until

SLOW_WRITER = {
    "writer_delay_ms": 20.0,
    "batch_size": 200,
    "buffer_max_events": 1000,
    "buffer_max_bytes": 1024 * 1024,
}


async def test_fast_tcp_sender_loses_nothing_and_buffer_stays_bounded(db_path: Path) -> None:
    objects = [
        [{"action": "flood", "user_id": n, "value": i} for i in range(50)] for n in range(400)
    ]
    async with running_daemon(db_path, **SLOW_WRITER) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(*objects, {"events": [{"action": "last"}], "ack": "end"})
        assert await client.reply(within=60) == {"ack": "end", "stored": 1, "rejected": 0}
        stats = daemon.stats
        assert stats.events_stored == 20_001
        assert stats.events_dropped == 0
        assert stats.tcp_pauses > 0
        # At most one object (50 events) is admitted past the limit.
        assert stats.buffer_events_peak <= 1000 + 50
        assert stats.buffer_bytes_peak <= 1024 * 1024 + 50 * 400
        await client.close()
    assert count_rows(db_path) == 20_001


def flood_udp(port: int, datagrams: int) -> None:
    payload = msgpack.packb({"action": "flood", "user_id": 1, "extra": {"pad": "x" * 100}})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(datagrams):
            sock.sendto(payload, ("127.0.0.1", port))


async def test_udp_flood_is_dropped_and_counted_never_buffered_without_bound(
    db_path: Path,
) -> None:
    async with running_daemon(db_path, **SLOW_WRITER) as daemon:
        await asyncio.to_thread(flood_udp, daemon.udp.port, 20_000)
        stats = daemon.stats

        def settled() -> bool:
            accounted = stats.events_stored + stats.events_dropped
            return stats.buffer_events == 0 and accounted == stats.datagrams_received

        await wait_until(settled, within=60)
        assert stats.events_dropped > 0
        assert stats.datagrams_dropped == stats.events_dropped
        assert stats.buffer_events_peak <= 1000 + 1
        # A TCP batch right after the flood is still acknowledged.
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": [{"action": "after-flood"}], "ack": "probe"})
        assert await client.reply(within=30) == {"ack": "probe", "stored": 1, "rejected": 0}
        await client.close()
    assert count_rows(db_path) == stats.events_stored
