"""TCP ingest: a stream of back-to-back msgpack objects, acks for batches that ask.

Each object is a native event or batch, a Fluentd forward request (collector.forward), or
a nil keepalive. With a forward shared key every connection starts with the handshake.

Backpressure: while the buffer is full a connection stops decoding and pauses reading;
the undecoded bytes wait in its unpacker (bounded by tcp_max_buffer_bytes) and nothing
is dropped while the connection lives. Bytes read and never decoded are counted, in
`tcp_truncated_bytes` (cut short by the peer) or `tcp_discarded_bytes` (given up on).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import structlog

from collector.buffer import CommitResult
from collector.codec import UNPACK_ERRORS, Decoded, decode_object
from collector.forward.handshake import Handshake
from collector.forward.request import (
    DecompressionLimitError,
    ForwardError,
    decode_request,
    is_forward_request,
)
from collector.forward.settings import ForwardSettings
from collector.forward.stream import PendingAck, StreamDecoder, holds_undecodable_text
from collector.ingest.core import Ingest, format_peer, now_ms, sanitise

log = structlog.get_logger("collector.tcp")


@dataclass
class TcpSettings:
    max_buffer_bytes: int
    max_connections: int
    idle_timeout: float


@dataclass
class TcpIngest:
    """State shared by all TCP ingest connections."""

    ingest: Ingest
    settings: TcpSettings
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    connections: set[TcpIngestProtocol] = field(default_factory=set)
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def protocol(self) -> TcpIngestProtocol:
        return TcpIngestProtocol(self)

    def shutdown_connections(self) -> None:
        for connection in list(self.connections):
            connection.shutdown()

    def close_connections(self) -> None:
        for connection in list(self.connections):
            connection.close_now()


class TcpIngestProtocol(asyncio.Protocol):
    def __init__(self, server: TcpIngest) -> None:
        self.server = server
        self.ingest = server.ingest
        self.transport: asyncio.Transport | None = None
        self.source = "tcp:unknown"
        self.stream = StreamDecoder(server.settings.max_buffer_bytes)
        self.handshake: Handshake | None = None
        self.pending: deque[PendingAck] = deque()
        self.paused = False
        self.stopping = False  # no more input is read or decoded
        self.lost = False  # the peer is gone: no ack can be sent any more
        self.eof = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.source = format_peer("tcp", transport.get_extra_info("peername"))
        stats = self.ingest.stats
        if len(self.server.connections) >= self.server.settings.max_connections:
            stats.tcp_connections_refused += 1
            log.warning("refusing TCP connection: too many open", peer=self.source)
            self.stopping = True
            transport.abort()
            return
        self.server.connections.add(self)
        self.server.all_closed.clear()
        stats.tcp_connections_total += 1
        stats.tcp_connections_open += 1
        self.last_activity = asyncio.get_running_loop().time()
        self._arm_idle_timer(self.server.settings.idle_timeout)
        forward = self.server.forward
        if forward.shared_key:
            self.handshake = Handshake(forward.shared_key, forward.hostname)
            transport.write(msgpack.packb(self.handshake.helo()))

    def data_received(self, data: bytes) -> None:
        if self.stopping:
            self.ingest.stats.tcp_discarded_bytes += len(data)
            return
        self.last_activity = asyncio.get_running_loop().time()
        if self._feed(data):
            self._process()

    def _feed(self, data: bytes, *, final: bool = False) -> bool:
        try:
            return self.stream.feed(data, final=final)
        except msgpack.BufferFull:
            limit = self.server.settings.max_buffer_bytes
            self._fail(f"an object is larger than tcp_max_buffer_bytes={limit}")
            return False

    def eof_received(self) -> bool:
        self.eof = True
        if not self.paused and not self.stopping:
            # Within the buffer's limits; once paused, _resume() finishes the input.
            self._feed(b"", final=True)
            self._process()
            if not self.paused and not self.stopping:
                self._finish_input()
        # Keep the socket open for writing until the pending acks are sent.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in self.server.connections:
            return
        self.server.connections.discard(self)
        if not self.server.connections:
            self.server.all_closed.set()
        self.ingest.stats.tcp_connections_open -= 1
        self.ingest.buffer.forget(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if not self.stopping:
            self._salvage()
        self.stopping = True

    def _salvage(self) -> None:
        """The peer is gone: what was received and asks for no ack is kept while the
        buffer has room (see _unackable() for the rest); what is left is counted."""
        self.lost = True
        self.paused = False
        self._feed(b"", final=True)
        if self._process():
            self._discard_undecoded("the buffer is full and the connection is lost")
        else:
            self._count_trailing_bytes()

    # decoding and backpressure

    def _process(self, *, force: bool = False) -> bool:
        """Decode what is complete; True when stopped by a full buffer (then paused,
        unless the connection is lost). `force` ignores the buffer's limits, never a
        failure: nothing after a refused object is decoded."""
        buffer = self.ingest.buffer
        while not self.stopping:
            if not force and buffer.full():
                if not self.lost:
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
        if self.handshake is not None:
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
            result = decode_request(request, received_at, self.ingest.limits, self.server.forward)
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
        """Whether to drop an object that wants an ack a closing connection (lost, or a
        write failed) can no longer carry: the sender resends it, so stored it would be
        stored twice."""
        assert self.transport is not None
        if not (decoded.wants_ack and self.transport.is_closing()):
            return False
        self.ingest.stats.tcp_unackable_dropped += 1
        return True

    def _accept(
        self, decoded: Decoded, size: int, received_at: int, *, forward: bool = False
    ) -> None:
        if not decoded.wants_ack:
            self.ingest.accept(decoded, size, self.source, received_at)
            return
        pending = PendingAck(decoded.ack, forward)
        self.pending.append(pending)
        self.ingest.accept(
            decoded, size, self.source, received_at, lambda result: self._acked(pending, result)
        )

    def _answer_handshake(self, message: Any) -> None:
        assert self.handshake is not None and self.transport is not None
        pong, refused = self.handshake.answer(message)
        if not self.transport.is_closing():
            self.transport.write(msgpack.packb(pong))
        stats = self.ingest.stats
        if refused is None:
            stats.forward_handshakes += 1
            self.handshake = None
            return
        stats.forward_handshakes_refused += 1
        log.warning("forward handshake refused", peer=self.source, reason=sanitise(refused))
        self._stop_reading()
        self._discard_undecoded("the forward handshake was refused")
        self._close_when_acked()

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.ingest.stats.tcp_pauses += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.ingest.buffer.wait_for_room(self, self._resume)

    def _resume(self) -> None:
        self.paused = False
        self._process()
        if self.paused or self.stopping or self.transport is None:
            return
        if self.eof:
            self._finish_input()
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def _finish_input(self) -> None:
        """The peer will send nothing more: decode what is complete, count the rest."""
        self._feed(b"", final=True)
        self._process(force=True)
        self._count_trailing_bytes()
        self.stopping = True
        self._close_when_acked()

    def _count_trailing_bytes(self) -> None:
        if self.stopping:
            return
        trailing = self.stream.discard()
        if trailing > 0:
            self.ingest.stats.tcp_truncated_bytes += trailing
            log.info("discarded an incomplete object at close", peer=self.source, bytes=trailing)

    def _discard_undecoded(self, why: str) -> None:
        discarded = self.stream.discard()
        if discarded > 0:
            self.ingest.stats.tcp_discarded_bytes += discarded
            log.info("discarded undecoded bytes", peer=self.source, bytes=discarded, why=why)

    def _fail(self, reason: str, offset: int | None = None) -> None:
        """Close on bad input; `offset` is where the offending object starts."""
        stats = self.ingest.stats
        stats.decode_errors += 1
        stats.tcp_connections_closed_on_error += 1
        log.warning(
            "closing TCP connection on bad input",
            peer=self.source,
            reason=sanitise(reason),
            offset=self.stream.decoded if offset is None else offset,
        )
        self._stop_reading()
        self._discard_undecoded("bad input")
        self._close_when_acked()

    def _stop_reading(self) -> None:
        self.stopping = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    # acknowledgements

    def _acked(self, pending: PendingAck, result: CommitResult) -> None:
        pending.result = result
        queue = self.pending
        transport = self.transport
        while queue and queue[0].result is not None:
            done = queue.popleft()
            if transport is None or transport.is_closing():
                continue
            assert done.result is not None
            transport.write(done.reply(done.result))
            self.ingest.stats.acks_sent += 1
        if self.stopping:
            self._close_when_acked()

    def _close_when_acked(self) -> None:
        if not self.pending and self.transport is not None:
            self.transport.close()

    # idle timeout and shutdown

    def _arm_idle_timer(self, delay: float) -> None:
        if delay > 0:
            loop = asyncio.get_running_loop()
            self.idle_timer = loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.server.settings.idle_timeout
        idle_for = asyncio.get_running_loop().time() - self.last_activity
        if idle_for < timeout or self.pending or self.paused:
            self._arm_idle_timer(max(timeout - idle_for, 0.1))
            return
        self.ingest.stats.tcp_idle_closed += 1
        log.info("closing idle TCP connection", peer=self.source, idle_s=round(idle_for, 1))
        self.stopping = True
        self._discard_undecoded("idle close")
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Daemon stopping: read no more, keep what is complete, ack it after the flush.

        Unlike a lost connection this decodes past a full buffer (the acks can still be
        sent), but reading stops first, so it goes past the limit by at most what already
        waits in the unpacker: tcp_max_buffer_bytes per connection (plus what its gzip
        requests inflate to).
        """
        if self.stopping:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.ingest.buffer.forget(self)
        self.paused = False
        self._finish_input()

    def close_now(self) -> None:
        if self.transport is not None:
            self.transport.close()
