"""What the senders take from the queue: UDP datagrams, sent under the queue's lock, and TCP
batches, kept in flight until acknowledged; and how flush() and close() see the queue.

`OutgoingQueue` is the base of Tracker and AsyncTracker; every change is made in a section
(see `_core`), so that a signal handler's track() never lands halfway through one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgpack

from collector_client._core import Batch, EventQueue
from collector_client._settings import SENT_AT_VALUE_BYTES, FlushResult, TrackerStats, given_up


class Sending(NamedTuple):
    """What `_send_chunk` did: `done`, a chunk left the queue (sent, or dropped with `error`);
    else `wait` seconds until the open chunk is due (-1: the queue is empty), or `blocked`,
    the socket had no room."""

    done: bool
    wait: float
    blocked: bool = False
    error: OSError | None = None


class OutgoingQueue(EventQueue):
    """The queue as the senders, flush() and close() use it."""

    def _due(
        self, connection: int, now: float, sealed_only: bool = False
    ) -> tuple[list[Batch], float]:
        """TCP: the batches to write on `connection` now, in order, and seconds until the open
        chunk is due (-1: nothing more is, for now).

        First the batches in flight not yet written on this connection, so that at most
        max_in_flight wait for an ack on it; after a failed connection, the oldest alone
        until it is acknowledged, so that a batch the daemon refuses is found out (see
        `_failed_attempt`). Then, once every batch in flight is written, new ones taken from
        the queue while the window has room.
        """
        with self._section:
            flight = self._in_flight
            if flight and flight[0].failures:  # on probation
                return ([flight[0]] if flight[0].connection != connection else []), -1.0
            written = sum(batch.connection == connection for batch in flight)
            unsent = [batch for batch in flight if batch.connection != connection]
            room = self.settings.max_in_flight - written
            if len(unsent) > room:
                return unsent[: max(room, 0)], -1.0
            wait = -1.0
            while len(flight) < self.settings.max_in_flight:
                batch, wait = self._take_chunk(now, sealed_only)
                if batch is None:
                    break
                unsent.append(batch)
            return unsent, wait

    def _take_chunk(self, now: float, sealed_only: bool) -> tuple[Batch | None, float]:
        """The next chunk that is due, now in flight; or (None, seconds until the open chunk
        is due); or (None, -1.0) when the queue is empty: the sender is then idle and
        track() will wake it. In a section."""
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
        with self._section:
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
        """The oldest chunk is gone, sent or dropped (in a section)."""
        if self._sealed and self._sealed[0] is events:
            self._sealed.popleft()
        else:
            self._open, self._open_bytes, self._first_waiting = [], 0, None
        self._length -= len(events)
        if self._flushers:
            self._notify_progress()

    def _linger_left(self, now: float) -> float:
        """Seconds before the open chunk is due (lock held)."""
        if self._flushers or self._closing or self._accepted - self._length < self._due_through:
            return 0.0
        if self._first_waiting is None:
            self._first_waiting = now
        return self._first_waiting + self._linger - now

    def _idle_if_empty(self) -> bool:
        """True when nothing is queued or in flight; the sender is then idle, and track()
        will wake it."""
        with self._section:
            if self._length or self._in_flight:
                return False
            self._idle = True
            return True

    def _oldest_in_flight(self) -> Batch | None:
        with self._lock:
            return self._in_flight[0] if self._in_flight else None

    def _complete(self, batch: Batch, acknowledged: int, rejected: int) -> None:
        """TCP: a batch is acknowledged; it leaves the flight and its events are counted,
        unless it left already (dropped by close())."""
        with self._section:
            if batch not in self._in_flight:
                return
            self._in_flight.remove(batch)
            self._acknowledged += acknowledged
            self._rejected += rejected
            self._notify_progress()

    def _failed_attempt(self, error: Exception) -> None:
        """TCP: a connection failed with batches in flight. The daemon reads them in order,
        so the oldest is the one it may be refusing (larger than its tcp_max_buffer_bytes,
        say): after max_attempts such failures it is split in halves, each starting over,
        and a single event is dropped and reported."""
        with self._section:
            if not self._in_flight:
                return
            head = self._in_flight[0]
            head.failures += 1
            if head.failures < self.settings.max_attempts:
                return
            self._in_flight.popleft()
            events = head.events
            if len(events) > 1:
                half = len(events) // 2
                second = Batch(events[half:], head.first_seq + half, head.attempts)
                first = Batch(events[:half], head.first_seq, head.attempts)
                self._in_flight.extendleft((second, first))
                return
            self._dropped += 1
            self._notify_progress()
        event = msgpack.unpackb(events[0] + bytes(SENT_AT_VALUE_BYTES), strict_map_key=False)
        self._report(given_up(event, head.failures, error))

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

    def _flush_target(self) -> int | None:
        """The number of the newest accepted event, or None when nothing is waiting. The
        events up to it are due now, even if flush() returns at once."""
        with self._lock:
            target = self._accepted
            if self._flushed(target):
                return None
            self._due_through = max(self._due_through, target)
            return target

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
        with self._section:
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
