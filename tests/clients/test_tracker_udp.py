"""Tracker over UDP against a real daemon (in-process), and against a bare socket where the
datagrams themselves are under test. Flushes run in a thread while the loop serves."""

from __future__ import annotations

import asyncio
import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from collector_client import Tracker, TrackerError
from test_tracker_support import (
    FIXED_CLOCK,
    WAIT,
    stored_events,
    udp_receiver,
    unreachable_udp_port,
)

from collector.testing import StartedDaemon, count_rows, running_daemon, wait_until


def udp_tracker(daemon: StartedDaemon, **options: Any) -> Tracker:
    return Tracker(daemon.udp.host, daemon.udp.port, "udp", **options)


async def flush(tracker: Tracker) -> None:
    result = await asyncio.to_thread(tracker.flush, WAIT)
    assert result.complete and result.pending == 0


async def test_every_field_is_stored_exactly(db_path: Path) -> None:
    sent_at_ms = round(FIXED_CLOCK * 1000)
    async with running_daemon(db_path) as daemon:
        tracker = udp_tracker(daemon, clock=lambda: FIXED_CLOCK)
        tracker.track(
            "signup", user_id=42, value=True, extra={"plan": {"tier": "pro", "n": [1, 2]}}
        )
        tracker.track("login", user_id="u1", value=2.5, ts=1_600_000_000.5, id="login-1")
        tracker.track("view", value="home page", ts=msgpack.Timestamp(1_600_000_000, 250_000_000))
        moment = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
        tracker.track("buy", value=-7, ts=moment, extra={"at": moment, "note": None})
        await flush(tracker)
        await wait_until(lambda: count_rows(db_path) == 4, within=WAIT)
        tracker.close()
    rows = stored_events(db_path)
    # ts is corrected by the clock skew: ts + (received_at - sent_at), sent_at = FIXED_CLOCK.
    skew = [row["received_at"] - sent_at_ms for row in rows]
    assert [row["ts"] for row in rows] == [
        rows[0]["received_at"],
        1_600_000_000_500 + skew[1],
        1_600_000_000_250 + skew[2],
        int(moment.timestamp() * 1000) + skew[3],
    ]
    assert [(row["action"], row["user_id"], row["value"], row["extra"]) for row in rows] == [
        ("signup", "42", 1, {"plan": {"tier": "pro", "n": [1, 2]}}),
        ("login", "u1", 2.5, None),
        ("view", None, "home page", None),
        ("buy", None, -7, {"at": "2024-05-01T12:00:00.250000Z", "note": None}),
    ]
    assert rows[1]["msg_id"] == "login-1"


async def test_ids_are_unique_and_times_are_those_of_track(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        tracker = udp_tracker(daemon)
        before_ms = int(datetime.now(UTC).timestamp() * 1000)
        for i in range(300):
            tracker.track("tap", user_id=i % 7, value=i)
        await flush(tracker)
        await wait_until(lambda: count_rows(db_path) == 300, within=WAIT)
        stats = tracker.stats()
        tracker.close()
    rows = stored_events(db_path)
    assert [row["value"] for row in rows] == list(range(300))
    ids = [row["msg_id"] for row in rows]
    assert len(set(ids)) == 300 and all(0 < len(i) <= 100 for i in ids)
    assert all(before_ms - 1000 <= row["ts"] <= row["received_at"] + 5 for row in rows)
    assert (stats.queued, stats.sent, stats.dropped, stats.pending) == (300, 300, 0, 0)


def test_datagrams_are_filled_up_to_the_limit_and_keep_the_order() -> None:
    sizes = [10, 200, 30, 700, 5, 90, 400, 1, 60, 300] * 30
    with udp_receiver() as receiver:
        port = receiver.getsockname()[1]
        tracker = Tracker("127.0.0.1", port, "udp", linger_ms=60_000)
        for i, size in enumerate(sizes):
            tracker.track("fill", value=i, extra={"pad": "x" * size})
        assert tracker.flush(WAIT).complete
        datagrams = []
        while sum(len(d) for d in datagrams) < len(sizes):
            datagrams.append(msgpack.unpackb(receiver.recv(65536)))
        tracker.close()
    assert [e["value"] for d in datagrams for e in d] == list(range(len(sizes)))
    event_bytes = [[len(msgpack.packb(event)) for event in datagram] for datagram in datagrams]
    assert all(3 + sum(each) <= 1400 for each in event_bytes)
    # Greedy: each datagram but the last was closed because the next event did not fit.
    assert all(3 + sum(this) + after[0] > 1400 for this, after in itertools.pairwise(event_bytes))
    assert all(len({e["sent_at"] for e in d}) == 1 for d in datagrams)
    assert tracker.stats().oversized == 0


def test_a_large_event_goes_alone_and_a_huge_one_is_dropped_and_reported() -> None:
    errors: list[Exception] = []
    with udp_receiver() as receiver:
        port = receiver.getsockname()[1]
        tracker = Tracker("127.0.0.1", port, "udp", linger_ms=60_000, on_error=errors.append)
        tracker.track("small", value=1)
        tracker.track("large", extra={"pad": "x" * 3000})
        tracker.track("huge", extra={"pad": "x" * 70_000})
        tracker.track("small", value=2)
        assert tracker.flush(WAIT).complete
        datagrams = [receiver.recv(65536) for _ in range(3)]
        stats = tracker.stats()
        tracker.close()
    assert [[e["action"] for e in msgpack.unpackb(d)] for d in datagrams] == [
        ["small"],
        ["large"],
        ["small"],
    ]
    assert len(datagrams[1]) > 3000
    assert (stats.queued, stats.sent, stats.dropped, stats.oversized) == (4, 3, 1, 1)
    assert stats.errors == 1
    assert isinstance(errors[0], TrackerError) and "UDP datagram" in str(errors[0])


async def test_an_event_that_cannot_be_encoded_costs_only_itself(db_path: Path) -> None:
    errors: list[Exception] = []
    async with running_daemon(db_path) as daemon:
        tracker = udp_tracker(daemon, on_error=errors.append)
        tracker.track("ok", value=1)
        tracker.track("bad", extra={"tags": {"a", "b"}})
        tracker.track("naive", ts=datetime(2024, 5, 1, 12))  # no time zone
        tracker.track("ok", value=2)
        await flush(tracker)
        await wait_until(lambda: count_rows(db_path) == 2, within=WAIT)
        stats = tracker.stats()
        tracker.close()
    assert [row["value"] for row in stored_events(db_path)] == [1, 2]
    assert (stats.queued, stats.sent, stats.dropped, stats.errors) == (4, 2, 2, 2)
    assert [str(error).split(":")[0] for error in errors] == [
        "event 'bad' dropped",
        "event 'naive' dropped",
    ]
    assert all("cannot be encoded" in str(error) for error in errors)


def test_track_raises_only_for_an_action_that_is_not_a_string() -> None:
    with udp_receiver() as receiver:
        tracker = Tracker("127.0.0.1", receiver.getsockname()[1], "udp")
        for action in (None, 42, b"click"):
            with pytest.raises(TypeError, match="action must be a str"):
                tracker.track(action)  # type: ignore[arg-type]
        assert tracker.stats().queued == 0
        tracker.close(0)


def test_the_on_error_handler_may_fail_without_stopping_anything() -> None:
    def broken_handler(error: Exception) -> None:
        raise RuntimeError("the app's own bug")

    with udp_receiver() as receiver:
        port = receiver.getsockname()[1]
        tracker = Tracker("127.0.0.1", port, "udp", on_error=broken_handler)
        tracker.track("bad", extra={"tags": {1}})
        tracker.track("good")
        assert tracker.flush(WAIT).complete
        assert msgpack.unpackb(receiver.recv(65536))[0]["action"] == "good"
        assert tracker.stats().errors == 1
        tracker.close()


def test_track_keeps_going_and_counts_everything_while_nothing_listens() -> None:
    with unreachable_udp_port() as port:
        tracker = Tracker("127.0.0.1", port, "udp", max_queue=1000)
        calls = threading.Thread(
            target=lambda: [tracker.track("lost", value=i) for i in range(10_000)]
        )
        calls.start()
        calls.join(WAIT)
        assert not calls.is_alive()
        assert tracker.flush(WAIT).complete
        stats = tracker.stats()
        tracker.close()
    assert stats.queued == 10_000
    assert stats.sent + stats.dropped == 10_000 and stats.pending == 0
    assert stats.errors > 0  # "port unreachable": each failed datagram dropped and counted


@pytest.mark.parametrize("port", [-1, 65_536, "24224", 1.5])
def test_a_port_out_of_range_is_refused_at_once(port: Any) -> None:
    with pytest.raises(ValueError, match="port must be an int, 0 to 65535"):
        Tracker("127.0.0.1", port)


async def test_a_full_queue_drops_the_newest_and_counts_them(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        # All in one datagram and a very long linger: every event stays queued until flush().
        tracker = udp_tracker(daemon, max_queue=50, linger_ms=60_000, max_datagram_bytes=60_000)
        for i in range(80):
            tracker.track("burst", value=i)
        assert (tracker.stats().dropped, tracker.stats().pending) == (30, 50)
        await flush(tracker)
        await wait_until(lambda: count_rows(db_path) == 50, within=WAIT)
        tracker.close()
    assert [row["value"] for row in stored_events(db_path)] == list(range(50))


def test_track_after_close_drops_and_counts() -> None:
    with udp_receiver() as receiver:
        tracker = Tracker("127.0.0.1", receiver.getsockname()[1], "udp")
        tracker.track("before")
        assert tracker.close(WAIT).complete
        tracker.track("after")
        stats = tracker.stats()
    assert (stats.queued, stats.sent, stats.dropped, stats.pending) == (2, 1, 1, 0)


def test_a_tracker_is_a_context_manager_that_flushes_on_exit() -> None:
    with udp_receiver() as receiver:
        with Tracker("127.0.0.1", receiver.getsockname()[1], "udp", linger_ms=60_000) as tracker:
            tracker.track("inside")
        assert msgpack.unpackb(receiver.recv(65536))[0]["action"] == "inside"
        assert tracker.stats().sent == 1
