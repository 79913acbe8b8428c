"""`AsyncTracker`: the same tracker for asyncio apps, with a task instead of a thread.

    async with AsyncTracker(transport="tcp") as tracker:
        tracker.track("signup", user_id="u1")      # not a coroutine: it never waits
        result = await tracker.flush(timeout=5.0)

`track()` must be called in the thread of a running event loop (elsewhere it raises
RuntimeError and queues nothing); the sender task starts on the first call, and again in the
next loop if that one ended. Close the tracker (`await tracker.close()`, or `async with`)
before the last loop ends; what an unclosed tracker still holds at interpreter exit is sent
then with blocking sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Unpack

from collector_client._asyncio import AsyncSender, AsyncTcpSender, AsyncUdpSender
from collector_client._queue import EventQueue, TrackerHooks
from collector_client._settings import (
    DEFAULT_PORT,
    ErrorHandler,
    FlushResult,
    Settings,
    TrackerOptions,
    TrackerStats,
    Transport,
)
from collector_client._threads import send_leftovers

__all__ = ["AsyncTracker", "FlushResult", "TrackerStats"]

STOP_TIMEOUT = 1.0  # seconds close() waits for the sender task to stop, after the flush


class AsyncTracker:
    """Events to a collector daemon over UDP (fire and forget) or TCP (acknowledged), from
    asyncio code. Same options, counters and guarantees as `Tracker`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        transport: Transport = "udp",
        *,
        on_error: ErrorHandler | None = None,
        **options: Unpack[TrackerOptions],
    ) -> None:
        self.settings = Settings(host=host, port=port, transport=transport, **options)
        self._sender: AsyncSender | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress: asyncio.Event | None = None
        hooks = TrackerHooks(
            wake=self._wake, wake_soon=self._wake_soon, assist=self._assist,
            after_fork_in_child=self._after_fork_in_child, close_at_exit=self._close_at_exit,
            progressed=self._notify_progress,
        )  # fmt: skip
        self._queue = EventQueue(self.settings, on_error, hooks)

    def __repr__(self) -> str:
        s = self.settings
        return f"AsyncTracker({s.host!r}, {s.port}, transport={s.transport!r})"

    def track(  # noqa: PLR0917 - as Tracker.track
        self,
        action: str,
        user_id: str | int | None = None,
        value: Any = None,
        extra: dict[str, Any] | None = None,
        ts: Any = None,
        id: str | None = None,
    ) -> None:
        """Queue one event (see Tracker.track). Raises RuntimeError, and queues nothing,
        outside a running event loop."""
        self._live_sender()
        self._queue.track(action, user_id, value, extra, ts, id)

    def stats(self) -> TrackerStats:
        return self._queue.stats()

    async def flush(self, timeout: float | None = None) -> FlushResult:  # noqa: ASYNC109 - as Tracker
        """Send what is queued now and wait until it is sent (UDP) or acknowledged (TCP),
        for at most `timeout` seconds (None: no limit)."""
        queue = self._queue
        target = queue.flush_target()
        if target is None:
            return FlushResult(True, 0)
        with queue.flushing():
            self._wake()
            progress = self._progress
            assert progress is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while not queue.flushed(target):
                        progress.clear()
                        await progress.wait()
        return queue.flush_result(target)

    async def close(self, timeout: float | None = 5.0) -> FlushResult:  # noqa: ASYNC109 - as Tracker
        """Flush for at most `timeout` seconds, stop the sender and drop (and count) whatever
        is left. track() after close() drops its events."""
        self._queue.start_closing()
        result = await self.flush(timeout)
        self._queue.close()
        sender, task = self._sender, self._task
        if sender is not None and task is not None and not task.done():
            sender.stop()
            if task.get_loop() is asyncio.get_running_loop():  # else its loop is not running
                await asyncio.wait({task}, timeout=STOP_TIMEOUT)
                task.cancel()  # still connecting, say
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._queue.abandon()
        return result

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(self.settings.exit_timeout)

    # The queue's hooks.

    def _wake(self) -> None:
        sender = self._live_sender()
        if sender is not None:
            sender.wakeup.set()

    def _wake_soon(self) -> None:
        # Maybe from send_leftovers() at exit, with no loop: only a live task is woken.
        sender, task = self._sender, self._task
        if sender is not None and task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed
                sender.wakeup.set()

    def _assist(self) -> None:
        if self._sender is not None:
            self._sender.assist()

    def _live_sender(self) -> AsyncSender | None:
        """The sender task of the running loop, started if there is none: on first use, or
        when the loop of the last one ended (asyncio.run() returned without close())."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncTracker.track() needs a running event loop; use Tracker from threads"
            ) from None
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return self._sender
        if self._queue.closed:
            return None
        if self._sender is not None:  # its loop is not running: it must not come back
            self._sender.stop_requested = True
        queue = self._queue
        sender: AsyncSender = (
            AsyncTcpSender(queue) if self.settings.transport == "tcp" else AsyncUdpSender(queue)
        )
        self._progress = asyncio.Event()
        self._sender = sender
        self._task = loop.create_task(sender.run(), name="collector-tracker")
        return sender

    def _notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()

    def _after_fork_in_child(self) -> None:
        self._sender = self._task = self._progress = None

    def _close_at_exit(self) -> None:
        # The event loop is gone: send what is left from here, with blocking sockets.
        if self._queue.stats().pending:
            send_leftovers(self._queue, self.settings.exit_timeout)
