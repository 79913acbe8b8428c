"""`AsyncTracker`: the same tracker for asyncio apps, with a task instead of a thread.

    async with AsyncTracker(transport="tcp") as tracker:
        tracker.track("signup", user_id="u1")      # not a coroutine: it never waits
        result = await tracker.flush(timeout=5.0)

`track()` must be called from the event loop's thread; the sender task starts on the first
call. Close the tracker (`await tracker.close()`, or `async with`) before the loop ends; what
an unclosed tracker still holds at interpreter exit is sent then with blocking sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Unpack

from collector_client._core import Batch, EventQueue
from collector_client._settings import (
    DEFAULT_PORT,
    ErrorHandler,
    FlushResult,
    Settings,
    TrackerError,
    TrackerOptions,
    TrackerStats,
    Transport,
)
from collector_client._wire import AckReader, backoff_delay, datagram, envelope
from collector_client.tracker import send_leftovers

__all__ = ["AsyncTracker", "FlushResult", "TrackerStats"]

UNEXPECTED_ERROR_PAUSE = 0.1  # seconds


class AsyncTracker(EventQueue):
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
        super().__init__(Settings(host=host, port=port, transport=transport, **options), on_error)
        self._sender: AsyncSender | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress: asyncio.Event | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"AsyncTracker({s.host!r}, {s.port}, transport={s.transport!r})"

    async def flush(self, timeout: float | None = None) -> FlushResult:  # noqa: ASYNC109 - as Tracker
        """Send what is queued now and wait until it is sent (UDP) or acknowledged (TCP),
        for at most `timeout` seconds (None: no limit)."""
        target = self._flush_target()
        if target is None:
            return FlushResult(True, 0)
        with self._lock:
            self._flushers += 1
        try:
            self._wake()
            progress = self._progress
            assert progress is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while not self._is_flushed(target):
                        progress.clear()
                        await progress.wait()
        finally:
            with self._lock:
                self._flushers -= 1
        return self._flush_result(target)

    async def close(self, timeout: float | None = 5.0) -> FlushResult:  # noqa: ASYNC109 - as Tracker
        """Flush for at most `timeout` seconds, stop the sender and drop (and count) whatever
        is left. track() after close() drops its events."""
        with self._lock:
            self._closing = True
        result = await self.flush(timeout)
        with self._lock:
            self._closed = True
            self._capacity = 0
        sender, task = self._sender, self._task
        if sender is not None and task is not None:
            sender.stop()
            await asyncio.wait({task}, timeout=1.0)
            task.cancel()  # still connecting, say
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._abandon()
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

    def _is_flushed(self, target: int) -> bool:
        with self._lock:
            return self._flushed(target)

    def _wake(self) -> None:
        if self._sender is None:
            self._start_sender()
        else:
            self._sender.wakeup.set()

    def _assist(self) -> None:
        if self._sender is not None:
            self._sender.assist()

    def _start_sender(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncTracker.track() needs a running event loop; use Tracker from threads"
            ) from None
        sender: AsyncSender = (
            AsyncTcpSender(self) if self.settings.transport == "tcp" else AsyncUdpSender(self)
        )
        self._progress = asyncio.Event()
        self._sender = sender
        self._task = loop.create_task(sender.run(), name="collector-tracker")

    def _notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()

    def _after_fork_in_child(self) -> None:
        self._sender = self._task = self._progress = None
        super()._after_fork_in_child()

    def _close_at_exit(self) -> None:
        # The event loop is gone: send what is left from here, with blocking sockets.
        if self.stats().pending:
            send_leftovers(self, self.settings.exit_timeout)


class AsyncSender:
    """What both asyncio senders share: the wake-up event, the loop and how they stop."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self.settings = queue.settings
        self.wakeup = asyncio.Event()
        self.stop_requested = False

    def stop(self) -> None:
        self.stop_requested = True
        self.wakeup.set()

    async def run(self) -> None:
        try:
            while not self.stop_requested:
                try:
                    await self.step()
                except Exception as error:  # a bug must not end the sending: say so, go on
                    self.queue._report(error)
                    await self.sleep(UNEXPECTED_ERROR_PAUSE)
        finally:
            await self.close()

    async def sleep(self, seconds: float | None) -> None:
        """Until woken (by track(), flush(), an ack) or `seconds` (None: no limit)."""
        if not self.wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.wakeup.wait()
        self.wakeup.clear()

    async def step(self) -> None:
        raise NotImplementedError

    def assist(self) -> None:
        """A chunk is full: send it now (track() calls this; it must not wait)."""

    async def close(self) -> None:
        pass


class UdpProtocol(asyncio.DatagramProtocol):
    """Remembers the error of the send in progress; reports those that come later."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self.error: Exception | None = None
        self.sending = False

    def error_received(self, exc: Exception) -> None:
        if self.sending:
            self.error = exc
        else:
            self.queue._report_send_error(exc)


class AsyncUdpSender(AsyncSender):
    def __init__(self, queue: EventQueue) -> None:
        super().__init__(queue)
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol = UdpProtocol(queue)

    async def step(self) -> None:
        if self.transport is None:
            await self.open()
        outcome = self.queue._send_chunk(self.send, time.monotonic())
        if outcome.error is not None:
            self.queue._report_send_error(outcome.error)
        if not outcome.done:
            await self.sleep(None if outcome.wait < 0 else outcome.wait)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: self.protocol, remote_addr=(self.settings.host, self.settings.port)
            )
        except OSError as error:
            self.queue._report_send_error(error)
            await self.sleep(UNEXPECTED_ERROR_PAUSE)

    def send(self, events: list[bytes]) -> None:
        """One datagram; raises the error the socket gave (asyncio hands it to the
        protocol instead of raising). Never waits: asyncio buffers what the socket refuses."""
        if self.transport is None:
            raise ConnectionError("the UDP socket is not open")
        protocol = self.protocol
        protocol.sending, protocol.error = True, None
        try:
            self.transport.sendto(datagram(events, self.settings.clock))
        finally:
            protocol.sending = False
        if protocol.error is not None:
            raise protocol.error

    def assist(self) -> None:
        if self.transport is not None:
            outcome = self.queue._send_chunk(self.send, time.monotonic(), sealed_only=True)
            if outcome.error is not None:
                self.queue._report_send_error(outcome.error)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class AckProtocol(asyncio.Protocol):
    """One connection to the daemon: acks are applied as they arrive; a failure is kept
    for the sender to act on."""

    def __init__(self, sender: AsyncTcpSender) -> None:
        self.sender = sender
        self.acks = AckReader(sender.queue)
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            if self.acks.feed(data):
                self.sender.failures = 0
        except TrackerError as error:
            self.fail(error)
        self.sender.wakeup.set()

    def eof_received(self) -> bool:
        self.fail(ConnectionError("the daemon closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("the connection was closed"))

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.sender.wakeup.set()


class AsyncTcpSender(AsyncSender):
    """Acknowledged batches on one connection, up to max_in_flight at a time. On any failure
    every unacknowledged batch is sent again on the next connection."""

    def __init__(self, queue: EventQueue) -> None:
        super().__init__(queue)
        self.connection: AckProtocol | None = None
        self.tokens = 0
        self.failures = 0  # in a row, for the backoff
        self.next_attempt = 0.0

    async def step(self) -> None:
        if self.connection is None:
            # Connect when there is something to send: an idle app needs no connection.
            if self.queue._idle_if_empty():
                await self.sleep(None)
            else:
                await self.connect_or_wait()
            return
        try:
            await asyncio.sleep(0)  # let the socket's news come first (an ack, an EOF)
            wait = self.exchange(sealed_only=False)
            await self.sleep(wait)
        except (OSError, TrackerError) as error:
            await self.disconnect(error)

    def exchange(self, sealed_only: bool) -> float | None:
        """Write the batches that are due while the window has room; return seconds until
        the next one is due or its ack is late (None: no limit). Raises what broke."""
        connection = self.connection
        assert connection is not None and connection.transport is not None
        if connection.error is not None:
            raise connection.error
        wait = -1.0
        while self.queue._in_flight_count() < self.settings.max_in_flight:
            batch, wait = self.queue._take(time.monotonic(), sealed_only)
            if batch is None:
                break
            connection.transport.write(self.envelope(batch))
        return self.ack_deadline(None if wait < 0 else wait)

    def ack_deadline(self, wait: float | None) -> float | None:
        oldest = self.queue._oldest_in_flight()
        if oldest is None:
            return wait
        ack_due = oldest.sent_time + self.settings.ack_timeout - time.monotonic()
        if ack_due <= 0:
            raise TimeoutError(f"no ack within {self.settings.ack_timeout} s")
        return ack_due if wait is None else min(wait, ack_due)

    def assist(self) -> None:
        if self.connection is not None and self.connection.error is None:
            with contextlib.suppress(OSError, TrackerError):  # the sender will see it too
                self.exchange(sealed_only=True)

    def envelope(self, batch: Batch) -> bytes:
        self.tokens += 1
        return envelope(self.queue, batch, f"b{self.tokens}")

    async def connect_or_wait(self) -> None:
        now = time.monotonic()
        if now < self.next_attempt:
            await self.sleep(self.next_attempt - now)
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: AckProtocol(self), self.settings.host, self.settings.port
                )
        except OSError as error:  # TimeoutError included
            self.note_failure(error)
            return
        self.connection = connection
        transport.write(b"".join(map(self.envelope, self.queue._unacknowledged())))

    def note_failure(self, error: Exception) -> None:
        self.failures += 1
        settings = self.settings
        delay = backoff_delay(self.failures, settings.backoff_initial, settings.backoff_max)
        self.next_attempt = time.monotonic() + delay
        self.queue._report_send_error(error)

    async def disconnect(self, error: Exception) -> None:
        await self.close()
        # A connection lost with nothing in flight (the daemon closes idle ones) costs no
        # event: reconnect without delay, and only a failure then is an error.
        if self.queue._oldest_in_flight() is not None:
            self.note_failure(error)

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.abort()  # what is not acknowledged will be sent again
