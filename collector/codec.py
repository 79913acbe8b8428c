"""msgpack objects -> event rows and rejections: datagrams, batches, ack envelopes.

Pure: no sockets, no clock. Each event is validated by `collector.events.normalise`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from collector.events import EventError, Row, normalise, type_name
from collector.settings import EventLimits

MAX_ACK_TOKEN_BYTES = 64
UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class Rejection(NamedTuple):
    """Input that is not stored as an event: why, and the bytes to keep in quarantine."""

    reason: str
    raw: bytes
    events: int = 1


@dataclass(slots=True)
class Decoded:
    """What one msgpack object turned into."""

    rows: list[Row]
    rejections: list[Rejection]
    ack: bytes | str | None = None
    wants_ack: bool = False

    @property
    def rejected_events(self) -> int:
        return sum(r.events for r in self.rejections)


def unpack_datagram(data: bytes) -> Any:
    """Decode exactly one msgpack object; raises one of UNPACK_ERRORS otherwise."""
    return msgpack.unpackb(data, strict_map_key=False)


def new_stream_unpacker(max_buffer_size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(max_buffer_size=max_buffer_size, strict_map_key=False)


def repack(obj: Any) -> bytes:
    """Re-encode a decoded object for quarantine (the original bytes of one element of a
    batch are not kept separately)."""
    try:
        return bytes(msgpack.packb(obj))
    except (TypeError, ValueError, OverflowError):
        return repr(obj).encode("utf-8", "backslashreplace")


def decode_object(obj: Any, raw: bytes | None, received_at: int, limits: EventLimits) -> Decoded:
    """Turn one top-level msgpack object (event, batch or ack envelope) into rows.

    `raw` is the object's own encoding when the caller has it (a UDP datagram); it is kept
    as is when the whole object is rejected.
    """
    if type(obj) is dict and "events" in obj:
        return decode_envelope(obj, raw, received_at, limits)
    decoded = Decoded([], [])
    if type(obj) is dict:
        add_event(decoded, obj, raw, received_at, limits)
    elif type(obj) is list:
        add_batch(decoded, obj, raw, received_at, limits)
    else:
        reason = f"expected an event map or an array of event maps, got {type_name(obj)}"
        decoded.rejections.append(Rejection(reason, raw if raw is not None else repack(obj)))
    return decoded


def decode_envelope(
    envelope: dict[Any, Any], raw: bytes | None, received_at: int, limits: EventLimits
) -> Decoded:
    """`{"events": [...], "ack": TOKEN}`: a batch that asks to be acknowledged.

    A malformed envelope is quarantined whole; it is still acknowledged (as rejected)
    when its token is usable, since that is the only way to tell the sender.
    """
    decoded = Decoded([], [])
    token = envelope.get("ack")
    events = envelope["events"]
    count = len(events) if type(events) is list else 1
    problem = ack_token_problem(token)
    if problem is None:
        decoded.ack = token
        decoded.wants_ack = token is not None
        problem = envelope_problem(envelope)
    if problem:
        encoded = raw if raw is not None else repack(envelope)
        decoded.rejections.append(Rejection(problem, encoded, count))
        return decoded
    add_batch(decoded, events, None, received_at, limits)
    return decoded


def envelope_problem(envelope: dict[Any, Any]) -> str | None:
    extra_keys = set(envelope) - {"events", "ack"}
    if extra_keys:
        return f"unexpected key(s) in batch envelope: {sorted(map(str, extra_keys))}"
    if type(envelope["events"]) is not list:
        return f"envelope events must be an array, got {type_name(envelope['events'])}"
    return None


def ack_token_problem(token: Any) -> str | None:
    if token is None:
        return None
    if type(token) is bytes:
        size = len(token)
    elif type(token) is str:
        size = len(token.encode("utf-8"))
    else:
        return f"ack token must be str or bin, got {type_name(token)}"
    if size > MAX_ACK_TOKEN_BYTES:
        return f"ack token is {size} bytes, more than {MAX_ACK_TOKEN_BYTES}"
    return None


def add_batch(
    decoded: Decoded, batch: list[Any], raw: bytes | None, received_at: int, limits: EventLimits
) -> None:
    if len(batch) > limits.max_batch_events:
        reason = f"batch of {len(batch)} events exceeds max_batch_events={limits.max_batch_events}"
        encoded = raw if raw is not None else repack(batch)
        decoded.rejections.append(Rejection(reason, encoded, len(batch)))
        return
    append = decoded.rows.append
    for event in batch:
        try:
            append(normalise(event, received_at, limits))
        except Exception:  # rare: validate again to record why
            add_event(decoded, event, None, received_at, limits)


def add_event(
    decoded: Decoded, event: Any, raw: bytes | None, received_at: int, limits: EventLimits
) -> None:
    try:
        row = normalise(event, received_at, limits)
    except EventError as exc:
        reason = str(exc)
    except Exception as exc:  # a validation bug must cost one event, never the batch
        reason = f"cannot validate event: {type(exc).__name__}: {exc}"
    else:
        decoded.rows.append(row)
        return
    encoded = raw if raw is not None else repack(event)
    decoded.rejections.append(Rejection(reason, encoded))
