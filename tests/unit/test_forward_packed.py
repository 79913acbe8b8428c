"""collector.forward.packed: PackedForward entries measured before they are built, so a
blob's cost is bounded by its bytes, not by how many objects those bytes stand for."""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest

from collector.forward.packed import (
    FEED_BYTES,
    KEPT_ENTRY_BYTES,
    PackedError,
    entry_ends,
    max_entry_bytes,
)
from collector.forward.request import ForwardRequest, decode_request
from collector.forward.stream import forward_stream_unpacker
from collector.settings import EventLimits, ForwardSettings

RECEIVED_AT = 1_700_000_000_000
SETTINGS = ForwardSettings(hostname="test")
T = 1_441_588_984


def wire(obj: Any) -> Any:
    """The object as a forward connection decodes it."""
    unpacker = forward_stream_unpacker(1 << 24)
    unpacker.feed(msgpack.packb(obj))
    [decoded] = list(unpacker)
    return decoded


def decode(obj: Any, limits: EventLimits) -> ForwardRequest:
    return decode_request(wire(obj), RECEIVED_AT, limits, SETTINGS)


def packed(*entries: Any) -> bytes:
    return b"".join(msgpack.packb(entry) for entry in entries)


def empty_arrays_entry_head(count: int) -> bytes:
    """`[T, <array32 of count elements>`: the elements must follow."""
    return b"\x92\xce" + T.to_bytes(4, "big") + b"\xdd" + count.to_bytes(4, "big")


def object_bomb(count: int) -> bytes:
    """gzip of a valid entry, an entry whose record is `count` empty arrays, and another
    valid entry; compressed without ever holding the inflated bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [
        compressor.compress(packed([T, {"n": 1}])),
        compressor.compress(empty_arrays_entry_head(count)),
    ]
    block = b"\x90" * (1 << 20)
    parts += [compressor.compress(block) for _ in range(count >> 20)]
    parts.append(compressor.compress(b"\x90" * (count & ((1 << 20) - 1))))
    parts.append(compressor.compress(packed([T, {"n": 2}])))
    return b"".join([*parts, compressor.flush()])


# --- the object-count bomb -----------------------------------------------------------------


def test_an_object_bomb_is_quarantined_unbuilt_with_bounded_memory() -> None:
    """15 million empty arrays in 15 KB of gzip: built, they took 1.1 GiB."""
    count = 15_000_000
    bomb = object_bomb(count)
    assert len(bomb) < 20_000
    request = wire(["app", bomb, {"compressed": "gzip", "chunk": "bomb"}])
    tracemalloc.start()
    try:
        result = decode_request(request, RECEIVED_AT, EventLimits(), SETTINGS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    entry_size = len(empty_arrays_entry_head(count)) + count
    assert result.inflated_bytes == entry_size + 2 * len(packed([T, {"n": 1}]))
    # The inflated bytes themselves (15 MB) and one step of decompression; nothing built.
    assert peak < 32 * 1024 * 1024
    assert [row[5] for row in result.decoded.rows] == ['{"n":1,"tag":"app"}', '{"n":2,"tag":"app"}']
    [rejection] = result.decoded.rejections
    assert rejection.reason == (
        f"forward entry of {entry_size} bytes is larger than 327680 bytes "
        "(4 x max_event_bytes + 64 KiB): not decoded, its first 4096 bytes kept"
    )
    assert rejection.events == 1
    assert rejection.raw == (empty_arrays_entry_head(count) + b"\x90" * count)[:KEPT_ENTRY_BYTES]
    assert (result.decoded.ack, result.events) == ("bomb", 3)


def test_a_long_string_is_measured_whole_with_bounded_memory() -> None:
    """msgpack measures a str only once all of it is buffered: a copy of it, no more."""
    size = 15_000_000
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = b"\x92\xce" + T.to_bytes(4, "big") + b"\x81\xa1m\xdb" + size.to_bytes(4, "big")
    parts = [compressor.compress(head)]
    parts += [compressor.compress(b"x" * 1_000_000) for _ in range(size // 1_000_000)]
    parts.append(compressor.compress(packed([T, {"n": 2}])))
    request = wire(["app", b"".join([*parts, compressor.flush()]), {"compressed": "gzip"}])
    tracemalloc.start()
    try:
        result = decode_request(request, RECEIVED_AT, EventLimits(), SETTINGS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024 * 1024  # the inflated bytes, and the string once more
    assert len(result.decoded.rows) == 1
    [rejection] = result.decoded.rejections
    assert rejection.reason.startswith(f"forward entry of {len(head) + size} bytes is larger")
    assert rejection.raw == (head + b"x" * KEPT_ENTRY_BYTES)[:KEPT_ENTRY_BYTES]


@pytest.mark.parametrize("size", [100_000, 200_000, 10_000_000])
def test_entries_holding_long_strings_are_found(size: int) -> None:
    blob = packed([T, {"m": "x" * size}], [T, {}])
    first = len(packed([T, {"m": "x" * size}]))
    assert entry_ends(blob, 10) == [first, first + len(packed([T, {}]))]


def test_the_largest_entry_built_is_exactly_the_bound() -> None:
    limits = EventLimits(max_event_bytes=256)
    largest = max_entry_bytes(limits)
    assert largest == 4 * 256 + 64 * 1024

    def entry_of(size: int) -> bytes:
        # [T, {"pad": <str>}] padded to exactly `size` bytes with a str32.
        head = b"\x92\xce" + T.to_bytes(4, "big") + b"\x81\xa3pad\xdb"
        text = size - len(head) - 4
        return head + text.to_bytes(4, "big") + b"p" * text

    at_bound, over_bound = entry_of(largest), entry_of(largest + 1)
    assert (len(at_bound), len(over_bound)) == (largest, largest + 1)
    result = decode(["app", at_bound + over_bound + packed([T, {"ok": 1}])], limits)
    first, second = result.decoded.rejections
    assert first.reason == "extra is larger than max_extra_bytes=32768"  # built and mapped
    assert first.raw == msgpack.packb(["app", T, {"pad": "p" * (largest - 16)}])
    assert second.reason.startswith(f"forward entry of {largest + 1} bytes is larger than")
    assert second.raw == over_bound[:KEPT_ENTRY_BYTES]
    assert len(result.decoded.rows) == 1


# --- counting stops --------------------------------------------------------------------------


def test_counting_stops_at_ten_times_max_batch_events() -> None:
    """A million nils in a 1 KB gzip are not all counted (nor added to the stats)."""
    blob = zlib.compress(b"\xc0" * 1_000_000, 9, wbits=zlib.MAX_WBITS | 16)
    obj = ["app", blob, {"compressed": "gzip", "chunk": "nils"}]
    result = decode(obj, EventLimits(max_batch_events=100))
    [rejection] = result.decoded.rejections
    assert rejection.reason == (
        "forward request of more than 1000 events exceeds max_batch_events=100"
    )
    assert rejection.events == 1001
    assert rejection.raw == msgpack.packb(obj)
    assert result.events == 1001
    assert result.decoded.wants_ack is True


def test_below_the_counting_cap_the_count_is_exact() -> None:
    result = decode(
        ["app", packed(*([T, {}] for _ in range(1000)))], EventLimits(max_batch_events=100)
    )
    assert result.decoded.rejections[0].reason == (
        "forward request of 1000 events exceeds max_batch_events=100"
    )
    assert result.events == 1000


def test_forward_mode_counts_are_capped_the_same_way() -> None:
    result = decode(["app", [[T, {}]] * 50], EventLimits(max_batch_events=2))
    assert result.decoded.rejections[0].reason == (
        "forward request of more than 20 events exceeds max_batch_events=2"
    )
    assert result.events == 21


# --- walking the blob ----------------------------------------------------------------------


def test_entries_across_feed_boundaries_are_all_found() -> None:
    entries = [[T, {"n": i, "pad": "x" * (i % 97)}] for i in range(3000)]
    blob = packed(*entries)
    assert len(blob) > 2 * FEED_BYTES
    ends = entry_ends(blob, 10_000)
    assert len(ends) == 3000 and ends[-1] == len(blob)
    result = decode(["app", blob], EventLimits())
    assert [row[5] for row in result.decoded.rows[::1000]] == [
        '{"n":0,"pad":"","tag":"app"}',
        '{"n":1000,"pad":"' + "x" * (1000 % 97) + '","tag":"app"}',
        '{"n":2000,"pad":"' + "x" * (2000 % 97) + '","tag":"app"}',
    ]


def test_the_walk_stops_after_max_entries_plus_one() -> None:
    assert entry_ends(packed(1, 2, 3) + b"\xc1", 1) == [1, 2]


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (packed([T, {}]) + b"\xc1", "not valid msgpack"),
        (b"x" * (FEED_BYTES + 10) + b"\x92", f"incomplete entry at byte {FEED_BYTES + 10}"),
        (packed([T, {}]) + b"\xda\x00", "incomplete entry at byte 7"),
    ],
)
def test_a_blob_that_is_not_whole_entries_is_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(PackedError, match=reason):
        entry_ends(blob, 1_000_000)


def test_an_entry_that_only_fails_once_built_is_refused() -> None:
    """skip() does not build a Timestamp; building it finds it malformed."""
    bad_timestamp = b"\x92\xd5\xff\x00\x00\x80"  # ext -1 of 2 bytes
    assert entry_ends(bad_timestamp, 10) == [len(bad_timestamp)]
    with pytest.raises(ValueError, match="not valid msgpack"):
        decode(["app", bad_timestamp], EventLimits())
