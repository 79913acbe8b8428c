"""The options of a tracker, its counters, what flush() reports, and why an event is refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import msgpack

Transport = Literal["udp", "tcp"]
Overflow = Literal["drop_newest", "drop_oldest"]
ErrorHandler = Callable[[Exception], None]

DEFAULT_PORT = 24224
MAX_PORT = 65_535
MAX_UDP_PAYLOAD = 65_507  # the most one IPv4 UDP datagram can carry
MAX_BATCH_EVENTS = 10_000  # the daemon's default max_batch_events
MAX_TCP_OBJECT_BYTES = 4 << 20  # the daemon's default tcp_max_buffer_bytes
SENT_AT_VALUE_BYTES = 8  # a msgpack float 64 after its one-byte marker
DATAGRAM_HEADER_BYTES = 3  # the largest array header a datagram needs (array 16)
ENVELOPE_ROOM = 64  # bytes of an envelope besides its events


class TrackerError(Exception):
    """A problem the tracker found itself: an event it cannot send, a reply it cannot use."""


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """A snapshot of a tracker's counters, all in events except `errors`.

    `queued == sent + dropped + pending` in UDP mode and
    `queued == acknowledged + dropped + pending` in TCP mode.
    """

    queued: int  # given to track()
    sent: int  # written to the socket (TCP: the first time only)
    acknowledged: int  # TCP: acknowledged by the daemon, as stored, duplicate or rejected
    rejected: int  # TCP: of those, put in quarantine by the daemon as invalid
    dropped: int  # given up by the tracker: queue full, cannot be encoded, too large, lost
    retries: int  # TCP: sent again after a connection was lost or an ack did not come
    errors: int  # failures: connect, send, encode, bad replies (see on_error)
    oversized: int  # UDP: sent alone in a datagram larger than max_datagram_bytes
    pending: int  # queued or in flight, not yet sent (UDP) or acknowledged (TCP)


class Counters:
    """The counters of TrackerStats as they change, in the queue's sections (`dropped`
    without the events a full queue gave up: see `Chunks.overflowed`)."""

    __slots__ = ("acknowledged", "dropped", "oversized", "queued", "rejected", "retries", "sent")

    def __init__(self) -> None:
        self.queued = self.sent = self.acknowledged = self.rejected = 0
        self.dropped = self.retries = self.oversized = 0


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What `flush()` or `close()` achieved. True when nothing is left waiting."""

    complete: bool  # every event queued before the call was sent (UDP) or acknowledged (TCP)
    pending: int  # events queued before the call and still waiting

    def __bool__(self) -> bool:
        return self.complete


class TrackerOptions(TypedDict, total=False):
    """Keyword options of Tracker and AsyncTracker; defaults and meaning in Settings."""

    max_queue: int
    overflow: Overflow
    batch_size: int
    linger_ms: float
    max_datagram_bytes: int
    max_batch_bytes: int
    max_in_flight: int
    max_attempts: int
    ack_timeout: float
    connect_timeout: float
    backoff_initial: float
    backoff_max: float
    exit_timeout: float
    caller_sends: bool
    clock: Callable[[], float]


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    transport: Transport = "udp"
    max_queue: int = 10_000  # events waiting to be sent (TCP: and not yet in flight)
    overflow: Overflow = "drop_newest"  # which event a full queue gives up
    batch_size: int = 1000  # TCP: events per envelope
    linger_ms: float = 5.0  # how long the first queued event waits for company
    max_datagram_bytes: int = 1400  # UDP: datagram size, under a usual MTU
    max_batch_bytes: int = 1 << 20  # TCP: envelope size; a larger event is dropped
    max_in_flight: int = 4  # TCP: envelopes sent and not yet acknowledged
    max_attempts: int = 10  # TCP: failed sends of the oldest batch before it is split up
    ack_timeout: float = 30.0  # TCP: seconds to wait for an ack before reconnecting
    connect_timeout: float = 5.0  # TCP: seconds for one connection attempt
    backoff_initial: float = 0.1  # TCP: first reconnection delay, doubled per failure...
    backoff_max: float = 10.0  # ...up to this, with jitter
    exit_timeout: float = 5.0  # seconds given to the flush at interpreter exit (and `with`)
    caller_sends: bool = True  # the thread that fills a datagram or batch sends it, not waiting
    clock: Callable[[], float] = time.time  # seconds since the epoch, for ts and sent_at

    def __post_init__(self) -> None:
        checks = (
            (type(self.port) is int and 0 <= self.port <= MAX_PORT,
             f"port must be an int, 0 to {MAX_PORT}"),
            (self.transport in ("udp", "tcp"), "transport must be 'udp' or 'tcp'"),
            (self.overflow in ("drop_newest", "drop_oldest"),
             "overflow must be 'drop_newest' or 'drop_oldest'"),
            (self.max_queue >= 1, "max_queue must be at least 1"),
            (1 <= self.batch_size <= MAX_BATCH_EVENTS,
             f"batch_size must be 1 to {MAX_BATCH_EVENTS}"),
            (64 <= self.max_datagram_bytes <= MAX_UDP_PAYLOAD,
             f"max_datagram_bytes must be 64 to {MAX_UDP_PAYLOAD}"),
            (1024 <= self.max_batch_bytes <= MAX_TCP_OBJECT_BYTES,
             f"max_batch_bytes must be 1024 to {MAX_TCP_OBJECT_BYTES}"),
            (self.max_in_flight >= 1, "max_in_flight must be at least 1"),
            (self.max_attempts >= 1, "max_attempts must be at least 1"),
            (self.linger_ms >= 0, "linger_ms must not be negative"),
            (min(self.ack_timeout, self.connect_timeout, self.backoff_initial) > 0,
             "ack_timeout, connect_timeout and backoff_initial must be positive"),
        )  # fmt: skip
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems))


def datagram_budget(settings: Settings) -> int:
    """Bytes of events (with their sent_at values) that fit in one datagram."""
    return settings.max_datagram_bytes - DATAGRAM_HEADER_BYTES


def batch_budget(settings: Settings) -> int:
    """Bytes of events (with their sent_at values) that fit in one envelope."""
    return settings.max_batch_bytes - ENVELOPE_ROOM


def event_budget(settings: Settings) -> int:
    """Bytes of the largest event (with its sent_at value) a datagram or an envelope carries."""
    if settings.transport == "udp":
        return MAX_UDP_PAYLOAD - DATAGRAM_HEADER_BYTES
    return batch_budget(settings)


def refusal(event: dict[str, Any], size: int, settings: Settings) -> TrackerError:
    """Why track() did not queue an event: it cannot be packed (`size` is then that of its
    sent_at value alone), or it is larger than a datagram or a batch can carry."""
    what = event.get("action")
    if size == SENT_AT_VALUE_BYTES:
        try:
            msgpack.packb(event, datetime=True)
        except Exception as error:
            return TrackerError(f"event {what!r} dropped: cannot be encoded: {error}")
    if settings.transport == "udp":
        return TrackerError(
            f"event {what!r} dropped: {size} bytes of msgpack, more than a UDP datagram "
            "can carry; send large events with transport='tcp'"
        )
    return TrackerError(
        f"event {what!r} dropped: {size} bytes of msgpack, more than max_batch_bytes "
        f"({settings.max_batch_bytes}) allows"
    )


def given_up(event: dict[str, Any], failures: int, error: Exception) -> TrackerError:
    """Why a TCP sender dropped an event it had sent: the daemon never acknowledged it."""
    return TrackerError(
        f"event {event.get('action')!r} (id {event.get('id')!r}) dropped: the connection "
        f"failed {failures} times in a row while it waited for its ack, alone in its batch "
        f"(last: {error!r}); the daemon may refuse it, e.g. if it is larger than the "
        "daemon's tcp_max_buffer_bytes"
    )
