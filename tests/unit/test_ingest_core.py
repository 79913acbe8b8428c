"""collector.ingest.core: decoded input -> buffered groups, with byte accounting.

The buffer's byte accounting (the `nbytes` of each group) lives here: the encoded size of
the input, plus a per-row overhead, plus the quarantined bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from collector import codec
from collector.buffer import CommitResult, EventBuffer
from collector.events import ROW_OVERHEAD_BYTES
from collector.ingest.core import Ingest, format_peer, objects_in, sanitise
from collector.settings import BufferSettings, EventLimits
from collector.stats import Stats

RECEIVED_AT = 1_700_000_000_000


def make_ingest(limits: EventLimits | None = None) -> Ingest:
    stats = Stats()
    buffer = EventBuffer(BufferSettings(10_000, 1 << 30, 0.5), stats)
    return Ingest(buffer, stats, limits or EventLimits())


def accept(ingest: Ingest, obj: Any, source: Any = "udp:127.0.0.1:9", **kwargs: Any) -> bytes:
    raw = bytes(msgpack.packb(obj))
    decoded = codec.decode_object(codec.unpack_datagram(raw), raw, RECEIVED_AT, ingest.limits)
    ingest.accept(decoded, len(raw), source, RECEIVED_AT, **kwargs)
    return raw


def test_one_event_is_accounted_by_its_encoded_size() -> None:
    ingest = make_ingest()
    raw = accept(ingest, {"action": "a"})
    assert ingest.stats.buffer_bytes == len(raw) + ROW_OVERHEAD_BYTES
    assert ingest.stats.buffer_events == 1
    assert ingest.stats.events_received == 1


@pytest.mark.parametrize("field", ["value", "user_id", "id"])
def test_accounted_bytes_grow_with_the_event(field: str) -> None:
    small, large = make_ingest(), make_ingest()
    accept(small, {"action": "a", field: "x" * 5})
    accept(large, {"action": "a", field: "x" * 25})  # both fit a one-byte str header
    assert large.stats.buffer_bytes - small.stats.buffer_bytes == 20


def test_accounted_bytes_grow_with_extra() -> None:
    small, large = make_ingest(), make_ingest()
    accept(small, {"action": "a", "extra": {"k": 1}})
    accept(large, {"action": "a", "extra": {"k": 1, "more": ["x" * 20]}})
    assert large.stats.buffer_bytes > small.stats.buffer_bytes


def test_batch_is_accounted_with_an_overhead_per_row() -> None:
    ingest = make_ingest()
    raw = accept(ingest, [{"action": "a"}, {"action": "b"}, {"action": "c"}])
    assert ingest.stats.buffer_bytes == len(raw) + 3 * ROW_OVERHEAD_BYTES
    assert ingest.stats.buffer_events == 3
    assert ingest.buffer.groups[0].nbytes == ingest.stats.buffer_bytes


def test_rejections_are_quarantined_and_their_bytes_accounted() -> None:
    ingest = make_ingest()
    batch = [{"action": "ok"}, {"action": ""}, 7]
    raw = accept(ingest, batch, source="udp:10.0.0.1:5")
    group = ingest.buffer.groups[0]
    assert [row[3] for row in group.rows] == ["ok"]
    assert group.quarantine == [
        (RECEIVED_AT, "udp:10.0.0.1:5", "action is empty", msgpack.packb(batch[1])),
        (RECEIVED_AT, "udp:10.0.0.1:5", "event must be a map, got int", msgpack.packb(7)),
    ]
    assert group.rejected == 2
    rejected_bytes = len(msgpack.packb(batch[1])) + len(msgpack.packb(7))
    assert group.nbytes == len(raw) + ROW_OVERHEAD_BYTES + rejected_bytes
    assert ingest.stats.events_received == 3
    assert ingest.stats.events_rejected == 2


def test_oversized_batch_counts_every_event_as_rejected() -> None:
    ingest = make_ingest(EventLimits(max_batch_events=2))
    accept(ingest, [{"action": "a"}] * 5)
    assert ingest.stats.events_received == 5
    assert ingest.stats.events_rejected == 5
    assert ingest.stats.buffer_events == 0
    assert ingest.buffer.groups[0].rejected == 5


def test_source_is_built_only_for_rejections() -> None:
    ingest = make_ingest()
    calls: list[int] = []

    def source() -> str:
        calls.append(1)
        return "tcp:[::1]:9"

    accept(ingest, {"action": "fine"}, source=source)
    assert calls == []
    accept(ingest, {"action": ""}, source=source)
    assert calls == [1]
    assert ingest.buffer.groups[-1].quarantine[0][1] == "tcp:[::1]:9"


def test_acked_input_is_a_sealed_group_with_its_callback() -> None:
    ingest = make_ingest()
    results: list[CommitResult] = []
    accept(ingest, {"action": "unacked"})
    accept(ingest, {"events": [{"action": "a"}], "ack": "t"}, on_commit=results.append)
    accept(ingest, {"action": "unacked again"})
    groups = list(ingest.buffer.groups)
    assert [[row[3] for row in g.rows] for g in groups] == [["unacked"], ["a"], ["unacked again"]]
    assert groups[1].sealed is True
    assert groups[1].on_commit is not None
    groups[1].on_commit(CommitResult(1, 0, 0))
    assert results == [CommitResult(1, 0, 0)]


def test_accept_row_fast_path_accounting() -> None:
    ingest = make_ingest()
    row = codec.normalise({"action": "a"}, RECEIVED_AT, ingest.limits)
    ingest.accept_row(row, 40)
    assert ingest.stats.events_received == 1
    assert ingest.stats.buffer_events == 1
    assert ingest.stats.buffer_bytes == 40 + ROW_OVERHEAD_BYTES
    assert ingest.buffer.groups[0].rows == [row]


def test_undecodable_input_is_quarantined_without_counting_events() -> None:
    ingest = make_ingest()
    ingest.quarantine_undecodable("bad\x00byte\n", b"\xc1\xc1", "udp:127.0.0.1:1")
    group = ingest.buffer.groups[0]
    assert group.rows == []
    assert len(group.quarantine) == 1
    _, source, reason, raw = group.quarantine[0]
    assert (source, reason, raw) == ("udp:127.0.0.1:1", "not valid msgpack: bad?byte?", b"\xc1\xc1")
    assert ingest.stats.decode_errors == 1
    assert ingest.stats.events_received == 0
    assert ingest.stats.buffer_bytes == 2


# --- small helpers -------------------------------------------------------------------------


def test_sanitise_bounds_and_cleans_text() -> None:
    assert sanitise("ok text") == "ok text"
    assert sanitise("a\nb\x00c") == "a?b?c"
    long = "x" * 1000
    assert sanitise(long) == "x" * 300 + "..."


@pytest.mark.parametrize(
    ("peer", "text"),
    [
        (("127.0.0.1", 5000), "udp:127.0.0.1:5000"),
        (("::1", 5000, 0, 0), "udp:[::1]:5000"),
        (None, "udp:unknown"),
        ("/run/sock", "udp:/run/sock"),
    ],
)
def test_format_peer(peer: Any, text: str) -> None:
    assert format_peer("udp", peer) == text


@pytest.mark.parametrize(
    ("obj", "events"),
    [
        ({"action": "a"}, 1),
        ([{}, {}, {}], 3),
        ({"events": [1, 2], "ack": "t"}, 2),
        ({"events": "nope"}, 1),
        (5, 1),
    ],
)
def test_objects_in(obj: Any, events: int) -> None:
    assert objects_in(obj) == events
