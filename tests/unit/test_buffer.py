"""collector.buffer.EventBuffer: grouping, limits, take/release and the writer's events."""

from __future__ import annotations

from typing import Any

import pytest

from collector.buffer import CommitResult, EventBuffer, Group, QuarantineRow
from collector.events import Row
from collector.settings import BufferSettings
from collector.stats import Stats


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def rows(count: int, start: int = 0) -> list[Row]:
    return [(0, 0, None, "a", i, None, None) for i in range(start, start + count)]


def quarantine(reason: str) -> QuarantineRow:
    return (0, "udp:127.0.0.1:9", reason, b"\xc1")


def make_buffer(clock: FakeClock, **overrides: Any) -> EventBuffer:
    limits: dict[str, Any] = {"max_events": 100, "max_bytes": 100_000, "low_water": 0.5}
    limits["eager_acks"] = False
    limits.update((k, overrides.pop(k)) for k in list(overrides) if k in limits)
    values: dict[str, Any] = {"merge_window": 0.5, "merge_max_rows": 1000, "clock": clock}
    values.update(overrides)
    return EventBuffer(BufferSettings(**limits), Stats(), **values)


def sealed_group(count: int, nbytes: int = 0, start: int = 0) -> Group:
    group = Group(rows(count, start), [], 0.0, nbytes)
    group.on_commit = lambda result: None
    return group


def values_of(groups: list[Group]) -> list[list[Any]]:
    return [[row[4] for row in group.rows] for group in groups]


# --- add_rows merging ----------------------------------------------------------------------


def test_add_rows_to_an_empty_buffer_starts_a_group(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(3), [quarantine("q")], 700, 1)
    assert len(buffer.groups) == 1
    group = buffer.groups[0]
    assert group.events == 3
    assert group.nbytes == 700
    assert group.rejected == 1
    assert group.quarantine == [quarantine("q")]
    assert group.received == clock.now
    assert group.sealed is False
    assert group.on_commit is None


def test_add_rows_within_the_merge_window_merges_into_the_newest_group(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    first_received = clock.now
    buffer.add_rows(rows(2), [quarantine("a")], 100, 1)
    clock.advance(0.25)
    buffer.add_rows(rows(3, start=2), [], 50, 0)
    clock.advance(0.25)  # exactly merge_window after the group started
    buffer.add_rows(rows(1, start=5), [quarantine("b")], 25, 2)
    assert len(buffer.groups) == 1
    group = buffer.groups[0]
    assert [row[4] for row in group.rows] == [0, 1, 2, 3, 4, 5]
    assert group.quarantine == [quarantine("a"), quarantine("b")]
    assert group.nbytes == 175
    assert group.rejected == 3
    # the age of a merged group is the age of its oldest input
    assert group.received == first_received
    assert buffer.oldest_received() == first_received


def test_add_rows_after_the_merge_window_starts_a_new_group(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(2), [], 100, 0)
    clock.advance(0.5001)
    buffer.add_rows(rows(1, start=2), [], 50, 0)
    assert values_of(list(buffer.groups)) == [[0, 1], [2]]
    assert [g.nbytes for g in buffer.groups] == [100, 50]


def test_sealed_group_is_never_merged_into(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add(sealed_group(2))
    buffer.add_rows(rows(1, start=2), [], 10, 0)
    assert values_of(list(buffer.groups)) == [[0, 1], [2]]
    assert buffer.groups[0].sealed is True
    assert buffer.groups[1].sealed is False


def test_added_group_always_stands_alone(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(1), [], 10, 0)
    buffer.add(sealed_group(2, start=1))
    buffer.add(sealed_group(1, start=3))
    assert values_of(list(buffer.groups)) == [[0], [1, 2], [3]]
    assert [g.sealed for g in buffer.groups] == [False, True, True]


def test_merge_stops_at_merge_max_rows(clock: FakeClock) -> None:
    buffer = make_buffer(clock, merge_max_rows=3)
    buffer.add_rows(rows(2), [], 0, 0)
    buffer.add_rows(rows(2, start=2), [], 0, 0)  # tail had 2 < 3 rows: merged
    buffer.add_rows(rows(1, start=4), [], 0, 0)  # tail has 4 >= 3 rows: new group
    buffer.add_rows(rows(1, start=5), [], 0, 0)
    assert values_of(list(buffer.groups)) == [[0, 1, 2, 3], [4, 5]]


def test_taken_group_is_not_merged_into(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(2), [], 0, 0)
    taken = buffer.take(10)
    buffer.add_rows(rows(1, start=2), [], 0, 0)
    assert values_of(taken) == [[0, 1]]
    assert values_of(list(buffer.groups)) == [[2]]
    assert taken[0].sealed is True


def test_add_row_merges_like_add_rows(clock: FakeClock) -> None:
    buffer = make_buffer(clock, merge_max_rows=3)
    first_received = clock.now
    buffer.add_row(rows(1)[0], 210)
    clock.advance(0.5)
    buffer.add_rows(rows(1, start=1), [quarantine("q")], 220, 1)
    buffer.add_row(rows(1, start=2)[0], 230)
    buffer.add_row(rows(1, start=3)[0], 240)  # tail holds merge_max_rows rows: new group
    clock.advance(0.6)
    buffer.add_row(rows(1, start=4)[0], 250)  # after the merge window: new group
    assert values_of(list(buffer.groups)) == [[0, 1, 2], [3], [4]]
    assert [g.nbytes for g in buffer.groups] == [660, 240, 250]
    assert buffer.groups[0].received == first_received
    assert buffer.groups[0].rejected == 1
    assert buffer.groups[1].quarantine == []
    assert buffer.pending_events == 5
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (5, 1150)


def test_add_row_never_merges_into_a_sealed_group(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add(sealed_group(1))
    buffer.add_row(rows(1, start=1)[0], 10)
    assert values_of(list(buffer.groups)) == [[0], [1]]
    assert buffer.groups[1].sealed is False


def test_add_row_wakes_the_writer(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=2)
    buffer.add_row(rows(1)[0], 10)
    assert buffer.has_work.is_set()
    assert not buffer.batch_ready.is_set()
    buffer.add_row(rows(1, start=1)[0], 10)
    assert buffer.batch_ready.is_set()


def test_peaks_record_the_highest_fill(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(3), [], 300, 0)
    buffer.release(buffer.take(100))
    buffer.add_rows(rows(2), [], 500, 0)
    stats = buffer.stats
    assert (stats.buffer_events, stats.buffer_bytes) == (2, 500)
    assert (stats.buffer_events_peak, stats.buffer_bytes_peak) == (3, 500)


# --- full() --------------------------------------------------------------------------------


def test_full_by_events(clock: FakeClock) -> None:
    buffer = make_buffer(clock, max_events=5)
    buffer.add_rows(rows(4), [], 10, 0)
    assert not buffer.full()
    clock.advance(1)
    buffer.add_rows(rows(1), [], 10, 0)
    assert buffer.full()


def test_full_by_bytes(clock: FakeClock) -> None:
    buffer = make_buffer(clock, max_bytes=1000)
    buffer.add_rows(rows(1), [], 999, 0)
    assert not buffer.full()
    buffer.add_rows([], [quarantine("q")], 1, 0)
    assert buffer.full()
    assert buffer.stats.buffer_events == 1
    assert buffer.stats.buffer_bytes == 1000


def test_in_flight_groups_count_until_released(clock: FakeClock) -> None:
    buffer = make_buffer(clock, max_events=5)
    buffer.add_rows(rows(5), [], 500, 0)
    taken = buffer.take(10)
    assert not buffer.groups
    assert buffer.full()
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (5, 500)
    buffer.release(taken)
    assert not buffer.full()
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (0, 0)


# --- take() --------------------------------------------------------------------------------


def three_groups_of_three(clock: FakeClock, **overrides: Any) -> EventBuffer:
    buffer = make_buffer(clock, **overrides)
    for start in (0, 3, 6):
        buffer.add_rows(rows(3, start), [], 30, 0)
        clock.advance(1)
    assert len(buffer.groups) == 3
    return buffer


@pytest.mark.parametrize(
    ("max_events", "taken_values", "left"),
    [
        (9, [[0, 1, 2], [3, 4, 5], [6, 7, 8]], 0),
        (100, [[0, 1, 2], [3, 4, 5], [6, 7, 8]], 0),
        (8, [[0, 1, 2], [3, 4, 5]], 3),
        (6, [[0, 1, 2], [3, 4, 5]], 3),
        (5, [[0, 1, 2]], 6),
        (3, [[0, 1, 2]], 6),
        (1, [[0, 1, 2]], 6),  # at least one group, even larger than max_events
        (0, [[0, 1, 2]], 6),
    ],
)
def test_take_takes_whole_groups_from_the_front(
    clock: FakeClock, max_events: int, taken_values: list[list[int]], left: int
) -> None:
    buffer = three_groups_of_three(clock)
    taken = buffer.take(max_events)
    assert values_of(taken) == taken_values
    assert buffer.pending_events == left
    assert sum(group.events for group in buffer.groups) == left


def test_take_from_an_empty_buffer_takes_nothing(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    assert buffer.take(10) == []
    assert buffer.pending_events == 0
    assert not buffer.has_work.is_set()


def test_take_includes_groups_without_rows_for_free(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(2), [], 10, 0)
    clock.advance(1)
    buffer.add_rows([], [quarantine("q")], 10, 1)
    clock.advance(1)
    buffer.add_rows(rows(1, start=2), [], 10, 0)
    taken = buffer.take(2)
    assert [(g.events, len(g.quarantine)) for g in taken] == [(2, 0), (0, 1)]
    assert buffer.pending_events == 1


def test_pending_events_counts_what_is_not_taken(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    buffer.add_rows(rows(3), [], 0, 0)
    assert buffer.pending_events == 3
    buffer.add(sealed_group(4))
    assert buffer.pending_events == 7
    buffer.take(3)
    assert buffer.pending_events == 4
    buffer.take(3)
    assert buffer.pending_events == 0
    assert buffer.stats.buffer_events == 7  # nothing released yet


def test_oldest_received(clock: FakeClock) -> None:
    buffer = make_buffer(clock)
    assert buffer.oldest_received() is None
    start = clock.now
    buffer.add_rows(rows(1), [], 0, 0)
    clock.advance(5)
    buffer.add_rows(rows(1), [], 0, 0)
    assert buffer.oldest_received() == start
    buffer.take(1)
    assert buffer.oldest_received() == start + 5


# --- has_work and batch_ready --------------------------------------------------------------


def test_has_work_is_set_by_any_group_and_cleared_when_all_are_taken(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=100)
    assert not buffer.has_work.is_set()
    buffer.add_rows([], [quarantine("q")], 10, 1)  # no rows: still work to commit
    assert buffer.has_work.is_set()
    buffer.take(0)
    assert not buffer.has_work.is_set()
    buffer.add(sealed_group(0))  # an empty acked batch needs its commit too
    assert buffer.has_work.is_set()
    buffer.add(sealed_group(1))
    buffer.take(0)  # takes the empty group only
    assert buffer.has_work.is_set()  # one group left
    buffer.take(0)
    assert not buffer.has_work.is_set()


def test_batch_ready_is_set_once_wake_at_events_are_pending(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=5)
    buffer.add_rows(rows(4), [], 0, 0)
    assert not buffer.batch_ready.is_set()
    assert buffer.has_work.is_set()
    buffer.add_rows(rows(1), [], 0, 0)
    assert buffer.batch_ready.is_set()


def test_batch_ready_is_set_by_a_sealed_group(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=3)
    buffer.add(sealed_group(2))
    assert not buffer.batch_ready.is_set()
    buffer.add(sealed_group(1))
    assert buffer.batch_ready.is_set()


def test_take_clears_batch_ready_only_below_wake_at(clock: FakeClock) -> None:
    buffer = three_groups_of_three(clock, wake_at=3)
    assert buffer.batch_ready.is_set()
    buffer.take(3)  # 6 pending
    assert buffer.batch_ready.is_set()
    buffer.take(3)  # 3 pending
    assert buffer.batch_ready.is_set()
    buffer.take(3)  # 0 pending
    assert not buffer.batch_ready.is_set()
    assert not buffer.has_work.is_set()


def test_take_clears_batch_ready_with_groups_left(clock: FakeClock) -> None:
    buffer = three_groups_of_three(clock, wake_at=4)
    buffer.take(6)  # 3 pending, below wake_at
    assert not buffer.batch_ready.is_set()
    assert buffer.has_work.is_set()


# --- release() and waiting for room --------------------------------------------------------


def full_buffer(clock: FakeClock) -> tuple[EventBuffer, list[Group]]:
    """10 events in groups of 4, 4 and 2 with 1000 bytes each; low water is 5 events."""
    buffer = make_buffer(clock, max_events=10, max_bytes=10_000, low_water=0.5)
    for count in (4, 4, 2):
        buffer.add(sealed_group(count, nbytes=1000))
    assert buffer.full()
    groups = buffer.take(100)
    assert [g.events for g in groups] == [4, 4, 2]
    return buffer, groups


def test_release_decrements_the_buffer_stats(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (10, 3000)
    buffer.release(groups[:1])
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (6, 2000)
    buffer.release(groups[1:])
    assert (buffer.stats.buffer_events, buffer.stats.buffer_bytes) == (0, 0)


def test_release_still_above_low_water_does_not_wake_producers(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    calls: list[str] = []
    buffer.wait_for_room("conn", lambda: calls.append("conn"))
    buffer.release(groups[:1])  # 6 events > 5
    assert calls == []
    assert "conn" in buffer.waiting_for_room


def test_release_below_low_water_wakes_every_producer_once(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    calls: list[str] = []
    buffer.wait_for_room("a", lambda: calls.append("a"))
    buffer.wait_for_room("b", lambda: calls.append("b"))
    buffer.release(groups[:1])
    assert calls == []
    buffer.release(groups[1:2])  # 2 events <= 5
    assert sorted(calls) == ["a", "b"]
    assert buffer.waiting_for_room == {}
    buffer.release(groups[2:])
    assert sorted(calls) == ["a", "b"]


def test_release_exactly_at_low_water_wakes_producers(clock: FakeClock) -> None:
    buffer = make_buffer(clock, max_events=10, max_bytes=10_000, low_water=0.5)
    buffer.add(sealed_group(5, nbytes=10))
    buffer.add(sealed_group(5, nbytes=10))
    first, _ = buffer.take(100)
    calls: list[int] = []
    buffer.wait_for_room("conn", lambda: calls.append(1))
    buffer.release([first])  # exactly 5 events = 10 * 0.5
    assert calls == [1]


def test_release_waits_for_bytes_to_drain_too(clock: FakeClock) -> None:
    buffer = make_buffer(clock, max_events=100, max_bytes=10_000, low_water=0.5)
    buffer.add(sealed_group(1, nbytes=2000))
    buffer.add(sealed_group(1, nbytes=6000))  # few events, many bytes
    small, large = buffer.take(100)
    calls: list[int] = []
    buffer.wait_for_room("conn", lambda: calls.append(1))
    buffer.release([small])  # 1 event, but 6000 bytes > 5000
    assert calls == []
    buffer.release([large])
    assert calls == [1]


def test_a_producer_registered_twice_is_called_once(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    calls: list[str] = []
    buffer.wait_for_room("conn", lambda: calls.append("old"))
    buffer.wait_for_room("conn", lambda: calls.append("new"))
    buffer.release(groups)
    assert calls == ["new"]


def test_forgotten_producer_is_not_called(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    calls: list[str] = []
    buffer.wait_for_room("gone", lambda: calls.append("gone"))
    buffer.wait_for_room("kept", lambda: calls.append("kept"))
    buffer.forget("gone")
    buffer.forget("never registered")
    buffer.release(groups)
    assert calls == ["kept"]


def test_callback_may_register_again_without_being_called_twice(clock: FakeClock) -> None:
    buffer, groups = full_buffer(clock)
    calls: list[int] = []

    def callback() -> None:
        calls.append(1)
        buffer.wait_for_room("conn", callback)

    buffer.wait_for_room("conn", callback)
    buffer.release(groups)
    assert calls == [1]
    assert "conn" in buffer.waiting_for_room


def test_commit_result_fields() -> None:
    result = CommitResult(stored=3, duplicates=1, rejected=2)
    assert result == (3, 1, 2)
    assert (result.stored, result.duplicates, result.rejected) == (3, 1, 2)


# --- eager acks --------------------------------------------------------------------------


def test_an_acked_group_makes_a_commit_due_at_once_with_eager_acks(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=100, eager_acks=True)
    buffer.add_rows(rows(3), [], 0, 0)
    assert not buffer.commit_due()
    assert not buffer.batch_ready.is_set()
    buffer.add(sealed_group(2))
    assert buffer.commit_due()
    assert buffer.batch_ready.is_set()
    buffer.take(100)
    assert buffer.acked_groups == 0
    assert not buffer.commit_due()
    assert not buffer.batch_ready.is_set()


def test_without_eager_acks_an_acked_group_waits_for_size(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=5, eager_acks=False)
    buffer.add(sealed_group(2))
    assert buffer.acked_groups == 1
    assert not buffer.commit_due()
    buffer.add(sealed_group(3))
    assert buffer.commit_due()


def test_acked_groups_left_behind_by_take_keep_a_commit_due(clock: FakeClock) -> None:
    buffer = make_buffer(clock, wake_at=100, eager_acks=True)
    buffer.add(sealed_group(4))
    buffer.add(sealed_group(4))
    taken = buffer.take(4)
    assert len(taken) == 1
    assert buffer.acked_groups == 1
    assert buffer.commit_due()
    assert buffer.batch_ready.is_set()
