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

Signal handlers: Python runs a handler between two bytecodes of the thread it interrupts,
which may be inside the queue's lock, halfway through changing the queue. Code that changes
the queue or the counters therefore runs in a *section* (`track()`'s own, or `with
self._section`), which marks the queue `_busy`. A track() that finds it busy can only be a
handler interrupting that same thread (the lock is reentrant for it, and for it alone): its
event waits, packed, in `_deferred` (a deque: appending is atomic) and the interrupted
section takes it in before it ends. Only track() may be called from a signal handler.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any

import msgpack

from collector_client._process import ids, register
from collector_client._settings import (
    DATAGRAM_HEADER_BYTES,
    MAX_UDP_PAYLOAD,
    SENT_AT_VALUE_BYTES,
    ErrorHandler,
    Settings,
    TrackerError,
    batch_budget,
    datagram_budget,
    refusal,
)

MAX_DATAGRAM_EVENTS = 0xFFFF  # an array 16 header
# What a section tells the code that leaves it: the sender was idle (wake it), a chunk is
# ready (send it), an event was refused (report it).
WAS_IDLE, SEALED, REFUSED = 1, 2, 4
REPORT_INTERVAL = 1.0  # seconds: on_error hears of one such failure per interval at most
SEND_ERRORS = "send"  # the throttling key of all send and connection errors
MAX_THROTTLE_KEYS = 64


class Batch:
    """TCP: events taken from the queue together into one envelope, until acknowledged.

    `events` are packed events without their sent_at value; `first_seq..last_seq` are their
    numbers in the queue. `attempts` counts transmissions, `connection` is the one it was
    last written on, `failures` the connections that failed while it was the oldest in flight
    (see `_failed_attempt`).
    """

    __slots__ = (
        "attempts", "connection", "events", "failures", "first_seq", "last_seq", "sent_time",
        "token",
    )  # fmt: skip

    def __init__(self, events: list[bytes], first_seq: int, attempts: int = 0) -> None:
        self.events = events
        self.first_seq = first_seq
        self.last_seq = first_seq + len(events) - 1
        self.attempts = attempts
        self.connection = 0  # none yet
        self.failures = 0
        self.token = ""
        self.sent_time = 0.0


class Section:
    """`with queue._section:` holds the queue's lock for code that changes the queue or the
    counters; events that a signal handler tracks meanwhile are taken in as it ends."""

    __slots__ = ("queue",)

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue

    def __enter__(self) -> None:
        queue = self.queue
        queue._lock.acquire()
        if queue._busy:  # a handler called more than track(): unsupported, but no deadlock
            queue._nested += 1
        else:
            queue._busy = True

    def __exit__(self, *exc_info: object) -> None:
        queue = self.queue
        if queue._nested:
            queue._nested -= 1
            queue._lock.release()
            return
        signal = 0
        try:
            signal = queue._end_section()
        finally:
            queue._lock.release()
        if signal:
            queue._after_deferred(signal)


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
        """A fresh queue, counters and locks: at creation, and in a forked child, where the
        parent's threads may have held the locks or been halfway through a pack."""
        # Reentrant for a signal handler's track() only: see the module's docstring.
        self._lock = threading.RLock()
        self._progressed = threading.Condition(self._lock)
        self._section = Section(self)
        self._busy = False
        self._nested = 0
        self._deferred: deque[bytes | TrackerError] = deque()
        self._refusals: list[TrackerError] = []
        # Used in sections only: a Packer is not thread-safe, and one per call costs more
        # than the packing. An aware datetime (as ts or in extra) goes out as a Timestamp.
        self._pack = msgpack.Packer(datetime=True).pack
        self._sealed: deque[list[bytes]] = deque()
        self._open: list[bytes] = []
        self._open_bytes = 0  # with the sent_at values
        self._length = 0  # events in _sealed and _open
        self._in_flight: deque[Batch] = deque()
        # A closed tracker has no room: every event is dropped and counted.
        self._capacity = 0 if self._closed else self.settings.max_queue
        self._accepted = 0
        self._due_through = 0  # events numbered up to this are due now: flush() asked for them
        self._idle = True  # the sender does not know about queued events: wake it
        self._first_waiting: float | None = None
        self._flushers = 0
        self._closing = False
        self._last_reports: dict[str, float] = {}
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
            if self._busy:  # a signal handler that interrupted this thread in a section
                self._defer(event)
                return
            self._busy = True
            signal = 0
            try:
                signal = self._accept(event)
            finally:  # as _end_section(), quicker when no handler ran: the usual case
                if self._deferred:
                    signal |= self._end_section()
                else:
                    self._busy = False
                    if self._deferred:  # a handler just ran, with _busy still set
                        self._busy = True
                        signal |= self._end_section()
        if signal:
            self._after_track(signal)

    def _accept(self, event: dict[str, Any]) -> int:
        """Count the event and queue it, or drop it (in a section); return the signal."""
        self._queued += 1
        try:
            data = self._pack(event)[:-SENT_AT_VALUE_BYTES]
        except Exception:  # whatever the app put in it costs this event only
            data = b""
        size = len(data) + SENT_AT_VALUE_BYTES
        if data and size <= self._max_event_bytes:
            return self._enqueue(data, size)
        self._dropped += 1
        self._refusals.append(refusal(event, size, self.settings))
        return REFUSED

    def _after_track(self, signal: int) -> None:
        if signal & REFUSED:
            self._report_refusals()
        if signal & SEALED and self._caller_sends:
            self._assist()
            signal &= ~SEALED
        if signal & (WAS_IDLE | SEALED):
            self._wake()

    def _defer(self, event: dict[str, Any]) -> None:
        """track() in a signal handler while its thread is in a section: nothing of the
        queue may change now. A Packer of its own, since the section may be packing."""
        try:
            data = msgpack.Packer(datetime=True).pack(event)[:-SENT_AT_VALUE_BYTES]
        except Exception:
            data = b""
        size = len(data) + SENT_AT_VALUE_BYTES
        ok = data and size <= self._max_event_bytes
        self._deferred.append(data if ok else refusal(event, size, self.settings))

    def _end_section(self) -> int:
        """Take in the deferred events and leave the section (lock held); return the signal.
        A handler that runs once `_busy` is cleared tracks as usual: nothing is left half
        done, and the lock is reentrant."""
        signal = 0
        while True:
            while self._deferred:
                item = self._deferred.popleft()
                self._queued += 1
                if isinstance(item, TrackerError):
                    self._dropped += 1
                    self._refusals.append(item)
                    signal |= REFUSED
                else:
                    signal |= self._enqueue(item, len(item) + SENT_AT_VALUE_BYTES)
            self._busy = False
            if not self._deferred:
                return signal
            self._busy = True

    def _after_deferred(self, signal: int) -> None:
        """A section other than track()'s took in events a signal handler tracked."""
        if signal & REFUSED:
            self._report_refusals()
        if signal & (WAS_IDLE | SEALED):
            self._wake_soon()

    def _report_refusals(self) -> None:
        with self._lock:
            refusals, self._refusals = self._refusals, []
        for error in refusals:
            self._report(error)

    def _enqueue(self, data: bytes, size: int) -> int:
        """Add a packed event (in a section). Return what the sender must hear of: WAS_IDLE,
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
        """drop_oldest: the oldest queued event makes room (in a section, queue not empty)."""
        if self._sealed:
            del self._sealed[0][0]
            if not self._sealed[0]:
                self._sealed.popleft()
        else:
            self._open_bytes -= len(self._open.pop(0)) + SENT_AT_VALUE_BYTES
        self._length -= 1

    # Hooks for the subclasses.

    def _wake(self) -> None:
        """Tell the sender there is work (start it on first use)."""
        raise NotImplementedError

    def _wake_soon(self) -> None:
        """Events came in outside track(): tell the sender, from any thread."""
        self._wake()

    def _assist(self) -> None:
        """A chunk is full: send it from the calling thread, without waiting."""

    def _notify_progress(self) -> None:
        """Called with the lock held whenever events leave the queue or the flight."""
        self._progressed.notify_all()

    def _after_fork_in_child(self) -> None:
        self._reset()

    def _close_at_exit(self) -> None:
        raise NotImplementedError

    # Counters and failures.

    def _count(self, sent: int = 0, retries: int = 0, errors: int = 0) -> None:
        with self._section:
            self._sent += sent
            self._retries += retries
            self._errors += errors

    def _report(self, error: Exception, throttle: str | None = None) -> None:
        """Count a failure and hand it to on_error, whose own exceptions are swallowed.
        Failures of one `throttle` key reach on_error once per REPORT_INTERVAL at most."""
        now = time.monotonic()
        with self._section:
            self._errors += 1
            if throttle is not None:
                if now - self._last_reports.get(throttle, -REPORT_INTERVAL) < REPORT_INTERVAL:
                    return
                if len(self._last_reports) >= MAX_THROTTLE_KEYS:
                    self._last_reports.clear()
                self._last_reports[throttle] = now
        if self.on_error is not None:
            with contextlib.suppress(Exception):  # the app's handler must not stop the sender
                self.on_error(error)

    def _report_send_error(self, error: Exception) -> None:
        """Every send or connection error is counted; on_error hears of one per second at
        most, so that a daemon that is down does not flood the app's logs."""
        self._report(error, SEND_ERRORS)

    def _report_unexpected(self, error: Exception) -> None:
        """A bug met by a sender, which goes on: the same one is reported once a second."""
        self._report(error, f"{type(error).__qualname__}: {error}")
