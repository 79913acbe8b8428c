"""The bounded buffer between ingest and the writer. Pure: no sockets, no database, no loop.

It holds groups of rows in arrival order. A group keeps together what must be acknowledged
together (one acked TCP batch); unacknowledged input arriving close in time is merged into
one group so a flood of single-event datagrams does not cost one object per event.

Events count against the limits from the moment they are added until their commit is
released, so memory held by an in-flight commit is accounted too. The buffer owns that
occupancy and reports it to the shared stats.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from collector.events import Row
from collector.settings import BufferSettings
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


def nothing() -> None:
    pass


class Level:
    """A fact about the buffer the writer waits for. `is_set()` reads it from the buffer's
    state; when it may have become true the buffer calls `ring`, which the writer points at
    its own wake-up (the buffer knows nothing of event loops)."""

    __slots__ = ("is_set", "ring")

    def __init__(self, test: Callable[[], bool]) -> None:
        self.is_set = test
        self.ring: Callable[[], None] = nothing


@dataclass
class EventBuffer:
    settings: BufferSettings
    stats: Stats
    wake_at: int = 1
    merge_window: float = 0.001
    merge_max_rows: int = 1000
    clock: Callable[[], float] = time.monotonic
    groups: deque[Group] = field(default_factory=deque)
    pending_events: int = 0  # in groups not yet taken by the writer
    events: int = 0  # added and not yet released: the occupancy
    nbytes: int = 0
    acked_groups: int = 0
    waiting_for_room: dict[object, Callable[[], None]] = field(default_factory=dict)
    has_work: Level = field(init=False)  # a group is queued
    batch_ready: Level = field(init=False)  # commit_due()

    def __post_init__(self) -> None:
        self.has_work = Level(lambda: bool(self.groups))
        self.batch_ready = Level(self.commit_due)

    @property
    def max_events(self) -> int:
        return self.settings.max_events

    @property
    def max_bytes(self) -> int:
        return self.settings.max_bytes

    @property
    def low_water(self) -> float:
        return self.settings.low_water

    def full(self) -> bool:
        limits = self.settings
        return self.events >= limits.max_events or self.nbytes >= limits.max_bytes

    def below_low_water(self) -> bool:
        limits = self.settings
        return (
            self.events <= limits.max_events * limits.low_water
            and self.nbytes <= limits.max_bytes * limits.low_water
        )

    def add(self, group: Group) -> None:
        """Queue a group that must stay on its own (it is acknowledged as a whole)."""
        group.sealed = True
        self._append(group)
        self._account(group.events, group.nbytes)
        if group.on_commit is not None:
            self.acked_groups += 1
            if self.settings.eager_acks:
                self.batch_ready.ring()

    def commit_due(self) -> bool:
        """True when the writer should not wait: a full batch, or an ack is waiting."""
        return self.pending_events >= self.wake_at or (
            self.settings.eager_acks and self.acked_groups > 0
        )

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
            self.has_work.ring()

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
        self.events += events
        self.nbytes += nbytes
        self.stats.buffer_level(self.events, self.nbytes)
        self.pending_events += events
        if self.pending_events >= self.wake_at:
            self.batch_ready.ring()

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
        return taken

    def release(self, groups: list[Group]) -> None:
        """Forget committed groups; wake paused producers once below the low-water mark."""
        for group in groups:
            self.events -= group.events
            self.nbytes -= group.nbytes
        self.stats.buffer_level(self.events, self.nbytes)
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
