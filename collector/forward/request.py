"""A forward request -> rows, rejections and the chunk to acknowledge.

The mode is told by the second element, as in Fluentd's in_forward: an array is Forward,
str or bin is PackedForward (CompressedPackedForward with `option.compressed == "gzip"`),
anything else is Message. A request whose frame is unusable (wrong length, a bad option,
an undecodable or oversized blob) raises ForwardError: nothing of it is kept, no ack is
sent, and the sender keeps its chunk to retry. A bad event inside a good frame is
quarantined with its reason and the rest of the request is stored.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from collector.codec import Decoded, Rejection
from collector.events import type_name
from collector.forward.entries import add_entry, repack_exact
from collector.forward.packed import (
    PackedError,
    add_entries,
    entry_ends,
    max_counted_entries,
)
from collector.settings import EventLimits, ForwardSettings

GZIP_WBITS = zlib.MAX_WBITS | 16
UNCOMPRESSED = (None, "text")
INFLATE_STEP_BYTES = 1024 * 1024
# Fluentd's chunk ids are 24 characters (16 random bytes in base64).
MAX_CHUNK_BYTES = 256


class ForwardError(ValueError):
    """The request cannot be used at all; the message says why."""


class DecompressionLimitError(ForwardError):
    """A compressed blob inflates past forward_max_decompressed_bytes."""


@dataclass(slots=True)
class ForwardRequest:
    decoded: Decoded
    inflated_bytes: int = 0  # decompressed blob size, for the buffer's memory estimate

    @property
    def events(self) -> int:
        return len(self.decoded.rows) + self.decoded.rejected_events


def is_forward_request(obj: Any) -> bool:
    """An array whose first element is a str tag; a native batch is an array of maps."""
    return type(obj) is list and len(obj) > 0 and type(obj[0]) is str


def decode_request(
    request: list[Any], received_at: int, limits: EventLimits, settings: ForwardSettings
) -> ForwardRequest:
    tag, second = request[0], request[1] if len(request) > 1 else None
    if type(second) is str or type(second) is bytes:
        return decode_packed(request, received_at, limits, settings)
    if type(second) is list:
        option, entries = request_option(request, 3), second
    else:
        option, entries = request_option(request, 4), [request[1:3]]
    decoded = Decoded([], [])
    set_ack(decoded, option)
    if len(entries) > limits.max_batch_events:
        reject_whole(decoded, request, len(entries), limits)
    else:
        for entry in entries:
            add_entry(
                decoded, tag, entry, received_at=received_at, limits=limits, settings=settings
            )
    return ForwardRequest(decoded)


def decode_packed(
    request: list[Any], received_at: int, limits: EventLimits, settings: ForwardSettings
) -> ForwardRequest:
    """PackedForward and CompressedPackedForward: the entries are measured first, then
    built one at a time (see collector.forward.packed)."""
    option = request_option(request, 3)
    decoded = Decoded([], [])
    set_ack(decoded, option)
    blob = inflate(packed_bytes(request[1]), option, settings.max_decompressed_bytes)
    inflated = len(blob) if option.get("compressed") == "gzip" else 0
    try:
        ends = entry_ends(blob, max_counted_entries(limits))
        if len(ends) > limits.max_batch_events:
            reject_whole(decoded, request, len(ends), limits)
        else:
            add_entries(
                decoded,
                request[0],
                blob,
                ends,
                received_at=received_at,
                limits=limits,
                settings=settings,
            )
    except PackedError as exc:
        raise ForwardError(str(exc)) from None
    return ForwardRequest(decoded, inflated)


def reject_whole(decoded: Decoded, request: list[Any], count: int, limits: EventLimits) -> None:
    """Quarantine a request of more than max_batch_events events as one record. Counting
    stops past max_counted_entries: such a request counts as that many events plus one."""
    most = limits.max_batch_events
    if count > max_counted_entries(limits):
        count = max_counted_entries(limits) + 1
        reason = f"forward request of more than {count - 1} events exceeds max_batch_events={most}"
    else:
        reason = f"forward request of {count} events exceeds max_batch_events={most}"
    decoded.rejections.append(Rejection(reason, repack_exact(request), count))


def request_option(request: list[Any], length: int) -> dict[Any, Any]:
    """The option map of a request of `length` elements (the last one optional)."""
    if len(request) not in (length - 1, length):
        mode = "Message" if length == 4 else "Forward/PackedForward"
        raise ForwardError(
            f"a {mode} request has {length - 1} or {length} elements, got {len(request)}"
        )
    option = request[length - 1] if len(request) == length else None
    if option is None:
        return {}
    if type(option) is not dict:
        raise ForwardError(f"option must be a map, got {type_name(option)}")
    return option


def set_ack(decoded: Decoded, option: dict[Any, Any]) -> None:
    chunk = option.get("chunk")
    if chunk is None:
        return
    if type(chunk) is not str and type(chunk) is not bytes:
        raise ForwardError(f"option chunk must be str or bin, got {type_name(chunk)}")
    # Text sent as invalid UTF-8 counts 3 bytes per escaped byte: close enough for a cap.
    size = len(chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else chunk)
    if size > MAX_CHUNK_BYTES:
        raise ForwardError(f"option chunk is {size} bytes, more than {MAX_CHUNK_BYTES}")
    decoded.ack = chunk
    decoded.wants_ack = True


def packed_bytes(blob: str | bytes) -> bytes:
    """The blob's exact bytes. Fluentd sends it as msgpack str although it is binary; a
    forward connection decodes str with surrogate escapes, which this undoes exactly."""
    if type(blob) is bytes:
        return blob
    assert isinstance(blob, str)
    try:
        return blob.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ForwardError("PackedForward entries sent as str hold invalid text") from None


def inflate(blob: bytes, option: dict[Any, Any], limit: int) -> bytes | bytearray:
    compressed = option.get("compressed")
    if compressed in UNCOMPRESSED:
        return blob
    if compressed != "gzip":
        raise ForwardError(f"compressed={compressed!r} is not supported, only gzip")
    return gunzip(blob, limit)


def gunzip(data: bytes, limit: int) -> bytearray:
    """Decompress one or more gzip members back to back, never holding more than
    `limit` + 1 decompressed bytes, plus one step of INFLATE_STEP_BYTES while it grows."""
    out = bytearray()
    pending = data
    while pending:
        inflater = zlib.decompressobj(GZIP_WBITS)
        while not inflater.eof:
            step = min(INFLATE_STEP_BYTES, limit + 1 - len(out))
            try:
                piece = inflater.decompress(pending, step)
            except zlib.error as exc:
                raise ForwardError(f"gzip data is corrupt: {exc}") from None
            out += piece
            if len(out) > limit:
                raise DecompressionLimitError(
                    f"gzip entries inflate past forward_max_decompressed_bytes={limit}"
                )
            pending = inflater.unconsumed_tail
            # A full step may leave output inside zlib after the last input byte.
            if not pending and len(piece) < step:
                break
        if not inflater.eof:
            raise ForwardError("gzip data is truncated")
        pending = inflater.unused_data
    return out
