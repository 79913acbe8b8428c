"""The senders of `AsyncTracker`: one task per tracker, in the loop that tracks.

They do what the thread senders of `_threads` do, with asyncio transports: the task waits on
an `asyncio.Event` that track(), flush() and the acks set; a datagram or batch that fills up
is written by track() itself (`assist`), which never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from collector_client._queue import EventQueue
from collector_client._settings import TrackerError
from collector_client._wire import (
    AckReader,
    backoff_delay,
    connection_numbers,
    datagram,
    envelope,
)

UNEXPECTED_ERROR_PAUSE = 0.1  # seconds


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
                    self.queue.report_unexpected(error)
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
            self.queue.report_send_error(exc)


class AsyncUdpSender(AsyncSender):
    def __init__(self, queue: EventQueue) -> None:
        super().__init__(queue)
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol = UdpProtocol(queue)

    async def step(self) -> None:
        if self.transport is None:
            await self.open()
        outcome = self.queue.send_chunk(self.send, time.monotonic())
        if not outcome.done:
            await self.sleep(None if outcome.wait < 0 else outcome.wait)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: self.protocol, remote_addr=(self.settings.host, self.settings.port)
            )
        except OSError as error:
            self.queue.report_send_error(error)
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
            self.queue.send_chunk(self.send, time.monotonic(), sealed_only=True)

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
        self.number = 0  # of the connection, for Batch.connection
        self.exchanging = False  # a signal handler's track() must not write in between
        self.tokens = 0
        self.failures = 0  # in a row, for the backoff
        self.next_attempt = 0.0

    async def step(self) -> None:
        if self.connection is None:
            # Connect when there is something to send: an idle app needs no connection.
            if self.queue.idle_if_empty():
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
        self.exchanging = True
        try:
            batches, wait = self.queue.due(self.number, time.monotonic(), sealed_only)
            for batch in batches:
                self.tokens += 1
                token = f"b{self.tokens}"
                connection.transport.write(envelope(self.queue, batch, token, self.number))
        finally:
            self.exchanging = False
        return self.ack_deadline(None if wait < 0 else wait)

    def ack_deadline(self, wait: float | None) -> float | None:
        oldest = self.queue.oldest_in_flight()
        if oldest is None:
            return wait
        ack_due = oldest.sent_time + self.settings.ack_timeout - time.monotonic()
        if ack_due <= 0:
            raise TimeoutError(f"no ack within {self.settings.ack_timeout} s")
        return ack_due if wait is None else min(wait, ack_due)

    def assist(self) -> None:
        connection = self.connection
        if connection is not None and connection.error is None and not self.exchanging:
            with contextlib.suppress(OSError, TrackerError):  # the sender will see it too
                self.exchange(sealed_only=True)

    async def connect_or_wait(self) -> None:
        now = time.monotonic()
        if now < self.next_attempt:
            await self.sleep(self.next_attempt - now)
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: AckProtocol(self), self.settings.host, self.settings.port
                )
        except OSError as error:  # TimeoutError included
            self.note_failure(error)
            return
        # What is unacknowledged goes again, written by exchange().
        self.connection, self.number = connection, next(connection_numbers)

    def note_failure(self, error: Exception) -> None:
        self.failures += 1
        settings = self.settings
        delay = backoff_delay(self.failures, settings.backoff_initial, settings.backoff_max)
        self.next_attempt = time.monotonic() + delay
        self.queue.report_send_error(error)

    async def disconnect(self, error: Exception) -> None:
        await self.close()
        # A connection lost with nothing in flight (the daemon closes idle ones) costs no
        # event: reconnect without delay, and only a failure then is an error.
        if self.queue.oldest_in_flight() is not None:
            self.note_failure(error)
            self.queue.failed_attempt(error)

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.abort()  # what is not acknowledged will be sent again
