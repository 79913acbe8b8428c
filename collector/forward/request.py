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

import msgpack

from collector.codec import UNPACK_ERRORS, Decoded, Rejection
from collector.events import Limits, type_name
from collector.forward.entries import add_entry, repack_exact
from collector.forward.settings import ForwardSettings

GZIP_WBITS = zlib.MAX_WBITS | 16
UNCOMPRESSED = (None, "text")


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
    request: list[Any], received_at: int, limits: Limits, settings: ForwardSettings
) -> ForwardRequest:
    tag, second = request[0], request[1] if len(request) > 1 else None
    inflated = 0
    if type(second) is list:
        option = request_option(request, 3)
        entries: list[Any] | None = second
        count = len(second)
    elif type(second) is str or type(second) is bytes:
        option = request_option(request, 3)
        blob = inflate(packed_bytes(second), option, settings.max_decompressed_bytes)
        inflated = len(blob) if option.get("compressed") == "gzip" else 0
        entries, count = unpack_entries(blob, limits.max_batch_events)
    else:
        option = request_option(request, 4)
        entries, count = [request[1:3]], 1
    decoded = Decoded([], [])
    set_ack(decoded, option)
    if entries is None or count > limits.max_batch_events:
        reason = (
            f"forward request of {count} events exceeds max_batch_events={limits.max_batch_events}"
        )
        decoded.rejections.append(Rejection(reason, repack_exact(request), count))
    else:
        for entry in entries:
            add_entry(
                decoded, tag, entry, received_at=received_at, limits=limits, settings=settings
            )
    return ForwardRequest(decoded, inflated)


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


def inflate(blob: bytes, option: dict[Any, Any], limit: int) -> bytes:
    compressed = option.get("compressed")
    if compressed in UNCOMPRESSED:
        return blob
    if compressed != "gzip":
        raise ForwardError(f"compressed={compressed!r} is not supported, only gzip")
    return gunzip(blob, limit)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress one or more gzip members back to back, never holding more than
    `limit` + 1 decompressed bytes."""
    out = bytearray()
    pending = data
    while pending:
        inflater = zlib.decompressobj(GZIP_WBITS)
        while True:
            try:
                out += inflater.decompress(pending, limit + 1 - len(out))
            except zlib.error as exc:
                raise ForwardError(f"gzip data is corrupt: {exc}") from None
            if len(out) > limit:
                raise DecompressionLimitError(
                    f"gzip entries inflate past forward_max_decompressed_bytes={limit}"
                )
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
        if not inflater.eof:
            raise ForwardError("gzip data is truncated")
        pending = inflater.unused_data
    return bytes(out)


def unpack_entries(blob: bytes, max_entries: int) -> tuple[list[Any] | None, int]:
    """The entries of a MessagePackEventStream (back-to-back msgpack objects) and their
    count. Past `max_entries` they are only counted, not built (the list is None)."""
    unpacker = msgpack.Unpacker(
        strict_map_key=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max(len(blob), 1),
    )
    unpacker.feed(blob)
    entries: list[Any] = []
    # tell() also moves over an incomplete entry, so remember where the last one ended.
    complete_to = 0
    try:
        for entry in unpacker:
            complete_to = unpacker.tell()
            entries.append(entry)
            if len(entries) > max_entries:
                return None, len(entries) + count_rest(unpacker, len(blob), complete_to)
    except UNPACK_ERRORS as exc:
        raise ForwardError(f"PackedForward entries are not valid msgpack: {exc}") from None
    check_complete(complete_to, len(blob))
    return entries, len(entries)


def count_rest(unpacker: msgpack.Unpacker, size: int, complete_to: int) -> int:
    count = 0
    try:
        while complete_to < size:
            unpacker.skip()
            complete_to = unpacker.tell()
            count += 1
    except msgpack.OutOfData:
        pass
    except UNPACK_ERRORS as exc:
        raise ForwardError(f"PackedForward entries are not valid msgpack: {exc}") from None
    check_complete(complete_to, size)
    return count


def check_complete(complete_to: int, size: int) -> None:
    if complete_to != size:
        raise ForwardError(
            f"PackedForward entries end in an incomplete entry at byte {complete_to}"
        )
