"""One forward entry `[time, record]` -> one event row, or a quarantine record with its reason.

A record is mapped onto a native event map and validated by `collector.events.normalise`,
so forward events obey exactly the limits native events do.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from collector.codec import Decoded, Rejection, repack
from collector.events import EventError, Row, normalise, type_name
from collector.settings import EventLimits, ForwardSettings

EVENT_TIME_EXT = 0
MAX_NANOSECONDS = 999_999_999


def entry_time(value: Any) -> Any:
    """The entry's time as `normalise` takes `ts`; None means "when received".

    Like Fluentd's in_forward, a time of 0 (or nil) stands for the time of arrival.
    """
    kind = type(value)
    if value is None or ((kind is int or kind is float) and value == 0):
        return None
    if kind is int:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise EventError("time must be a finite number")
        return value
    if kind is msgpack.ExtType and value.code == EVENT_TIME_EXT:
        return decode_event_time(value.data)
    if kind is msgpack.Timestamp:
        return value if value.seconds or value.nanoseconds else None
    raise EventError(f"time must be an integer or an EventTime (ext 0), got {time_type(value)}")


def decode_event_time(data: bytes) -> msgpack.Timestamp | None:
    if len(data) != 8:
        raise EventError(f"EventTime must be 8 bytes, got {len(data)}")
    seconds, nanoseconds = struct.unpack(">II", data)
    if nanoseconds > MAX_NANOSECONDS:
        raise EventError(f"EventTime nanoseconds {nanoseconds} exceed {MAX_NANOSECONDS}")
    if seconds == 0:
        return None
    return msgpack.Timestamp(seconds, nanoseconds)


def time_type(value: Any) -> str:
    if type(value) is msgpack.ExtType:
        return f"ext type {value.code} ({len(value.data)} bytes)"
    return type_name(value)


def entry_parts(entry: Any) -> tuple[Any, Any]:
    """Split `[time, record]` or the newer `[[time, metadata], record]`.

    The metadata map is checked and not kept (see docs/fluentd.md).
    """
    if type(entry) is not list or len(entry) != 2:
        raise EventError(f"entry must be an array [time, record], got {describe(entry)}")
    stamp, record = entry
    if type(stamp) is list:
        if len(stamp) != 2 or not (stamp[1] is None or type(stamp[1]) is dict):
            raise EventError("entry time must be a time or an array [time, metadata map]")
        stamp = stamp[0]
    return stamp, record


def describe(value: Any) -> str:
    if type(value) is list:
        return f"array of {len(value)}"
    return type_name(value)


def record_event(tag: str, stamp: Any, record: Any, settings: ForwardSettings) -> dict[str, Any]:
    """The native event map that a forward record stands for."""
    if type(record) is not dict:
        raise EventError(f"record must be a map, got {type_name(record)}")
    extra = dict(record)
    action = extra.pop(settings.action_field, None) if settings.action_field else None
    event: dict[str, Any] = {"action": tag if action is None else action}
    if settings.user_field:
        event["user_id"] = extra.pop(settings.user_field, None)
    if settings.value_field:
        event["value"] = extra.pop(settings.value_field, None)
    if settings.tag_key:
        if settings.tag_key in extra:
            raise EventError(
                f"record field {settings.tag_key!r} clashes with the tag's key in extra "
                "(forward_tag_key)"
            )
        extra[settings.tag_key] = tag
    if extra:
        event["extra"] = extra
    ts = entry_time(stamp)
    if ts is not None:
        event["ts"] = ts
    return event


def add_entry(
    decoded: Decoded,
    tag: str,
    entry: Any,
    *,
    received_at: int,
    limits: EventLimits,
    settings: ForwardSettings,
) -> None:
    """Append the entry's row to `decoded`, or its rejection with the reason."""
    try:
        stamp, record = entry_parts(entry)
        row = entry_row(
            tag, stamp, record, received_at=received_at, limits=limits, settings=settings
        )
    except EventError as exc:
        reason = str(exc)
    except Exception as exc:  # a mapping bug must cost one event, never the request
        reason = f"cannot map forward record: {type(exc).__name__}: {exc}"
    else:
        decoded.rows.append(row)
        return
    decoded.rejections.append(Rejection(reason, quarantine_bytes(tag, entry)))


def entry_row(
    tag: str,
    stamp: Any,
    record: Any,
    *,
    received_at: int,
    limits: EventLimits,
    settings: ForwardSettings,
) -> Row:
    try:
        row = normalise(record_event(tag, stamp, record, settings), received_at, limits)
    except EventError:
        # Fluentd sends strings it holds as raw bytes (in_tail's default) as msgpack bin.
        has_binary, depth = binary_and_depth(record)
        if not has_binary:
            raise
        if depth > limits.max_extra_depth:
            # text_of() recurses: only a record that could be stored is worth converting.
            raise EventError(
                f"record is nested {depth} deep, more than max_extra_depth={limits.max_extra_depth}"
            ) from None
        row = normalise(record_event(tag, stamp, text_of(record), settings), received_at, limits)
    check_storable(row)
    return row


def binary_and_depth(value: Any) -> tuple[bool, int]:
    """Whether bin appears anywhere in `value`, and its depth of maps and lists (a map
    is depth 1). Walked without recursion: a record can be nested as deep as msgpack
    allows, deeper than Python's recursion limit."""
    has_binary = False
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is bytes:
            has_binary = True
        elif kind is dict:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for pair in item.items() for child in pair)
        elif kind is list:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return has_binary, deepest


def text_of(value: Any) -> Any:
    """The value with every bin turned into str; bin that is not UTF-8 is refused."""
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise EventError("a binary field is not UTF-8 text") from None
    if type(value) is dict:
        return {text_of(k): text_of(v) for k, v in value.items()}
    if type(value) is list:
        return [text_of(item) for item in value]
    return value


def check_storable(row: Row) -> None:
    """Refuse text that is not valid UTF-8.

    On a forward connection strings are decoded with surrogate escapes (so that a
    PackedForward blob sent as str survives); SQLite cannot store those escapes.
    """
    for text in (row[2], row[3], row[4], row[5]):
        if type(text) is str and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise EventError("text is not valid UTF-8") from None


def quarantine_bytes(tag: str, entry: Any) -> bytes:
    """The rejected event as a Message-mode request `[tag, time, record]`: it can be
    inspected, and re-sent once fixed."""
    if type(entry) is list and len(entry) == 2:
        return repack_exact([tag, *entry])
    return repack_exact([tag, entry])


def repack_exact(obj: Any) -> bytes:
    """Re-encode for quarantine; text that arrived as invalid UTF-8 gets its bytes back."""
    try:
        return bytes(msgpack.packb(obj, unicode_errors="surrogateescape"))
    except (TypeError, ValueError, OverflowError):
        return repack(obj)
