"""Every byte a forward connection reads is accounted for: what follows bad input, a refused
request or a refused handshake, and a partial request at an idle close, is counted in
`tcp_discarded_bytes`; counters are checked exactly, against a running daemon."""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import msgpack

from collector.testing import StartedDaemon, TcpClient, count_rows, running_daemon

T = 1_441_588_984
KEY = "shared-s3cret"


def forward(chunk: str | None, count: int = 3, tag: str = "app") -> bytes:
    option = {"chunk": chunk} if chunk else {}
    return bytes(msgpack.packb([tag, [[T, {"n": i}] for i in range(count)], option]))


def exactly(daemon: StartedDaemon, **expected: int) -> None:
    stats = daemon.stats
    assert {name: getattr(stats, name) for name in expected} == expected


async def test_counters_after_a_refused_request(db_path: Path) -> None:
    before, refused, after = forward("r1"), b"\x93\xa3app\x90\xa3opt", forward("r3")
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(before + refused + after)
        assert await client.reply() == {"ack": "r1"}
        assert await client.closed_by_peer()
        await client.close()
        exactly(
            daemon,
            tcp_objects_received=2,
            forward_requests=1,
            forward_events=3,
            forward_requests_refused=1,
            forward_decompression_refused=0,
            decode_errors=1,
            tcp_connections_closed_on_error=1,
            tcp_discarded_bytes=len(after),
            tcp_truncated_bytes=0,
            events_received=3,
            acks_sent=1,
        )
    assert count_rows(db_path) == 3
    assert count_rows(db_path, "quarantine") == 0


async def test_whole_requests_after_bytes_that_are_not_msgpack_are_counted(
    db_path: Path,
) -> None:
    after = forward("never") + forward(None)
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(forward("ok") + b"\xc1\xc1" + after)
        client.writer.write_eof()
        assert await client.reply() == {"ack": "ok"}
        assert await client.closed_by_peer()
        await client.close()
        exactly(
            daemon,
            tcp_objects_received=1,
            forward_requests=1,
            decode_errors=1,
            tcp_discarded_bytes=2 + len(after),
            tcp_truncated_bytes=0,
        )
    assert count_rows(db_path) == 3


def ping(nonce: bytes, key: str) -> list[Any]:
    salt = b"client-salt"
    digest = hashlib.sha512(salt + b"client.test" + nonce + key.encode()).hexdigest()
    return ["PING", "client.test", salt, digest, "", ""]


async def test_nil_keepalives_before_and_after_the_ping(db_path: Path) -> None:
    async with running_daemon(db_path, forward_shared_key=KEY) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        kind, options = await client.reply()
        assert kind == "HELO"
        await client.send(None, None, ping(options["nonce"], KEY), None, forward("after"))
        pong = await client.reply()
        assert pong[:3] == ["PONG", True, ""]
        assert await client.reply() == {"ack": "after"}
        await client.close()
        exactly(
            daemon,
            tcp_keepalives=3,
            forward_handshakes=1,
            forward_handshakes_refused=0,
            tcp_objects_received=5,
            forward_requests=1,
            tcp_discarded_bytes=0,
        )
    assert count_rows(db_path) == 3


async def test_what_follows_a_refused_ping_is_discarded_and_counted(db_path: Path) -> None:
    following = bytes(msgpack.packb(None)) + forward("sneaky")
    async with running_daemon(db_path, forward_shared_key=KEY) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        _, options = await client.reply()
        await client.send(msgpack.packb(ping(options["nonce"], "a guess")) + following)
        assert await client.reply() == ["PONG", False, "shared_key mismatch", "", ""]
        assert await client.closed_by_peer()
        await client.close()
        exactly(
            daemon,
            forward_handshakes=0,
            forward_handshakes_refused=1,
            tcp_objects_received=1,
            tcp_keepalives=0,
            forward_requests=0,
            tcp_discarded_bytes=len(following),
            decode_errors=0,
        )
    assert count_rows(db_path) == 0


async def test_a_partial_request_at_an_idle_close_is_counted(db_path: Path) -> None:
    request = forward("slow")
    async with running_daemon(db_path, tcp_idle_timeout=0.2) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(request + request[:10])
        assert await client.reply() == {"ack": "slow"}
        assert await client.closed_by_peer()
        await client.close()
        exactly(
            daemon,
            tcp_idle_closed=1,
            forward_requests=1,
            tcp_discarded_bytes=10,
            tcp_truncated_bytes=0,
            decode_errors=0,
        )


def object_bomb(count: int) -> bytes:
    """A valid entry, then `[time, <count empty arrays>]`, gzipped without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = b"\x92\xce" + T.to_bytes(4, "big") + b"\xdd" + count.to_bytes(4, "big")
    parts = [compressor.compress(msgpack.packb([T, {"n": 1}])), compressor.compress(head)]
    parts += [compressor.compress(b"\x90" * 1_000_000) for _ in range(count // 1_000_000)]
    return b"".join([*parts, compressor.flush()])


async def test_an_object_bomb_is_quarantined_unbuilt_and_acknowledged(db_path: Path) -> None:
    bomb = object_bomb(15_000_000)
    request = msgpack.packb(["app", bomb, {"compressed": "gzip", "chunk": "bomb"}])
    assert len(request) < 20_000
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(request)
        assert await client.reply() == {"ack": "bomb"}
        await client.close()
        exactly(daemon, forward_requests=1, forward_events=2, events_rejected=1, decode_errors=0)
    assert count_rows(db_path) == 1
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        [(reason, kept)] = conn.execute("SELECT reason, length(raw) FROM quarantine").fetchall()
    finally:
        conn.close()
    assert reason.startswith("forward entry of 15000011 bytes is larger than 327680 bytes")
    assert kept == 4096
