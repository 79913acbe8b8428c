"""collector.ingest.connection: a TCP ingest connection without a socket.

Bytes go in, actions come out; the buffer is real, and a commit is simulated by taking the
buffered groups and calling their on_commit, as the writer does.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from collector.buffer import CommitResult, EventBuffer, Group
from collector.forward.handshake import shared_key_digest
from collector.ingest.connection import Action, IngestConnection, Signal, State, Write
from collector.ingest.core import Ingest
from collector.settings import BufferSettings, EventLimits, ForwardSettings, TcpSettings
from collector.stats import Stats

TCP = TcpSettings(max_buffer_bytes=4096, max_connections=10, idle_timeout=300.0)


class Harness:
    """One connection on a real buffer; `delivered` collects the actions it delivers later."""

    def __init__(self, max_events: int = 1000, shared_key: str = "") -> None:
        self.stats = Stats()
        buffer_settings = BufferSettings(max_events, 1 << 30, 0.5, eager_acks=False)
        self.buffer = EventBuffer(buffer_settings, self.stats)
        self.ingest = Ingest(self.buffer, self.stats, EventLimits())
        forward = ForwardSettings(shared_key=shared_key, hostname="server")
        self.delivered: list[Action] = []
        self.conn = IngestConnection(
            self.ingest, TCP, forward, "tcp:127.0.0.1:9", self.delivered.extend
        )

    def send(self, *objects: Any) -> list[Action]:
        data = b"".join(msgpack.packb(obj) for obj in objects)
        return self.conn.data_received(data, now=1.0)

    def commit(self) -> list[Group]:
        """What the writer does: take everything, store it, release, run the callbacks."""
        groups = self.buffer.take(1_000_000)
        for group in groups:
            if group.on_commit is not None:
                group.on_commit(CommitResult(group.events, 0, group.rejected))
        self.buffer.release(groups)
        return groups


def acks(actions: list[Action]) -> list[Any]:
    return [msgpack.unpackb(a.data) for a in actions if isinstance(a, Write)]


def batch(token: str, count: int) -> dict[str, Any]:
    return {"events": [{"action": "a", "value": n} for n in range(count)], "ack": token}


def test_an_open_connection_without_a_key_says_nothing() -> None:
    harness = Harness()
    assert harness.conn.opened(now=0.0) == []
    assert harness.conn.state is State.READING


def test_events_go_to_the_buffer_and_nothing_is_written() -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    assert harness.send({"action": "a"}, [{"action": "b"}, {"action": "c"}]) == []
    assert harness.stats.buffer_events == 3
    assert harness.stats.tcp_objects_received == 2


def test_acks_are_delivered_after_the_commit_in_batch_order() -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    assert harness.send(batch("one", 2), batch("two", 3)) == []
    assert harness.delivered == []
    harness.commit()
    assert acks(harness.delivered) == [
        {"ack": "one", "stored": 2, "rejected": 0},
        {"ack": "two", "stored": 3, "rejected": 0},
    ]
    assert harness.stats.acks_sent == 2


def test_a_full_buffer_pauses_reading_and_room_resumes_it() -> None:
    harness = Harness(max_events=2)
    harness.conn.opened(0.0)
    actions = harness.send({"action": "a"}, {"action": "b"}, {"action": "c"})
    assert actions == [Signal.PAUSE_READING]
    assert harness.conn.state is State.PAUSED
    assert harness.stats.buffer_events == 2  # the third waits undecoded
    assert harness.stats.tcp_pauses == 1
    harness.commit()
    assert harness.delivered == [Signal.RESUME_READING]
    assert harness.conn.state is State.READING
    assert harness.stats.buffer_events == 1


def test_eof_while_paused_finishes_the_input_once_there_is_room() -> None:
    harness = Harness(max_events=1)
    harness.conn.opened(0.0)
    assert harness.send(batch("x", 1), batch("y", 1)) == [Signal.PAUSE_READING]
    assert harness.conn.eof_received() == []
    assert harness.conn.state is State.PAUSED_AT_EOF
    harness.commit()  # acks "x" and makes room: "y" is decoded and fills the buffer again
    assert acks(harness.delivered) == [{"ack": "x", "stored": 1, "rejected": 0}]
    assert harness.conn.state is State.PAUSED_AT_EOF
    assert harness.stats.buffer_events == 1
    harness.delivered.clear()
    harness.commit()  # acks "y"; with room again the input is finished and it closes
    assert harness.delivered == [
        Write(msgpack.packb({"ack": "y", "stored": 1, "rejected": 0})),
        Signal.CLOSE,
    ]
    assert harness.conn.state is State.CLOSED


def test_eof_with_nothing_pending_closes_at_once_and_counts_a_trailing_fragment() -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    fragment = msgpack.packb({"action": "a"})[:-1]
    assert harness.conn.data_received(fragment, now=1.0) == []
    assert harness.conn.eof_received() == [Signal.CLOSE]
    assert harness.stats.tcp_truncated_bytes == len(fragment)


def test_bad_input_stops_reading_and_closes_once_earlier_acks_are_sent() -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    good = msgpack.packb(batch("ok", 1))
    actions = harness.conn.data_received(good + b"\xc1\xc1\xc1", now=1.0)
    assert actions == [Signal.PAUSE_READING]
    assert harness.conn.state is State.DRAINING
    assert harness.stats.decode_errors == 1
    assert harness.stats.tcp_discarded_bytes == 3
    assert harness.conn.data_received(b"more", now=2.0) == []
    assert harness.stats.tcp_discarded_bytes == 7
    harness.commit()
    assert acks(harness.delivered) == [{"ack": "ok", "stored": 1, "rejected": 0}]
    assert harness.delivered[-1] is Signal.CLOSE


def test_a_lost_connection_keeps_what_needs_no_ack_and_drops_what_does() -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    data = msgpack.packb({"action": "kept"}) + msgpack.packb(batch("gone", 2))
    harness.conn.write_failed()
    assert harness.conn.data_received(data, now=1.0) == []
    harness.conn.connection_lost()
    assert harness.conn.state is State.CLOSED
    assert harness.stats.buffer_events == 1
    assert harness.stats.tcp_unackable_dropped == 1


def test_a_lost_connection_past_a_full_buffer_counts_what_it_could_not_keep() -> None:
    harness = Harness(max_events=1)
    harness.conn.opened(0.0)
    waiting = msgpack.packb({"action": "b"})
    harness.conn.data_received(msgpack.packb({"action": "a"}) + waiting, now=1.0)
    harness.conn.connection_lost()
    assert harness.stats.buffer_events == 1
    assert harness.stats.tcp_discarded_bytes == len(waiting)
    assert harness.buffer.waiting_for_room == {}


def test_shutdown_decodes_past_a_full_buffer_and_drains() -> None:
    harness = Harness(max_events=1)
    harness.conn.opened(0.0)
    harness.send(batch("a", 1), batch("b", 1))
    actions = harness.conn.shutdown()
    assert actions == [Signal.PAUSE_READING]
    assert harness.stats.buffer_events == 2
    assert harness.conn.state is State.DRAINING
    harness.commit()
    assert [a["ack"] for a in acks(harness.delivered)] == ["a", "b"]
    assert harness.delivered[-1] is Signal.CLOSE


@pytest.mark.parametrize(("pending", "expected_state"), [(False, State.CLOSED), (True, None)])
def test_idle_check_closes_only_an_idle_connection_with_no_ack_pending(
    pending: bool, expected_state: State | None
) -> None:
    harness = Harness()
    harness.conn.opened(0.0)
    if pending:
        harness.send(batch("p", 1))  # at 1.0
    actions, next_check = harness.conn.idle_check(now=100.0)
    assert (actions, next_check) == ([], 201.0 if pending else 200.0)
    actions, next_check = harness.conn.idle_check(now=400.0)
    if pending:
        assert (actions, next_check) == ([], 0.1)
        assert harness.stats.tcp_idle_closed == 0
    else:
        assert (actions, next_check) == ([Signal.CLOSE], None)
        assert harness.conn.state is expected_state
        assert harness.stats.tcp_idle_closed == 1


def test_handshake_first_then_events() -> None:
    harness = Harness(shared_key="k")
    helo = acks(harness.conn.opened(0.0))
    assert helo[0][0] == "HELO"
    assert harness.conn.state is State.HANDSHAKE
    nonce = helo[0][1]["nonce"]
    digest = shared_key_digest(b"salt", b"client", nonce, b"k")
    actions = harness.send(["PING", "client", "salt", digest, "", ""], {"action": "a"})
    pong = acks(actions)[0]
    assert pong[:3] == ["PONG", True, ""]
    assert harness.conn.state is State.READING
    assert harness.stats.forward_handshakes == 1
    assert harness.stats.buffer_events == 1


def test_a_refused_handshake_answers_and_closes() -> None:
    harness = Harness(shared_key="k")
    harness.conn.opened(0.0)
    actions = harness.send(["PING", "client", "salt", "wrong", "", ""], {"action": "a"})
    pong = acks(actions)[0]
    assert pong == ["PONG", False, "shared_key mismatch", "", ""]
    assert actions[1:] == [Signal.PAUSE_READING, Signal.CLOSE]
    assert harness.stats.forward_handshakes_refused == 1
    assert harness.stats.buffer_events == 0
