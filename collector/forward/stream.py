"""What a TCP connection needs around forward requests: how to decode its stream (and
account for every byte read), and the bytes of an ack.

Fluentd's out_forward sends the PackedForward blob as msgpack str although it is binary,
so a strict UTF-8 decoder fails on it. A connection whose first request is a forward
request therefore decodes str with surrogate escapes: the blob's bytes are recovered
exactly, forward event text that is not UTF-8 is quarantined per event (see entries.py),
and a native object holding such text is refused as a strict decoder would. Every other
connection keeps the native decoder, unchanged.
"""

from __future__ import annotations

from typing import Any

import msgpack

from collector.buffer import CommitResult
from collector.codec import new_stream_unpacker

NIL = 0xC0
FIXARRAY_FIRST, FIXARRAY_LAST = 0x90, 0x9F
ARRAY16, ARRAY32 = 0xDC, 0xDD
FIXSTR_FIRST, FIXSTR_LAST = 0xA0, 0xBF
STR_HEADERS = (0xD9, 0xDA, 0xDB)
# Undecided openings are only ever runs of nil keepalives; past this the native decoder
# is chosen.
MAX_OPENING_BYTES = 1024


def speaks_forward(head: bytes) -> bool | None:
    """Whether the first non-nil object of a stream is an array whose first element is a
    str (a forward request or a PING); None while too few bytes have arrived to say."""
    index = 0
    while index < len(head) and head[index] == NIL:
        index += 1
    if index == len(head):
        return None
    first = head[index]
    if FIXARRAY_FIRST <= first <= FIXARRAY_LAST:
        header = 1
    elif first == ARRAY16:
        header = 3
    elif first == ARRAY32:
        header = 5
    else:
        return False
    if len(head) <= index + header:
        return None
    length = (
        first - FIXARRAY_FIRST
        if header == 1
        else int.from_bytes(head[index + 1 : index + header], "big")
    )
    element = head[index + header]
    return length > 0 and (FIXSTR_FIRST <= element <= FIXSTR_LAST or element in STR_HEADERS)


class StreamOpening:
    """A connection's first bytes, held until they show which decoder the stream needs."""

    def __init__(self) -> None:
        self.held = b""

    def take(self, data: bytes, *, final: bool = False) -> tuple[bool, bytes] | None:
        """(forward?, every byte so far) once decided, else None (the bytes are kept)."""
        held = self.held + data
        forward = speaks_forward(held)
        if forward is None and not final and len(held) < MAX_OPENING_BYTES:
            self.held = held
            return None
        self.held = b""
        return forward is True, held


def forward_stream_unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    """The native stream decoder, except that str which is not UTF-8 is kept (escaped)."""
    return msgpack.Unpacker(
        max_buffer_size=max_buffer_size,
        strict_map_key=False,
        unicode_errors="surrogateescape",
    )


def holds_undecodable_text(obj: Any) -> bool:
    """Whether a str inside `obj` was not UTF-8 (decoded with surrogate escapes)."""
    try:
        msgpack.packb(obj)
    except UnicodeEncodeError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return False


def ack_reply(chunk: Any) -> bytes:
    """`{"ack": chunk}` with the chunk exactly as received (str stays str, bin stays bin)."""
    return bytes(msgpack.packb({"ack": chunk}, unicode_errors="surrogateescape"))


class StreamDecoder:
    """A TCP connection's stream: the decoder its first bytes call for, and where the
    bytes read stand: decoded into whole objects, waiting, or given up."""

    def __init__(self, max_buffer_size: int) -> None:
        self.max_buffer_size = max_buffer_size
        self.opening = StreamOpening()
        self.unpacker: msgpack.Unpacker | None = None
        self.lenient = False  # decodes str with surrogate escapes (a forward stream)
        self.fed = 0
        # Unpacker.tell() also moves over an incomplete object, so remember where the
        # last whole one ended.
        self.decoded = 0

    def feed(self, data: bytes, *, final: bool = False) -> bool:
        """Take bytes read; False while they cannot show which decoder the stream
        needs. Raises msgpack.BufferFull (the bytes are then counted as read)."""
        if self.unpacker is None:
            opened = self.opening.take(data, final=final)
            if opened is None:
                return False
            self.lenient, data = opened
            make = forward_stream_unpacker if self.lenient else new_stream_unpacker
            self.unpacker = make(self.max_buffer_size)
        self.fed += len(data)
        self.unpacker.feed(data)
        return True

    def next_object(self) -> tuple[Any, int, int] | None:
        """The next whole object, its size and the offset it starts at; None while no
        whole object waits. Raises one of codec.UNPACK_ERRORS on bytes that are not
        msgpack."""
        if self.unpacker is None:
            return None
        try:
            obj = next(self.unpacker)
        except StopIteration:
            return None
        start, self.decoded = self.decoded, self.unpacker.tell()
        return obj, self.decoded - start, start

    @property
    def undecoded(self) -> int:
        """Bytes read after the last whole object, held opening bytes included."""
        return self.fed - self.decoded + len(self.opening.held)

    def discard(self) -> int:
        """Give up on the undecoded bytes (they are never counted twice); how many."""
        count = self.undecoded
        self.fed, self.opening.held = self.decoded, b""
        return count


class PendingAck:
    """An object's ack, sent once its commit is done and every earlier ack is sent."""

    __slots__ = ("forward", "result", "token")

    def __init__(self, token: Any, forward: bool = False) -> None:
        self.token = token
        self.forward = forward
        self.result: CommitResult | None = None

    def reply(self, result: CommitResult) -> bytes:
        if self.forward:
            return ack_reply(self.token)
        stored, duplicates, rejected = result
        reply = {"ack": self.token, "stored": stored, "rejected": rejected}
        if duplicates:
            reply["duplicates"] = duplicates
        return bytes(msgpack.packb(reply))
