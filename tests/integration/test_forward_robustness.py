"""Forward requests against a running daemon: corrupt and truncated input, decompression
bombs, the shared-key handshake, and forward and native traffic side by side."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from collector.testing import StartedDaemon, TcpClient, count_rows, running_daemon, wait_until

T = 1_441_588_984
EVENT_TIME = msgpack.ExtType(0, struct.pack(">II", T, 5))


def entries(count: int, start: int = 0) -> bytes:
    return b"".join(msgpack.packb([EVENT_TIME, {"n": start + i}]) for i in range(count))


def compressed_request(chunk: str, count: int = 3) -> bytes:
    blob = gzip.compress(entries(count))
    return bytes(msgpack.packb(["app", blob, {"compressed": "gzip", "chunk": chunk}]))


def str_blob_request(chunk: str, count: int = 3) -> bytes:
    blob = entries(count)
    head = b"\x93\xa3app\xd9" + bytes([len(blob)])
    return head + blob + msgpack.packb({"chunk": chunk})


async def acked(daemon: StartedDaemon, request: bytes, chunk: str) -> None:
    """Send one request on its own connection and wait for its ack."""
    client = await TcpClient.connect(daemon.tcp)
    await client.send(request)
    assert await client.reply() == {"ack": chunk}
    await client.close()


async def everything_sent_back(client: TcpClient) -> bytes:
    """All bytes the daemon sends until it closes the connection."""
    data = b""
    async with asyncio.timeout(10):
        while chunk := await client.reader.read(65536):
            data += chunk
    return data


SWEPT = (
    "forward_requests",
    "forward_events",
    "events_received",
    "tcp_objects_received",
    "forward_requests_refused",
    "decode_errors",
    "tcp_connections_closed_on_error",
    "tcp_truncated_bytes",
    "tcp_discarded_bytes",
)


def counters(daemon: StartedDaemon) -> dict[str, int]:
    return {name: getattr(daemon.stats, name) for name in SWEPT}


def outcome(before: dict[str, int], after: dict[str, int], size: int) -> str:
    """Which of the four outcomes a corrupt request had; every counter that moved is
    checked, and every byte sent is accounted for exactly once."""
    moved = {name: after[name] - before[name] for name in SWEPT if after[name] != before[name]}
    accounted = moved.get("tcp_truncated_bytes", 0) + moved.get("tcp_discarded_bytes", 0)
    accounted += size * moved.get("tcp_objects_received", 0)
    assert accounted == size, moved
    outcomes = {
        "stored": {
            "forward_requests": 1,
            "forward_events": 3,
            "events_received": 3,
            "tcp_objects_received": 1,
        },
        "refused": {
            "tcp_objects_received": 1,
            "forward_requests_refused": 1,
            "decode_errors": 1,
            "tcp_connections_closed_on_error": 1,
        },
        "not msgpack": {
            "decode_errors": 1,
            "tcp_connections_closed_on_error": 1,
            "tcp_discarded_bytes": size,
        },
        "truncated": {"tcp_truncated_bytes": size},
    }
    [name] = [name for name, expected in outcomes.items() if moved == expected]
    return name


# --- corrupt and truncated requests --------------------------------------------------------


async def test_corruptions_at_chosen_offsets_close_the_connection_and_are_counted(
    db_path: Path,
) -> None:
    request = compressed_request("ok")
    blob_at = request.index(b"\x1f\x8b")  # the gzip magic
    option_at = request.index(b"\x82\xaacompressed")
    corruptions = {
        "array header": (0, 0xC1),
        "tag header": (1, 0xC1),
        "blob header": (blob_at - 2, 0xC1),
        "gzip magic": (blob_at + 1, 0x00),
        "deflate data": (blob_at + 14, request[blob_at + 14] ^ 0xFF),
        "gzip crc": (option_at - 6, request[option_at - 6] ^ 0x01),
        "option header": (option_at, 0xC1),
        "compression name": (request.index(b"gzip") + 1, ord("x")),
    }
    async with running_daemon(db_path) as daemon:
        await acked(daemon, request, "ok")
        for number, (offset, byte) in enumerate(corruptions.values(), start=1):
            corrupt = request[:offset] + bytes([byte]) + request[offset + 1 :]
            client = await TcpClient.connect(daemon.tcp)
            await client.send(corrupt)
            assert await everything_sent_back(client) == b""  # no ack, then closed
            assert daemon.stats.decode_errors == number
            assert daemon.stats.tcp_connections_closed_on_error == number
            await client.close()
        assert daemon.stats.forward_requests_refused == 4  # the other four are not msgpack
        await acked(daemon, compressed_request("after"), "after")
        assert daemon.stats.forward_requests == 2
    assert count_rows(db_path) == 6
    assert count_rows(db_path, "quarantine") == 0


async def test_every_single_byte_corruption_leaves_the_daemon_healthy(db_path: Path) -> None:
    request = str_blob_request("sweep")
    async with running_daemon(db_path) as daemon:
        await acked(daemon, request, "sweep")
        outcomes: dict[str, int] = {}
        acks = 0
        for offset in range(len(request)):
            before = counters(daemon)
            corrupt = request[:offset] + b"\xc1" + request[offset + 1 :]
            client = await TcpClient.connect(daemon.tcp)
            await client.send(corrupt)
            client.writer.write_eof()
            replies = msgpack.Unpacker(raw=True, strict_map_key=False)
            replies.feed(await everything_sent_back(client))  # the daemon always closes
            sent_back = list(replies)
            await client.close()
            result = outcome(before, counters(daemon), len(corrupt))
            outcomes[result] = outcomes.get(result, 0) + 1
            # Only a stored request is acked, and only while its chunk is still "chunk".
            assert all(set(reply) == {b"ack"} for reply in sent_back), offset
            assert len(sent_back) <= (result == "stored"), offset
            acks += len(sent_back)
        # A corrupt type byte is not msgpack, or refuses the request when it is inside the
        # blob; inside an EventTime, event text or the chunk it still leaves a valid
        # request, whose events are then stored or quarantined; a corrupt blob length
        # swallows the rest of the request.
        assert set(outcomes) == {"stored", "refused", "not msgpack", "truncated"}, outcomes
        assert 0 < acks <= outcomes["stored"]
        await acked(daemon, str_blob_request("still-serving"), "still-serving")
        await wait_until(lambda: daemon.stats.buffer_events == 0)
        stats = daemon.stats
        assert stats.forward_requests == outcomes["stored"] + 2
        assert stats.events_received == stats.events_stored + stats.events_rejected
        assert stats.events_duplicate == 0
        stored, quarantined = stats.events_stored, stats.quarantined
    assert count_rows(db_path) == stored
    assert count_rows(db_path, "quarantine") == quarantined
    assert count_rows(db_path, where="json_extract(extra, '$.n') = 0") >= 2


async def test_truncated_requests_store_nothing_and_count_every_byte(db_path: Path) -> None:
    request = compressed_request("whole")
    cuts = sorted({1, 2, 5, len(request) // 3, len(request) // 2, len(request) - 1})
    async with running_daemon(db_path) as daemon:
        await acked(daemon, request, "whole")
        truncated = 0
        for cut in cuts:
            client = await TcpClient.connect(daemon.tcp)
            await client.send(request[:cut])
            client.writer.write_eof()
            assert await everything_sent_back(client) == b""
            truncated += cut
            assert daemon.stats.tcp_truncated_bytes == truncated
            await client.close()
        # As fluent-logger does after a broken connection: the whole request again.
        await acked(daemon, request, "whole")
        assert daemon.stats.forward_requests == 2
        assert daemon.stats.decode_errors == 0
    assert count_rows(db_path) == 6


async def test_a_decompression_bomb_is_refused_and_counted(db_path: Path) -> None:
    inflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    bomb = inflater.compress(bytes(32 * 1024 * 1024)) + inflater.flush()
    request = msgpack.packb(["app", bomb, {"compressed": "gzip", "chunk": "boom"}])
    async with running_daemon(db_path, forward_max_decompressed_bytes=1024 * 1024) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(request)
        assert await everything_sent_back(client) == b""
        await client.close()
        assert daemon.stats.forward_decompression_refused == 1
        assert daemon.stats.forward_requests_refused == 1
        assert daemon.stats.decode_errors == 1
        await acked(daemon, compressed_request("fine"), "fine")
    assert count_rows(db_path) == 3


async def test_too_many_events_are_quarantined_whole_and_acknowledged(db_path: Path) -> None:
    async with running_daemon(db_path, max_batch_events=10) as daemon:
        await acked(daemon, compressed_request("big", count=11), "big")
        assert daemon.stats.events_rejected == 11
    assert count_rows(db_path) == 0
    assert count_rows(db_path, "quarantine", "reason LIKE 'forward request of 11 events%'") == 1


# --- the handshake -------------------------------------------------------------------------

KEY = "shared-s3cret"


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


async def handshake(client: TcpClient, key: str) -> list[Any]:
    """Read HELO, answer PING with `key`, return the PONG."""
    kind, options = await client.reply()
    assert kind == "HELO"
    assert options["auth"] == "" and options["keepalive"] is True
    nonce = options["nonce"]
    assert isinstance(nonce, bytes) and len(nonce) == 16
    salt = b"\x01client-salt"
    digest = sha512_hex(salt, b"client.test", nonce, key.encode())
    await client.send(["PING", "client.test", salt, digest, "", ""])
    pong: list[Any] = await client.reply()
    if pong[1]:
        assert pong[4] == sha512_hex(salt, b"collector.test", nonce, KEY.encode())
    return pong


async def test_handshake_with_the_right_key_then_events(db_path: Path) -> None:
    async with running_daemon(
        db_path, forward_shared_key=KEY, forward_hostname="collector.test"
    ) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        pong = await handshake(client, KEY)
        assert pong[:4] == ["PONG", True, "", "collector.test"]
        await client.send(compressed_request("authed"))
        assert await client.reply() == {"ack": "authed"}
        await client.close()
        assert daemon.stats.forward_handshakes == 1
    assert count_rows(db_path) == 3


async def test_handshake_with_a_wrong_key_is_refused_and_closed(db_path: Path) -> None:
    async with running_daemon(db_path, forward_shared_key=KEY) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        pong = await handshake(client, "a guess")
        assert pong == ["PONG", False, "shared_key mismatch", "", ""]
        await client.send(compressed_request("sneaky"))
        assert await everything_sent_back(client) == b""
        await client.close()
        assert daemon.stats.forward_handshakes_refused == 1
        assert daemon.stats.forward_requests == 0
    assert count_rows(db_path) == 0


async def test_with_a_key_even_native_events_need_the_handshake(db_path: Path) -> None:
    async with running_daemon(db_path, forward_shared_key=KEY) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        assert (await client.reply())[0] == "HELO"
        await client.send({"events": [{"action": "native"}], "ack": "n"})
        assert await client.reply() == ["PONG", False, "invalid ping message", "", ""]
        assert await client.closed_by_peer()
        await client.close()
    assert count_rows(db_path) == 0


# --- forward and native side by side -------------------------------------------------------


async def test_native_and_forward_on_one_connection_acked_in_order(db_path: Path) -> None:
    native = {"events": [{"action": "a"}, {"action": "b"}], "ack": "native-1"}
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(
            None, compressed_request("fwd-1"), native, None, ["app", T, {}, {"chunk": "fwd-2"}]
        )
        assert await client.reply() == {"ack": "fwd-1"}
        assert await client.reply() == {"ack": "native-1", "stored": 2, "rejected": 0}
        assert await client.reply() == {"ack": "fwd-2"}
        await client.close()
        assert daemon.stats.tcp_keepalives == 2
        assert daemon.stats.forward_requests == 2
    assert count_rows(db_path) == 6
    assert count_rows(db_path, "quarantine") == 0


async def test_native_batch_of_maps_is_still_native(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send([{"action": "x", "user_id": 1}], {"events": [], "ack": "sync"})
        assert await client.reply() == {"ack": "sync", "stored": 0, "rejected": 0}
        await client.close()
        assert daemon.stats.forward_requests == 0
    assert count_rows(db_path, where="action = 'x' AND user_id = '1' AND extra IS NULL") == 1


async def test_text_that_is_not_utf8_on_a_forward_connection(db_path: Path) -> None:
    """Forward event text is quarantined per event; a native object with such text is
    refused exactly as on a native connection, even inside an envelope's ack token."""
    bad_record = b"\x94\xa3app\x01\x81\xa1m\xa2\xff\xfe\x81\xa5chunk\xa1f"
    bad_token = b"\x82\xa6events\x90\xa3ack\xa2\xff\xfe"
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(["app", T, {}], bad_record, bad_token, ["app", T, {}, {"chunk": "c"}])
        assert await client.reply() == {"ack": "f"}
        assert await client.closed_by_peer()
        await client.close()
        assert daemon.stats.decode_errors == 1
    assert count_rows(db_path) == 1
    assert count_rows(db_path, "quarantine", "reason = 'text is not valid UTF-8'") == 1


async def test_a_str_blob_after_native_events_closes_that_connection(db_path: Path) -> None:
    """Documented limitation: a connection that starts native decodes str strictly."""
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": [{"action": "first"}], "ack": "n"}, str_blob_request("s"))
        assert await client.reply() == {"ack": "n", "stored": 1, "rejected": 0}
        assert await client.closed_by_peer()
        await client.close()
        assert daemon.stats.decode_errors == 1
