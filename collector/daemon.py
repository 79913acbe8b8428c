"""Start order and shutdown: database -> writer -> listeners -> ready; stop in reverse.

On stop: close the listeners, stop reading TCP input (what is complete is kept), let the
writer commit everything buffered, send the pending acks, checkpoint, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from collector import __version__, activation
from collector.buffer import EventBuffer
from collector.config import Address, Config
from collector.events import Limits
from collector.forward.settings import forward_settings
from collector.ingest.core import Ingest
from collector.ingest.tcp import TcpIngest, TcpSettings
from collector.ingest.udp import UdpIngestProtocol
from collector.query.reader import Reader
from collector.query.server import Limits as QueryLimits
from collector.query.server import QueryServer
from collector.query.verbs import Context
from collector.sdnotify import Notifier
from collector.service import ServiceLink
from collector.stats import Stats
from collector.storage.writer import CommitSignal, Writer

log = structlog.get_logger("collector.daemon")

CLOSE_WAIT_SECONDS = 2.0
# listen() backlog, also applied to sockets passed by systemd (listen() again resets theirs):
# systemd's own default (Backlog=, SOMAXCONN), capped by net.core.somaxconn.
LISTEN_BACKLOG = 4096
# A second signal within this many seconds of the first is the same request, delivered twice.
REPEATED_SIGNAL_GRACE = 0.5


class Daemon:
    def __init__(
        self,
        config: Config,
        stats: Stats | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> None:
        self.config = config
        # Listening sockets passed by the service manager, by role (udp, tcp, query).
        self.inherited = dict(sockets or {})
        self.stats = stats or Stats()
        self.buffer = EventBuffer(
            max_events=config.buffer_max_events,
            max_bytes=config.buffer_max_bytes,
            low_water=config.buffer_low_water,
            stats=self.stats,
            eager_acks=config.eager_ack_commit,
        )
        self.ingest = Ingest(self.buffer, self.stats, event_limits(config))
        self.tcp = TcpIngest(
            self.ingest,
            TcpSettings(
                config.tcp_max_buffer_bytes, config.tcp_max_connections, config.tcp_idle_timeout
            ),
            forward_settings(config),
        )
        self.writer = Writer(
            config.db,
            self.buffer,
            self.stats,
            batch_size=config.batch_size,
            batch_max_age=config.batch_max_age,
            synchronous=config.synchronous,
            delay=config.writer_delay_ms / 1000.0,
        )
        self.reader = Reader(
            config.db,
            timeout=config.query_timeout_ms / 1000.0,
            max_rows=config.query_max_rows,
            concurrency=config.query_concurrency,
        )
        self.queries = query_server(config, self.reader, self.stats, self.writer.commits)
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
        sock = activation.udp_listener(self.inherited, config.udp, config.udp_receive_buffer)
        if sock is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: UdpIngestProtocol(self.ingest), sock=sock
            )
            self._udp_transport = transport
            self.udp_address = bound_address(sock)
            # Linux reports twice the size asked for (it counts its own bookkeeping).
            self.udp_receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        tcp = activation.listen_on(self.inherited, "tcp", config.tcp)
        if tcp is not None:
            server = await loop.create_server(self.tcp.protocol, backlog=LISTEN_BACKLOG, **tcp)
            self._tcp_server = server
            self.tcp_address = bound_address(server.sockets[0])
        query = activation.listen_on(self.inherited, "query", config.query)
        if query is not None:
            query_server = await asyncio.start_server(
                self.queries.handle,
                limit=config.query_max_line_bytes + 2,
                backlog=LISTEN_BACKLOG,
                **query,
            )
            self._query_server = query_server
            self.query_address = bound_address(query_server.sockets[0])

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
            self.tcp.shutdown_connections()
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
        self.tcp.close_connections()
        if self.tcp.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tcp.all_closed.wait(), CLOSE_WAIT_SECONDS)

    async def _log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("stats", **self.stats.snapshot())


def event_limits(config: Config) -> Limits:
    return Limits(
        config.max_event_bytes,
        config.max_extra_bytes,
        config.max_extra_depth,
        config.max_batch_events,
    )


def query_server(
    config: Config, reader: Reader, stats: Stats, commits: CommitSignal
) -> QueryServer:
    context = Context(
        reader,
        stats,
        config.db,
        config.query_tz,
        config.query_max_rows,
        sql_enabled=config.query_sql_enabled,
        commits=commits,
    )
    limits = QueryLimits(
        config.query_max_line_bytes, config.query_max_connections, config.query_idle_timeout
    )
    return QueryServer(context, limits)


def load_query_token(config: Config) -> str | None:
    """The query token from the configuration or its file; None when AUTH is off."""
    token = config.query_token
    if config.query_token_file:
        with open(config.query_token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    return token or None


def quietly(emit: Callable[..., Any], event: str, **values: Any) -> None:
    with contextlib.suppress(Exception):
        emit(event, **values)


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)


async def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM or SIGINT; a second signal exits at once. SIGHUP calls `reload`
    for a new configuration and applies what can change while running."""
    sockets = activation.passed_sockets()
    if sockets is None:
        return 1
    daemon = Daemon(config, sockets=sockets)
    link = ServiceLink(Notifier.from_environ(), daemon)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    first_signal_at: list[float] = []

    def on_signal(signum: int) -> None:
        # Act first, log second: a log line can fail (stderr gone with its reader), and
        # that must not cost the stop.
        name = signal.Signals(signum).name
        if not first_signal_at:
            first_signal_at.append(loop.time())
            stop_requested.set()
            quietly(log.info, "signal received, shutting down", signal=name)
        elif loop.time() - first_signal_at[0] < REPEATED_SIGNAL_GRACE:
            # One stop often arrives twice (make and timeout both forward SIGTERM).
            quietly(log.info, "repeated signal ignored", signal=name)
        else:
            quietly(log.warning, "second signal, exiting at once", signal=name)
            os._exit(128 + signum)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, link.reload, reload or (lambda: config))
    try:
        try:
            await daemon.start()
        except OSError as exc:
            log.error("cannot start", error=str(exc))
            return 1
        link.started()
        return await run_until_stopped(daemon, stop_requested, link)
    finally:
        for signum in (*signals, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await link.close()


async def run_until_stopped(
    daemon: Daemon, stop_requested: asyncio.Event, link: ServiceLink | None = None
) -> int:
    """Serve until asked to stop, or until the writer ends on its own (exit code 1)."""
    waiter = asyncio.ensure_future(stop_requested.wait())
    done, _ = await asyncio.wait([waiter, daemon.writer_task], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    failed = daemon.writer_task in done
    if failed:
        task = daemon.writer_task
        error = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("the writer stopped unexpectedly", error=error)
    if link is not None:
        link.stopping()
    await daemon.stop()
    return 1 if failed else 0


def run(config: Config, reload: Callable[[], Config] | None = None) -> int:
    import uvloop

    # The writer thread gives up the GIL during every SQLite call and must win it back
    # from a busy event loop; Python's default 5 ms switch interval makes each such
    # hand-off cost up to 5 ms under load. See docs/performance.md.
    sys.setswitchinterval(config.gil_switch_interval_ms / 1000.0)
    result: Any = uvloop.run(serve(config, reload))
    return int(result)
