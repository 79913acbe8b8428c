"""A small synchronous client of the collector's query port, for notebooks and scripts.

Standard library only. A `QueryClient` holds one connection, opened on first use, and runs one
command at a time; every read waits at most `timeout` seconds, then raises TimeoutError.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import Callable, Generator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

DEFAULT_PORT = 24225
TAIL_STOP_LINE = "stop"
# What TAIL sends once its last n events are out (JSON and text): it is listening now.
TAIL_LIVE_LINES = frozenset(
    {'{"live": true}', "# live: new events follow as they are committed; send any line to stop"}
)
RECV_BYTES = 65536
# Verbs whose replies are left as the daemon sends them: they have no table to turn to JSON,
# stream on their own terms, or change the session.
UNFORMATTED_VERBS = frozenset({"EXPORT", "TAIL", "FORMAT", "QUIT", "AUTH", "PING", "HELP"})

Row = dict[str, Any]
T = TypeVar("T")


class QueryError(Exception):
    """A command the daemon answered with `ERR <CLASS> <message>`."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"ERR {error_class} {message}")
        self.error_class = error_class
        self.message = message


def is_status_line(line: str) -> bool:
    return line == "OK" or line.startswith(("OK ", "ERR "))


def unstuff(line: str) -> str:
    """A text data line as it was before the daemon put a `.` in front of it."""
    return line[1:] if line.startswith(".") else line


def raise_for_status(line: str) -> None:
    if line.startswith("ERR "):
        _, error_class, message = [*line.split(" ", 2), ""][:3]
        raise QueryError(error_class, message)


def verb_of(command: str) -> str:
    return command.split(None, 1)[0].upper() if command.strip() else ""


def has_format_option(command: str) -> bool:
    return any(word.lower().startswith("format=") for word in command.split())


def quote(value: str) -> str:
    """`value` as one protocol word, whatever spaces, quotes or `=` it holds."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'


def parse_row(line: str) -> Row:
    row: Row = json.loads(line) if line.startswith("{") else {"text": line}
    return row


class Connection:
    """One socket, the complete lines received and not yet read, and the partial last one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines: deque[str] = deque()
        self.partial = b""
        self.bytes_received = 0
        self.closed = False

    def send_lines(self, *lines: str) -> None:
        if any("\n" in line or "\r" in line for line in lines):
            raise ValueError(f"one command per line, got {lines!r}")
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode())

    def read_line(self, timeout: float | None) -> str:
        """The next line, without its LF or CRLF."""
        while not self.lines:
            self.receive(timeout)
        return self.lines.popleft()

    def receive(self, timeout: float | None) -> None:
        if self.closed:
            raise ConnectionError("the query connection is closed")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise TimeoutError(f"no reply from the daemon within {timeout}s") from None
        if not data:
            raise ConnectionError("the daemon closed the query connection")
        self.bytes_received += len(data)
        # Split bytes, not text: a character may straddle two reads.
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines.extend(line.decode(errors="replace").removesuffix("\r") for line in complete)

    def stale(self) -> bool:
        """True if, between commands, the daemon closed the connection or sent something
        unasked: after a long idle time it sends `ERR TIMEOUT idle ...` and closes."""
        if self.closed or self.lines or self.partial:
            return True
        previous = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(previous)

    def read_status(self, timeout: float | None) -> str:
        """The status line of a reply whose data lines are not wanted."""
        while not is_status_line(line := self.read_line(timeout)):
            pass
        return line

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class QueryClient:
    """A connection to the query port that runs one command at a time (from one thread)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        timeout: float | None = 30.0,
        token: str | None = None,
    ) -> None:
        self.host, self.port, self.timeout, self.token = host, port, timeout, token
        self.last_status = ""
        self._connection: Connection | None = None
        # Brings the connection back in step when a streamed reply was left unfinished.
        self._unfinished: Callable[[], None] | None = None
        self._session_format = "text"

    def connect(self) -> None:
        """Open the connection (and authenticate) unless it is open already."""
        if self._connection is not None:
            return
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._connection = Connection(sock)
        if self.token is not None:
            try:
                self._connection.send_lines(f"AUTH {quote(self.token)}")
                raise_for_status(self._connection.read_status(self.timeout))
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        self._unfinished = None
        self._session_format = "text"
        if connection is not None:
            connection.close()

    def __enter__(self) -> QueryClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def bytes_received(self) -> int:
        """Bytes read on the current connection (0 when closed): shows how far a stream got."""
        return self._connection.bytes_received if self._connection is not None else 0

    def run(self, command: str) -> list[Row]:
        """The rows of `command`'s reply, asking for JSON; raises QueryError on ERR."""
        rows = [parse_row(line) for line in self.stream_raw(command, json_format=True)]
        raise_for_status(self.last_status)
        return rows

    def run_raw(self, command: str) -> tuple[list[str], str]:
        """The data lines (un-stuffed) and the status line of `command`, as sent."""
        lines = list(self.stream_raw(command))
        return lines, self.last_status

    def stream_raw(self, command: str, json_format: bool = False) -> Generator[str, None, None]:
        """The data lines of `command` as they arrive; then its status line is `last_status`.

        A reply cannot be cancelled: leaving one unfinished closes the connection, and the
        next command opens a new one.
        """
        if verb_of(command) == "TAIL":
            raise ValueError("TAIL never ends by itself: use tail() or tail_raw()")
        before, line, after = self._framing(command, json_format)
        connection = self._ready()
        self._unfinished = self.close
        try:
            connection.send_lines(*before, line, *after)
            for _ in before:
                connection.read_status(self.timeout)
            while not is_status_line(reply := connection.read_line(self.timeout)):
                yield unstuff(reply)
            for _ in after:
                connection.read_status(self.timeout)
        except BaseException:
            self._drop(connection)
            raise
        self.last_status = reply
        self._after_reply(command)

    def export(self, filters: str = "") -> Generator[Row, None, None]:
        """Every event matching `filters`, in commit order, read as it arrives."""
        if has_format_option(filters):
            raise ValueError("export() reads JSONL; use stream_raw('EXPORT format=csv') for CSV")
        with closing(self.stream_raw(f"EXPORT {filters}".strip())) as lines:
            for line in lines:
                event: Row = json.loads(line)
                yield event
        raise_for_status(self.last_status)

    def tail(self, filters: str = "", n: int = 10, wait: float | None = 30.0) -> TailStream[Row]:
        """The last `n` events matching `filters`, then new ones as they are committed.

        `{"missed": N}` marks events the daemon skipped because this reader was slow. Each
        line is awaited at most `wait` seconds (None: forever); a TimeoutError leaves the
        TAIL running. `stop()` ends it and keeps the connection usable.
        """
        parts = ["TAIL", f"n={n}", filters.strip(), "format=json"]
        return self._start_tail(" ".join(part for part in parts if part), parse_row, wait)

    def tail_raw(self, command: str, wait: float | None = 30.0) -> TailStream[str]:
        """A TAIL command line as given; its data lines un-stuffed, as text."""
        return self._start_tail(command, str, wait)

    def _start_tail(
        self, command: str, decode: Callable[[str], T], wait: float | None
    ) -> TailStream[T]:
        if verb_of(command) != "TAIL":
            raise ValueError(f"not a TAIL command: {command!r}")
        connection = self._ready()
        connection.send_lines(command)
        stream = TailStream(self, connection, decode, wait)
        self._unfinished = stream.stop_quietly
        return stream

    def _ready(self) -> Connection:
        """The open connection, with any reply left unfinished dealt with first."""
        if self._unfinished is not None:
            finish, self._unfinished = self._unfinished, None
            finish()
        if self._connection is not None and self._connection.stale():
            self.close()
        self.connect()
        assert self._connection is not None
        return self._connection

    def _framing(self, command: str, json_format: bool) -> tuple[list[str], str, list[str]]:
        """The command line, and FORMAT commands to send before and after it if need be."""
        verb = verb_of(command)
        if not json_format or verb in UNFORMATTED_VERBS or has_format_option(command):
            return [], command, []
        if verb != "SQL":
            return [], f"{command} format=json", []
        if self._session_format == "json":
            return [], command, []
        # SQL takes the rest of its line as the statement, so no format= fits on it.
        return ["FORMAT json"], command, [f"FORMAT {self._session_format}"]

    def _after_reply(self, command: str) -> None:
        self._unfinished = None
        verb, words = verb_of(command), command.split()
        if verb == "FORMAT" and self.last_status.startswith("OK") and len(words) == 2:
            self._session_format = words[1].lower()
        elif verb == "QUIT":
            self.close()

    def _tail_ended(self, connection: Connection, status: str) -> None:
        if self._connection is connection:
            self._unfinished = None
        if status.startswith("ERR "):
            # Our stop line may have been run as a command: the replies would be out of step.
            self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        if self._connection is connection:
            self.close()


@dataclass
class TailStream(Generic[T]):
    """The data lines of a running TAIL, decoded; iterate, then `stop()`."""

    client: QueryClient
    connection: Connection
    decode: Callable[[str], T]
    wait: float | None
    status: str | None = None
    live: bool = False  # the daemon has sent the last n events and now streams new ones
    _early: deque[str] = field(default_factory=deque)

    def __iter__(self) -> TailStream[T]:
        return self

    def __next__(self) -> T:
        if self._early:
            return self.decode(self._early.popleft())
        while (line := self._read()) is not None:
            if line not in TAIL_LIVE_LINES:
                return self.decode(line)
        raise StopIteration

    def wait_live(self) -> bool:
        """Read up to the point where the TAIL is listening for new commits (the last n
        events are kept for iteration). False if the TAIL ended first."""
        while not self.live:
            line = self._read()
            if line is None:
                return False
            if line not in TAIL_LIVE_LINES:
                self._early.append(line)
        return True

    def _read(self) -> str | None:
        """The next data line, un-stuffed (the live marker too, noted in `live`); None once
        the TAIL has ended."""
        if self.status is not None:
            return None
        line = self.connection.read_line(self.wait)
        if is_status_line(line):
            self._ended(line)
            return None
        if line in TAIL_LIVE_LINES:
            self.live = True
            return line
        return unstuff(line)

    def stop(self) -> str:
        """End the TAIL; return its status line (QueryError if ERR). Lines in flight are dropped."""
        if self.status is None:
            try:
                self.connection.send_lines(TAIL_STOP_LINE)
                status = self.connection.read_status(self.client.timeout)
            except OSError:
                self.client._drop(self.connection)
                raise
            self._ended(status)
        assert self.status is not None
        return self.status

    close = stop

    def stop_quietly(self) -> None:
        with suppress(QueryError, OSError):
            self.stop()

    def _ended(self, status: str) -> None:
        self.status = status
        self.client._tail_ended(self.connection, status)
        raise_for_status(status)

    def __enter__(self) -> TailStream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
