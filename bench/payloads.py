"""The events that `bench.ingest` sends, encoded before its timed loop.

Not run on its own (`python -m bench.ingest` runs it). `make_event` makes one realistic
event: an action from a small set, an int or string user id, a value and an `extra` map of
three keys. A `FramePool` holds pre-encoded msgpack objects (a bare event, an array of
events, or an acked envelope) and patches a fresh id into each event and a fresh ack token
into each envelope as it hands them out, so a sender never encodes while it is timed.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack

from bench.common import ACTIONS

PAGES = ("/", "/search", "/product", "/cart", "/checkout", "/account", "/help")
USER_ID_RANGE = 10_000_000

COUNTER_FORMAT = b"%016x"
COUNTER_DIGITS = len(COUNTER_FORMAT % 0)
POOL_EVENTS = 65_536
POOL_MAX_FRAMES = 4096
POOL_MIN_FRAMES = 8


def make_event(rng: random.Random, action: str | None = None, msg_id: str | None = None) -> Any:
    user = rng.randrange(USER_ID_RANGE)
    event: dict[str, Any] = {
        "action": action or rng.choice(ACTIONS),
        "user_id": user if rng.random() < 0.5 else f"user-{user}",
        "value": round(rng.uniform(0, 500), 2) if rng.random() < 0.7 else rng.randrange(100),
        "extra": {
            "page": rng.choice(PAGES),
            "ms": rng.randrange(5, 5000),
            "variant": rng.choice("AB"),
        },
    }
    if msg_id is not None:
        event["id"] = msg_id
    return event


@dataclasses.dataclass(slots=True)
class Frame:
    """One pre-encoded msgpack object and where its id and ack-token counters go."""

    data: bytearray
    id_offsets: list[int]
    token_offset: int | None = None


def encode_frame(events: list[bytes], has_ids: bool, envelope: bool) -> Frame:
    """Events encoded with their id last, so each id's counter is the event's last bytes."""
    packer = msgpack.Packer()
    data = bytearray()
    if envelope:
        data += packer.pack_map_header(2) + packer.pack("events")
    if envelope or len(events) > 1:
        data += packer.pack_array_header(len(events))
    id_offsets = []
    for encoded in events:
        data += encoded
        if has_ids:
            id_offsets.append(len(data) - COUNTER_DIGITS)
    if not envelope:
        return Frame(data, id_offsets)
    data += packer.pack("ack") + packer.pack("0" * COUNTER_DIGITS)
    return Frame(data, id_offsets, len(data) - COUNTER_DIGITS)


class FramePool:
    """Pre-encoded frames used in turn; `take` patches fresh ids and token in place."""

    def __init__(self, frames: list[Frame], events_per_frame: int) -> None:
        self.frames = frames
        self.events_per_frame = events_per_frame
        self.index = 0
        self.next_id = 0
        self.next_token = 0
        self.token = ""

    def take(self) -> bytearray:
        """The next frame; valid until the next call, as the same buffers are reused."""
        frame = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        data = frame.data
        counter = self.next_id
        for offset in frame.id_offsets:
            data[offset : offset + COUNTER_DIGITS] = COUNTER_FORMAT % counter
            counter += 1
        self.next_id = counter
        if frame.token_offset is not None:
            token = COUNTER_FORMAT % self.next_token
            self.next_token += 1
            data[frame.token_offset :] = token
            self.token = token.decode()
        return data


def pool_size(events_per_frame: int) -> int:
    return max(POOL_MIN_FRAMES, min(POOL_MAX_FRAMES, POOL_EVENTS // events_per_frame))
