"""One event: its row, its limits and its validation. Pure: no sockets, no clock.

The hot path is `normalise`: it runs once per event, so it avoids work the common event
does not need (no copies of the map, JSON only when `extra` is present, slow checks only
when a cheap bound says they could fail).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from collector.settings import EventLimits

# ts, received_at, user_id, action, value, extra (JSON text), msg_id
Row = tuple[int, int, str | None, str, Any, str | None, str | None]

MAX_ACTION_CHARS = 200
MAX_USER_ID_CHARS = 256
MAX_MSG_ID_CHARS = 100
# Valid event times: the Unix epoch to the end of year 9999, in milliseconds.
MAX_TS_MS = 253_402_300_799_999
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Rough memory of a buffered row beyond its encoded size, for the buffer's byte limit.
ROW_OVERHEAD_BYTES = 200


def make_json_encoder() -> Callable[[Any], str]:
    """Compact JSON, UTF-8 kept as is, NaN refused.

    json.dumps() with options builds a new encoder per call, several times the cost of
    the encoding itself for a small map; the C encoder is built once here instead.
    """
    options = {"ensure_ascii": False, "allow_nan": False, "separators": (",", ":")}
    fallback = json.JSONEncoder(**options, default=json_default).encode  # type: ignore[arg-type]
    try:
        make = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, json_default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
    except (AttributeError, TypeError):
        return fallback
    return lambda value: "".join(make(value, 0))


KNOWN_KEYS = frozenset({"action", "user_id", "value", "extra", "ts", "id", "sent_at"})


class EventError(ValueError):
    """One event is invalid; the message is the quarantine reason."""


def normalise(event: Any, received_at: int, limits: EventLimits) -> Row:
    """Validate one event map and return its row; raise EventError with the reason.

    Written for speed: the common case is a few type checks inline; every rejection is
    explained by the check_* function of its field.
    """
    if type(event) is not dict:
        raise EventError(f"event must be a map, got {type_name(event)}")
    if not KNOWN_KEYS.issuperset(event):
        event = fold_unknown_keys(event)
    get = event.get
    action = get("action")
    if type(action) is not str or not 0 < len(action) <= MAX_ACTION_CHARS:
        check_action(action)
    size = len(action)
    user_id = get("user_id")
    if user_id is not None:
        if type(user_id) is int:
            user_id = str(user_id)
        elif type(user_id) is not str or not 0 < len(user_id) <= MAX_USER_ID_CHARS:
            check_user_id(user_id)
        size += len(user_id)
    value = get("value")
    if type(value) is str:
        size += len(value)
    elif value is not None:
        value = check_value(value)
    msg_id = get("id")
    if msg_id is not None and (type(msg_id) is not str or not 0 < len(msg_id) <= MAX_MSG_ID_CHARS):
        check_msg_id(msg_id)
    ts = get("ts")
    sent_at = get("sent_at")
    if ts is not None or sent_at is not None:
        received_ts = event_time(ts, sent_at, received_at)
    else:
        received_ts = received_at
    extra = get("extra")
    if extra is not None:
        extra = encode_extra(extra, limits)
        size += len(extra)
    # Characters bound bytes from below and 4x from above: encode only when it matters.
    if size * 4 > limits.max_event_bytes:
        check_event_size(action, user_id, value, extra, limits.max_event_bytes)
    return (received_ts, received_at, user_id, action, value, extra, msg_id)


def fold_unknown_keys(event: dict[Any, Any]) -> dict[Any, Any]:
    """Unknown top-level keys are kept inside `extra`."""
    unknown = {k: v for k, v in event.items() if k not in KNOWN_KEYS}
    for key in unknown:
        if type(key) is not str:
            raise EventError(f"event keys must be strings, got {type_name(key)} key")
    extra = event.get("extra")
    if extra is None:
        extra = {}
    elif type(extra) is not dict:
        raise EventError(f"extra must be a map, got {type_name(extra)}")
    clash = sorted(unknown.keys() & extra.keys())
    if clash:
        raise EventError(f"key {clash[0]!r} is given both at the top level and in extra")
    folded = {k: v for k, v in event.items() if k in KNOWN_KEYS}
    folded["extra"] = {**extra, **unknown}
    return folded


def check_text(value: Any, name: str, max_chars: int) -> str | None:
    """Explain why a text field is invalid (nil is allowed here; callers decide)."""
    if value is None:
        return None
    if type(value) is not str:
        raise EventError(f"{name} must be a string, got {type_name(value)}")
    if not value:
        raise EventError(f"{name} is empty")
    if len(value) > max_chars:
        raise EventError(f"{name} is {len(value)} characters, more than {max_chars}")
    return value


def check_action(action: Any) -> str:
    if action is None:
        raise EventError("action is missing")
    return str(check_text(action, "action", MAX_ACTION_CHARS))


def check_user_id(user_id: Any) -> str | None:
    if type(user_id) is int:
        return str(user_id)
    if user_id is not None and type(user_id) is not str:
        raise EventError(f"user_id must be a string or an integer, got {type_name(user_id)}")
    return check_text(user_id, "user_id", MAX_USER_ID_CHARS)


def check_value(value: Any) -> Any:
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise EventError("value is an integer outside the signed 64-bit range")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise EventError("value must be a finite number")
        return value
    raise EventError(f"value must be a string, number, bool or nil, got {type_name(value)}")


def check_msg_id(msg_id: Any) -> str | None:
    return check_text(msg_id, "id", MAX_MSG_ID_CHARS)


def event_time(ts: Any, sent_at: Any, received_at: int) -> int:
    """The stored event time in ms: `ts`, corrected for client clock skew with `sent_at`."""
    if ts is None:
        if sent_at is not None:
            time_to_ms(sent_at, "sent_at")
        return received_at
    ts_ms = time_to_ms(ts, "ts")
    if sent_at is not None:
        ts_ms += received_at - time_to_ms(sent_at, "sent_at")
        if not 0 <= ts_ms <= MAX_TS_MS:
            raise EventError("ts corrected by sent_at falls outside 1970..9999")
    return ts_ms


def time_to_ms(value: Any, name: str) -> int:
    kind = type(value)
    if kind is int:
        ms = value * 1000
    elif kind is float:
        if not math.isfinite(value):
            raise EventError(f"{name} must be a finite number")
        # Checked in seconds first: a huge finite float overflows once multiplied.
        ms = round(value * 1000) if 0 <= value <= MAX_TS_MS / 1000 else -1
    elif kind is msgpack.Timestamp:
        ms = value.seconds * 1000 + value.nanoseconds // 1_000_000
    else:
        raise EventError(
            f"{name} must be a msgpack Timestamp or seconds since the epoch, got {type_name(value)}"
        )
    if not 0 <= ms <= MAX_TS_MS:
        raise EventError(f"{name} {value!r} is outside 1970..9999 (seconds since the epoch)")
    return int(ms)


def encode_extra(extra: Any, limits: EventLimits) -> str:
    if type(extra) is not dict:
        raise EventError(f"extra must be a map, got {type_name(extra)}")
    for key in extra:
        if type(key) is not str:
            raise EventError(f"extra keys must be strings, got {type_name(key)} key")
    try:
        text = to_json(extra)
    except RecursionError:
        raise EventError(f"extra is nested deeper than {limits.max_extra_depth}") from None
    except (TypeError, ValueError) as exc:
        raise EventError(f"extra cannot be stored as JSON: {exc}") from None
    if len(text) * 4 > limits.max_extra_bytes and len(text.encode()) > limits.max_extra_bytes:
        raise EventError(f"extra is larger than max_extra_bytes={limits.max_extra_bytes}")
    # The JSON text bounds the walk: one "{" is the map itself, and each level of
    # nesting needs a bracket. The JSON encoder would turn number keys of nested maps
    # into strings (and could collide them with existing keys), so those are walked.
    maps = text.count("{")
    if maps > 1 or maps + text.count("[") > limits.max_extra_depth:
        depth = checked_depth(extra)
        if depth > limits.max_extra_depth:
            raise EventError(f"extra is nested {depth} deep, more than {limits.max_extra_depth}")
    return text


def json_default(value: Any) -> Any:
    """JSON for the msgpack values JSON lacks: Timestamps become ISO 8601 text."""
    if type(value) is msgpack.Timestamp:
        return value.to_datetime().isoformat().replace("+00:00", "Z")
    if type(value) is bytes:
        raise TypeError("binary values are not supported in extra")
    raise TypeError(f"{type_name(value)} values are not supported in extra")


def checked_depth(value: Any) -> int:
    """Depth of maps and lists (the extra map itself is depth 1); every map key must be
    a string."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterator[Any]
        if type(item) is dict:
            for key in item:
                if type(key) is not str:
                    raise EventError(f"extra keys must be strings, got {type_name(key)} key")
            children = iter(item.values())
        elif type(item) is list:
            children = iter(item)
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_event_size(
    action: str, user_id: str | None, value: Any, extra: str | None, limit: int
) -> None:
    size = len(action.encode()) + len((user_id or "").encode()) + len((extra or "").encode())
    if type(value) is str:
        size += len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise EventError(f"event is {size} bytes, more than max_event_bytes={limit}")


def type_name(value: Any) -> str:
    if value is None:
        return "nil"
    names = {dict: "map", list: "array", str: "str", bytes: "bin", bool: "bool"}
    return names.get(type(value), type(value).__name__)


to_json = make_json_encoder()
