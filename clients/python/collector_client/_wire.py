"""The native wire format as the tracker writes it, without sockets: packed events joined into
UDP datagrams and acknowledged TCP envelopes, and the acknowledgements read back.

Both the thread senders and the asyncio senders use these; they only move bytes.
"""

from __future__ import annotations

import itertools
import random
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from collector_client._flight import Batch
from collector_client._queue import EventQueue
from collector_client._settings import TrackerError

ENVELOPE_EVENTS_KEY = b"\x82\xa6events"  # a map of two entries, then "events"
ENVELOPE_ACK_KEY = b"\xa3ack"
ACK_REPLY_MAX_BYTES = 1 << 16
pack_sent_at = struct.Struct(">d").pack
connection_numbers = itertools.count(1)  # for Batch.connection, unique across senders


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def join_events(events: Sequence[bytes], sent_at: float) -> bytes:
    """A msgpack array of the events, each completed with its sent_at value (each packed
    event ends with the float 64 marker of sent_at, the value was cut off)."""
    value = pack_sent_at(sent_at)
    return b"".join((array_header(len(events)), value.join(events), value))


def datagram(events: Sequence[bytes], clock: Callable[[], float]) -> bytes:
    return join_events(events, clock())


def envelope(queue: EventQueue, batch: Batch, token: str, connection: int) -> bytes:
    """`{"events": [...], "ack": token}`, built again for every transmission (on
    `connection`), so sent_at is always when it goes out and the daemon's clock correction
    stays right for a batch sent again minutes later. Event ids never change, so the daemon
    stores a resent event once. Counts the events as sent the first time, as retries after."""
    if batch.attempts:
        queue.count(retries=len(batch.events))
    else:
        queue.count(sent=len(batch.events))
    batch.token = token
    batch.connection = connection
    batch.attempts += 1
    batch.sent_time = time.monotonic()
    return b"".join(
        (
            ENVELOPE_EVENTS_KEY,
            join_events(batch.events, queue.settings.clock()),
            ENVELOPE_ACK_KEY,
            msgpack.packb(token),
        )
    )


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Seconds before reconnecting: doubles per failure up to `maximum`, then a random half
    to all of it, so that the clients of a restarted daemon do not all come back at once."""
    ceiling = min(maximum, initial * 2.0 ** min(max(failures - 1, 0), 32))
    return ceiling * (0.5 + random.random() / 2)


class AckReader:
    """The daemon's replies on one connection, matched in order with the batches in flight."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self.unpacker = msgpack.Unpacker(max_buffer_size=ACK_REPLY_MAX_BYTES)

    def feed(self, data: bytes) -> int:
        """Apply the complete replies in `data`; return how many batches they acknowledged.
        Raises TrackerError on bytes that are not msgpack (the peer is no collector daemon,
        or the stream is out of step; the connection must go), and on a reply that does not
        match the oldest batch in flight."""
        acknowledged = 0
        for reply in self.replies(data):
            batch = self.queue.oldest_in_flight()
            if batch is None:
                raise TrackerError(f"reply {reply!r} with no batch waiting for one")
            stored, rejected = check_ack(reply, batch)
            self.queue.complete(batch, stored + rejected, rejected)
            acknowledged += 1
        return acknowledged

    def replies(self, data: bytes) -> Iterator[Any]:
        try:
            self.unpacker.feed(data)
            yield from self.unpacker
        except (ValueError, msgpack.UnpackException) as error:  # BufferFull, FormatError...
            raise TrackerError(f"a reply that is not msgpack: {error!r}") from error


def check_ack(reply: Any, batch: Batch) -> tuple[int, int]:
    """(stored or duplicate, rejected) from an ack, checked against the batch it answers."""
    if type(reply) is not dict or reply.get("ack") != batch.token:
        raise TrackerError(f"unexpected reply {reply!r}, waiting for ack {batch.token!r}")
    counts = [reply.get(key, 0) for key in ("stored", "duplicates", "rejected")]
    if not all(type(count) is int for count in counts) or sum(counts) != len(batch.events):
        raise TrackerError(
            f"ack {batch.token!r} accounts for {reply!r}, not for the "
            f"{len(batch.events)} events sent"
        )
    return counts[0] + counts[1], counts[2]
