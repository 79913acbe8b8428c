"""The entries of a PackedForward blob (back-to-back msgpack objects), one at a time.

Bytes bound the blob, not the objects they stand for: 15 MB of empty arrays (a 15 KB
gzip) would become 15 million lists, over 1 GiB. So the blob is first walked with
`Unpacker.skip()`, which measures each entry without building anything, and only an
entry small enough to hold a storable event is then built from its own bytes, then
mapped, then dropped before the next one. A larger entry is quarantined unbuilt.
"""

from __future__ import annotations

from typing import Any

import msgpack

from collector.codec import UNPACK_ERRORS, Decoded, Rejection
from collector.forward.entries import add_entry
from collector.settings import EventLimits, ForwardSettings

# Past this many times max_batch_events, entries are no longer counted.
COUNT_FACTOR = 10
ENTRY_SLACK_BYTES = 64 * 1024
# How much of an entry too large to build is kept in quarantine.
KEPT_ENTRY_BYTES = 4096
FEED_BYTES = 64 * 1024


class PackedError(ValueError):
    """The blob is not a stream of whole msgpack objects."""


def max_entry_bytes(limits: EventLimits) -> int:
    """The largest entry that is built: 4 x max_event_bytes + 64 KiB (320 KiB by default).

    msgpack takes at most 4.5 bytes for one byte of the JSON it is stored as (an int
    encoded in 9 bytes for `0,` in a list); extra is at most max_extra_bytes, the rest
    of the event is text, and the slack covers the time and the entry's metadata map.
    A larger entry cannot hold a storable event.
    """
    return 4 * limits.max_event_bytes + ENTRY_SLACK_BYTES


def max_counted_entries(limits: EventLimits) -> int:
    return COUNT_FACTOR * limits.max_batch_events


def entry_ends(blob: bytes | bytearray, max_entries: int) -> list[int]:
    """The offset where each entry ends, without building any. Stops once it has found
    `max_entries` + 1 entries (the rest of the blob is then not looked at)."""
    view = memoryview(blob)
    # Fed piece by piece, the unpacker holds little of the blob, except that it needs a
    # str or bin whole: at most the blob's size again, never objects.
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(view), 1))
    ends: list[int] = []
    fed = 0
    try:
        while len(ends) <= max_entries:
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                if fed == len(view):
                    break
                unpacker.feed(view[fed : fed + FEED_BYTES])
                fed = min(fed + FEED_BYTES, len(view))
                continue
            ends.append(unpacker.tell())
    except UNPACK_ERRORS as exc:
        raise PackedError(f"PackedForward entries are not valid msgpack: {exc}") from None
    complete_to = ends[-1] if ends else 0
    if len(ends) <= max_entries and complete_to != len(view):
        # tell() also moves over an incomplete entry: the last whole one ended here.
        raise PackedError(f"PackedForward entries end in an incomplete entry at byte {complete_to}")
    return ends


def add_entries(
    decoded: Decoded,
    tag: str,
    blob: bytes | bytearray,
    ends: list[int],
    *,
    received_at: int,
    limits: EventLimits,
    settings: ForwardSettings,
) -> None:
    """Each entry's row or rejection, built one at a time from its own bytes."""
    view = memoryview(blob)
    largest = max_entry_bytes(limits)
    start = 0
    for end in ends:
        if end - start > largest:
            decoded.rejections.append(oversized_entry(view[start:end], largest))
        else:
            entry = unpack_entry(view[start:end])
            add_entry(
                decoded, tag, entry, received_at=received_at, limits=limits, settings=settings
            )
        start = end


def unpack_entry(data: memoryview) -> Any:
    # unpackb bounds every array, map, str and bin by the entry's own size.
    try:
        return msgpack.unpackb(data, strict_map_key=False, unicode_errors="surrogateescape")
    except UNPACK_ERRORS as exc:
        raise PackedError(f"PackedForward entries are not valid msgpack: {exc}") from None


def oversized_entry(data: memoryview, largest: int) -> Rejection:
    reason = (
        f"forward entry of {len(data)} bytes is larger than {largest} bytes "
        f"(4 x max_event_bytes + 64 KiB): not decoded, its first {KEPT_ENTRY_BYTES} bytes kept"
    )
    return Rejection(reason, bytes(data[:KEPT_ENTRY_BYTES]))
