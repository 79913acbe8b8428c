"""What the UDP and TCP protocols share: turning decoded input into buffered groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collector.buffer import CommitResult, EventBuffer, Group, QuarantineRow
from collector.clock import now_ms
from collector.codec import Decoded, Rejection
from collector.events import ROW_OVERHEAD_BYTES, Row
from collector.settings import EventLimits
from collector.stats import Stats
from collector.text import sanitise


def format_peer(transport_name: str, peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else peer[0]
        return f"{transport_name}:{host}:{peer[1]}"
    return f"{transport_name}:{peer or 'unknown'}"


def objects_in(obj: Any) -> int:
    """How many events a decoded object carries (counted when it is dropped unread)."""
    if type(obj) is dict:
        events = obj.get("events")
        return len(events) if type(events) is list else 1
    if type(obj) is list:
        return len(obj)
    return 1


class Ingest:
    """Admission of decoded input into the buffer, with its counters."""

    def __init__(self, buffer: EventBuffer, stats: Stats, limits: EventLimits) -> None:
        self.buffer = buffer
        self.stats = stats
        self.limits = limits

    def accept_row(self, row: Row, encoded_size: int) -> None:
        """The fast path for the commonest input: one valid event, no ack."""
        self.stats.events_received += 1
        self.buffer.add_row(row, encoded_size + ROW_OVERHEAD_BYTES)

    def accept(
        self,
        decoded: Decoded,
        encoded_size: int,
        source: str | Callable[[], str],
        received_at: int,
        on_commit: Callable[[CommitResult], None] | None = None,
    ) -> None:
        """Buffer the rows and quarantine records of one object of `encoded_size` bytes.

        `source` may be a callable so the hot path builds the peer string only when a
        rejection needs it.
        """
        stats = self.stats
        rejected = 0
        nbytes = encoded_size + ROW_OVERHEAD_BYTES * len(decoded.rows)
        quarantine: list[QuarantineRow] = []
        if decoded.rejections:
            where = source if isinstance(source, str) else source()
            for rejection in decoded.rejections:
                quarantine.append(quarantine_row(rejection, where, received_at))
                rejected += rejection.events
                nbytes += len(rejection.raw)
            stats.events_rejected += rejected
        stats.events_received += len(decoded.rows) + rejected
        if on_commit is None:
            self.buffer.add_rows(decoded.rows, quarantine, nbytes, rejected)
        else:
            group = Group(decoded.rows, quarantine, self.buffer.clock(), nbytes, rejected)
            group.on_commit = on_commit
            self.buffer.add(group)

    def quarantine_undecodable(self, reason: str, raw: bytes, source: str) -> None:
        """Keep input that is not msgpack at all, with its reason."""
        self.stats.decode_errors += 1
        rejection = Rejection(f"not valid msgpack: {sanitise(reason)}", raw, events=0)
        row = quarantine_row(rejection, source, now_ms())
        self.buffer.add_rows([], [row], len(raw), 0)


def quarantine_row(rejection: Rejection, source: str, received_at: int) -> QuarantineRow:
    return (received_at, source, rejection.reason, rejection.raw)
