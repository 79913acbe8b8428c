"""The send loops of `bench.ingest`, one per mode, each on one connected socket.

Not run on its own (`python -m bench.ingest` runs it): `bench.load` runs one loop in each
sender process.

- udp: one pre-encoded frame per datagram;
- tcp-stream: frames written back to back in chunks, never acknowledged;
- tcp-acked: envelopes, at most `window` of them waiting for their ack, then up to
  `ack_timeout` seconds for the acks still missing.

`Pacer` spreads the offered rate over 2 ms slices (no limit at rate 0). Each loop returns a
`SenderResult`: what it sent, what the acks said and how long they took, and any error.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack

from bench.common import RECV_BYTES
from bench.payloads import FramePool

SLICE_SECONDS = 0.002
UNPACED_BURST_FRAMES = 256
TCP_CHUNK_BYTES = 64 * 1024
SEND_GRACE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class SenderPlan:
    mode: str
    port: int
    rate: float
    duration: float
    per_frame: int
    window: int
    ids: bool
    id_prefix: str
    seed: int
    ack_timeout: float


@dataclasses.dataclass
class SenderResult:
    events_sent: int = 0
    frames_sent: int = 0
    send_errors: int = 0
    elapsed: float = 0.0
    events_acked: int = 0
    acks_received: int = 0
    ack_stored: int = 0
    ack_rejected: int = 0
    ack_duplicates: int = 0
    unexpected_replies: int = 0
    batches_unacked: int = 0
    ack_latencies: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


class Pacer:
    """How many events are due by `now` at `rate` events/s (no limit when rate is 0)."""

    def __init__(self, rate: float, start: float) -> None:
        self.rate = rate
        self.start = start

    def due(self, now: float) -> float:
        return math.inf if self.rate <= 0 else self.rate * (now - self.start)

    def pause_if_ahead(self, sent: int, end: float) -> float:
        """Sleep one slice when everything due is sent; return the time."""
        now = time.monotonic()
        if sent >= self.due(now) and now < end:
            time.sleep(min(SLICE_SECONDS, end - now))
            now = time.monotonic()
        return now


def send_udp(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    result = SenderResult()
    start = now = time.monotonic()
    end = start + plan.duration
    pacer = Pacer(plan.rate, start)
    while now < end:
        send_datagrams(sock, pool, result, pacer.due(now))
        now = pacer.pause_if_ahead(result.events_sent, end)
    result.elapsed = time.monotonic() - start
    return result


def send_datagrams(sock: socket.socket, pool: FramePool, result: SenderResult, due: float) -> None:
    for _ in range(UNPACED_BURST_FRAMES):
        if result.events_sent >= due:
            return
        try:
            sock.send(pool.take())
        except OSError:
            result.send_errors += 1
            continue
        result.events_sent += pool.events_per_frame
        result.frames_sent += 1


def send_tcp_stream(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    result = SenderResult()
    start = now = time.monotonic()
    end = start + plan.duration
    pacer = Pacer(plan.rate, start)
    while now < end:
        chunk, frame_ends = fill_chunk(pool, pacer.due(now) - result.events_sent)
        written, problem = write_before(sock, chunk, end + SEND_GRACE_SECONDS)
        frames = bisect.bisect_right(frame_ends, written)
        result.frames_sent += frames
        result.events_sent += frames * pool.events_per_frame
        if problem:
            result.error = problem
            break
        now = pacer.pause_if_ahead(result.events_sent, end)
    result.elapsed = time.monotonic() - start
    return result


def fill_chunk(pool: FramePool, wanted_events: float) -> tuple[bytearray, list[int]]:
    """Frames for one write, and where each of them ends."""
    chunk = bytearray()
    frame_ends: list[int] = []
    queued = 0
    while queued < wanted_events and len(chunk) < TCP_CHUNK_BYTES:
        chunk += pool.take()
        frame_ends.append(len(chunk))
        queued += pool.events_per_frame
    return chunk, frame_ends


def write_before(sock: socket.socket, data: bytearray, deadline: float) -> tuple[int, str | None]:
    """Write `data` to a non-blocking socket; return the bytes written and any problem."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        try:
            written += sock.send(view[written:])
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return written, "write timed out: the daemon stopped reading"
            select.select([], [sock], [], remaining)
        except OSError as exc:
            return written, f"write failed: {exc}"
    return written, None


class AckTracker:
    """Batches waiting for their ack, and what the acks said."""

    def __init__(self, result: SenderResult) -> None:
        self.result = result
        self.unpacker = msgpack.Unpacker()
        self.in_flight: dict[str, tuple[int, float]] = {}
        self.closed = False

    def sent(self, token: str, events: int, sent_at: float) -> None:
        self.in_flight[token] = (events, sent_at)

    def read(self, sock: socket.socket, timeout: float) -> None:
        """Wait up to `timeout` seconds for acks and record every one that arrived."""
        readable, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        if not readable:
            return
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.unpacker.feed(data)
        for reply in self.unpacker:
            self.record(reply)

    def record(self, reply: Any) -> None:
        result = self.result
        token = reply.get("ack") if isinstance(reply, dict) else None
        if not isinstance(token, str) or token not in self.in_flight:
            result.unexpected_replies += 1
            return
        events, sent_at = self.in_flight.pop(token)
        result.ack_latencies.append(time.monotonic() - sent_at)
        result.acks_received += 1
        result.events_acked += events
        result.ack_stored += int(reply.get("stored", 0))
        result.ack_rejected += int(reply.get("rejected", 0))
        result.ack_duplicates += int(reply.get("duplicates", 0))


def send_tcp_acked(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    return AckedSender(plan, pool, sock).run()


class AckedSender:
    """Acked batches on one connection, at most `plan.window` of them unacknowledged."""

    def __init__(self, plan: SenderPlan, pool: FramePool, sock: socket.socket) -> None:
        self.plan = plan
        self.pool = pool
        self.sock = sock
        self.result = SenderResult()
        self.acks = AckTracker(self.result)
        self.end = 0.0

    def run(self) -> SenderResult:
        result, acks = self.result, self.acks
        start = now = time.monotonic()
        self.end = start + self.plan.duration
        pacer = Pacer(self.plan.rate, start)
        while now < self.end and not acks.closed:
            due = pacer.due(now)
            if not self.fill_window(due):
                break
            acks.read(self.sock, self.ack_wait(due))
            now = time.monotonic()
        result.elapsed = time.monotonic() - start
        drain_acks(self.sock, acks, self.plan.ack_timeout)
        result.batches_unacked = len(acks.in_flight)
        if acks.closed and result.error is None:
            result.error = "the daemon closed the connection"
        return result

    def window_full(self) -> bool:
        return len(self.acks.in_flight) >= self.plan.window

    def ack_wait(self, due: float) -> float:
        """How long to wait for acks before trying to send again."""
        if self.window_full():
            return self.end - time.monotonic()
        return SLICE_SECONDS if self.result.events_sent >= due else 0.0

    def fill_window(self, due: float) -> bool:
        """Send batches while the window has room and events are due; False on a problem."""
        result, pool = self.result, self.pool
        while not self.window_full() and result.events_sent < due:
            sent_at = time.monotonic()
            _, problem = write_before(self.sock, pool.take(), self.end + SEND_GRACE_SECONDS)
            if problem:
                result.error = problem
                return False
            self.acks.sent(pool.token, pool.events_per_frame, sent_at)
            result.events_sent += pool.events_per_frame
            result.frames_sent += 1
        return True


def drain_acks(sock: socket.socket, acks: AckTracker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while acks.in_flight and not acks.closed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        acks.read(sock, remaining)


SEND_LOOPS: dict[str, Callable[[SenderPlan, FramePool, socket.socket], SenderResult]] = {
    "udp": send_udp,
    "tcp-stream": send_tcp_stream,
    "tcp-acked": send_tcp_acked,
}
