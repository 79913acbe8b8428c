"""The queued events of a tracker: packed, numbered in order, and grouped as they come into
chunks of one datagram (UDP) or one batch (TCP).

`open` fills up, and is sealed into `sealed` once the next event would not fit. A sealed
chunk is due at once; the open one after linger_ms, or at once when the queue is in a hurry
(flush(), close()) or flush() asked for its events. `Chunks` has no lock: `EventQueue` calls
it in its sections only.
"""

from __future__ import annotations

from collections import deque

from collector_client._settings import SENT_AT_VALUE_BYTES, Settings, batch_budget, datagram_budget

MAX_DATAGRAM_EVENTS = 0xFFFF  # an array 16 header
# What add() tells the queue: the sender was idle (wake it), a chunk is ready (send it).
WAS_IDLE, SEALED = 1, 2


class Chunks:
    """Events queued and not yet sent (UDP) or in flight (TCP), oldest first.

    Events accepted are numbered from 1 (the newest is `accepted`); those queued are always
    the run of `length` numbers ending at `accepted`. A full queue (`capacity` events) drops
    the new event, or with drop_oldest the oldest, and counts it in `overflowed`.
    """

    def __init__(self, settings: Settings, capacity: int) -> None:
        if settings.transport == "udp":
            self.chunk_events = MAX_DATAGRAM_EVENTS
            self.chunk_bytes = datagram_budget(settings)
        else:
            self.chunk_events = settings.batch_size
            self.chunk_bytes = batch_budget(settings)
        self.drop_oldest = settings.overflow == "drop_oldest"
        self.linger = settings.linger_ms / 1000
        self.capacity = capacity
        self.sealed: deque[list[bytes]] = deque()
        self.open: list[bytes] = []
        self.open_bytes = 0  # with the sent_at values
        self.length = 0  # events in sealed and open
        self.accepted = 0
        self.overflowed = 0
        self.due_through = 0  # events numbered up to this are due now: flush() asked for them
        self.idle = True  # the sender does not know about queued events: wake it
        self.first_waiting: float | None = None

    @property
    def first_number(self) -> int:
        """The number of the oldest queued event (accepted + 1 when none is)."""
        return self.accepted - self.length + 1

    def add(self, data: bytes, size: int) -> int:
        """Queue a packed event, `size` bytes with its sent_at value. Return what the sender
        must hear of: WAS_IDLE, SEALED (a chunk is ready), both, or 0."""
        if self.length >= self.capacity:
            self.overflowed += 1
            if not (self.drop_oldest and self.length):
                return 0
            self.evict_oldest()
        chunk = self.open
        signal = 0
        if chunk and (self.open_bytes + size > self.chunk_bytes or len(chunk) >= self.chunk_events):
            self.sealed.append(chunk)
            self.open = chunk = []
            self.open_bytes = 0
            signal = SEALED
        chunk.append(data)
        self.open_bytes += size
        self.length += 1
        self.accepted += 1
        if self.idle:
            self.idle = False
            signal |= WAS_IDLE
        return signal

    def evict_oldest(self) -> None:
        """drop_oldest: the oldest queued event makes room (the queue is not empty)."""
        if self.sealed:
            del self.sealed[0][0]
            if not self.sealed[0]:
                self.sealed.popleft()
        else:
            self.open_bytes -= len(self.open.pop(0)) + SENT_AT_VALUE_BYTES
        self.length -= 1

    def due(self, now: float, sealed_only: bool, hurry: bool) -> tuple[list[bytes] | None, float]:
        """The oldest chunk if it is due now, still queued (see `remove`), and 0.0; else None
        and seconds until the open chunk is due, or -1.0 when none will be for now: with
        `sealed_only`, or when the queue is empty (the sender is then idle; add() says when
        it is not). `hurry`: the open chunk is due at once."""
        if self.sealed:
            return self.sealed[0], 0.0
        if sealed_only or not self.open:
            if not self.open:
                self.first_waiting = None
                self.idle = True
            return None, -1.0
        wait = self.linger_left(now, hurry)
        if wait > 0:
            return None, wait
        return self.open, 0.0

    def linger_left(self, now: float, hurry: bool) -> float:
        """Seconds before the open chunk is due."""
        if hurry or self.accepted - self.length < self.due_through:
            return 0.0
        if self.first_waiting is None:
            self.first_waiting = now
        return self.first_waiting + self.linger - now

    def remove(self, events: list[bytes]) -> None:
        """The oldest chunk, as due() gave it, leaves the queue: sent, dropped or in flight."""
        if self.sealed and self.sealed[0] is events:
            self.sealed.popleft()
        else:
            self.open, self.open_bytes, self.first_waiting = [], 0, None
        self.length -= len(events)

    def clear(self) -> int:
        """Empty the queue; return how many events it held."""
        dropped = self.length
        self.sealed.clear()
        self.open, self.open_bytes, self.length = [], 0, 0
        return dropped

    def oversized(self, events: list[bytes]) -> int:
        """UDP: 1 for a datagram of one event larger than the datagram budget, else 0."""
        return int(len(events) == 1 and len(events[0]) + SENT_AT_VALUE_BYTES > self.chunk_bytes)
