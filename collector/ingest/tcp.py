"""TCP ingest: a stream of back-to-back msgpack objects, acks for batches that ask.

Each object is a native event or batch, a Fluentd forward request (collector.forward), or
a nil keepalive. With a forward shared key every connection starts with the handshake.

Backpressure: while the buffer is full a connection stops decoding and pauses reading;
the undecoded bytes wait in its unpacker (bounded by tcp_max_buffer_bytes) and nothing
is dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import structlog

from collector.buffer import CommitResult
from collector.codec import UNPACK_ERRORS, Decoded, decode_object, new_stream_unpacker
from collector.forward.handshake import Handshake
from collector.forward.request import (
    DecompressionLimitError,
    ForwardError,
    decode_request,
    is_forward_request,
)
from collector.forward.settings import ForwardSettings
from collector.forward.stream import (
    StreamOpening,
    ack_reply,
    forward_stream_unpacker,
    holds_undecodable_text,
)
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


class PendingAck:
    __slots__ = ("forward", "result", "token")

    def __init__(self, token: Any, forward: bool = False) -> None:
        self.token = token
        self.forward = forward
        self.result: CommitResult | None = None

    def reply(self, result: CommitResult) -> bytes:
        if self.forward:
            return ack_reply(self.token)
        stored, duplicates, rejected = result
        reply = {"ack": self.token, "stored": stored, "rejected": rejected}
        if duplicates:
            reply["duplicates"] = duplicates
        return bytes(msgpack.packb(reply))


class TcpIngestProtocol(asyncio.Protocol):
    def __init__(self, server: TcpIngest) -> None:
        self.server = server
        self.ingest = server.ingest
        self.transport: asyncio.Transport | None = None
        self.source = "tcp:unknown"
        # Chosen once the first bytes show whether the peer speaks forward (see
        # collector.forward.stream); until then they wait in `opening`.
        self.unpacker: Any = None
        self.opening = StreamOpening()
        self.lenient = False
        self.handshake: Handshake | None = None
        self.bytes_fed = 0
        # Unpacker.tell() also moves over an incomplete object, so remember where the
        # last complete one ended.
        self.bytes_decoded = 0
        self.pending: deque[PendingAck] = deque()
        self.paused = False
        self.stopping = False  # no more input is read or decoded
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
            return
        self.last_activity = asyncio.get_running_loop().time()
        if self._feed(data):
            self._process()

    def _feed(self, data: bytes, *, final: bool = False) -> bool:
        if self.unpacker is None:
            opened = self.opening.take(data, final=final)
            if opened is None:
                return False
            self.lenient, data = opened
            limit = self.server.settings.max_buffer_bytes
            self.unpacker = (forward_stream_unpacker if self.lenient else new_stream_unpacker)(
                limit
            )
        try:
            self.unpacker.feed(data)
        except msgpack.BufferFull:
            limit = self.server.settings.max_buffer_bytes
            self._fail(f"an object is larger than tcp_max_buffer_bytes={limit}")
            return False
        self.bytes_fed += len(data)
        return True

    def eof_received(self) -> bool:
        self.eof = True
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
            # Complete objects already received are kept even though no ack can be sent.
            self._feed(b"", final=True)
            self._process(force=True)
            self._count_trailing_bytes()
        self.stopping = True

    # decoding and backpressure

    def _process(self, *, force: bool = False) -> None:
        buffer = self.ingest.buffer
        unpacker = self.unpacker
        if unpacker is None:
            return
        while not self.stopping or force:
            if not force and buffer.full():
                self._pause()
                return
            try:
                obj = next(unpacker)
            except StopIteration:
                return
            except UNPACK_ERRORS as exc:
                self._fail(f"not valid msgpack: {str(exc) or type(exc).__name__}")
                return
            decoded_to = unpacker.tell()
            self._handle(obj, decoded_to - self.bytes_decoded)
            self.bytes_decoded = decoded_to

    def _handle(self, obj: Any, size: int) -> None:
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
            self._handle_forward(obj, size, received_at)
            return
        if self.lenient and holds_undecodable_text(obj):
            # What a native connection's strict decoder would have refused.
            self._fail("not valid msgpack: text is not UTF-8")
            return
        self._accept(decode_object(obj, None, received_at, ingest.limits), size, received_at)

    def _handle_forward(self, request: list[Any], size: int, received_at: int) -> None:
        stats = self.ingest.stats
        try:
            result = decode_request(request, received_at, self.ingest.limits, self.server.forward)
        except ForwardError as exc:
            stats.forward_requests_refused += 1
            if isinstance(exc, DecompressionLimitError):
                stats.forward_decompression_refused += 1
            self._fail(f"forward request refused: {exc}")
            return
        stats.forward_requests += 1
        stats.forward_events += result.events
        self._accept(result.decoded, size + result.inflated_bytes, received_at, forward=True)

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
        if self.handshake.refused:
            return  # what follows a refused PING in the final flush is never stored
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
        trailing = self.bytes_fed - self.bytes_decoded
        if trailing > 0 and not self.stopping:
            self.ingest.stats.tcp_truncated_bytes += trailing
            log.info("discarded an incomplete object at close", peer=self.source, bytes=trailing)

    def _fail(self, reason: str) -> None:
        stats = self.ingest.stats
        stats.decode_errors += 1
        stats.tcp_connections_closed_on_error += 1
        log.warning(
            "closing TCP connection on bad input",
            peer=self.source,
            reason=sanitise(reason),
            offset=self.bytes_decoded,
        )
        self._stop_reading()
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
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Daemon stopping: read no more, keep what is complete, ack it after the flush."""
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
