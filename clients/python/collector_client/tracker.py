"""`Tracker`: put events into collector from any Python program, with one background thread.

    tracker = Tracker()                       # UDP to 127.0.0.1:24224, fire and forget
    tracker.track("click", user_id=42, value="buy", extra={"page": "/cart"})

    reliable = Tracker(port=24224, transport="tcp")   # acknowledged, retried, deduplicated
    reliable.track("signup", user_id="u1")
    result = reliable.flush(timeout=5.0)      # FlushResult(complete=True, pending=0)

See docs/clients.md for every option and what each counter means.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Unpack

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
from collector_client._threads import ThreadSender, new_sender, send_leftovers

__all__ = ["FlushResult", "Tracker", "TrackerStats"]

STOP_TIMEOUT = 1.0  # seconds close() waits for the sender thread to stop, after the flush


class Tracker:
    """Events to a collector daemon over UDP (fire and forget) or TCP (acknowledged).

    Thread-safe, fork-safe, and flushed at interpreter exit (up to `exit_timeout` seconds).
    The sender thread starts on the first `track()`.
    """

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
        self._start_lock = threading.Lock()
        self._sender: ThreadSender | None = None
        self._thread: threading.Thread | None = None
        hooks = TrackerHooks(
            wake=self._wake, wake_soon=self._wake_soon, assist=self._assist,
            after_fork_in_child=self._after_fork_in_child, close_at_exit=self._close_at_exit,
        )  # fmt: skip
        self._queue = EventQueue(self.settings, on_error, hooks)

    def __repr__(self) -> str:
        s = self.settings
        return f"Tracker({s.host!r}, {s.port}, transport={s.transport!r})"

    def track(  # noqa: PLR0917 - the signature apps know: track("click", user, value)
        self,
        action: str,
        user_id: str | int | None = None,
        value: Any = None,
        extra: dict[str, Any] | None = None,
        ts: Any = None,
        id: str | None = None,
    ) -> None:
        """Queue one event. Never waits on the network and never raises, except TypeError
        when `action` is not a str: that is a bug at the call site."""
        self._queue.track(action, user_id, value, extra, ts, id)

    def stats(self) -> TrackerStats:
        return self._queue.stats()

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Send what is queued now, without waiting for the linger time, and wait until it is
        sent (UDP) or acknowledged (TCP), for at most `timeout` seconds (None: no limit)."""
        queue = self._queue
        target = queue.flush_target()
        if target is None:
            return FlushResult(True, 0)
        with queue.flushing():
            self._wake()
            queue.wait_flushed(target, timeout)
        return queue.flush_result(target)

    def close(self, timeout: float | None = 5.0) -> FlushResult:
        """Flush for at most `timeout` seconds, stop the sender and drop (and count) whatever
        is left. track() after close() drops its events. The sender thread is given up to
        STOP_TIMEOUT more seconds to stop."""
        self._queue.start_closing()
        result = self.flush(timeout)
        self._queue.close()
        with self._start_lock:  # a sender starting now would outlive close()
            sender, thread = self._sender, self._thread
        if sender is not None:
            sender.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)
        self._queue.abandon()
        return result

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(self.settings.exit_timeout)

    # The queue's hooks.

    def _wake(self) -> None:
        sender = self._sender
        if sender is None:
            self._start_sender()
        else:
            sender.waker.wake()

    def _wake_soon(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.waker.wake()
        elif not self._queue.closing:  # not while send_leftovers() is the sender
            self._start_sender()

    def _assist(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.assist()

    def _start_sender(self) -> None:
        # Not waiting: whoever holds the lock is starting the sender, which will find the
        # queued events, or closing; and it may be the thread a signal handler interrupted.
        if not self._start_lock.acquire(blocking=False):
            return
        failure: RuntimeError | None = None
        try:
            if self._sender is None and not self._queue.closed:
                sender = new_sender(self._queue)
                thread = threading.Thread(
                    target=sender.run,
                    name=f"collector-{self.settings.transport}-tracker",
                    daemon=True,
                )
                self._sender, self._thread = sender, thread
                try:
                    thread.start()
                except RuntimeError as error:  # no new threads at interpreter shutdown
                    self._sender = self._thread = None
                    sender.close()
                    failure = error
        finally:
            self._start_lock.release()
        if failure is not None:  # reported once the lock is free: report() takes the queue's
            self._queue.report(failure)

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and may have held any lock: start over with
        # a new lock; the first track() starts this process's own sender.
        sender = self._sender
        self._start_lock = threading.Lock()
        self._sender = self._thread = None
        if sender is not None:
            sender.abandon()

    def _close_at_exit(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.close(self.settings.exit_timeout)
        elif self._queue.stats().pending:  # no sender thread, and none may start now
            send_leftovers(self._queue, self.settings.exit_timeout)
