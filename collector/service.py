"""What the service manager sees of a running daemon.

READY=1 once the database is open and every socket bound; a STATUS= line every few
seconds; WATCHDOG=1 at half of WATCHDOG_USEC, but only while the writer makes progress, so a
writer stuck on one commit trips the watchdog; STOPPING=1 at shutdown, with
EXTEND_TIMEOUT_USEC= while the final flush runs. Every call is a no-op outside systemd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from collector.sdnotify import Notifier

if TYPE_CHECKING:
    from collector.daemon import Daemon

log = structlog.get_logger("collector.service")

STATUS_INTERVAL = 2.0
# Beyond shutdown_timeout, the stop also sends acks, checkpoints and closes the database.
STOP_MARGIN = 10.0


class ServiceLink:
    def __init__(self, notifier: Notifier, daemon: Daemon) -> None:
        self.notifier = notifier
        self.daemon = daemon
        self.clock = daemon.writer.clock
        self._tasks: list[asyncio.Task[None]] = []
        self._status_task: asyncio.Task[None] | None = None
        self._last_received = 0
        self._last_status_at = 0.0
        self._stalled = False
        self.running = False  # between start-up and the stop: when a reload may happen

    def started(self) -> None:
        self.running = True
        notifier = self.notifier
        if not notifier.enabled:
            return
        self._last_status_at = self.clock()
        notifier.ready()
        notifier.status(self.status_line())
        loop = asyncio.get_running_loop()
        self._status_task = loop.create_task(self._report_status(), name="sd-status")
        self._tasks.append(self._status_task)
        if notifier.watchdog_interval is not None:
            log.info("watchdog enabled", ping_interval_s=notifier.watchdog_interval)
            self._tasks.append(loop.create_task(self._watchdog(), name="sd-watchdog"))

    def stopping(self) -> None:
        """Say the stop has begun; while events remain to flush, keep the stop timeout
        extended, up to shutdown_timeout plus a margin."""
        self.running = False
        notifier = self.notifier
        if not notifier.enabled:
            return
        if self._status_task is not None:
            self._status_task.cancel()  # from now on the status line follows the flush
        notifier.stopping()
        buffered = self.daemon.stats.buffer_events
        notifier.status(f"stopping: flushing {buffered} buffered events")
        if buffered:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._extend_while_flushing(), name="sd-extend"))

    def reload(self, apply: Callable[[], object]) -> None:
        """SIGHUP: `apply` a new configuration, telling the service manager around it."""
        if not self.running:
            log.warning("reload ignored: the daemon is starting or stopping")
            return
        self.notifier.reloading()
        try:
            apply()
        finally:
            # Even a failed reload must end systemd's "reloading" state.
            self.notifier.ready()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.notifier.close()

    def stalled_for(self) -> float:
        """Seconds the commit in progress has been running (retries included); 0 if none."""
        started = self.daemon.writer.commit_started
        return 0.0 if started is None else max(0.0, self.clock() - started)

    def writer_progressing(self, allowance: float) -> bool:
        """True while no single commit has taken longer than `allowance` seconds: the
        writer is idle, waiting for a batch to fill, or committing normally."""
        return self.stalled_for() < allowance

    def status_line(self) -> str:
        stats = self.daemon.stats
        now = self.clock()
        elapsed = now - self._last_status_at
        rate = (stats.events_received - self._last_received) / elapsed if elapsed > 0 else 0.0
        self._last_received, self._last_status_at = stats.events_received, now
        line = f"{rate:.0f} events/s, {stats.events_stored} stored, {stats.buffer_events} buffered"
        stalled = self.stalled_for()
        if stalled >= STATUS_INTERVAL:
            line += f", commit stalled for {stalled:.0f}s"
        return line

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.notifier.status(self.status_line())

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        assert interval is not None
        while True:
            if self.writer_progressing(interval):
                if self._stalled:
                    log.info("writer progressing again, watchdog pings resumed")
                    self._stalled = False
                self.notifier.ping()
            elif not self._stalled:
                self._stalled = True
                log.warning(
                    "a commit is taking too long; watchdog pings held back",
                    stalled_s=round(self.stalled_for(), 1),
                )
            await asyncio.sleep(interval)

    async def _extend_while_flushing(self) -> None:
        deadline = self.clock() + self.daemon.config.shutdown_timeout + STOP_MARGIN
        while (remaining := deadline - self.clock()) > 0:
            step = min(STATUS_INTERVAL, remaining)
            # Each extension must arrive before the previous one runs out.
            self.notifier.extend_timeout(min(2 * step + 1.0, remaining))
            buffered = self.daemon.stats.buffer_events
            self.notifier.status(f"stopping: flushing {buffered} buffered events")
            await asyncio.sleep(step)
