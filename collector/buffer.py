"""The bounded buffer between ingest and the writer. Pure: no sockets, no database.

It holds groups of rows in arrival order. A group keeps together what must be acknowledged
together (one acked TCP batch); unacknowledged input arriving close in time is merged into
one group so a flood of single-event datagrams does not cost one object per event.

Events count against the limits from the moment they are added until their commit is
released, so memory held by an in-flight commit is accounted too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from collector.events import Row
from collector.stats import Stats

# received_at (ms), source, reason, raw bytes
QuarantineRow = tuple[int, str, str, bytes]


class CommitResult(NamedTuple):
    stored: int
    duplicates: int
    rejected: int


@dataclass(slots=True)
class Group:
    rows: list[Row]
    quarantine: list[QuarantineRow]
    received: float
    nbytes: int = 0
    rejected: int = 0
    on_commit: Callable[[CommitResult], None] | None = None
    sealed: bool = False

    @property
    def events(self) -> int:
        return len(self.rows)


@dataclass
class EventBuffer:
    max_events: int
    max_bytes: int
    low_water: float
    stats: Stats
    wake_at: int = 1
    merge_window: float = 0.001
    merge_max_rows: int = 1000
    clock: Callable[[], float] = time.monotonic
    groups: deque[Group] = field(default_factory=deque)
    pending_events: int = 0
    eager_acks: bool = False
    acked_groups: int = 0
    has_work: asyncio.Event = field(default_factory=asyncio.Event)
    batch_ready: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_for_room: dict[object, Callable[[], None]] = field(default_factory=dict)

    def full(self) -> bool:
        stats = self.stats
        return stats.buffer_events >= self.max_events or stats.buffer_bytes >= self.max_bytes

    def below_low_water(self) -> bool:
        stats = self.stats
        return (
            stats.buffer_events <= self.max_events * self.low_water
            and stats.buffer_bytes <= self.max_bytes * self.low_water
        )

    def add(self, group: Group) -> None:
        """Queue a group that must stay on its own (it is acknowledged as a whole)."""
        group.sealed = True
        self._append(group)
        self._account(group.events, group.nbytes)
        if group.on_commit is not None:
            self.acked_groups += 1
            if self.eager_acks:
                self.batch_ready.set()

    def commit_due(self) -> bool:
        """True when the writer should not wait: a full batch, or an ack is waiting."""
        return self.pending_events >= self.wake_at or (self.eager_acks and self.acked_groups > 0)

    def add_row(self, row: Row, nbytes: int) -> None:
        """add_rows() for a single valid row, without building lists for it."""
        now = self.clock()
        tail = self._mergeable_tail(now)
        if tail is None:
            self._append(Group([row], [], now, nbytes))
        else:
            tail.rows.append(row)
            tail.nbytes += nbytes
        self._account(1, nbytes)

    def add_rows(
        self, rows: list[Row], quarantine: list[QuarantineRow], nbytes: int, rejected: int
    ) -> None:
        """Queue unacknowledged input, merged into the newest group when it is recent."""
        now = self.clock()
        tail = self._mergeable_tail(now)
        if tail is None:
            self._append(Group(rows, quarantine, now, nbytes, rejected))
        else:
            tail.rows.extend(rows)
            if quarantine:
                tail.quarantine.extend(quarantine)
            tail.nbytes += nbytes
            tail.rejected += rejected
        self._account(len(rows), nbytes)

    def _append(self, group: Group) -> None:
        # Any group wakes an idle writer (which then waits for size or age), including
        # groups without rows: quarantine records and empty acked batches need a commit too.
        self.groups.append(group)
        if len(self.groups) == 1:
            self.has_work.set()

    def _mergeable_tail(self, now: float) -> Group | None:
        """The newest group, if unacknowledged input arriving `now` may join it."""
        if not self.groups:
            return None
        tail = self.groups[-1]
        if (
            tail.sealed
            or now - tail.received > self.merge_window
            or len(tail.rows) >= self.merge_max_rows
        ):
            return None
        return tail

    def _account(self, events: int, nbytes: int) -> None:
        stats = self.stats
        stats.buffer_events += events
        stats.buffer_bytes += nbytes
        if stats.buffer_events > stats.buffer_events_peak:
            stats.buffer_events_peak = stats.buffer_events
        if stats.buffer_bytes > stats.buffer_bytes_peak:
            stats.buffer_bytes_peak = stats.buffer_bytes
        self.pending_events += events
        if self.pending_events >= self.wake_at:
            self.batch_ready.set()

    def oldest_received(self) -> float | None:
        return self.groups[0].received if self.groups else None

    def take(self, max_events: int) -> list[Group]:
        """Remove whole groups from the front, at least one, up to about max_events rows."""
        taken: list[Group] = []
        count = 0
        while self.groups and (not taken or count + self.groups[0].events <= max_events):
            group = self.groups.popleft()
            group.sealed = True
            taken.append(group)
            count += group.events
            if group.on_commit is not None:
                self.acked_groups -= 1
        self.pending_events -= count
        if not self.groups:
            self.has_work.clear()
        if not self.commit_due():
            self.batch_ready.clear()
        return taken

    def release(self, groups: list[Group]) -> None:
        """Forget committed groups; wake paused producers once below the low-water mark."""
        stats = self.stats
        for group in groups:
            stats.buffer_events -= group.events
            stats.buffer_bytes -= group.nbytes
        if self.waiting_for_room and self.below_low_water():
            callbacks = list(self.waiting_for_room.values())
            self.waiting_for_room.clear()
            for callback in callbacks:
                callback()

    def wait_for_room(self, owner: object, callback: Callable[[], None]) -> None:
        """Call `callback` once the buffer has drained below its low-water mark."""
        self.waiting_for_room[owner] = callback

    def forget(self, owner: object) -> None:
        self.waiting_for_room.pop(owner, None)
