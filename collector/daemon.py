"""The daemon's parts and their start order: database -> writer -> listeners; stop in reverse.

On stop: close the listeners, stop reading TCP input (what is complete is kept), let the
writer commit everything buffered, send the pending acks, checkpoint, close the database.
Running it as a process (signals, systemd) is collector.runner's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping

import structlog

from collector import __version__, activation
from collector.backends.sqlite.backend import SqliteBackend
from collector.backends.sqlite.reader import Reader
from collector.buffer import EventBuffer
from collector.config import Address, Config
from collector.ingest.core import Ingest
from collector.ingest.tcp import TcpIngest
from collector.ingest.udp import UdpIngestProtocol
from collector.query.context import Context
from collector.query.server import QueryServer
from collector.settings import Settings
from collector.sockets import LISTEN_BACKLOG, bound_address, receive_buffer_size
from collector.stats import Stats
from collector.storage.writer import Writer

log = structlog.get_logger("collector.daemon")

# How long the stop waits for TCP ingest connections to close once their acks are sent.
TCP_CLOSE_WAIT_SECONDS = 2.0


class Daemon:
    def __init__(
        self,
        config: Config,
        stats: Stats | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings = Settings.from_config(config)
        # Listening sockets passed by the service manager, by role (udp, tcp, query).
        self.inherited = dict(sockets or {})
        self.stats = stats or Stats()
        self.buffer = EventBuffer(settings.buffer, self.stats)
        self.ingest = Ingest(self.buffer, self.stats, settings.events)
        self.tcp_ingest = TcpIngest(self.ingest, settings.tcp, settings.forward)
        self.writer = Writer(settings.writer, self.buffer, self.stats)
        self.reader = Reader(settings.reader)
        self.backend = SqliteBackend(self.reader)
        context = Context(self.backend, self.stats, settings.query, commits=self.writer.commits)
        self.queries = QueryServer(context, settings.query_server)
        self.udp_address: Address | None = None
        self.udp_receive_buffer = 0
        self.tcp_address: Address | None = None
        self.query_address: Address | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._query_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        self.queries.context.token = load_query_token(self.config)
        migrations = await self.writer.open()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.writer.run(), name="writer"))
        try:
            await self._bind()
        except BaseException:
            await self.stop()
            raise
        if self.config.stats_interval > 0:
            self._tasks.append(loop.create_task(self._log_stats(), name="stats"))
        log.info(
            "collector started",
            version=__version__,
            db=str(self.config.db),
            udp=str(self.udp_address) if self.udp_address else "off",
            udp_receive_buffer=self.udp_receive_buffer,
            tcp=str(self.tcp_address) if self.tcp_address else "off",
            query=str(self.query_address) if self.query_address else "off",
            migrations_applied=migrations,
            synchronous=self.config.synchronous,
        )

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        sock = activation.udp_listener(self.inherited, config.udp, self.settings.udp.receive_buffer)
        if sock is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpIngestProtocol(self.ingest), sock=sock
            )
            self._udp_transport = transport
            self.udp_address = bound_address(sock)
            self.udp_receive_buffer = receive_buffer_size(sock)
        tcp = activation.listen_on(self.inherited, "tcp", config.tcp)
        if tcp is not None:
            server = await loop.create_server(
                self.tcp_ingest.protocol, backlog=LISTEN_BACKLOG, **tcp
            )
            self._tcp_server = server
            self.tcp_address = bound_address(server.sockets[0])
        query = activation.listen_on(self.inherited, "query", config.query)
        if query is not None:
            query_server = await asyncio.start_server(
                self.queries.handle,
                limit=self.queries.max_line_bytes + 2,
                backlog=LISTEN_BACKLOG,
                **query,
            )
            self._query_server = query_server
            self.query_address = bound_address(query_server.sockets[0])

    def apply(self, config: Config) -> None:
        """Take a new configuration while running (a reload). Every component gets its new
        settings; those that fix resources at start (addresses, the database, the writer's
        batching, connection buffers, query slots) keep them until a restart, which is why
        collector.reload changes only the options it lists as live. Nothing changes when
        the query token file cannot be read (OSError, or ValueError when not UTF-8)."""
        token = load_query_token(config)
        settings = Settings.from_config(config)
        self.config, self.settings = config, settings
        self.ingest.limits = settings.events
        self.buffer.settings = settings.buffer
        self.reader.settings = settings.reader
        context = self.queries.context
        context.settings = settings.query
        context.token = token
        self.queries.limits = settings.query_server

    async def stop(self) -> None:
        """Stop accepting, commit everything buffered, send acks, checkpoint, close."""
        if self.stopped.is_set():
            return
        log.info("stopping", buffered_events=self.stats.buffer_events)
        try:
            if self._udp_transport is not None:
                self._udp_transport.close()
            if self._tcp_server is not None:
                self._tcp_server.close()
            if self._query_server is not None:
                self._query_server.close()
            for task in list(self.queries.connections):
                task.cancel()
            self.tcp_ingest.shutdown_connections()
            self.writer.stop()
            await self._finish_tasks()
            await self._wait_for_connections()
        finally:
            # Always close the database: its thread would otherwise keep the process alive.
            try:
                await self.reader.close()
            finally:
                await self.writer.close()
                self.stopped.set()
        log.info("stopped", **self.stats.snapshot())

    @property
    def writer_task(self) -> asyncio.Task[None]:
        return self._tasks[0]

    async def _finish_tasks(self) -> None:
        writer_task, *others = self._tasks
        for task in others:
            task.cancel()
        try:
            await asyncio.wait_for(writer_task, self.config.shutdown_timeout)
        except TimeoutError:
            log.error(
                "final flush timed out; unacknowledged events were not stored",
                buffered_events=self.stats.buffer_events,
            )
        except Exception as exc:
            log.error("the writer failed; unacknowledged events were not stored", error=repr(exc))
        await asyncio.gather(*others, return_exceptions=True)

    async def _wait_for_connections(self) -> None:
        tcp = self.tcp_ingest
        tcp.close_connections()
        if tcp.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tcp.all_closed.wait(), TCP_CLOSE_WAIT_SECONDS)

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("stats", **self.stats.snapshot())


def load_query_token(config: Config) -> str | None:
    """The query token from the configuration or its file; None when AUTH is off."""
    token = config.query_token
    if config.query_token_file:
        with open(config.query_token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    return token or None
