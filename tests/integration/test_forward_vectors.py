"""Byte-exact Forward Protocol v1 requests, encoded by hand from the specification's byte
layouts (not by a msgpack library), sent to a running daemon.

Every mode, EventTime and integer time, the metadata entry form, each with and without
`chunk`. With a chunk the ack must arrive only after the rows are in the database: the
database is read through a separate connection the moment the ack arrives, and each commit
is slowed down so that an early ack would be caught.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from collector.testing import event_rows, running_daemon

TAG = "app.web"
CHUNK = "p8n9gmxTQVC8/nh2wlKKeQ=="
T_INT = 1_441_588_984
T_EVENT = (1_441_588_985, 250_000_000)

# --- a msgpack encoder written from the spec, for the few types the vectors need ------------


def text(value: str) -> bytes:
    data = value.encode()
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data  # fixstr


def sized(data: bytes, one: int, two: int, four: int) -> bytes:
    if len(data) < 0x100:
        return bytes([one, len(data)]) + data
    if len(data) < 0x10000:
        return bytes([two]) + len(data).to_bytes(2, "big") + data
    return bytes([four]) + len(data).to_bytes(4, "big") + data


def binary(data: bytes) -> bytes:
    return sized(data, 0xC4, 0xC5, 0xC6)  # bin 8 / 16 / 32


def binary_as_str(data: bytes) -> bytes:
    return sized(data, 0xD9, 0xDA, 0xDB)  # str 8 / 16 / 32, as out_forward sends the blob


def array(*items: bytes) -> bytes:
    assert len(items) < 16
    return bytes([0x90 | len(items)]) + b"".join(items)  # fixarray


def mapping(*pairs: tuple[bytes, bytes]) -> bytes:
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)  # fixmap


def uint32(value: int) -> bytes:
    return b"\xce" + value.to_bytes(4, "big")


def event_time_fixext8(seconds: int, nanoseconds: int) -> bytes:
    return b"\xd7\x00" + seconds.to_bytes(4, "big") + nanoseconds.to_bytes(4, "big")


def event_time_ext8(seconds: int, nanoseconds: int) -> bytes:
    return b"\xc7\x08\x00" + seconds.to_bytes(4, "big") + nanoseconds.to_bytes(4, "big")


SIGNUP = mapping(
    (text("action"), text("signup")), (text("user_id"), text("u1")), (text("value"), b"\x0a")
)
HELLO = mapping((text("message"), text("hello")), (text("user_id"), b"\x07"))
ENTRY_INT = array(uint32(T_INT), SIGNUP)
ENTRY_EVENT_TIME = array(event_time_fixext8(*T_EVENT), HELLO)
ENTRY_EXT8 = array(event_time_ext8(*T_EVENT), HELLO)
ENTRY_METADATA = array(
    array(event_time_fixext8(*T_EVENT), mapping((text("k8s"), text("x")))), HELLO
)

ROW_SIGNUP = (T_INT * 1000, "u1", "signup", 10, {"tag": TAG}, None)
ROW_HELLO = (1_441_588_985_250, "7", TAG, None, {"message": "hello", "tag": TAG}, None)


def option(chunk: str | None, size: int, compressed: bool = False) -> list[bytes]:
    pairs = [(text("size"), bytes([size]))]
    if compressed:
        pairs.append((text("compressed"), text("gzip")))
    if chunk is not None:
        pairs.append((text("chunk"), text(chunk)))
    return [mapping(*pairs)]


def message(time: bytes, record: bytes) -> Callable[[str | None], bytes]:
    # Without a chunk the option is left out altogether, as fluent-logger does.
    return lambda chunk: array(
        text(TAG), time, record, *([] if chunk is None else option(chunk, 1))
    )


def forward(*entries: bytes) -> Callable[[str | None], bytes]:
    return lambda chunk: array(text(TAG), array(*entries), *option(chunk, len(entries)))


def packed(encode: Callable[[bytes], bytes], *entries: bytes) -> Callable[[str | None], bytes]:
    blob = b"".join(entries)
    return lambda chunk: array(text(TAG), encode(blob), *option(chunk, len(entries)))


def compressed(*members: bytes) -> Callable[[str | None], bytes]:
    blob = b"".join(gzip.compress(member) for member in members)
    return lambda chunk: array(text(TAG), binary(blob), *option(chunk, 2, compressed=True))


class Vector(NamedTuple):
    name: str
    build: Callable[[str | None], bytes]
    rows: list[tuple[Any, ...]]


VECTORS = [
    Vector("message-int-time", message(uint32(T_INT), SIGNUP), [ROW_SIGNUP]),
    Vector("message-event-time", message(event_time_fixext8(*T_EVENT), HELLO), [ROW_HELLO]),
    Vector("forward", forward(ENTRY_INT, ENTRY_EXT8), [ROW_SIGNUP, ROW_HELLO]),
    Vector("forward-metadata", forward(ENTRY_METADATA, ENTRY_INT), [ROW_HELLO, ROW_SIGNUP]),
    Vector("packed-bin", packed(binary, ENTRY_INT, ENTRY_EVENT_TIME), [ROW_SIGNUP, ROW_HELLO]),
    Vector(
        "packed-str", packed(binary_as_str, ENTRY_EVENT_TIME, ENTRY_INT), [ROW_HELLO, ROW_SIGNUP]
    ),
    Vector("packed-metadata", packed(binary, ENTRY_METADATA), [ROW_HELLO]),
    Vector(
        "compressed-one-member", compressed(ENTRY_INT + ENTRY_EVENT_TIME), [ROW_SIGNUP, ROW_HELLO]
    ),
    Vector(
        "compressed-two-members", compressed(ENTRY_INT, ENTRY_METADATA), [ROW_SIGNUP, ROW_HELLO]
    ),
]

PROBE_CHUNK = "probe"
PROBE = array(text("probe"), uint32(T_INT), mapping(), mapping((text("chunk"), text(PROBE_CHUNK))))
PROBE_ROW = (T_INT * 1000, None, "probe", None, {"tag": "probe"}, None)


def ack_bytes(chunk: str) -> bytes:
    return b"\x81\xa3ack" + text(chunk)


def test_the_encoder_matches_the_specification_example() -> None:
    # ["tag.name", 1441588984, {"message": "bar"}] from the spec's Message mode section.
    request = array(text("tag.name"), uint32(1441588984), mapping((text("message"), text("bar"))))
    assert (
        request.hex()
        == "93a8" + b"tag.name".hex() + "ce55ece6f8" + "81a7" + b"message".hex() + "a3626172"
    )
    assert event_time_fixext8(1, 2).hex() == "d7000000000100000002"
    assert event_time_ext8(1, 2).hex() == "c708000000000100000002"


def test_the_str_blob_is_not_utf8() -> None:
    blob = ENTRY_EVENT_TIME + ENTRY_INT
    with pytest.raises(UnicodeDecodeError):
        blob.decode("utf-8")


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
async def test_vector_with_chunk_is_acked_only_after_its_rows_are_committed(
    db_path: Path, vector: Vector
) -> None:
    async with running_daemon(db_path, writer_delay_ms=30.0) as daemon:
        reader, writer = await asyncio.open_connection(*daemon.tcp)
        writer.write(vector.build(CHUNK))
        expected = ack_bytes(CHUNK)
        reply = await asyncio.wait_for(reader.readexactly(len(expected)), 10)
        rows_at_ack = event_rows(db_path)
        assert reply == expected
        assert rows_at_ack == vector.rows
        assert daemon.stats.forward_requests == 1
        assert daemon.stats.forward_events == len(vector.rows)
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
async def test_vector_without_chunk_is_stored_and_never_answered(
    db_path: Path, vector: Vector
) -> None:
    async with running_daemon(db_path) as daemon:
        reader, writer = await asyncio.open_connection(*daemon.tcp)
        # Replies come in request order, so the probe's ack being the first byte back
        # proves nothing was sent for the request without a chunk.
        writer.write(vector.build(None) + PROBE)
        expected = ack_bytes(PROBE_CHUNK)
        assert await asyncio.wait_for(reader.readexactly(len(expected)), 10) == expected
        assert event_rows(db_path) == [*vector.rows, PROBE_ROW]
        assert daemon.stats.acks_sent == 1
        writer.close()
        await writer.wait_closed()
