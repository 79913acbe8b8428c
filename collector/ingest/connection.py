"""One TCP ingest connection without its socket (sans-IO): bytes and events in, actions out.

The transport adapter (ingest/tcp.py) feeds what happens to the socket (`data_received`,
`eof_received`, `connection_lost`, the idle check, the daemon's shutdown) and carries out
the actions each call returns: write bytes, pause or resume reading, close, abort. Actions
that other parts cause later (an ack whose commit is done, room in the buffer) go to the
`deliver` callback the adapter gives.

Backpressure: while the buffer is full the connection stops decoding and pauses reading;
the undecoded bytes wait in its stream decoder (bounded by tcp_max_buffer_bytes) and nothing
is dropped while the connection lives. Bytes read and never decoded are counted, in
`tcp_truncated_bytes` (cut short by the peer) or `tcp_discarded_bytes` (given up on).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from collector.buffer import CommitResult
from collector.clock import now_ms
from collector.codec import UNPACK_ERRORS, Decoded, decode_object
from collector.forward.handshake import Handshake
from collector.forward.request import (
    DecompressionLimitError,
    ForwardError,
    decode_request,
    is_forward_request,
)
from collector.forward.stream import PendingAck, StreamDecoder, holds_undecodable_text
from collector.ingest.core import Ingest
from collector.settings import ForwardSettings, TcpSettings
from collector.text import sanitise

log = structlog.get_logger("collector.tcp")


class State(enum.Enum):
    HANDSHAKE = "handshake"  # a forward shared key is set: the PING comes first
    READING = "reading"
    PAUSED = "paused"  # the buffer is full: reading stops, bytes wait undecoded
    PAUSED_AT_EOF = "paused at eof"  # as PAUSED, and the peer will send nothing more
    DRAINING = "draining"  # no more input: the pending acks go out, then it closes
    LOST = "lost"  # the peer is gone: what it sent is salvaged, no ack can be sent
    CLOSED = "closed"


DECODING = frozenset({State.HANDSHAKE, State.READING, State.PAUSED, State.PAUSED_AT_EOF})


class Signal(enum.Enum):
    PAUSE_READING = "pause reading"
    RESUME_READING = "resume reading"
    CLOSE = "close"  # after what was written is sent


@dataclass(frozen=True, slots=True)
class Write:
    data: bytes


Action = Write | Signal


class IngestConnection:
    def __init__(
        self,
        ingest: Ingest,
        settings: TcpSettings,
        forward: ForwardSettings,
        peer: str,
        deliver: Callable[[list[Action]], None],
    ) -> None:
        self.ingest = ingest
        self.settings = settings
        self.forward = forward
        self.peer = peer
        self.deliver = deliver
        self.stream = StreamDecoder(settings.max_buffer_bytes)
        self.pending: deque[PendingAck] = deque()
        self.handshake: Handshake | None = None
        self.state = State.READING
        self.writable = True  # False once closed, lost, or a write failed
        self.last_activity = 0.0
        self.actions: list[Action] = []

    # What the adapter reports. Each returns the actions to carry out, in order.

    def opened(self, now: float) -> list[Action]:
        self.last_activity = now
        if self.forward.shared_key:
            self.handshake = Handshake(self.forward.shared_key, self.forward.hostname)
            self.state = State.HANDSHAKE
            self._write(msgpack.packb(self.handshake.helo()))
        return self._flush()

    def data_received(self, data: bytes, now: float) -> list[Action]:
        if self.state not in DECODING:
            self.ingest.stats.tcp_discarded_bytes += len(data)
            return []
        self.last_activity = now
        if self._feed(data):
            self._decode()
        return self._flush()

    def eof_received(self) -> list[Action]:
        if self.state is State.PAUSED:
            self.state = State.PAUSED_AT_EOF  # _resume() finishes the input
        elif self._reading():
            self._feed(b"", final=True)
            if self._decode():  # paused by a full buffer
                self.state = State.PAUSED_AT_EOF
            elif self._reading():  # not closed on bad input
                self._finish_input()
        return self._flush()

    def _reading(self) -> bool:
        return self.state in (State.HANDSHAKE, State.READING)

    def write_failed(self) -> None:
        """The transport is closing (a write failed): no ack can be sent any more."""
        self.writable = False

    def connection_lost(self) -> None:
        """The peer is gone: what it sent and asks for no ack is kept while the buffer has
        room (an object that wants an ack is dropped: its sender resends it); the rest is
        counted."""
        self.writable = False
        self.ingest.buffer.forget(self)
        if self.state in DECODING:
            self.state = State.LOST
            self._feed(b"", final=True)
            if self._decode():
                self._discard_undecoded("the buffer is full and the connection is lost")
            else:
                self._count_trailing_bytes()
        self.state = State.CLOSED
        self.actions.clear()

    def idle_check(self, now: float) -> tuple[list[Action], float | None]:
        """Close the connection when it has been idle for idle_timeout; else the seconds
        until the next check (None: no more checks)."""
        timeout = self.settings.idle_timeout
        idle_for = now - self.last_activity
        if self.state is State.CLOSED:
            return [], None
        if idle_for < timeout or self.pending or self.state in (State.PAUSED, State.PAUSED_AT_EOF):
            return [], max(timeout - idle_for, 0.1)
        self.ingest.stats.tcp_idle_closed += 1
        log.info("closing idle TCP connection", peer=self.peer, idle_s=round(idle_for, 1))
        self._discard_undecoded("idle close")
        self._close()
        return self._flush(), None

    def shutdown(self) -> list[Action]:
        """Daemon stopping: read no more, keep what is complete, ack it after the flush.

        Unlike a lost connection this decodes past a full buffer (the acks can still be
        sent), but reading stops first, so it goes past the limit by at most what already
        waits in the decoder: tcp_max_buffer_bytes per connection (plus what its gzip
        requests inflate to).
        """
        if self.state not in DECODING:
            return []
        self.actions.append(Signal.PAUSE_READING)
        self.ingest.buffer.forget(self)
        self._finish_input()
        return self._flush()

    # Decoding and backpressure.

    def _feed(self, data: bytes, *, final: bool = False) -> bool:
        try:
            return self.stream.feed(data, final=final)
        except msgpack.BufferFull:
            limit = self.settings.max_buffer_bytes
            self._fail(f"an object is larger than tcp_max_buffer_bytes={limit}")
            return False

    def _decode(self, *, force: bool = False) -> bool:
        """Decode what is complete; True when stopped by a full buffer (then paused, unless
        the peer is gone). `force` ignores the buffer's limits, never a failure: nothing
        after a refused object is decoded."""
        buffer = self.ingest.buffer
        while self.state in DECODING or self.state is State.LOST:
            if not force and buffer.full():
                if self.state is not State.LOST:
                    self._pause()
                return True
            try:
                decoded = self.stream.next_object()
            except UNPACK_ERRORS as exc:
                self._fail(f"not valid msgpack: {str(exc) or type(exc).__name__}")
                return False
            if decoded is None:
                return False
            self._handle(*decoded)
        return False

    def _handle(self, obj: Any, size: int, offset: int) -> None:
        ingest = self.ingest
        ingest.stats.tcp_objects_received += 1
        if obj is None:
            ingest.stats.tcp_keepalives += 1
            return
        if self.state is State.HANDSHAKE:
            self._answer_handshake(obj)
            return
        received_at = now_ms()
        if is_forward_request(obj):
            self._handle_forward(obj, size, offset, received_at)
            return
        if self.stream.lenient and holds_undecodable_text(obj):
            # What a native connection's strict decoder would have refused.
            self._fail("not valid msgpack: text is not UTF-8", offset)
            return
        decoded = decode_object(obj, None, received_at, ingest.limits)
        if not self._unackable(decoded):
            self._accept(decoded, size, received_at)

    def _handle_forward(self, request: list[Any], size: int, offset: int, received_at: int) -> None:
        stats = self.ingest.stats
        try:
            result = decode_request(request, received_at, self.ingest.limits, self.forward)
        except ForwardError as exc:
            stats.forward_requests_refused += 1
            if isinstance(exc, DecompressionLimitError):
                stats.forward_decompression_refused += 1
            self._fail(f"forward request refused: {exc}", offset)
            return
        if self._unackable(result.decoded):
            return
        stats.forward_requests += 1
        stats.forward_events += result.events
        self._accept(result.decoded, size + result.inflated_bytes, received_at, forward=True)

    def _unackable(self, decoded: Decoded) -> bool:
        """Whether to drop an object that wants an ack a connection that can no longer
        write (lost, or a write failed) cannot carry: the sender resends it, so stored it
        would be stored twice."""
        if not decoded.wants_ack or self.writable:
            return False
        self.ingest.stats.tcp_unackable_dropped += 1
        return True

    def _accept(
        self, decoded: Decoded, size: int, received_at: int, *, forward: bool = False
    ) -> None:
        if not decoded.wants_ack:
            self.ingest.accept(decoded, size, self.peer, received_at)
            return
        pending = PendingAck(decoded.ack, forward)
        self.pending.append(pending)
        self.ingest.accept(
            decoded, size, self.peer, received_at, lambda result: self._acked(pending, result)
        )

    def _answer_handshake(self, message: Any) -> None:
        assert self.handshake is not None
        pong, refused = self.handshake.answer(message)
        self._write(msgpack.packb(pong))
        stats = self.ingest.stats
        if refused is None:
            stats.forward_handshakes += 1
            self.handshake = None
            self.state = State.READING
            return
        stats.forward_handshakes_refused += 1
        log.warning("forward handshake refused", peer=self.peer, reason=sanitise(refused))
        self._stop_reading()
        self._discard_undecoded("the forward handshake was refused")
        self._close_when_acked()

    def _pause(self) -> None:
        if self.state not in (State.READING, State.HANDSHAKE):
            return
        self.state = State.PAUSED
        self.ingest.stats.tcp_pauses += 1
        self.actions.append(Signal.PAUSE_READING)
        self.ingest.buffer.wait_for_room(self, self._resume)

    def _resume(self) -> None:
        """The buffer has room again (called by the buffer)."""
        at_eof = self.state is State.PAUSED_AT_EOF
        if not at_eof and self.state is not State.PAUSED:
            return
        self.state = State.READING
        if self._decode():
            if at_eof:
                self.state = State.PAUSED_AT_EOF
        elif self.state is State.READING:
            if at_eof:
                self._finish_input()
            else:
                self.actions.append(Signal.RESUME_READING)
        self.deliver(self._flush())

    def _finish_input(self) -> None:
        """The peer will send nothing more: decode what is complete, count the rest."""
        self._feed(b"", final=True)
        self._decode(force=True)
        if self.state in DECODING:
            self._count_trailing_bytes()
            self.state = State.DRAINING
        self._close_when_acked()

    def _count_trailing_bytes(self) -> None:
        trailing = self.stream.discard()
        if trailing > 0:
            self.ingest.stats.tcp_truncated_bytes += trailing
            log.info("discarded an incomplete object at close", peer=self.peer, bytes=trailing)

    def _discard_undecoded(self, why: str) -> None:
        discarded = self.stream.discard()
        if discarded > 0:
            self.ingest.stats.tcp_discarded_bytes += discarded
            log.info("discarded undecoded bytes", peer=self.peer, bytes=discarded, why=why)

    def _fail(self, reason: str, offset: int | None = None) -> None:
        """Close on bad input; `offset` is where the offending object starts."""
        stats = self.ingest.stats
        stats.decode_errors += 1
        stats.tcp_connections_closed_on_error += 1
        log.warning(
            "closing TCP connection on bad input",
            peer=self.peer,
            reason=sanitise(reason),
            offset=self.stream.decoded if offset is None else offset,
        )
        self._stop_reading()
        self._discard_undecoded("bad input")
        self._close_when_acked()

    def _stop_reading(self) -> None:
        """Nothing after this point of the input is decoded."""
        if self.state is State.LOST:
            self.state = State.CLOSED
            return
        self.state = State.DRAINING
        self.actions.append(Signal.PAUSE_READING)

    # Acknowledgements and closing.

    def _acked(self, pending: PendingAck, result: CommitResult) -> None:
        """A commit is done (called by the writer): send the acks that are due, in order."""
        pending.result = result
        queue = self.pending
        while queue and (done_result := queue[0].result) is not None:
            done = queue.popleft()
            if self.writable:
                self._write(done.reply(done_result))
                self.ingest.stats.acks_sent += 1
        if self.state is State.DRAINING:
            self._close_when_acked()
        self.deliver(self._flush())

    def _close_when_acked(self) -> None:
        if not self.pending and self.state is State.DRAINING:
            self._close()

    def _close(self) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.writable = False
            self.actions.append(Signal.CLOSE)

    def _write(self, data: bytes) -> None:
        if self.writable:
            self.actions.append(Write(data))

    def _flush(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions
