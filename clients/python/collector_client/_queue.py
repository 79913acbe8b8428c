"""`EventQueue`: a tracker's events from track() until sent (UDP) or acknowledged (TCP), and
its counters. Tracker and AsyncTracker each own one and run its sender.

`track()` is the hot path (see `_intake`, which also says how a signal handler may track):
it builds the event, packs it to msgpack in the calling thread (so a later change to `extra`
cannot reach it) and appends the bytes to the queue under a lock. Each event is packed
with `sent_at` last and its 8-byte float value cut off; a sender puts the send time back
between the events as it joins them (see `_wire.join_events`).

Every event given to `track()` is counted once in `queued` and ends in exactly one of `sent`
(UDP) or `acknowledged` (TCP), `dropped`, or `pending`. Events accepted into the queue are
numbered in order (see `_chunks`) and the TCP batches in flight hold older runs (see
`_flight`), so `flush()` tells whether everything accepted before it was called is done by
comparing numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple

import msgpack

from collector_client._chunks import Chunks
from collector_client._flight import Batch, Flight
from collector_client._intake import Intake
from collector_client._process import register
from collector_client._settings import (
    SENT_AT_VALUE_BYTES,
    Counters,
    ErrorHandler,
    FlushResult,
    Settings,
    TrackerStats,
    given_up,
)


class TrackerHooks(NamedTuple):
    """What a queue asks of the tracker that owns it, which runs the sender."""

    wake: Callable[[], None]  # there is work: tell the sender, starting it on first use
    wake_soon: Callable[[], None]  # events came in outside track(): tell it, from any thread
    assist: Callable[[], None]  # track() filled a chunk: send it from here, never waiting
    after_fork_in_child: Callable[[], None]  # forget the parent's sender
    close_at_exit: Callable[[], None]  # the interpreter exits and the queue is not closed
    progressed: Callable[[], None] | None = None  # events left (lock held): wake flush()


class Sending(NamedTuple):
    """What `send_chunk` did: `done`, a chunk left the queue (sent, or dropped on an error);
    else `wait` seconds until the open chunk is due (-1: none is, for now), or `blocked`,
    the socket had no room."""

    done: bool
    wait: float
    blocked: bool = False


class EventQueue:
    """The events and counters of one tracker, thread-safe; all its state is its own. It
    reaches its tracker through `TrackerHooks`; the others reach it through these:

    the tracker   track(), stats(); for flush(): flush_target(), flushing(), flushed() or
                  wait_flushed(), flush_result(); for close(): start_closing(), close(),
                  abandon(); closing, closed; report()
    the senders   settings, idle_if_empty(), locked(), report_send_error(),
                  report_unexpected(); UDP: send_chunk(); TCP: due(), count(),
                  oldest_in_flight(), complete(), failed_attempt()
    _process      after_fork_in_child(), close_at_exit()
    """

    # track(action, user_id, value, extra, ts, id), every argument given: Intake.track,
    # bound, so that the hot path makes no call on its way in.
    track: Callable[[str, str | int | None, Any, dict[str, Any] | None, Any, str | None], None]

    def __init__(
        self, settings: Settings, on_error: ErrorHandler | None, hooks: TrackerHooks
    ) -> None:
        self.settings = settings
        self._on_error = on_error
        self._hooks = hooks
        self._closed = False
        self._reset()
        register(self)

    def _reset(self) -> None:
        """A fresh queue, counters and locks: at creation, and in a forked child, where the
        parent's threads may have held the locks or been halfway through a pack."""
        settings = self.settings
        # A closed tracker has no room: every event is dropped and counted.
        self._chunks = Chunks(settings, 0 if self._closed else settings.max_queue)
        self._flight = Flight(settings.max_in_flight, settings.max_attempts)
        self._counters = Counters()
        intake = Intake(settings, self._chunks, self._counters, self._hooks, self._on_error)
        self.track = intake.track
        self._lock, self._section, self._reports = intake.lock, intake.section, intake.reports
        self._progressed = threading.Condition(self._lock)
        self._flushers = 0
        self._closing = False

    # For the tracker: the counters, flush() and close().

    def stats(self) -> TrackerStats:
        with self._lock:
            counters = self._counters
            return TrackerStats(
                queued=counters.queued,
                sent=counters.sent,
                acknowledged=counters.acknowledged,
                rejected=counters.rejected,
                dropped=counters.dropped + self._chunks.overflowed,
                retries=counters.retries,
                errors=self._reports.errors,
                oversized=counters.oversized,
                pending=self._pending_through(self._chunks.accepted),
            )

    def flush_target(self) -> int | None:
        """The number of the newest accepted event, or None when nothing is waiting. The
        events up to it are due now, even if flush() returns at once."""
        with self._lock:
            target = self._chunks.accepted
            if self._flushed(target):
                return None
            self._chunks.due_through = max(self._chunks.due_through, target)
            return target

    @contextmanager
    def flushing(self) -> Iterator[None]:
        """`with queue.flushing():` a flush() waits: nothing lingers meanwhile."""
        with self._lock:
            self._flushers += 1
        try:
            yield
        finally:
            with self._lock:
                self._flushers -= 1

    def flushed(self, target: int) -> bool:
        """Whether the events numbered up to `target` are all sent or acknowledged."""
        with self._lock:
            return self._flushed(target)

    def wait_flushed(self, target: int, timeout: float | None) -> None:
        """Wait until flushed(target), for `timeout` seconds at most (None: no limit)."""
        with self._progressed:
            self._progressed.wait_for(lambda: self._flushed(target), timeout)

    def flush_result(self, target: int) -> FlushResult:
        with self._lock:
            return FlushResult(self._flushed(target), self._pending_through(target))

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def closed(self) -> bool:
        return self._closed

    def start_closing(self) -> None:
        """close() began: what is queued is due at once."""
        with self._lock:
            self._closing = True

    def close(self) -> None:
        """track() drops (and counts) every event from now on."""
        with self._lock:
            self._closed = True
            self._chunks.capacity = 0

    def abandon(self) -> None:
        """Closing: whatever is still queued or in flight is dropped and counted."""
        with self._section:
            self._closed = True
            self._chunks.capacity = 0
            self._counters.dropped += self._chunks.clear() + self._flight.clear()
            self._notify_progress()

    # For the senders.

    def send_chunk(
        self, send: Callable[[list[bytes]], object], now: float, sealed_only: bool = False
    ) -> Sending:
        """UDP: send the next chunk that is due with `send`, which must not wait
        (MSG_DONTWAIT, or an asyncio transport), for any thread.

        The lock is held through the send, so datagrams leave in order whichever thread
        sends them, and the counters never see a chunk neither queued nor sent. A send error
        drops the chunk (counted, and reported once the lock is released); a socket with no
        room leaves it queued (`blocked`).
        """
        error: OSError | None = None
        with self._section:
            events, wait = self._chunks.due(now, sealed_only, self._in_a_hurry())
            if events is None:
                return Sending(False, wait)
            try:
                send(events)
            except BlockingIOError:
                return Sending(False, 0.0, blocked=True)
            except OSError as send_error:
                self._counters.dropped += len(events)
                error = send_error
            else:
                self._counters.sent += len(events)
                self._counters.oversized += self._chunks.oversized(events)
            self._chunks.remove(events)
            if self._flushers:
                self._notify_progress()
        if error is not None:
            self._reports.send_error(error)
        return Sending(True, 0.0)

    def due(
        self, connection: int, now: float, sealed_only: bool = False
    ) -> tuple[list[Batch], float]:
        """TCP: the batches to write on `connection` now, in order, and seconds until the open
        chunk is due (-1: nothing more is, for now). First those in flight that it must
        write (see `Flight.to_write`); then, once every batch in flight is written, new ones
        taken from the queue while the window has room."""
        with self._section:
            batches, more = self._flight.to_write(connection)
            wait = -1.0
            while more and self._flight.has_room():
                events, wait = self._chunks.due(now, sealed_only, self._in_a_hurry())
                if events is None:
                    break
                first = self._chunks.first_number
                self._chunks.remove(events)
                batches.append(self._flight.add(events, first))
            return batches, wait

    def count(self, sent: int = 0, retries: int = 0) -> None:
        """TCP: events written for the first time, or again."""
        with self._section:
            self._counters.sent += sent
            self._counters.retries += retries

    def oldest_in_flight(self) -> Batch | None:
        """TCP: the batch whose ack comes next."""
        with self._lock:
            return self._flight.oldest()

    def complete(self, batch: Batch, acknowledged: int, rejected: int) -> None:
        """TCP: a batch is acknowledged; it leaves the flight and its events are counted,
        unless it left already (dropped by close())."""
        with self._section:
            if not self._flight.remove(batch):
                return
            self._counters.acknowledged += acknowledged
            self._counters.rejected += rejected
            self._notify_progress()

    def failed_attempt(self, error: Exception) -> None:
        """TCP: a connection failed with batches in flight (see `Flight.count_failure`); an
        event given up is dropped and reported."""
        with self._section:
            batch = self._flight.count_failure()
            if batch is None:
                return
            self._counters.dropped += 1
            self._notify_progress()
        event = msgpack.unpackb(batch.events[0] + bytes(SENT_AT_VALUE_BYTES), strict_map_key=False)
        self._reports.report(given_up(event, batch.failures, error))

    def idle_if_empty(self) -> bool:
        """True when nothing is queued or in flight; the sender is then idle, and track()
        will wake it."""
        with self._section:
            if self._chunks.length or self._flight:
                return False
            self._chunks.idle = True
            return True

    def locked(self) -> AbstractContextManager[bool]:
        """`with queue.locked():` no other thread uses the queue meanwhile, nor sends from it
        (send_chunk() sends under this lock)."""
        return self._lock

    def report(self, error: Exception) -> None:
        """Count a failure and hand it to on_error."""
        self._reports.report(error)

    def report_send_error(self, error: Exception) -> None:
        self._reports.send_error(error)

    def report_unexpected(self, error: Exception) -> None:
        self._reports.unexpected(error)

    # For _process.

    def after_fork_in_child(self) -> None:
        """The parent's threads do not exist here and may have held any lock: the tracker
        forgets its sender, and the queue starts over, empty, with new locks."""
        self._hooks.after_fork_in_child()
        self._reset()

    def close_at_exit(self) -> None:
        if not self._closed:
            self._hooks.close_at_exit()

    # Lock held.

    def _in_a_hurry(self) -> bool:
        """flush() or close() is waiting: the open chunk is due now (lock held)."""
        return bool(self._flushers or self._closing)

    def _notify_progress(self) -> None:
        """Events left the queue or the flight (lock held): flush() may be done."""
        self._progressed.notify_all()
        if self._hooks.progressed is not None:
            self._hooks.progressed()

    def _flushed(self, target: int) -> bool:
        oldest = self._flight.oldest()
        if oldest is not None:
            return oldest.first_seq > target
        return self._chunks.first_number > target

    def _pending_through(self, target: int) -> int:
        """Events numbered up to `target` still queued or in flight (lock held)."""
        queued = max(0, target - self._chunks.first_number + 1)
        return self._flight.pending_through(target) + queued
