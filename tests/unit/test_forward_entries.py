"""collector.forward.entries: forward time values, the record mapping, per-event quarantine."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack
import pytest

from collector.codec import Decoded
from collector.events import EventError
from collector.forward.entries import (
    add_entry,
    entry_parts,
    record_event,
)
from collector.forward.entries import entry_time as event_time
from collector.settings import EventLimits, ForwardSettings

RECEIVED_AT = 1_700_000_000_000
SETTINGS = ForwardSettings(hostname="test")


def event_time_ext(seconds: int, nanoseconds: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def entries(*items: Any, settings: ForwardSettings = SETTINGS, tag: str = "app.web") -> Decoded:
    decoded = Decoded([], [])
    for item in items:
        add_entry(
            decoded, tag, item, received_at=RECEIVED_AT, limits=EventLimits(), settings=settings
        )
    return decoded


# --- time ----------------------------------------------------------------------------------


def test_integer_and_float_seconds_pass_through() -> None:
    assert event_time(1_441_588_984) == 1_441_588_984
    assert event_time(1_441_588_984.5) == 1_441_588_984.5


def test_event_time_becomes_a_timestamp_with_nanoseconds() -> None:
    assert event_time(event_time_ext(1_441_588_984, 123_456_789)) == msgpack.Timestamp(
        1_441_588_984, 123_456_789
    )


@pytest.mark.parametrize("zero", [0, 0.0, None, event_time_ext(0, 0), event_time_ext(0, 5)])
def test_zero_or_nil_time_means_received_time_as_in_fluentd(zero: Any) -> None:
    assert event_time(zero) is None


def test_native_timestamp_is_accepted_too() -> None:
    assert event_time(msgpack.Timestamp(5, 6)) == msgpack.Timestamp(5, 6)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1441588984", "time must be an integer or an EventTime (ext 0), got str"),
        (True, "got bool"),
        (msgpack.ExtType(1, b"\x00" * 8), "got ext type 1 (8 bytes)"),
        (msgpack.ExtType(0, b"\x00" * 4), "EventTime must be 8 bytes, got 4"),
        (event_time_ext(1, 1_000_000_000), "nanoseconds 1000000000 exceed 999999999"),
        (float("nan"), "time must be a finite number"),
    ],
)
def test_bad_times_are_explained(value: Any, reason: str) -> None:
    with pytest.raises(EventError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        event_time(value)


# --- entry shapes --------------------------------------------------------------------------


def test_entry_forms() -> None:
    assert entry_parts([1, {"a": 1}]) == (1, {"a": 1})
    assert entry_parts([[7, {"otel": "x"}], {"a": 1}]) == (7, {"a": 1})
    assert entry_parts([[7, None], {"a": 1}]) == (7, {"a": 1})


@pytest.mark.parametrize(
    "entry", [[1], [1, {}, 2], {"time": 1}, "x", [[1, 2], {}], [[1], {}], [[1, {}, 3], {}]]
)
def test_malformed_entries_are_refused(entry: Any) -> None:
    with pytest.raises(EventError, match="entry"):
        entry_parts(entry)


# --- mapping -------------------------------------------------------------------------------


def test_default_mapping_uses_record_fields_and_keeps_the_tag_in_extra() -> None:
    record = {"action": "login", "user_id": "u1", "value": 3, "plan": "pro"}
    assert record_event("app.web", 1_441_588_984, record, SETTINGS) == {
        "action": "login",
        "user_id": "u1",
        "value": 3,
        "extra": {"plan": "pro", "tag": "app.web"},
        "ts": 1_441_588_984,
    }
    assert record == {"action": "login", "user_id": "u1", "value": 3, "plan": "pro"}


def test_without_an_action_field_the_tag_is_the_action() -> None:
    event = record_event("app.web", 0, {"message": "hi", "action": None}, SETTINGS)
    assert event == {
        "action": "app.web",
        "user_id": None,
        "value": None,
        "extra": {"message": "hi", "tag": "app.web"},
    }


def test_configured_field_names_and_no_tag_key() -> None:
    settings = ForwardSettings(
        action_field="event", user_field="uid", value_field="", tag_key="", hostname="h"
    )
    event = record_event("t", 5, {"event": "buy", "uid": 9, "value": "kept"}, settings)
    assert event == {"action": "buy", "user_id": 9, "extra": {"value": "kept"}, "ts": 5}


def test_empty_action_field_always_uses_the_tag() -> None:
    settings = ForwardSettings(action_field="", hostname="h")
    assert record_event("t", 5, {"action": "ignored"}, settings)["action"] == "t"


def test_record_keys_with_native_meaning_are_plain_extra_keys() -> None:
    event = record_event("t", 5, {"id": "m1", "ts": 1, "extra": 2, "sent_at": 3}, SETTINGS)
    assert event["extra"] == {"id": "m1", "ts": 1, "extra": 2, "sent_at": 3, "tag": "t"}
    assert "id" not in event


def test_a_record_field_named_like_the_tag_key_is_rejected_not_overwritten() -> None:
    with pytest.raises(EventError, match="record field 'tag' clashes"):
        record_event("t", 5, {"tag": "mine"}, SETTINGS)


def test_rows_have_exact_fields_and_no_message_id() -> None:
    decoded = entries(
        [event_time_ext(1_441_588_984, 250_000_000), {"user_id": 42, "value": 1.5, "k": [1]}]
    )
    assert decoded.rejections == []
    [(ts, received_at, user_id, action, value, extra, msg_id)] = decoded.rows
    assert (ts, received_at, user_id, action, value) == (
        1_441_588_984_250,
        RECEIVED_AT,
        "42",
        "app.web",
        1.5,
    )
    assert json.loads(str(extra)) == {"k": [1], "tag": "app.web"}
    assert msg_id is None


def test_binary_text_from_fluentd_is_stored_as_text() -> None:
    decoded = entries([1, {b"message": b"caf\xc3\xa9", "nested": {"k": [b"v"]}}])
    assert decoded.rejections == []
    assert json.loads(str(decoded.rows[0][5])) == {
        "message": "café",
        "nested": {"k": ["v"]},
        "tag": "app.web",
    }


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ([1, "not a map"], "record must be a map, got str"),
        ([1, None], "record must be a map, got nil"),
        (["soon", {}], "time must be an integer or an EventTime (ext 0), got str"),
        ([-5, {}], "ts -5 is outside 1970..9999 (seconds since the epoch)"),
        ([1, {"action": 7}], "action must be a string, got int"),
        ([1, {"m": b"\xff\xfe"}], "a binary field is not UTF-8 text"),
        ([1, {"m": "bad \udcff"}], "text is not valid UTF-8"),
        ({"not": "an entry"}, "entry must be an array [time, record], got map"),
    ],
)
def test_invalid_events_are_quarantined_with_a_replayable_message(entry: Any, reason: str) -> None:
    decoded = entries([1, {"fine": True}], entry)
    assert len(decoded.rows) == 1
    [rejection] = decoded.rejections
    assert rejection.reason == reason
    assert rejection.events == 1
    # Byte-exact, text that was not UTF-8 included.
    replay = msgpack.unpackb(rejection.raw, strict_map_key=False, unicode_errors="surrogateescape")
    expected = ["app.web", *entry] if type(entry) is list else ["app.web", entry]
    assert replay == expected


def test_a_too_long_tag_as_action_is_quarantined() -> None:
    decoded = entries([1, {}], tag="t" * 201)
    assert decoded.rows == []
    assert decoded.rejections[0].reason == "action is 201 characters, more than 200"


# --- deep records ----------------------------------------------------------------------------


def nested(depth: int, leaf: Any) -> Any:
    """A record of `depth` maps, one inside the other, built without recursion."""
    record = leaf
    for _ in range(depth):
        record = {"k": record}
    return record


@pytest.mark.parametrize("depth", [9, 600, 1000])
def test_a_deep_record_is_explained_not_a_recursion_error(depth: int) -> None:
    """Deeper than Python's recursion limit, as far as msgpack decodes (1024 levels)."""
    with_text, with_bin = entries([1, nested(depth, "v")], [1, nested(depth, b"v")]).rejections
    assert with_text.reason.startswith("extra is nested ")
    assert with_text.reason.endswith(" deep, more than 8") or with_text.reason.endswith(
        "deeper than 8"
    )
    assert with_bin.reason == f"record is nested {depth} deep, more than max_extra_depth=8"
    assert with_bin.raw == msgpack.packb(["app.web", 1, nested(depth, b"v")])


def test_bin_within_the_depth_limit_is_still_converted() -> None:
    decoded = entries([1, nested(7, b"v")])
    assert decoded.rejections == []
    assert json.loads(str(decoded.rows[0][5]))["k"] == nested(6, "v")
