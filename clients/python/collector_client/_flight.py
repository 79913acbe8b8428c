"""TCP: the batches sent and waiting for their ack, oldest first, and which of them a
connection must write. `Flight` has no lock: `EventQueue` calls it in its sections only."""

from __future__ import annotations

from collections import deque


class Batch:
    """TCP: events taken from the queue together into one envelope, until acknowledged.

    `events` are packed events without their sent_at value; `first_seq..last_seq` are their
    numbers in the queue. `attempts` counts transmissions, `connection` is the one it was
    last written on, `failures` the connections that failed while it was the oldest in flight
    (see `Flight.count_failure`).
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


class Flight:
    """The batches in flight: at most `max_in_flight` wait for an ack on one connection."""

    def __init__(self, max_in_flight: int, max_attempts: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.batches: deque[Batch] = deque()

    def __bool__(self) -> bool:
        return bool(self.batches)

    def oldest(self) -> Batch | None:
        return self.batches[0] if self.batches else None

    def has_room(self) -> bool:
        return len(self.batches) < self.max_in_flight

    def add(self, events: list[bytes], first_seq: int) -> Batch:
        batch = Batch(events, first_seq)
        self.batches.append(batch)
        return batch

    def to_write(self, connection: int) -> tuple[list[Batch], bool]:
        """The batches in flight not yet written on `connection`, in order, so that at most
        max_in_flight wait for an ack on it; and whether new batches may follow them.

        After a failed connection, the oldest alone until it is acknowledged, so that a batch
        the daemon refuses is found out (see `count_failure`)."""
        batches = self.batches
        if batches and batches[0].failures:  # on probation
            return ([batches[0]] if batches[0].connection != connection else []), False
        written = sum(batch.connection == connection for batch in batches)
        unsent = [batch for batch in batches if batch.connection != connection]
        room = self.max_in_flight - written
        if len(unsent) > room:
            return unsent[: max(room, 0)], False
        return unsent, True

    def remove(self, batch: Batch) -> bool:
        """An acknowledged batch leaves; False when it had left already (dropped by close())."""
        if batch not in self.batches:
            return False
        self.batches.remove(batch)
        return True

    def count_failure(self) -> Batch | None:
        """A connection failed with batches in flight. The daemon reads them in order, so the
        oldest is the one it may be refusing (larger than its tcp_max_buffer_bytes, say):
        after max_attempts such failures it is split in halves, each starting over, and a
        batch of a single event is given up: it leaves, and is returned."""
        if not self.batches:
            return None
        head = self.batches[0]
        head.failures += 1
        if head.failures < self.max_attempts:
            return None
        self.batches.popleft()
        events = head.events
        if len(events) > 1:
            half = len(events) // 2
            second = Batch(events[half:], head.first_seq + half, head.attempts)
            first = Batch(events[:half], head.first_seq, head.attempts)
            self.batches.extendleft((second, first))
            return None
        return head

    def pending_through(self, target: int) -> int:
        """Events numbered up to `target` in flight."""
        pending = 0
        for batch in self.batches:
            if batch.first_seq <= target:
                pending += min(batch.last_seq, target) - batch.first_seq + 1
        return pending

    def clear(self) -> int:
        """Give every batch up; return how many events they held."""
        dropped = sum(len(batch.events) for batch in self.batches)
        self.batches.clear()
        return dropped
