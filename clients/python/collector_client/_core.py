"""What Tracker and AsyncTracker share: the event queue, its accounting and the counters.

`track()` is the hot path: it builds the event, packs it to msgpack in the calling thread
(so a later change to `extra` cannot reach it) and appends the bytes to the queue under a
lock. Each event is packed with `sent_at` last and its 8-byte float value cut off; a sender
puts the send time back between the events as it joins them (see `_wire.join_events`).

Every event given to `track()` is counted once in `queued` and ends in exactly one of `sent`
(UDP) or `acknowledged` (TCP), `dropped`, or `pending`. Events accepted into the queue are
numbered in order (the newest is `_accepted`): the queue always holds a contiguous run of
numbers ending at `_accepted` and the TCP batches in flight hold older runs, so `flush()` tells
whether everything accepted before it was called is done by comparing numbers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from collector_client._process import ids, register
from collector_client._settings import (
    DATAGRAM_HEADER_BYTES,
    MAX_UDP_PAYLOAD,
    SENT_AT_VALUE_BYTES,
    ErrorHandler,
    FlushResult,
    Settings,
    TrackerStats,
    batch_budget,
    datagram_budget,
    refusal,
)

MAX_DATAGRAM_EVENTS = 0xFFFF  # an array 16 header
WAS_IDLE, SEALED = 1, 2  # what track() tells the sender


class Sending(NamedTuple):
    """What `_send_chunk` did: `done`, a chunk left the queue (sent, or dropped with `error`);
    else `wait` seconds until the open chunk is due (-1: the queue is empty), or `blocked`,
    the socket had no room."""

    done: bool
    wait: float
    blocked: bool = False
    error: OSError | None = None


SEND_ERROR_REPORT_INTERVAL = 1.0  # seconds


class Batch:
    """TCP: events taken from the queue together into one envelope, until acknowledged.

    `events` are packed events without their sent_at value; `first_seq..last_seq` are their
    numbers in the queue.
    """

    __slots__ = ("attempts", "events", "first_seq", "last_seq", "sent_time", "token")

    def __init__(self, events: list[bytes], first_seq: int) -> None:
        self.events = events
        self.first_seq = first_seq
        self.last_seq = first_seq + len(events) - 1
        self.attempts = 0
        self.token = ""
        self.sent_time = 0.0


class EventQueue:
    """The queue and the counters. Subclasses run a sender and say how to wake it.

    Queued events are grouped as they come into chunks of one datagram (UDP) or one batch
    (TCP): `_open` fills up, and is sealed into `_sealed` once the next event would not fit.
    A sealed chunk is due at once; the open one after linger_ms, or on flush().
    """

    def __init__(self, settings: Settings, on_error: ErrorHandler | None) -> None:
        self.settings = settings
        self.on_error = on_error
        self._clock = settings.clock
        # Used under the lock: a Packer is not thread-safe, and one per call costs more than
        # the packing. An aware datetime (as ts or in extra) goes out as a msgpack Timestamp.
        self._pack = msgpack.Packer(datetime=True).pack
        self._drop_oldest = settings.overflow == "drop_oldest"
        if settings.transport == "udp":
            self._chunk_events = MAX_DATAGRAM_EVENTS
            self._chunk_bytes = datagram_budget(settings)
            self._max_event_bytes = MAX_UDP_PAYLOAD - DATAGRAM_HEADER_BYTES
        else:
            self._chunk_events = settings.batch_size
            self._chunk_bytes = self._max_event_bytes = batch_budget(settings)
        # A sealed chunk is sent by the thread that sealed it (see the senders' assist()).
        self._caller_sends = settings.caller_sends
        self._linger = settings.linger_ms / 1000
        self._closed = False
        self._reset()
        register(self)

    def _reset(self) -> None:
        """A fresh queue and counters: at creation, and in a forked child."""
        # Reentrant: a signal handler that tracks an event may interrupt track() in the
        # same thread, inside the lock.
        self._lock = threading.RLock()
        self._progressed = threading.Condition(self._lock)
        self._sealed: deque[list[bytes]] = deque()
        self._open: list[bytes] = []
        self._open_bytes = 0  # with the sent_at values
        self._length = 0  # events in _sealed and _open
        self._in_flight: deque[Batch] = deque()
        # A closed tracker has no room: every event is dropped and counted.
        self._capacity = 0 if self._closed else self.settings.max_queue
        self._accepted = 0
        self._idle = True  # the sender does not know about queued events: wake it
        self._first_waiting: float | None = None
        self._flushers = 0
        self._closing = False
        self._last_send_error = -SEND_ERROR_REPORT_INTERVAL
        self._queued = self._sent = self._acknowledged = self._rejected = 0
        self._dropped = self._retries = self._errors = self._oversized = 0

    def track(  # noqa: PLR0917 - the signature apps know: track("click", user, value)
        self,
        action: str,
        user_id: str | int | None = None,
        value: Any = None,
        extra: dict[str, Any] | None = None,
        ts: Any = None,
        id: str | None = None,
    ) -> None:
        """Queue one event. Never waits on the network and never raises, except TypeError
        when `action` is not a str: that is a bug at the call site."""
        if type(action) is not str:
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        event = {
            "action": action,
            "ts": self._clock() if ts is None else ts,
            "id": f"{ids.prefix}{next(ids.counter)}" if id is None else id,
        }
        if user_id is not None:
            event["user_id"] = user_id
        if value is not None:
            event["value"] = value
        if extra is not None:
            event["extra"] = extra
        event["sent_at"] = 0.0  # last: the sender writes the send time over its value
        with self._lock:
            self._queued += 1
            try:
                data = self._pack(event)[:-SENT_AT_VALUE_BYTES]
            except Exception:  # whatever the app put in it costs this event only
                data = b""
            size = len(data) + SENT_AT_VALUE_BYTES
            if not data or size > self._max_event_bytes:
                self._dropped += 1
            elif not (signal := self._enqueue(data, size)):
                return
        if not data or size > self._max_event_bytes:
            self._report(refusal(event, size, self.settings))
            return
        if signal & SEALED and self._caller_sends:
            self._assist()
            if not signal & WAS_IDLE:
                return
        self._wake()

    def _enqueue(self, data: bytes, size: int) -> int:
        """Add a packed event (lock held). Return what the sender must hear of: WAS_IDLE,
        SEALED (a chunk is ready), both, or 0."""
        if self._length >= self._capacity:
            self._dropped += 1
            if not (self._drop_oldest and self._length):
                return 0
            self._evict_oldest()
        chunk = self._open
        signal = 0
        if chunk and (
            self._open_bytes + size > self._chunk_bytes or len(chunk) >= self._chunk_events
        ):
            self._sealed.append(chunk)
            self._open = chunk = []
            self._open_bytes = 0
            signal = SEALED
        chunk.append(data)
        self._open_bytes += size
        self._length += 1
        self._accepted += 1
        if self._idle:
            self._idle = False
            signal |= WAS_IDLE
        return signal

    def _evict_oldest(self) -> None:
        """drop_oldest: the oldest queued event makes room (lock held, queue not empty)."""
        if self._sealed:
            del self._sealed[0][0]
            if not self._sealed[0]:
                self._sealed.popleft()
        else:
            self._open_bytes -= len(self._open.pop(0)) + SENT_AT_VALUE_BYTES
        self._length -= 1

    def stats(self) -> TrackerStats:
        with self._lock:
            return TrackerStats(
                queued=self._queued,
                sent=self._sent,
                acknowledged=self._acknowledged,
                rejected=self._rejected,
                dropped=self._dropped,
                retries=self._retries,
                errors=self._errors,
                oversized=self._oversized,
                pending=self._pending_through(self._accepted),
            )

    # Hooks for the subclasses.

    def _wake(self) -> None:
        """Tell the sender there is work (start it on first use)."""
        raise NotImplementedError

    def _assist(self) -> None:
        """A chunk is full: send it from the calling thread, without waiting."""

    def _notify_progress(self) -> None:
        """Called with the lock held whenever events leave the queue or the flight."""
        self._progressed.notify_all()

    def _after_fork_in_child(self) -> None:
        self._reset()

    def _close_at_exit(self) -> None:
        raise NotImplementedError

    # For the senders.

    def _take(self, now: float, sealed_only: bool = False) -> tuple[Batch | None, float]:
        """TCP: the next chunk to send, as a batch in flight; or (None, seconds until the open
        chunk is due); or (None, -1.0) when the queue is empty: the sender is then idle and
        track() will wake it."""
        with self._lock:
            if self._sealed:
                events = self._sealed.popleft()
            elif not self._open or sealed_only:
                if not self._open:
                    self._first_waiting = None
                    self._idle = True
                return None, -1.0
            else:
                wait = self._linger_left(now)
                if wait > 0:
                    return None, wait
                events, self._open, self._open_bytes = self._open, [], 0
                self._first_waiting = None
            batch = Batch(events, self._accepted - self._length + 1)
            self._length -= len(events)
            self._in_flight.append(batch)
            return batch, 0.0

    def _send_chunk(
        self, send: Callable[[list[bytes]], object], now: float, sealed_only: bool = False
    ) -> Sending:
        """UDP: send the next chunk that is due with `send`, which must not wait
        (MSG_DONTWAIT, or an asyncio transport), for any thread.

        The lock is held through the send, so datagrams leave in order whichever thread
        sends them, and the counters never see a chunk neither queued nor sent. A send error
        drops the chunk (counted); a socket with no room leaves it queued (`blocked`).
        """
        with self._lock:
            if self._sealed:
                events = self._sealed[0]
            elif sealed_only or not self._open:
                if not self._open:
                    self._first_waiting = None
                    self._idle = True
                return Sending(False, -1.0)
            else:
                wait = self._linger_left(now)
                if wait > 0:
                    return Sending(False, wait)
                events = self._open
            try:
                send(events)
            except BlockingIOError:
                return Sending(False, 0.0, blocked=True)
            except OSError as error:
                self._dropped += len(events)
                outcome = Sending(True, 0.0, error=error)
            else:
                self._sent += len(events)
                self._oversized += is_oversized(events, self._chunk_bytes)
                outcome = Sending(True, 0.0)
            self._remove_chunk(events)
            return outcome

    def _remove_chunk(self, events: list[bytes]) -> None:
        """The oldest chunk is gone, sent or dropped (lock held)."""
        if self._sealed and self._sealed[0] is events:
            self._sealed.popleft()
        else:
            self._open, self._open_bytes, self._first_waiting = [], 0, None
        self._length -= len(events)
        if self._flushers:
            self._notify_progress()

    def _linger_left(self, now: float) -> float:
        """Seconds before the open chunk is due (lock held)."""
        if self._flushers or self._closing:
            return 0.0
        if self._first_waiting is None:
            self._first_waiting = now
        return self._first_waiting + self._linger - now

    def _idle_if_empty(self) -> bool:
        """True when nothing is queued or in flight; the sender is then idle, and track()
        will wake it."""
        with self._lock:
            if self._length or self._in_flight:
                return False
            self._idle = True
            return True

    def _oldest_in_flight(self) -> Batch | None:
        with self._lock:
            return self._in_flight[0] if self._in_flight else None

    def _unacknowledged(self) -> list[Batch]:
        with self._lock:
            return list(self._in_flight)

    def _in_flight_count(self) -> int:
        return len(self._in_flight)

    def _complete(self, batch: Batch, acknowledged: int, rejected: int) -> None:
        """TCP: a batch is acknowledged; it leaves the flight and its events are counted."""
        with self._lock:
            if batch in self._in_flight:
                self._in_flight.remove(batch)
            self._acknowledged += acknowledged
            self._rejected += rejected
            self._notify_progress()

    def _count(self, sent: int = 0, retries: int = 0, errors: int = 0) -> None:
        with self._lock:
            self._sent += sent
            self._retries += retries
            self._errors += errors

    def _report(self, error: Exception) -> None:
        """Count a failure and hand it to on_error, whose own exceptions are swallowed."""
        self._count(errors=1)
        if self.on_error is not None:
            with contextlib.suppress(Exception):  # the app's handler must not stop the sender
                self.on_error(error)

    def _report_send_error(self, error: Exception) -> None:
        """Every send or connection error is counted; on_error hears of one per second at
        most, so that a daemon that is down does not flood the app's logs."""
        now = time.monotonic()
        if now - self._last_send_error >= SEND_ERROR_REPORT_INTERVAL:
            self._last_send_error = now
            self._report(error)
        else:
            self._count(errors=1)

    # For flush() and close().

    def _flush_target(self) -> int | None:
        """The number of the newest accepted event, or None when nothing is waiting."""
        with self._lock:
            target = self._accepted
            return None if self._flushed(target) else target

    def _flushed(self, target: int) -> bool:
        if self._in_flight:
            return self._in_flight[0].first_seq > target
        return self._accepted - self._length >= target

    def _pending_through(self, target: int) -> int:
        """Events numbered up to `target` still queued or in flight (lock held)."""
        pending = 0
        for batch in self._in_flight:
            if batch.first_seq <= target:
                pending += min(batch.last_seq, target) - batch.first_seq + 1
        head = self._accepted - self._length + 1
        return pending + max(0, target - head + 1)

    def _flush_result(self, target: int) -> FlushResult:
        with self._lock:
            return FlushResult(self._flushed(target), self._pending_through(target))

    def _abandon(self) -> None:
        """Closing: whatever is still queued or in flight is dropped and counted."""
        with self._lock:
            self._closed = True
            self._capacity = 0
            self._dropped += self._length + sum(len(b.events) for b in self._in_flight)
            self._sealed.clear()
            self._open, self._open_bytes, self._length = [], 0, 0
            self._in_flight.clear()
            self._notify_progress()


def is_oversized(events: list[bytes], budget: int) -> int:
    """1 for a datagram of one event larger than the datagram budget, else 0."""
    return int(len(events) == 1 and len(events[0]) + SENT_AT_VALUE_BYTES > budget)
