"""collector.codec: msgpack objects -> rows and rejections.

Inputs are built with msgpack.packb and decoded with codec.unpack_datagram, as the daemon
does, so the tests see exactly the Python objects the daemon would see.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest

from collector import codec, events
from collector.codec import Decoded, Rejection
from collector.events import Row
from collector.settings import EventLimits

RECEIVED_AT = 1_700_000_000_000  # ms
DEFAULT_LIMITS = EventLimits()


def wire(obj: Any) -> tuple[Any, bytes]:
    """The object as the daemon sees it after a msgpack round trip, and its bytes."""
    raw = bytes(msgpack.packb(obj))
    return codec.unpack_datagram(raw), raw


def decode(
    obj: Any,
    limits: EventLimits = DEFAULT_LIMITS,
    received_at: int = RECEIVED_AT,
    *,
    keep_raw: bool = False,
) -> Decoded:
    decoded_obj, raw = wire(obj)
    return codec.decode_object(decoded_obj, raw if keep_raw else None, received_at, limits)


def one_row(event: dict[Any, Any], limits: EventLimits = DEFAULT_LIMITS, **kwargs: Any) -> Row:
    decoded = decode(event, limits, **kwargs)
    assert decoded.rejections == []
    assert len(decoded.rows) == 1
    return decoded.rows[0]


def one_rejection(event: Any, limits: EventLimits = DEFAULT_LIMITS, **kwargs: Any) -> Rejection:
    decoded = decode(event, limits, **kwargs)
    assert decoded.rows == []
    assert len(decoded.rejections) == 1
    return decoded.rejections[0]


def nested_extra(depth: int) -> dict[str, Any]:
    """An extra map nested `depth` deep (the extra map itself is depth 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


# --- a valid event -------------------------------------------------------------------------


def test_minimal_event_becomes_a_row_with_defaults() -> None:
    row = one_row({"action": "click"})
    assert row == (RECEIVED_AT, RECEIVED_AT, None, "click", None, None, None)


def test_full_event_row_layout() -> None:
    event = {
        "action": "buy",
        "user_id": "u-1",
        "value": 12.5,
        "extra": {"sku": "A1"},
        "ts": 1_600_000_000,
        "id": "msg-1",
    }
    assert one_row(event) == (
        1_600_000_000_000,
        RECEIVED_AT,
        "u-1",
        "buy",
        12.5,
        '{"sku":"A1"}',
        "msg-1",
    )


def test_received_at_is_taken_from_the_caller() -> None:
    row = one_row({"action": "a"}, received_at=42_000)
    assert row[0] == 42_000
    assert row[1] == 42_000


# --- action --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({}, "action is missing"),
        ({"action": None}, "action is missing"),
        ({"user_id": "u"}, "action is missing"),
        ({"action": 5}, "action must be a string, got int"),
        ({"action": b"click"}, "action must be a string, got bin"),
        ({"action": True}, "action must be a string, got bool"),
        ({"action": ["a"]}, "action must be a string, got array"),
        ({"action": ""}, "action is empty"),
        ({"action": "x" * 201}, "action is 201 characters, more than 200"),
    ],
)
def test_invalid_action_is_rejected(event: dict[str, Any], reason: str) -> None:
    assert one_rejection(event).reason == reason


@pytest.mark.parametrize("action", ["a", "x" * 200, "é" * 200, "😀" * 200])
def test_action_limit_counts_characters(action: str) -> None:
    assert one_row({"action": action})[3] == action


# --- user_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "reason"),
    [
        ("", "user_id is empty"),
        ("u" * 257, "user_id is 257 characters, more than 256"),
        (True, "user_id must be a string or an integer, got bool"),
        (False, "user_id must be a string or an integer, got bool"),
        (1.5, "user_id must be a string or an integer, got float"),
        ({"id": 1}, "user_id must be a string or an integer, got map"),
        ([1], "user_id must be a string or an integer, got array"),
        (b"u", "user_id must be a string or an integer, got bin"),
    ],
)
def test_invalid_user_id_is_rejected(user_id: Any, reason: str) -> None:
    assert one_rejection({"action": "a", "user_id": user_id}).reason == reason


@pytest.mark.parametrize(
    ("user_id", "stored"),
    [
        ("alice", "alice"),
        ("u" * 256, "u" * 256),
        (42, "42"),
        (0, "0"),
        (-7, "-7"),
        (2**64 - 1, "18446744073709551615"),
        (None, None),
    ],
)
def test_user_id_is_stored_as_text(user_id: Any, stored: str | None) -> None:
    assert one_row({"action": "a", "user_id": user_id})[2] == stored


# --- value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["text", "", 0, 1, -1, 2**63 - 1, -(2**63), 2.5, -0.0, True, False, None],
)
def test_scalar_values_are_kept_with_their_type(value: Any) -> None:
    stored = one_row({"action": "a", "value": value})[4]
    assert stored == value
    assert type(stored) is type(value)


def test_absent_value_is_nil() -> None:
    assert one_row({"action": "a"})[4] is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.nan, "value must be a finite number"),
        (math.inf, "value must be a finite number"),
        (-math.inf, "value must be a finite number"),
        (2**63, "value is an integer outside the signed 64-bit range"),
        (2**64 - 1, "value is an integer outside the signed 64-bit range"),
        ({"a": 1}, "value must be a string, number, bool or nil, got map"),
        ([1, 2], "value must be a string, number, bool or nil, got array"),
        (b"\x00", "value must be a string, number, bool or nil, got bin"),
        (msgpack.Timestamp(1, 0), "value must be a string, number, bool or nil, got Timestamp"),
    ],
)
def test_invalid_value_is_rejected(value: Any, reason: str) -> None:
    assert one_rejection({"action": "a", "value": value}).reason == reason


def test_value_below_int64_is_rejected() -> None:
    # msgpack cannot encode it, so hand the decoded object over directly.
    decoded = codec.decode_object(
        {"action": "a", "value": -(2**63) - 1}, None, RECEIVED_AT, DEFAULT_LIMITS
    )
    assert decoded.rows == []
    assert [r.reason for r in decoded.rejections] == [
        "value is an integer outside the signed 64-bit range"
    ]


# --- id ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_id", "reason"),
    [
        ("", "id is empty"),
        ("i" * 101, "id is 101 characters, more than 100"),
        (5, "id must be a string, got int"),
        (b"id", "id must be a string, got bin"),
        (True, "id must be a string, got bool"),
        ({"x": 1}, "id must be a string, got map"),
    ],
)
def test_invalid_id_is_rejected(msg_id: Any, reason: str) -> None:
    assert one_rejection({"action": "a", "id": msg_id}).reason == reason


@pytest.mark.parametrize("msg_id", ["m", "i" * 100, "é" * 100])
def test_valid_id_is_stored(msg_id: str) -> None:
    assert one_row({"action": "a", "id": msg_id})[6] == msg_id


# --- ts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "stored"),
    [
        (msgpack.Timestamp(1_700_000_000, 0), 1_700_000_000_000),
        (msgpack.Timestamp(1_700_000_000, 987_654_321), 1_700_000_000_987),
        (msgpack.Timestamp(1_700_000_000, 999_999), 1_700_000_000_000),
        (1_700_000_000, 1_700_000_000_000),
        (0, 0),
        (253_402_300_799, 253_402_300_799_000),
        (1_700_000_000.25, 1_700_000_000_250),
        (1_700_000_000.0006, 1_700_000_000_001),  # rounded, not truncated
        (1_700_000_000.0004, 1_700_000_000_000),
        (0.0, 0),
    ],
)
def test_ts_is_converted_to_milliseconds(ts: Any, stored: int) -> None:
    assert one_row({"action": "a", "ts": ts})[0] == stored


def test_timestamp_travels_as_msgpack_ext_minus_one() -> None:
    raw = msgpack.packb({"action": "a", "ts": msgpack.Timestamp(1_700_000_000, 5_000_000)})
    assert b"\xd7\xff" in raw  # fixext 8, type -1: timestamp 64
    obj = codec.unpack_datagram(raw)
    assert type(obj["ts"]) is msgpack.Timestamp
    row = codec.decode_object(obj, raw, RECEIVED_AT, DEFAULT_LIMITS).rows[0]
    assert row[0] == 1_700_000_000_005


def test_absent_ts_is_received_at() -> None:
    assert one_row({"action": "a"}, received_at=123_456)[0] == 123_456


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (-1, "ts -1 is outside 1970..9999 (seconds since the epoch)"),
        (-0.5, "ts -0.5 is outside 1970..9999 (seconds since the epoch)"),
        # milliseconds sent by mistake: year ~55 000
        (1_700_000_000_000, "ts 1700000000000 is outside 1970..9999 (seconds since the epoch)"),
        (253_402_300_800, "ts 253402300800 is outside 1970..9999 (seconds since the epoch)"),
        (1e300, "ts 1e+300 is outside 1970..9999 (seconds since the epoch)"),
        (math.nan, "ts must be a finite number"),
        (math.inf, "ts must be a finite number"),
        (True, "ts must be a msgpack Timestamp or seconds since the epoch, got bool"),
        ("2024-01-01", "ts must be a msgpack Timestamp or seconds since the epoch, got str"),
        ([1], "ts must be a msgpack Timestamp or seconds since the epoch, got array"),
    ],
)
def test_invalid_ts_is_rejected(ts: Any, reason: str) -> None:
    assert one_rejection({"action": "a", "ts": ts}).reason == reason


def test_negative_timestamp_is_rejected() -> None:
    rejection = one_rejection({"action": "a", "ts": msgpack.Timestamp(-1, 0)})
    assert rejection.reason.startswith("ts Timestamp(")
    assert rejection.reason.endswith("is outside 1970..9999 (seconds since the epoch)")


@pytest.mark.parametrize("name", ["ts", "sent_at"])
def test_float_time_overflowing_milliseconds_is_rejected(name: str) -> None:
    """A finite float whose value * 1000 overflows (1e306 s) must be a rejection like any
    other out-of-range time, not an exception escaping decode_object."""
    event: dict[str, Any] = {"action": "a", name: 1e306}
    if name == "sent_at":
        event["ts"] = 1_700_000_000
    rejection = one_rejection(event)
    assert "outside 1970..9999" in rejection.reason


# --- sent_at -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "sent_at", "received_at", "stored"),
    [
        # client clock 10 s ahead: its ts is moved 10 s back
        (1_700_000_000, 1_700_000_010, 1_700_000_000_000, 1_699_999_990_000),
        # client clock 2.5 s behind
        (1_700_000_000, 1_699_999_997.5, 1_700_000_000_000, 1_700_000_002_500),
        # event 3 s before sending, clocks agree, 40 ms in transit
        (1_700_000_000, 1_700_000_003, 1_700_000_003_040, 1_700_000_000_040),
        (
            msgpack.Timestamp(1_700_000_000, 100_000_000),
            msgpack.Timestamp(1_700_000_001, 0),
            1_700_000_001_000,
            1_700_000_000_100,
        ),
    ],
)
def test_sent_at_corrects_client_clock_skew(
    ts: Any, sent_at: Any, received_at: int, stored: int
) -> None:
    row = one_row({"action": "a", "ts": ts, "sent_at": sent_at}, received_at=received_at)
    assert row[0] == stored
    assert row[0] == events.time_to_ms(ts, "ts") + (received_at - events.time_to_ms(sent_at, "s"))
    assert row[1] == received_at


def test_sent_at_without_ts_stores_received_at() -> None:
    row = one_row({"action": "a", "sent_at": 1_600_000_000}, received_at=1_700_000_000_000)
    assert row[0] == 1_700_000_000_000


@pytest.mark.parametrize(
    ("sent_at", "reason"),
    [
        ("now", "sent_at must be a msgpack Timestamp or seconds since the epoch, got str"),
        (False, "sent_at must be a msgpack Timestamp or seconds since the epoch, got bool"),
        (-5, "sent_at -5 is outside 1970..9999 (seconds since the epoch)"),
        (math.nan, "sent_at must be a finite number"),
    ],
)
@pytest.mark.parametrize("with_ts", [True, False])
def test_invalid_sent_at_is_rejected(sent_at: Any, reason: str, with_ts: bool) -> None:
    event: dict[str, Any] = {"action": "a", "sent_at": sent_at}
    if with_ts:
        event["ts"] = 1_700_000_000
    assert one_rejection(event).reason == reason


@pytest.mark.parametrize(
    ("ts", "sent_at", "received_at"),
    [
        (0, 10, 5_000),  # corrected to -5 s
        (253_402_300_799, 0, 1_000),  # corrected past the year 9999
    ],
)
def test_skew_correction_out_of_range_is_rejected(ts: int, sent_at: int, received_at: int) -> None:
    event = {"action": "a", "ts": ts, "sent_at": sent_at}
    rejection = one_rejection(event, received_at=received_at)
    assert rejection.reason == "ts corrected by sent_at falls outside 1970..9999"


# --- extra ---------------------------------------------------------------------------------


def test_nested_extra_is_stored_as_compact_json() -> None:
    extra = {"a": {"b": [1, 2.5, {"c": None}], "t": True}, "s": "héllo ☃"}
    stored = one_row({"action": "a", "extra": extra})[5]
    assert stored == '{"a":{"b":[1,2.5,{"c":null}],"t":true},"s":"héllo ☃"}'
    assert json.loads(stored) == extra


def test_empty_extra_is_an_empty_object() -> None:
    assert one_row({"action": "a", "extra": {}})[5] == "{}"


def test_nil_extra_is_no_extra() -> None:
    assert one_row({"action": "a", "extra": None})[5] is None


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ([1, 2], "extra must be a map, got array"),
        ("text", "extra must be a map, got str"),
        (5, "extra must be a map, got int"),
        ({b"k": "a"}, "extra keys must be strings, got bin key"),
        (
            {"m": {msgpack.Timestamp(0, 0): 1}},
            "extra cannot be stored as JSON: "
            "keys must be str, int, float, bool or None, not Timestamp",
        ),
        (
            {"blob": b"\x00\x01"},
            "extra cannot be stored as JSON: binary values are not supported in extra",
        ),
        (
            {"deep": [{"blob": b"\x00"}]},
            "extra cannot be stored as JSON: binary values are not supported in extra",
        ),
    ],
)
def test_invalid_extra_is_rejected(extra: Any, reason: str) -> None:
    assert one_rejection({"action": "a", "extra": extra}).reason == reason


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_number_in_extra_is_rejected(number: float) -> None:
    reason = one_rejection({"action": "a", "extra": {"f": number}}).reason
    assert reason.startswith("extra cannot be stored as JSON: ")


@pytest.mark.parametrize(
    ("extra", "key_type"),
    [
        ({1: "a"}, "int"),
        ({"ok": 1, None: 1}, "nil"),
        ({"m": {-7: [1]}}, "int"),
        ({"l": [{"x": 1}, {2.5: 2}]}, "float"),
        ({"m": {"n": {True: 3}}}, "bool"),
    ],
)
def test_non_string_keys_in_extra_are_rejected_at_any_depth(
    extra: dict[Any, Any], key_type: str
) -> None:
    reason = one_rejection({"action": "a", "extra": extra}).reason
    assert reason == f"extra keys must be strings, got {key_type} key"


@pytest.mark.parametrize(
    "event",
    [
        {"action": "a", "extra": {1: "a", "1": "b"}},
        {"action": "a", "extra": {True: "a", "true": "b"}},
        {"action": "a", "extra": {None: "a", "null": "b"}},
        {"action": "a", "extra": {"inner": {2.5: "a", "2.5": "b"}}},
        {"action": "a", "extra": {1: "a"}, "1": "top-level"},
    ],
)
def test_extra_keys_colliding_once_made_strings_are_rejected(event: dict[Any, Any]) -> None:
    """Coercing 1 to "1" must not produce a JSON object with a duplicated key: any reader
    keeps only one of the two values, so the event would be stored with data lost."""
    decoded = decode(event)
    assert decoded.rows == []
    assert len(decoded.rejections) == 1
    assert "key" in decoded.rejections[0].reason


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (msgpack.Timestamp(1_700_000_000, 0), "2023-11-14T22:13:20Z"),
        (msgpack.Timestamp(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456Z"),
        (msgpack.Timestamp(0, 0), "1970-01-01T00:00:00Z"),
    ],
)
def test_timestamp_in_extra_becomes_iso_text(timestamp: msgpack.Timestamp, text: str) -> None:
    stored = one_row({"action": "a", "extra": {"at": timestamp, "list": [timestamp]}})[5]
    assert json.loads(stored) == {"at": text, "list": [text]}


@pytest.mark.parametrize(
    ("extra", "limit", "accepted"),
    [
        ({"k": "x" * 32}, 40, True),  # {"k":"..."} is 8 + 32 = 40 bytes
        ({"k": "x" * 33}, 40, False),
        ({"k": "é" * 16}, 40, True),  # 24 characters, 40 bytes
        ({"k": "é" * 17}, 40, False),  # 25 characters, 42 bytes
        ({"k": "😀" * 8}, 40, True),  # 16 characters, 40 bytes
        ({"k": "😀" * 9}, 40, False),  # 17 characters, 44 bytes
    ],
)
def test_extra_size_limit_counts_utf8_bytes(extra: Any, limit: int, accepted: bool) -> None:
    limits = EventLimits(max_extra_bytes=limit)
    decoded = decode({"action": "a", "extra": extra}, limits)
    if accepted:
        assert decoded.rejections == []
        assert len(decoded.rows[0][5].encode()) == limit
    else:
        assert decoded.rows == []
        assert [r.reason for r in decoded.rejections] == [
            f"extra is larger than max_extra_bytes={limit}"
        ]


@pytest.mark.parametrize("max_depth", [1, 3, 8])
def test_extra_nested_exactly_to_the_limit_is_accepted(max_depth: int) -> None:
    extra = nested_extra(max_depth)
    row = one_row({"action": "a", "extra": extra}, EventLimits(max_extra_depth=max_depth))
    assert json.loads(row[5]) == extra


@pytest.mark.parametrize("max_depth", [1, 3, 8])
def test_extra_nested_deeper_than_the_limit_is_rejected(max_depth: int) -> None:
    extra = nested_extra(max_depth + 1)
    reason = one_rejection({"action": "a", "extra": extra}, EventLimits(max_extra_depth=max_depth))
    assert reason.reason == f"extra is nested {max_depth + 1} deep, more than {max_depth}"


@pytest.mark.parametrize(
    ("extra", "depth"),
    [
        ({"a": [[1]]}, 3),
        ({"a": [], "b": {}}, 2),
        ({"a": [1, [2, [3]]], "b": {"c": 1}}, 4),
    ],
)
def test_lists_count_towards_extra_depth(extra: dict[str, Any], depth: int) -> None:
    assert one_row({"action": "a", "extra": extra}, EventLimits(max_extra_depth=depth))[5]
    reason = one_rejection({"action": "a", "extra": extra}, EventLimits(max_extra_depth=depth - 1))
    assert reason.reason == f"extra is nested {depth} deep, more than {depth - 1}"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    extra = {"s": "[[[[{{{{", "t": "{[{["}
    row = one_row({"action": "a", "extra": extra}, EventLimits(max_extra_depth=1))
    assert json.loads(row[5]) == extra


@pytest.mark.parametrize("depth", [600, 1020])
@pytest.mark.parametrize("in_batch", [False, True])
def test_extremely_deep_extra_is_rejected_not_crashing(depth: int, in_batch: bool) -> None:
    # As deep as msgpack will decode: deeper than json.dumps can recurse at 1020.
    raw = b"\x82\xa6action\xa1a\xa5extra" + b"\x81\xa1k" * depth + b"\x80"
    event = codec.unpack_datagram(raw)
    obj, obj_raw = ([event], None) if in_batch else (event, raw)
    decoded = codec.decode_object(obj, obj_raw, 0, DEFAULT_LIMITS)
    assert decoded.rows == []
    assert len(decoded.rejections) == 1
    assert decoded.rejections[0].reason.startswith("extra is nested")
    assert decoded.rejections[0].raw == raw


# --- unknown top-level keys ----------------------------------------------------------------


def test_unknown_top_level_keys_are_folded_into_extra() -> None:
    row = one_row({"action": "view", "page": "/home", "n": 3, "user_id": "u"})
    assert row[3] == "view"
    assert row[2] == "u"
    assert json.loads(row[5]) == {"page": "/home", "n": 3}


def test_unknown_top_level_keys_are_merged_with_extra() -> None:
    row = one_row({"action": "a", "extra": {"x": 1}, "y": [2]})
    assert json.loads(row[5]) == {"x": 1, "y": [2]}


def test_unknown_top_level_timestamp_becomes_iso_text() -> None:
    row = one_row({"action": "a", "at": msgpack.Timestamp(0, 0)})
    assert json.loads(row[5]) == {"at": "1970-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            {"action": "a", "x": 1, "extra": {"x": 2}},
            "key 'x' is given both at the top level and in extra",
        ),
        ({"action": "a", 1: "one"}, "event keys must be strings, got int key"),
        ({"action": "a", b"k": "v"}, "event keys must be strings, got bin key"),
        ({"action": "a", "x": 1, "extra": "text"}, "extra must be a map, got str"),
        (
            {"action": "a", "blob": b"\x00"},
            "extra cannot be stored as JSON: binary values are not supported in extra",
        ),
    ],
)
def test_invalid_unknown_top_level_keys_are_rejected(event: dict[Any, Any], reason: str) -> None:
    assert one_rejection(event).reason == reason


def test_unknown_keys_count_against_extra_depth_and_size() -> None:
    event = {"action": "a", "deep": {"b": {"c": 1}}}  # extra is nested 3 deep
    assert one_row(event, EventLimits(max_extra_depth=3))[5] == '{"deep":{"b":{"c":1}}}'
    assert one_rejection(event, EventLimits(max_extra_depth=2)).reason == (
        "extra is nested 3 deep, more than 2"
    )
    event = {"action": "a", "big": "x" * 100}
    assert one_rejection(event, EventLimits(max_extra_bytes=50)).reason == (
        "extra is larger than max_extra_bytes=50"
    )


# --- event size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "size"),
    [
        ({"action": "a", "value": "v" * 255}, 256),
        ({"action": "a", "value": "é" * 127 + "v"}, 256),
        ({"action": "a" * 56, "user_id": "u" * 100, "value": "v" * 100}, 256),
        ({"action": "a", "extra": {"k": "x" * 247}}, 256),  # extra JSON is 255 bytes
    ],
)
def test_event_exactly_at_the_size_limit_is_accepted(event: dict[str, Any], size: int) -> None:
    row = one_row(event, EventLimits(max_event_bytes=size))
    assert row[3] == event["action"]


@pytest.mark.parametrize(
    ("event", "size"),
    [
        ({"action": "a", "value": "v" * 256}, 257),
        ({"action": "a", "value": "é" * 128}, 257),  # 129 characters, 257 bytes
        ({"action": "a" * 56, "user_id": "u" * 101, "value": "v" * 100}, 257),
        ({"action": "aa", "extra": {"k": "x" * 247}}, 257),
    ],
)
def test_event_over_the_size_limit_is_rejected(event: dict[str, Any], size: int) -> None:
    rejection = one_rejection(event, EventLimits(max_event_bytes=256))
    assert rejection.reason == f"event is {size} bytes, more than max_event_bytes=256"


# --- single-object rejections keep their bytes ---------------------------------------------


def test_rejected_single_event_keeps_the_given_raw_bytes() -> None:
    event = {"action": ""}
    rejection = one_rejection(event, keep_raw=True)
    assert rejection.raw == msgpack.packb(event)
    assert rejection.events == 1


def test_rejected_single_event_without_raw_is_re_encoded() -> None:
    event = {"action": 5, "value": "x"}
    rejection = one_rejection(event)
    assert msgpack.unpackb(rejection.raw) == event


@pytest.mark.parametrize(
    ("obj", "kind"),
    [(42, "int"), ("text", "str"), (None, "nil"), (b"\x01", "bin"), (1.5, "float"), (True, "bool")],
)
def test_top_level_scalar_is_rejected_with_its_raw_bytes(obj: Any, kind: str) -> None:
    decoded = decode(obj, keep_raw=True)
    assert decoded.rows == []
    assert decoded.rejections == [
        Rejection(
            f"expected an event map or an array of event maps, got {kind}", msgpack.packb(obj), 1
        )
    ]
    assert decoded.wants_ack is False


def test_top_level_scalar_without_raw_is_re_encoded() -> None:
    decoded = decode(42)
    assert decoded.rejections[0].raw == msgpack.packb(42)


# --- batches -------------------------------------------------------------------------------


def test_batch_of_maps_gives_rows_in_order() -> None:
    batch = [{"action": f"a{i}", "value": i} for i in range(5)]
    decoded = decode(batch)
    assert decoded.rejections == []
    assert [(row[3], row[4]) for row in decoded.rows] == [(f"a{i}", i) for i in range(5)]
    assert decoded.wants_ack is False
    assert decoded.ack is None


def test_empty_batch_gives_nothing() -> None:
    decoded = decode([])
    assert decoded.rows == []
    assert decoded.rejections == []


def test_mixed_batch_keeps_valid_events_and_rejects_each_invalid_one() -> None:
    batch = [
        {"action": "ok1"},
        {"action": ""},
        7,
        {"action": "ok2", "value": 2},
        {"action": "x", "user_id": True},
        [{"action": "nested batch"}],
        {"action": "ok3", "id": "m3"},
    ]
    decoded = decode(batch, keep_raw=True)
    assert [row[3] for row in decoded.rows] == ["ok1", "ok2", "ok3"]
    assert [r.reason for r in decoded.rejections] == [
        "action is empty",
        "event must be a map, got int",
        "user_id must be a string or an integer, got bool",
        "event must be a map, got array",
    ]
    # each rejection keeps its own element, re-encoded, never the whole datagram
    assert [r.raw for r in decoded.rejections] == [
        msgpack.packb(batch[1]),
        msgpack.packb(batch[2]),
        msgpack.packb(batch[4]),
        msgpack.packb(batch[5]),
    ]
    assert [r.events for r in decoded.rejections] == [1, 1, 1, 1]
    assert decoded.rejected_events == 4


def test_batch_at_max_batch_events_is_accepted() -> None:
    decoded = decode([{"action": "a"}] * 3, EventLimits(max_batch_events=3))
    assert len(decoded.rows) == 3
    assert decoded.rejections == []


@pytest.mark.parametrize("keep_raw", [True, False])
def test_batch_over_max_batch_events_is_one_rejection_counting_every_event(
    keep_raw: bool,
) -> None:
    batch = [{"action": "a"}] * 4 + [{"action": ""}]
    decoded = decode(batch, EventLimits(max_batch_events=3), keep_raw=keep_raw)
    assert decoded.rows == []
    assert decoded.rejections == [
        Rejection("batch of 5 events exceeds max_batch_events=3", msgpack.packb(batch), 5)
    ]
    assert decoded.rejected_events == 5


# --- ack envelopes -------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["t-1", b"\x00\x01\xff", "x" * 64, b"\xff" * 64, "é" * 32, ""])
def test_envelope_with_ack_token(token: str | bytes) -> None:
    envelope = {"events": [{"action": "a"}, {"action": "b"}], "ack": token}
    decoded = decode(envelope)
    assert decoded.wants_ack is True
    assert decoded.ack == token
    assert type(decoded.ack) is type(token)
    assert [row[3] for row in decoded.rows] == ["a", "b"]
    assert decoded.rejections == []


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("x" * 65, "ack token is 65 bytes, more than 64"),
        (b"\x00" * 65, "ack token is 65 bytes, more than 64"),
        ("é" * 33, "ack token is 66 bytes, more than 64"),  # 33 characters
        (5, "ack token must be str or bin, got int"),
        (True, "ack token must be str or bin, got bool"),
        (1.5, "ack token must be str or bin, got float"),
        (["t"], "ack token must be str or bin, got array"),
        ({"t": 1}, "ack token must be str or bin, got map"),
    ],
)
def test_envelope_with_bad_ack_token_is_rejected_whole(token: Any, reason: str) -> None:
    envelope = {"events": [{"action": "a"}, {"action": "b"}], "ack": token}
    decoded = decode(envelope, keep_raw=True)
    assert decoded.rows == []
    assert decoded.rejections == [Rejection(reason, msgpack.packb(envelope), 2)]
    assert decoded.ack is None
    assert decoded.wants_ack is False


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ({"action": "a"}, "envelope events must be an array, got map"),
        ("events", "envelope events must be an array, got str"),
        (None, "envelope events must be an array, got nil"),
        (3, "envelope events must be an array, got int"),
    ],
)
def test_envelope_events_must_be_an_array(events: Any, reason: str) -> None:
    envelope = {"events": events, "ack": "t"}
    decoded = decode(envelope, keep_raw=True)
    assert decoded.rejections == [Rejection(reason, msgpack.packb(envelope))]
    # The token is usable, so the sender is still told (stored 0, rejected 1).
    assert decoded.wants_ack is True
    assert decoded.ack == "t"


def test_envelope_with_unexpected_keys_is_rejected() -> None:
    envelope = {"events": [{"action": "a"}], "ack": "t", "zeta": 1, "alpha": 2}
    rejection = one_rejection(envelope)
    assert rejection.reason == "unexpected key(s) in batch envelope: ['alpha', 'zeta']"
    assert rejection.events == 1
    assert msgpack.unpackb(rejection.raw) == envelope


def test_envelope_with_non_string_unexpected_key_is_rejected() -> None:
    envelope = {"events": [], 7: "x"}
    assert one_rejection(envelope).reason == "unexpected key(s) in batch envelope: ['7']"


@pytest.mark.parametrize(
    "envelope", [{"events": [{"action": "a"}]}, {"events": [{"action": "a"}], "ack": None}]
)
def test_envelope_without_ack_wants_none(envelope: dict[str, Any]) -> None:
    decoded = decode(envelope)
    assert decoded.wants_ack is False
    assert decoded.ack is None
    assert [row[3] for row in decoded.rows] == ["a"]


def test_envelope_with_invalid_events_rejects_them_one_by_one_and_keeps_the_ack() -> None:
    events = [{"action": "ok"}, {"action": 1}, "junk"]
    decoded = decode({"events": events, "ack": b"tok"}, keep_raw=True)
    assert decoded.wants_ack is True
    assert decoded.ack == b"tok"
    assert [row[3] for row in decoded.rows] == ["ok"]
    assert [(r.reason, r.raw) for r in decoded.rejections] == [
        ("action must be a string, got int", msgpack.packb(events[1])),
        ("event must be a map, got str", msgpack.packb(events[2])),
    ]


def test_empty_envelope_still_wants_its_ack() -> None:
    decoded = decode({"events": [], "ack": "t"})
    assert decoded.wants_ack is True
    assert decoded.rows == []
    assert decoded.rejections == []


def test_envelope_over_max_batch_events_is_one_rejection_and_keeps_the_ack() -> None:
    events = [{"action": "a"}] * 4
    decoded = decode({"events": events, "ack": "t"}, EventLimits(max_batch_events=3))
    assert decoded.wants_ack is True
    assert decoded.rows == []
    assert decoded.rejections == [
        Rejection("batch of 4 events exceeds max_batch_events=3", msgpack.packb(events), 4)
    ]


# --- building blocks -----------------------------------------------------------------------


def test_unpack_datagram_accepts_non_string_map_keys() -> None:
    assert codec.unpack_datagram(msgpack.packb({1: "a", "b": 2})) == {1: "a", "b": 2}


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02"])
def test_unpack_datagram_raises_one_of_the_unpack_errors(data: bytes) -> None:
    with pytest.raises(codec.UNPACK_ERRORS):
        codec.unpack_datagram(data)


def test_stream_unpacker_accepts_non_string_map_keys() -> None:
    unpacker = codec.new_stream_unpacker(1024)
    unpacker.feed(msgpack.packb({1: "a"}) + msgpack.packb([1]))
    assert list(unpacker) == [{1: "a"}, [1]]


def test_repack_of_an_unencodable_object_falls_back_to_repr() -> None:
    assert codec.repack({"a": object}) == repr({"a": object}).encode()


def test_event_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="action is empty"):
        events.normalise({"action": ""}, 0, DEFAULT_LIMITS)
