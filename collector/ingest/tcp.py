"""TCP ingest: a stream of back-to-back msgpack objects, acks for batches that ask.

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
from collector.codec import UNPACK_ERRORS, decode_object, new_stream_unpacker
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
    __slots__ = ("result", "token")

    def __init__(self, token: Any) -> None:
        self.token = token
        self.result: CommitResult | None = None


class TcpIngestProtocol(asyncio.Protocol):
    def __init__(self, server: TcpIngest) -> None:
        self.server = server
        self.ingest = server.ingest
        self.transport: asyncio.Transport | None = None
        self.source = "tcp:unknown"
        self.unpacker = new_stream_unpacker(server.settings.max_buffer_bytes)
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

    def data_received(self, data: bytes) -> None:
        if self.stopping:
            return
        self.last_activity = asyncio.get_running_loop().time()
        try:
            self.unpacker.feed(data)
        except msgpack.BufferFull:
            limit = self.server.settings.max_buffer_bytes
            self._fail(f"an object is larger than tcp_max_buffer_bytes={limit}")
            return
        self.bytes_fed += len(data)
        self._process()

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
            self._process(force=True)
            self._count_trailing_bytes()
        self.stopping = True

    # decoding and backpressure

    def _process(self, *, force: bool = False) -> None:
        buffer = self.ingest.buffer
        unpacker = self.unpacker
        while not self.stopping or force:
            if not force and buffer.full():
                self._pause()
                return
            try:
                obj = next(unpacker)
            except StopIteration:
                return
            except UNPACK_ERRORS as exc:
                self._fail(f"not valid msgpack: {exc or type(exc).__name__}")
                return
            decoded_to = unpacker.tell()
            self._handle(obj, decoded_to - self.bytes_decoded)
            self.bytes_decoded = decoded_to

    def _handle(self, obj: Any, size: int) -> None:
        ingest = self.ingest
        ingest.stats.tcp_objects_received += 1
        received_at = now_ms()
        decoded = decode_object(obj, None, received_at, ingest.limits)
        if not decoded.wants_ack:
            ingest.accept(decoded, size, self.source, received_at)
            return
        pending = PendingAck(decoded.ack)
        self.pending.append(pending)
        ingest.accept(
            decoded, size, self.source, received_at, lambda result: self._acked(pending, result)
        )

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
        self.stopping = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._close_when_acked()

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
            stored, duplicates, rejected = done.result
            reply = {"ack": done.token, "stored": stored, "rejected": rejected}
            if duplicates:
                reply["duplicates"] = duplicates
            transport.write(msgpack.packb(reply))
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
