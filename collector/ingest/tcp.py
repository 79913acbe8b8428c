"""TCP ingest: the asyncio side of a connection. What the connection does with its bytes
lives in ingest/connection.py (sans-IO); here its actions meet the transport.

Each object is a native event or batch, a Fluentd forward request (collector.forward), or
a nil keepalive. With a forward shared key every connection starts with the handshake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import structlog

from collector.ingest.connection import Action, IngestConnection, Signal, Write
from collector.ingest.core import Ingest, format_peer
from collector.settings import ForwardSettings, TcpSettings

log = structlog.get_logger("collector.tcp")


@dataclass
class TcpIngest:
    """State shared by all TCP ingest connections."""

    ingest: Ingest
    settings: TcpSettings
    forward: ForwardSettings
    connections: set[TcpIngestProtocol] = field(default_factory=set)
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def protocol(self) -> TcpIngestProtocol:
        return TcpIngestProtocol(self)

    def shutdown_connections(self) -> None:
        for connection in list(self.connections):
            connection.shutdown()

    def close_connections(self) -> None:
        for connection in list(self.connections):
            connection.transport.close()


class TcpIngestProtocol(asyncio.Protocol):
    def __init__(self, server: TcpIngest) -> None:
        self.server = server
        self.stats = server.ingest.stats
        self.transport = cast(asyncio.Transport, None)  # set by connection_made
        self.conn: IngestConnection | None = None  # None for a refused connection
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        peer = format_peer("tcp", transport.get_extra_info("peername"))
        if len(server.connections) >= server.settings.max_connections:
            self.stats.tcp_connections_refused += 1
            log.warning("refusing TCP connection: too many open", peer=peer)
            self.transport.abort()
            return
        server.connections.add(self)
        server.all_closed.clear()
        self.stats.tcp_connections_total += 1
        self.stats.tcp_connections_open += 1
        self.conn = conn = IngestConnection(
            server.ingest, server.settings, server.forward, peer, self.perform
        )
        self.perform(conn.opened(self.now()))
        self.arm_idle_timer(server.settings.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self.stats.tcp_discarded_bytes += len(data)
            return
        self.perform(self.conn.data_received(data, self.now()))

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.perform(self.conn.eof_received())
        return True  # keep the socket open for writing until the pending acks are sent

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self.conn is None or self not in server.connections:
            return
        server.connections.discard(self)
        if not server.connections:
            server.all_closed.set()
        self.stats.tcp_connections_open -= 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.conn.connection_lost()

    def shutdown(self) -> None:
        if self.conn is not None:
            self.perform(self.conn.shutdown())

    def perform(self, actions: list[Action]) -> None:
        transport = self.transport
        for action in actions:
            if type(action) is Write:
                transport.write(action.data)
                if transport.is_closing() and self.conn is not None:
                    self.conn.write_failed()
            elif transport.is_closing():
                continue
            elif action is Signal.PAUSE_READING:
                transport.pause_reading()
            elif action is Signal.RESUME_READING:
                transport.resume_reading()
            elif action is Signal.CLOSE:
                transport.close()

    def arm_idle_timer(self, delay: float | None) -> None:
        if delay:
            self.idle_timer = asyncio.get_running_loop().call_later(delay, self.check_idle)

    def check_idle(self) -> None:
        assert self.conn is not None
        actions, next_check = self.conn.idle_check(self.now())
        self.perform(actions)
        self.arm_idle_timer(next_check)

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()
