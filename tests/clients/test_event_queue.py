"""EventQueue on its own, as the trackers and the senders use it: no sockets, no threads of
its own. The hooks record what the queue asks of its tracker; `send` functions record the
datagrams; TCP batches are marked written with the envelope the senders build."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import msgpack
import pytest
from collector_client import FlushResult, TrackerError
from collector_client._flight import Batch
from collector_client._queue import EventQueue, Sending, TrackerHooks
from collector_client._settings import DATAGRAM_HEADER_BYTES, SENT_AT_VALUE_BYTES, Settings
from collector_client._wire import envelope
from test_tracker_support import FIXED_CLOCK, WAIT

# Every event here packs to the same size: action "a", ts 1, ids e0 to e9.
EVENT_BYTES = len(msgpack.packb({"action": "a", "ts": 1, "id": "e0", "sent_at": 0.0}))
TWO_PER_DATAGRAM = DATAGRAM_HEADER_BYTES + 2 * EVENT_BYTES
NOW = 100.0  # the senders' monotonic clock; linger_ms=500 makes exact sums


class Recorder:
    """The queue's hooks, each call recorded by name, and the errors given to on_error."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: list[Exception] = []

    def hooks(self) -> TrackerHooks:
        return TrackerHooks(*(partial(self.calls.append, name) for name in TrackerHooks._fields))


def new_queue(transport: str = "udp", **options: Any) -> tuple[EventQueue, Recorder]:
    recorder = Recorder()
    options.setdefault("linger_ms", 500)
    settings = Settings(transport=transport, clock=lambda: FIXED_CLOCK, **options)
    return EventQueue(settings, recorder.errors.append, recorder.hooks()), recorder


def put(queue: EventQueue, action: str = "a", **fields: Any) -> None:
    """track() as Tracker.track calls it, with every argument: ts 1 unless given."""
    fields = {"user_id": None, "value": None, "extra": None, "ts": 1, "id": None, **fields}
    queue.track(action, *fields.values())


def track(queue: EventQueue, *numbers: int) -> None:
    for n in numbers:
        put(queue, id=f"e{n}")


def ids(events: list[bytes]) -> list[str]:
    """The ids of packed events, as a chunk or a batch holds them (sent_at value cut off)."""
    return [msgpack.unpackb(data + bytes(SENT_AT_VALUE_BYTES))["id"] for data in events]


def counts(queue: EventQueue) -> tuple[int, int, int, int, int]:
    stats = queue.stats()
    return stats.queued, stats.sent, stats.acknowledged, stats.dropped, stats.pending


def written(queue: EventQueue, batches: list[Batch], connection: int) -> None:
    for n, batch in enumerate(batches):
        envelope(queue, batch, f"t{n}", connection)


def test_track_wakes_an_idle_sender_once_and_counts() -> None:
    queue, recorder = new_queue()
    track(queue, 1, 2)
    assert recorder.calls == ["wake"]
    assert counts(queue) == (2, 0, 0, 0, 2)


@pytest.mark.parametrize(
    ("caller_sends", "calls"), [(True, ["wake", "assist"]), (False, ["wake", "wake"])]
)
def test_a_full_datagram_is_sent_by_the_caller_unless_told_otherwise(
    caller_sends: bool, calls: list[str]
) -> None:
    queue, recorder = new_queue(max_datagram_bytes=TWO_PER_DATAGRAM, caller_sends=caller_sends)
    track(queue, 1, 2, 3)  # the third does not fit: the first two are sealed
    assert recorder.calls == calls


def test_sealed_datagrams_go_at_once_and_the_open_one_after_the_linger() -> None:
    queue, recorder = new_queue(max_datagram_bytes=TWO_PER_DATAGRAM)
    track(queue, 1, 2, 3)
    sent: list[list[str]] = []

    def send(events: list[bytes]) -> None:
        sent.append(ids(events))

    assert queue.send_chunk(send, NOW, sealed_only=True) == Sending(True, 0.0)
    assert queue.send_chunk(send, NOW, sealed_only=True) == Sending(False, -1.0)
    assert queue.send_chunk(send, NOW) == Sending(False, 0.5)  # lingers from now on
    assert queue.send_chunk(send, NOW + 0.25) == Sending(False, 0.25)
    assert queue.send_chunk(send, NOW + 0.5) == Sending(True, 0.0)
    assert sent == [["e1", "e2"], ["e3"]]
    assert counts(queue) == (3, 3, 0, 0, 0)
    # Empty: the sender goes idle, and the next track() wakes it again.
    assert queue.send_chunk(send, NOW + 1) == Sending(False, -1.0)
    track(queue, 4)
    assert recorder.calls == ["wake", "assist", "wake"]


def test_a_send_error_drops_the_datagram_and_a_full_socket_keeps_it() -> None:
    queue, recorder = new_queue()
    track(queue, 1)

    def full(events: list[bytes]) -> None:
        raise BlockingIOError

    def refused(events: list[bytes]) -> None:
        raise ConnectionRefusedError("refused")

    assert queue.flush_target() == 1  # due now: no linger
    assert queue.send_chunk(full, NOW) == Sending(False, 0.0, blocked=True)
    assert counts(queue) == (1, 0, 0, 0, 1)
    assert queue.send_chunk(refused, NOW) == Sending(True, 0.0)
    assert counts(queue) == (1, 0, 0, 1, 0)
    assert [str(error) for error in recorder.errors] == ["refused"]
    assert queue.stats().errors == 1


def test_an_event_that_cannot_go_is_dropped_and_reported() -> None:
    queue, recorder = new_queue()
    huge = {"action": "huge", "ts": 1, "id": "h", "extra": {"pad": "x" * 70_000}}
    put(queue, "bad", extra={"tags": {1}})
    put(queue, "huge", id="h", extra=huge["extra"])
    assert counts(queue) == (2, 0, 0, 2, 0)
    assert recorder.calls == []  # nothing queued: nothing to wake
    bad, too_large = (str(error) for error in recorder.errors)
    assert bad.startswith("event 'bad' dropped: cannot be encoded: ")
    size = len(msgpack.packb({**huge, "sent_at": 0.0}))
    assert too_large == (
        f"event 'huge' dropped: {size} bytes of msgpack, more than a UDP datagram can carry; "
        "send large events with transport='tcp'"
    )
    assert queue.stats().errors == 2


@pytest.mark.parametrize(
    ("overflow", "kept"), [("drop_newest", ["e1", "e2", "e3"]), ("drop_oldest", ["e3", "e4", "e5"])]
)
def test_a_full_queue_drops_as_told(overflow: str, kept: list[str]) -> None:
    queue, _ = new_queue(max_queue=3, overflow=overflow, max_datagram_bytes=TWO_PER_DATAGRAM)
    track(queue, 1, 2, 3, 4, 5)
    assert counts(queue) == (5, 0, 0, 2, 3)
    sent: list[bytes] = []
    queue.flush_target()
    while queue.send_chunk(sent.extend, NOW).done:
        pass
    assert ids(sent) == kept
    assert counts(queue) == (5, 3, 0, 2, 0)


def test_flush_waits_for_the_events_queued_before_it_only() -> None:
    queue, _ = new_queue()
    assert queue.flush_target() is None
    track(queue, 1, 2)
    target = queue.flush_target()
    assert target == 2
    track(queue, 3)
    assert (queue.flushed(2), queue.flush_result(2)) == (False, FlushResult(False, 2))
    assert queue.send_chunk(lambda events: None, NOW) == Sending(True, 0.0)  # all three
    assert (queue.flushed(2), queue.flush_result(2)) == (True, FlushResult(True, 0))


def test_wait_flushed_returns_when_another_thread_sends() -> None:
    queue, recorder = new_queue()
    track(queue, 1)
    target = queue.flush_target()
    assert target == 1
    sender = threading.Timer(0.05, queue.send_chunk, (lambda events: None, NOW))
    with queue.flushing():
        sender.start()
        queue.wait_flushed(target, WAIT)
    sender.join()
    assert queue.flushed(target) and recorder.calls == ["wake", "progressed"]


def test_flushing_makes_the_open_chunk_due_at_once() -> None:
    queue, _ = new_queue()
    track(queue, 1)
    assert queue.send_chunk(lambda events: None, NOW) == Sending(False, 0.5)
    with queue.flushing():
        assert queue.send_chunk(lambda events: None, NOW) == Sending(True, 0.0)


def test_tcp_batches_wait_in_flight_until_acknowledged() -> None:
    queue, recorder = new_queue("tcp", batch_size=2)
    track(queue, 1, 2, 3, 4, 5)
    batches, wait = queue.due(1, NOW)
    assert [(b.first_seq, b.last_seq, ids(b.events)) for b in batches] == [
        (1, 2, ["e1", "e2"]),
        (3, 4, ["e3", "e4"]),
    ]
    assert wait == 0.5  # e5 lingers
    written(queue, batches, 1)
    assert counts(queue) == (5, 4, 0, 0, 5)
    assert queue.oldest_in_flight() is batches[0]
    queue.complete(batches[0], 2, 1)
    assert counts(queue) == (5, 4, 2, 0, 3)
    assert (queue.stats().rejected, recorder.calls[-1]) == (1, "progressed")
    queue.complete(batches[0], 2, 1)  # once only
    assert counts(queue) == (5, 4, 2, 0, 3)
    assert (queue.flushed(2), queue.flushed(3)) == (True, False)
    assert queue.flush_result(4) == FlushResult(False, 2)  # e3 and e4 in flight
    # flush() makes e5 due; the batch in flight is written on connection 1 already.
    assert queue.flush_target() == 5
    more, wait = queue.due(1, NOW)
    assert ([ids(b.events) for b in more], wait) == ([["e5"]], -1.0)


def test_a_new_connection_writes_the_batches_in_flight_first_within_the_window() -> None:
    queue, _ = new_queue("tcp", batch_size=1, max_in_flight=2)
    track(queue, 1, 2, 3, 4)  # e4 lingers
    batches, _ = queue.due(1, NOW)
    assert [ids(b.events) for b in batches] == [["e1"], ["e2"]]  # the window is full
    written(queue, batches, 1)
    assert queue.due(1, NOW) == ([], -1.0)
    again, wait = queue.due(2, NOW)  # connection 1 was lost
    assert (again, wait) == (batches, -1.0)
    written(queue, again, 2)
    queue.complete(batches[0], 1, 0)
    more, _ = queue.due(2, NOW)
    assert [ids(b.events) for b in more] == [["e3"]]
    assert queue.stats().retries == 2


def test_a_refused_batch_goes_alone_then_is_split_then_its_event_given_up() -> None:
    queue, recorder = new_queue("tcp", batch_size=2, max_attempts=2)
    track(queue, 1, 2, 3)  # e3 lingers
    reset = ConnectionResetError("reset")
    [batch], _ = queue.due(1, NOW)
    written(queue, [batch], 1)
    queue.failed_attempt(reset)
    assert queue.due(2, NOW) == ([batch], -1.0)  # on probation: alone, nothing new
    written(queue, [batch], 2)
    assert queue.due(2, NOW) == ([], -1.0)
    queue.failed_attempt(reset)  # max_attempts: split in halves, each starting over
    halves, _ = queue.due(3, NOW)
    assert [(b.first_seq, ids(b.events), b.attempts, b.failures) for b in halves] == [
        (1, ["e1"], 2, 0),
        (2, ["e2"], 2, 0),
    ]
    written(queue, halves, 3)
    queue.failed_attempt(reset)
    assert queue.due(4, NOW) == ([halves[0]], -1.0)
    written(queue, [halves[0]], 4)
    queue.failed_attempt(reset)
    assert counts(queue) == (3, 2, 0, 1, 2)
    assert queue.stats().retries == 2 + 2 + 1
    [error] = recorder.errors
    assert isinstance(error, TrackerError)
    assert str(error).startswith(
        "event 'a' (id 'e1') dropped: the connection failed 2 times in a row while it waited "
        "for its ack, alone in its batch (last: ConnectionResetError('reset'))"
    )
    assert queue.due(5, NOW) == ([halves[1]], 0.5)


def test_idle_if_empty() -> None:
    queue, recorder = new_queue("tcp")
    assert queue.idle_if_empty()
    track(queue, 1)
    assert not queue.idle_if_empty()
    queue.flush_target()
    batches, _ = queue.due(1, NOW)
    assert not queue.idle_if_empty()  # in flight
    queue.complete(batches[0], 1, 0)
    assert queue.idle_if_empty()
    track(queue, 2)
    assert recorder.calls == ["wake", "progressed", "wake"]


def test_close_and_abandon_drop_and_count_everything() -> None:
    queue, recorder = new_queue("tcp", batch_size=2)
    track(queue, 1, 2, 3)
    queue.due(1, NOW)  # e1 and e2 in flight, e3 queued
    queue.start_closing()
    assert (queue.closing, queue.closed) == (True, False)
    queue.close()
    track(queue, 4)
    assert counts(queue) == (4, 0, 0, 1, 3)
    queue.abandon()
    assert counts(queue) == (4, 0, 0, 4, 0)
    assert queue.closed and recorder.calls == ["wake", "assist", "progressed"]
    queue.close_at_exit()
    assert recorder.calls == ["wake", "assist", "progressed"]  # closed already


def test_an_event_tracked_during_a_section_is_taken_in_as_it_ends() -> None:
    # What a signal handler's track() does: `send` runs in the queue's section.
    queue, recorder = new_queue(max_datagram_bytes=TWO_PER_DATAGRAM)
    track(queue, 1, 2, 3)  # e1 and e2 sealed, e3 open

    def send_and_track(events: list[bytes]) -> None:
        put(queue, id="e4", value="x" * EVENT_BYTES)  # does not fit with e3
        put(queue, "bad", extra={"tags": {1}})
        assert queue.stats().queued == 3  # not yet

    assert queue.send_chunk(send_and_track, NOW, sealed_only=True) == Sending(True, 0.0)
    assert counts(queue) == (5, 2, 0, 1, 2)
    assert recorder.calls == ["wake", "assist", "wake_soon"]  # e3 sealed by e4
    assert [str(error).split(":")[0] for error in recorder.errors] == ["event 'bad' dropped"]


def test_a_forked_child_starts_over_and_a_closed_queue_stays_closed() -> None:
    queue, recorder = new_queue()
    track(queue, 1, 2)
    queue.after_fork_in_child()
    assert counts(queue) == (0, 0, 0, 0, 0) and recorder.calls == ["wake", "after_fork_in_child"]
    track(queue, 3)
    assert recorder.calls == ["wake", "after_fork_in_child", "wake"]
    queue.close()
    queue.after_fork_in_child()
    track(queue, 4)
    assert counts(queue) == (1, 0, 0, 1, 0)


def test_close_at_exit_asks_the_tracker_unless_closed() -> None:
    queue, recorder = new_queue()
    queue.close_at_exit()
    assert recorder.calls == ["close_at_exit"]
