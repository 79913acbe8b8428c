"""collector.forward.request: classification, the four modes, option and chunk, the
decompression cap. Requests are decoded from bytes the way a forward connection does."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest

from collector.forward.request import (
    DecompressionLimitError,
    ForwardError,
    ForwardRequest,
    decode_request,
    gunzip,
    is_forward_request,
)
from collector.forward.stream import forward_stream_unpacker
from collector.settings import EventLimits, ForwardSettings

RECEIVED_AT = 1_700_000_000_000
SETTINGS = ForwardSettings(hostname="test", max_decompressed_bytes=64 * 1024)
T = 1_441_588_984
EVENT_TIME = msgpack.ExtType(0, struct.pack(">II", T, 500_000_000))


def wire(obj: Any) -> Any:
    """The object as a forward connection decodes it."""
    unpacker = forward_stream_unpacker(1 << 24)
    unpacker.feed(obj if isinstance(obj, bytes) else msgpack.packb(obj))
    [decoded] = list(unpacker)
    return decoded


DEFAULT_LIMITS = EventLimits()


def decode(
    obj: Any, limits: EventLimits = DEFAULT_LIMITS, settings: ForwardSettings = SETTINGS
) -> ForwardRequest:
    return decode_request(wire(obj), RECEIVED_AT, limits, settings)


def packed(*entries: Any) -> bytes:
    return b"".join(msgpack.packb(entry) for entry in entries)


def actions_and_times(request: ForwardRequest) -> list[tuple[str, int]]:
    return [(row[3], row[0]) for row in request.decoded.rows]


# --- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "forward"),
    [
        (["tag", 1, {}], True),
        (["PING", "h", "s", "d", "", ""], True),
        (["", []], True),
        ([{"action": "a"}], False),
        ([], False),
        ({"action": "a"}, False),
        ([1, 2], False),
        ([b"tag", 1, {}], False),
        (None, False),
    ],
)
def test_forward_request_or_native(obj: Any, forward: bool) -> None:
    assert is_forward_request(obj) is forward


# --- modes ---------------------------------------------------------------------------------


def test_message_mode_with_integer_time() -> None:
    request = decode(["app", T, {"action": "open"}])
    assert actions_and_times(request) == [("open", T * 1000)]
    assert request.decoded.wants_ack is False
    assert request.events == 1


def test_message_mode_with_event_time_and_chunk() -> None:
    request = decode(["app", EVENT_TIME, {"k": 1}, {"chunk": "c1", "size": 1}])
    assert actions_and_times(request) == [("app", T * 1000 + 500)]
    assert (request.decoded.ack, request.decoded.wants_ack) == ("c1", True)


def test_forward_mode_with_every_entry_form() -> None:
    entries = [[T, {"n": 1}], [EVENT_TIME, {"n": 2}], [[EVENT_TIME, {"meta": 1}], {"n": 3}]]
    request = decode(["app", entries, {"chunk": b"\x00\x01"}])
    with_half = T * 1000 + 500
    assert actions_and_times(request) == [("app", T * 1000), ("app", with_half), ("app", with_half)]
    assert request.decoded.ack == b"\x00\x01"


@pytest.mark.parametrize("as_str", [False, True])
def test_packed_forward_as_bin_and_as_str(as_str: bool) -> None:
    blob = packed([T, {"n": 1}], [EVENT_TIME, {"n": 2}])
    # A str blob is built by hand: it is not UTF-8, so no encoder would produce it.
    header = b"\xd9" if as_str else b"\xc4"
    request_bytes = b"\x92\xa3app" + header + bytes([len(blob)]) + blob
    request = decode(request_bytes)
    assert actions_and_times(request) == [("app", T * 1000), ("app", T * 1000 + 500)]
    assert request.inflated_bytes == 0


def test_compressed_packed_forward_with_two_gzip_members() -> None:
    blob = gzip.compress(packed([T, {"n": 1}])) + gzip.compress(packed([T + 1, {"n": 2}]))
    request = decode(["app", blob, {"compressed": "gzip", "chunk": "z"}])
    assert actions_and_times(request) == [("app", T * 1000), ("app", (T + 1) * 1000)]
    assert request.inflated_bytes == len(packed([T, {"n": 1}], [T + 1, {"n": 2}]))


def test_compressed_text_means_uncompressed() -> None:
    request = decode(["app", packed([T, {}]), {"compressed": "text"}])
    assert request.events == 1


def test_nil_option_is_no_option() -> None:
    assert decode(["app", [[T, {}]], None]).decoded.wants_ack is False


def test_empty_requests_are_fine_and_still_acknowledged() -> None:
    for obj in (["app", []], ["app", b""], ["app", gzip.compress(b""), {"compressed": "gzip"}]):
        assert decode(obj).events == 0
    assert decode(["app", [], {"chunk": "e"}]).decoded.wants_ack is True


def test_bad_events_are_quarantined_and_the_rest_kept() -> None:
    request = decode(["app", [[T, {}], [T, "x"], "junk", [T, {"action": ""}]], {"chunk": "q"}])
    assert len(request.decoded.rows) == 1
    assert [r.reason for r in request.decoded.rejections] == [
        "record must be a map, got str",
        "entry must be an array [time, record], got str",
        "action is empty",
    ]
    assert request.events == 4
    assert request.decoded.wants_ack is True


def test_too_many_events_quarantine_the_whole_request_counted_exactly() -> None:
    blob = packed(*([T, {"n": i}] for i in range(25)))
    obj = ["app", blob, {"chunk": "big"}]
    request = decode(obj, EventLimits(max_batch_events=10))
    assert request.decoded.rows == []
    [rejection] = request.decoded.rejections
    assert rejection.reason == "forward request of 25 events exceeds max_batch_events=10"
    assert rejection.events == 25
    assert rejection.raw == msgpack.packb(obj)
    assert request.decoded.wants_ack is True
    forward_mode = decode(["app", [[T, {}]] * 11], EventLimits(max_batch_events=10))
    assert forward_mode.decoded.rejections[0].events == 11


# --- refused requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (["app"], "a Message request has 3 or 4 elements"),
        (["app", T], "a Message request has 3 or 4 elements"),
        (["app", T, {}, {}, {}], "a Message request has 3 or 4 elements"),
        (["app", [], {}, {}], "a Forward/PackedForward request has 2 or 3 elements, got 4"),
        (["app", [], "option"], "option must be a map, got str"),
        (["app", [], {"chunk": 5}], "option chunk must be str or bin, got int"),
        (["app", [], {"chunk": "c" * 257}], "option chunk is 257 bytes, more than 256"),
        (["app", T, {}, {"chunk": b"\x00" * 300}], "option chunk is 300 bytes, more than 256"),
        (["app", b"\xc1", {}], "PackedForward entries are not valid msgpack"),
        (["app", packed([T, {}])[:-1]], "end in an incomplete entry at byte 0"),
        (["app", packed([T, {}]) + b"\x92"], "end in an incomplete entry at byte"),
        (["app", b"not gzip", {"compressed": "gzip"}], "gzip data is corrupt"),
        (["app", gzip.compress(b"x" * 100)[:-5], {"compressed": "gzip"}], "truncated"),
        (["app", gzip.compress(b"") + b"junk", {"compressed": "gzip"}], "gzip data is corrupt"),
        (["app", b"", {"compressed": "zstd"}], "compressed='zstd' is not supported"),
    ],
)
def test_unusable_requests_are_refused_with_the_reason(obj: Any, reason: str) -> None:
    with pytest.raises(ForwardError, match=reason.replace("(", r"\(")):
        decode(obj)


def test_a_chunk_of_256_bytes_is_acknowledged() -> None:
    for chunk in ("c" * 256, b"\xff" * 256, "\u00e9" * 128):
        assert decode(["app", [], {"chunk": chunk}]).decoded.ack == chunk


def test_a_str_blob_with_unencodable_text_is_refused() -> None:
    with pytest.raises(ForwardError, match="sent as str hold invalid text"):
        decode_request(["app", "\ud800"], RECEIVED_AT, EventLimits(), SETTINGS)


def test_too_many_entries_in_a_corrupt_blob_is_still_refused() -> None:
    """Below the counting cap (10 x max_batch_events) the whole blob is checked."""
    with pytest.raises(ForwardError, match="not valid msgpack"):
        decode(["app", packed([T, {}], [T, {}]) + b"\xc1"], EventLimits(max_batch_events=1))


# --- decompression cap ---------------------------------------------------------------------


def test_gunzip_concatenated_members() -> None:
    data = gzip.compress(b"abc") + gzip.compress(b"") + gzip.compress(b"def")
    assert gunzip(data, 6) == b"abcdef"


def test_gunzip_exactly_at_the_limit_is_fine_one_more_is_not() -> None:
    assert gunzip(gzip.compress(b"a" * 100), 100) == b"a" * 100
    with pytest.raises(DecompressionLimitError):
        gunzip(gzip.compress(b"a" * 101), 100)
    with pytest.raises(DecompressionLimitError):
        gunzip(gzip.compress(b"a" * 60) + gzip.compress(b"a" * 60), 100)


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped without ever holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, compressor.flush()])


def test_a_bomb_never_allocates_past_the_cap() -> None:
    bomb = gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < 128 * 1024
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(DecompressionLimitError, match="forward_max_decompressed_bytes"):
            gunzip(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit


def test_compressed_request_over_the_cap_is_refused() -> None:
    blob = gzip.compress(packed(*([T, {"pad": "x" * 1000}] for i in range(100))))
    with pytest.raises(DecompressionLimitError):
        decode(["app", blob, {"compressed": "gzip"}])
