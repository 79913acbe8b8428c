"""The shared stats object: plain integer counters and a latency histogram.

Counters are slotted attributes so the hot path pays one attribute increment, nothing more.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from typing import Any


class LatencyHistogram:
    """Receive-to-commit latency in log-spaced buckets (about 10% wide), 10 us to ~2 h."""

    FIRST = 1e-5
    GROWTH = 1.1

    def __init__(self) -> None:
        count = int(math.log(7200 / self.FIRST, self.GROWTH)) + 2
        self.bounds = [self.FIRST * self.GROWTH**i for i in range(count)]
        self.counts = [0] * (count + 1)
        self.total = 0
        self.max = 0.0

    def record(self, seconds: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += weight
        self.total += weight
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (0 when empty)."""
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                if index >= len(self.bounds):
                    return self.max
                return min(self.bounds[index], self.max)
        return self.max


@dataclasses.dataclass(slots=True)
class Stats:
    """Every counter of the daemon, shared by ingest, buffer and writer."""

    datagrams_received: int = 0
    datagrams_dropped: int = 0
    tcp_objects_received: int = 0
    events_received: int = 0
    events_stored: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    events_dropped: int = 0
    quarantined: int = 0
    decode_errors: int = 0
    tcp_truncated_bytes: int = 0
    tcp_discarded_bytes: int = 0
    tcp_unackable_dropped: int = 0
    tcp_connections_open: int = 0
    tcp_connections_total: int = 0
    tcp_connections_refused: int = 0
    tcp_connections_closed_on_error: int = 0
    tcp_idle_closed: int = 0
    tcp_pauses: int = 0
    acks_sent: int = 0
    tcp_keepalives: int = 0
    forward_requests: int = 0
    forward_events: int = 0
    forward_requests_refused: int = 0
    forward_decompression_refused: int = 0
    forward_handshakes: int = 0
    forward_handshakes_refused: int = 0
    udp_heartbeats: int = 0
    batches_committed: int = 0
    commit_errors: int = 0
    buffer_events: int = 0
    buffer_bytes: int = 0
    buffer_events_peak: int = 0
    buffer_bytes_peak: int = 0
    latency: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    started: float = dataclasses.field(default_factory=time.time)

    def buffer_level(self, events: int, nbytes: int) -> None:
        """The buffer's occupancy now (it reports each change), and the peaks."""
        self.buffer_events = events
        self.buffer_bytes = nbytes
        if events > self.buffer_events_peak:
            self.buffer_events_peak = events
        if nbytes > self.buffer_bytes_peak:
            self.buffer_bytes_peak = nbytes

    def snapshot(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("latency", "started")
        }
        values["latency_p50_ms"] = round(self.latency.quantile(0.5) * 1000, 3)
        values["latency_p99_ms"] = round(self.latency.quantile(0.99) * 1000, 3)
        values["latency_max_ms"] = round(self.latency.max * 1000, 3)
        values["uptime_s"] = round(time.time() - self.started, 1)
        return values
