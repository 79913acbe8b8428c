"""The senders of `Tracker`: one background thread per tracker.

A sender waits in a selector on a wake-up socket (and on its TCP connection). track() wakes
it when it was idle; a datagram or batch that fills up is sent by the thread that filled it
(`assist`), without waiting, and the sender takes what is left after linger_ms, or at once
for flush() and close(). `run(deadline=...)` also runs a sender in the calling thread until
the queue is empty: that is how AsyncTracker's leftovers are sent at interpreter exit.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

from collector_client._queue import EventQueue
from collector_client._settings import Settings, TrackerError
from collector_client._wire import (
    AckReader,
    backoff_delay,
    connection_numbers,
    datagram,
    envelope,
)

RECV_BYTES = 65536
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
UNEXPECTED_ERROR_PAUSE = 0.1  # seconds


class Waker:
    """A socket pair: one byte written wakes the selector that watches the other end."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self) -> None:
        # Full means a wake-up is already pending; closed means the sender is gone.
        with contextlib.suppress(OSError):
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(RECV_BYTES):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class ThreadSender:
    """What both thread senders share: the wake-up, the selector and how they stop."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self.settings: Settings = queue.settings
        self.waker = Waker()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.waker.reader, selectors.EVENT_READ)
        self.stop_requested = False
        self.deadline: float | None = None

    def stop(self) -> None:
        self.stop_requested = True
        self.waker.wake()

    def finished(self) -> bool:
        if self.stop_requested:
            return True
        if self.deadline is None:
            return False
        return time.monotonic() >= self.deadline or self.queue.stats().pending == 0

    def wait(self, timeout: float | None) -> list[object]:
        """Sleep until woken, a watched socket is readable, or `timeout` (None: no limit);
        return what is readable. With a deadline, not at all once everything is sent or
        acknowledged: the last ack may have been read just now."""
        if self.deadline is not None:
            if self.finished():
                return []
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        ready: list[object] = [key.fileobj for key, _ in self.selector.select(timeout)]
        if self.waker.reader in ready:
            self.waker.drain()
        return ready

    def run(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        try:
            while not self.finished():
                try:
                    self.step()
                except Exception as error:  # a bug must not end the sending: say so, go on
                    self.queue.report_unexpected(error)
                    self.wait(UNEXPECTED_ERROR_PAUSE)
        finally:
            self.close()

    def step(self) -> None:
        raise NotImplementedError

    def assist(self) -> None:
        """Called by track() when a datagram or batch is full: send it, never waiting."""

    def close(self) -> None:
        self.selector.close()
        self.waker.close()

    def abandon(self) -> None:
        """In a forked child: release the parent's descriptors without a word on the
        connection, which the parent still uses. Takes no lock: the parent's threads may
        have held any of them at the fork, and are not here to release them."""
        self.stop_requested = True
        for descriptor in self.descriptors():
            with contextlib.suppress(OSError):  # close() without shutdown() sends nothing
                descriptor.close()

    def descriptors(self) -> list[socket.socket | selectors.BaseSelector]:
        return [self.selector, self.waker.reader, self.waker.writer]


class UdpSender(ThreadSender):
    """Fire and forget: whatever is queued goes out in datagrams every linger_ms, and a full
    datagram at once from the thread that filled it (see `assist`). Every send is
    non-blocking and made under the queue's lock, so datagrams leave in order."""

    def __init__(self, queue: EventQueue) -> None:
        super().__init__(queue)
        self.sock: socket.socket | None = None
        self.socket_error: OSError | None = None
        with contextlib.suppress(OSError):  # a host name is resolved on the sender thread
            self.sock = connected_udp_socket(self.settings.host, self.settings.port, numeric=True)

    def step(self) -> None:
        if self.sock is None:  # here, not in send(): a name lookup must not hold the lock
            try:
                self.sock = connected_udp_socket(self.settings.host, self.settings.port)
            except OSError as error:
                self.socket_error = error
        outcome = self.queue.send_chunk(self.send, time.monotonic())
        if outcome.blocked:
            self.wait_until_writable()
        elif not outcome.done:
            self.wait(None if outcome.wait < 0 else outcome.wait)

    def assist(self) -> None:
        # A thread busy in Python holds the GIL for up to 5 ms at a time, and a sender thread
        # must win it back after every send: alone, it could send a few hundred datagrams a
        # second. So the thread that fills a datagram sends it; a full socket buffer leaves
        # it to the sender.
        if self.sock is None:
            return
        outcome = self.queue.send_chunk(self.send, time.monotonic(), sealed_only=True)
        if outcome.blocked:
            self.waker.wake()

    def send(self, events: list[bytes]) -> None:
        """Called in a section of the queue, which close() waits for."""
        sock = self.sock
        if sock is None:  # the datagram is dropped, with the reason
            raise self.socket_error or ConnectionError("no UDP socket")
        sock.send(datagram(events, self.settings.clock), MSG_DONTWAIT)

    def wait_until_writable(self) -> None:
        assert self.sock is not None
        self.selector.register(self.sock, selectors.EVENT_WRITE)
        try:
            self.wait(UNEXPECTED_ERROR_PAUSE)
        finally:
            self.selector.unregister(self.sock)

    def close(self) -> None:
        with self.queue.locked():  # not while a thread in assist() sends with it
            sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        super().close()

    def descriptors(self) -> list[socket.socket | selectors.BaseSelector]:
        sock, self.sock = self.sock, None
        return [*super().descriptors(), *([sock] if sock is not None else [])]


def connected_udp_socket(host: str, port: int, numeric: bool = False) -> socket.socket:
    """A UDP socket connected to the daemon: send() needs no address, and an ICMP "port
    unreachable" comes back as an error. `numeric` refuses to look a host name up."""
    flags = socket.AI_NUMERICHOST if numeric else 0
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=flags
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class TcpSender(ThreadSender):
    """Acknowledged batches on one non-blocking connection, up to max_in_flight at a time.

    Whoever holds `lock` reads the acks that have come and writes what is due: the sender
    thread, or (see `assist`) the thread that just filled a batch, which never waits for the
    lock or the socket. On any failure the connection is dropped and every unacknowledged
    batch is sent again on the next one.
    """

    def __init__(self, queue: EventQueue) -> None:
        super().__init__(queue)
        self.lock = threading.Lock()
        self.conn: socket.socket | None = None
        self.connection = 0  # the number of conn, for Batch.connection
        self.out = bytearray()  # envelopes not yet written, in the order of the flight
        self.acks = AckReader(queue)
        self.failed: Exception | None = None  # met by a caller, handled by the sender
        self.tokens = 0
        self.failures = 0  # in a row, for the backoff
        self.next_attempt = 0.0

    def step(self) -> None:
        if self.conn is None:
            # Connect when there is something to send: an idle app needs no connection.
            if self.queue.idle_if_empty():
                self.wait(None)
            else:
                self.connect_or_wait()
            return
        try:
            with self.lock:
                if self.failed is not None:
                    raise self.failed
                self.read_acks()
                wait = self.fill_window(sealed_only=False)
                self.write()
            self.wait_for_io(wait)
        except (OSError, TrackerError) as error:
            self.disconnect(error)

    def assist(self) -> None:
        # As for UDP: a sender thread could not keep up with a thread busy in Python, so the
        # thread that fills a batch writes it, if nobody else holds the connection.
        if not self.lock.acquire(blocking=False):
            self.waker.wake()
            return
        try:
            if self.conn is not None and self.failed is None:
                self.read_acks()
                self.fill_window(sealed_only=True)
                self.write()
        except (OSError, TrackerError) as error:
            self.failed = error
        finally:
            self.lock.release()
        if self.out or self.failed is not None:
            self.waker.wake()

    def connect_or_wait(self) -> None:
        now = time.monotonic()
        if now < self.next_attempt:
            self.wait(self.next_attempt - now)
            return
        address = (self.settings.host, self.settings.port)
        try:
            conn = socket.create_connection(address, timeout=self.settings.connect_timeout)
        except OSError as error:
            self.note_failure(error)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ)
        with self.lock:  # what is unacknowledged goes again, written by fill_window()
            self.conn, self.failed, self.acks = conn, None, AckReader(self.queue)
            self.connection = next(connection_numbers)

    def read_acks(self) -> None:
        assert self.conn is not None
        while True:
            try:
                data = self.conn.recv(RECV_BYTES)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("the daemon closed the connection")
            if self.acks.feed(data):
                self.failures = 0

    def fill_window(self, sealed_only: bool) -> float | None:
        """Queue the envelopes of the batches that are due (see `EventQueue.due`); return
        seconds until the next one is (None: nothing queued, or a full window)."""
        batches, wait = self.queue.due(self.connection, time.monotonic(), sealed_only)
        for batch in batches:
            self.tokens += 1
            self.out += envelope(self.queue, batch, f"b{self.tokens}", self.connection)
        return None if wait < 0 else wait

    def write(self) -> None:
        assert self.conn is not None
        while self.out:
            try:
                written = self.conn.send(self.out)
            except BlockingIOError:
                return
            del self.out[:written]

    def wait_for_io(self, wait: float | None) -> None:
        conn = self.conn
        assert conn is not None
        oldest = self.queue.oldest_in_flight()
        if oldest is not None:
            ack_due = oldest.sent_time + self.settings.ack_timeout - time.monotonic()
            if ack_due <= 0:
                raise TimeoutError(f"no ack within {self.settings.ack_timeout} s")
            wait = ack_due if wait is None else min(wait, ack_due)
        interest = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        self.selector.modify(conn, interest)
        self.wait(wait)

    def note_failure(self, error: Exception) -> None:
        self.failures += 1
        settings = self.settings
        delay = backoff_delay(self.failures, settings.backoff_initial, settings.backoff_max)
        self.next_attempt = time.monotonic() + delay
        self.queue.report_send_error(error)

    def disconnect(self, error: Exception) -> None:
        with self.lock:
            self.close_connection()
        # A connection lost with nothing in flight (the daemon closes idle ones) costs no
        # event: reconnect without delay, and only a failure then is an error.
        if self.queue.oldest_in_flight() is not None:
            self.note_failure(error)
            self.queue.failed_attempt(error)

    def close_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.conn)
            self.conn.close()
            self.conn = None
        self.out.clear()
        self.failed = None

    def close(self) -> None:
        with self.lock:
            self.close_connection()
        super().close()

    def descriptors(self) -> list[socket.socket | selectors.BaseSelector]:
        self.lock = threading.Lock()  # the parent's may be held for good
        conn, self.conn = self.conn, None
        return [*super().descriptors(), *([conn] if conn is not None else [])]


def new_sender(queue: EventQueue) -> ThreadSender:
    if queue.settings.transport == "tcp":
        return TcpSender(queue)
    return UdpSender(queue)


def send_leftovers(queue: EventQueue, timeout: float) -> None:
    """Send what an AsyncTracker left queued, from the calling thread (at interpreter exit,
    when its event loop is gone)."""
    queue.start_closing()
    new_sender(queue).run(deadline=time.monotonic() + timeout)
    queue.abandon()
