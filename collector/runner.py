"""The daemon as a process: the event loop, signals (SIGTERM and SIGINT stop it, SIGHUP
reloads), and what the service manager is told."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog

from collector import activation
from collector.config import Config
from collector.daemon import Daemon
from collector.reload import reload_config
from collector.sdnotify import Notifier
from collector.service import ServiceLink

log = structlog.get_logger("collector.runner")

# A second signal within this many seconds of the first is the same request, delivered twice.
REPEATED_SIGNAL_GRACE = 0.5


def quietly(emit: Callable[..., Any], event: str, **values: Any) -> None:
    with contextlib.suppress(Exception):
        emit(event, **values)


class StopSignals:
    """SIGTERM and SIGINT ask for a stop; a second signal exits at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requested = asyncio.Event()
        self.first_at: float | None = None

    def install(self) -> None:
        for signum in self.SIGNALS:
            self.loop.add_signal_handler(signum, self.received, signum)

    def received(self, signum: int) -> None:
        # Act first, log second: a log line can fail (stderr gone with its reader), and
        # that must not cost the stop.
        name = signal.Signals(signum).name
        if self.first_at is None:
            self.first_at = self.loop.time()
            self.requested.set()
            quietly(log.info, "signal received, shutting down", signal=name)
        elif self.loop.time() - self.first_at < REPEATED_SIGNAL_GRACE:
            # One stop often arrives twice (make and timeout both forward SIGTERM).
            quietly(log.info, "repeated signal ignored", signal=name)
        else:
            quietly(log.warning, "second signal, exiting at once", signal=name)
            os._exit(128 + signum)


async def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM or SIGINT; a second signal exits at once. SIGHUP calls `reload`
    for a new configuration and applies what can change while running."""
    sockets = activation.passed_sockets()
    if sockets is None:
        return 1
    daemon = Daemon(config, sockets=sockets)
    link = ServiceLink(Notifier.from_environ(), daemon)
    loop = asyncio.get_running_loop()
    stops = StopSignals(loop)
    stops.install()
    load = reload or (lambda: config)
    loop.add_signal_handler(signal.SIGHUP, link.reload, lambda: reload_config(daemon, load))
    try:
        try:
            await daemon.start()
        except OSError as exc:
            log.error("cannot start", error=str(exc))
            return 1
        link.started()
        return await run_until_stopped(daemon, stops.requested, link)
    finally:
        for signum in (*StopSignals.SIGNALS, signal.SIGHUP):
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
