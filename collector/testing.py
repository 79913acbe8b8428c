"""Run a daemon for tests and benchmarks: in-process on port 0, or as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack

from collector.config import Address, Config
from collector.daemon import Daemon

LOOPBACK_ANY_PORT = Address("127.0.0.1", 0)
IO_TIMEOUT = 10.0


def daemon_config(db: Path, **overrides: Any) -> Config:
    """A config bound to free loopback ports, with the stats logs off."""
    values: dict[str, Any] = {
        "db": db,
        "udp": LOOPBACK_ANY_PORT,
        "tcp": LOOPBACK_ANY_PORT,
        "query": LOOPBACK_ANY_PORT,
        "stats_interval": 0.0,
    }
    values.update(overrides)
    return Config(**values)


class StartedDaemon(Daemon):
    """A started in-process daemon with every listener on: its addresses are never None."""

    @property
    def udp(self) -> Address:
        return listening(self.udp_address, "udp")

    @property
    def tcp(self) -> Address:
        return listening(self.tcp_address, "tcp")

    @property
    def query(self) -> Address:
        return listening(self.query_address, "query")


def listening(address: Address | None, role: str) -> Address:
    if address is None:
        raise RuntimeError(f"the {role} listener is off")
    return address


@asynccontextmanager
async def running_daemon(db: Path, **overrides: Any) -> AsyncIterator[StartedDaemon]:
    daemon = StartedDaemon(daemon_config(db, **overrides))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def wait_until(
    predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.01
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.01
) -> None:
    """wait_until for synchronous code (tests driving threads or subprocesses)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        time.sleep(interval)


def read_rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows read through a fresh read-only connection, as any outside reader would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count_rows(db: Path, table: str = "events", where: str = "1") -> int:
    """Rows in a table, read through a fresh connection, as any outside reader would."""
    return int(read_rows(db, f"SELECT count(*) FROM {table} WHERE {where}")[0][0])


def event_rows(db: Path) -> list[tuple[Any, ...]]:
    """(ts, user_id, action, value, extra, msg_id) of every event in commit order, extra
    parsed from its JSON text."""
    rows = read_rows(db, "SELECT ts, user_id, action, value, extra, msg_id FROM events ORDER BY id")
    return [
        (ts, user, action, value, None if extra is None else json.loads(extra), msg)
        for ts, user, action, value, extra, msg in rows
    ]


class DaemonProcess:
    """`python -m collector serve` as a subprocess; addresses read from its start-up line.

    A thread reads its JSON log lines so tests can wait for one (`wait_for_log`).
    """

    def __init__(self, db: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.db = db
        self.args = list(args)
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.addresses: dict[str, Address] = {}  # of the listeners that are on, by role
        self.startup: dict[str, Any] = {}
        self.log_lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "collector", "serve", "--db", str(self.db),
            "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--query", "127.0.0.1:0",
            "--log-format", "json", *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        env = {**os.environ, **(self.env or {})}
        self.process = subprocess.Popen(
            self.command(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()
        self.read_startup(timeout)
        return self

    def read_startup(self, timeout: float) -> None:
        """Wait for the start-up line and take the addresses it names."""
        self.startup = self.wait_for_log(lambda r: r.get("event") == "collector started", timeout)
        for role in ("udp", "tcp", "query"):
            address = parse_address(self.startup.get(role))
            if address is not None:
                self.addresses[role] = address

    @property
    def udp(self) -> Address:
        return listening(self.addresses.get("udp"), "udp")

    @property
    def tcp(self) -> Address:
        return listening(self.addresses.get("tcp"), "tcp")

    @property
    def query(self) -> Address:
        return listening(self.addresses.get("query"), "query")

    def _read_logs(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.log_lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first JSON log record matching `predicate`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.log_lines[seen:]:
                    record = parse_log_line(line)
                    if record is not None and predicate(record):
                        return record
                seen = len(self.log_lines)
                if self._reader is None or not self._reader.is_alive():
                    raise RuntimeError("daemon exited: " + "".join(self.log_lines[-20:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching log line within {timeout}s")
                self._new_line.wait(min(remaining, 0.5))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit (killing it after `timeout`); return its exit code."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for exit; return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def log_records(self) -> list[dict[str, Any]]:
        return [r for r in map(parse_log_line, self.log_lines) if r is not None]


def parse_log_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def parse_address(text: Any) -> Address | None:
    if not text or text == "off":
        return None
    return Address.parse(str(text))


def send_udp(address: Address, *objects: Any) -> None:
    """Send each object as its own datagram."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for obj in objects:
            payload = obj if isinstance(obj, bytes) else msgpack.packb(obj)
            sock.sendto(payload, (address.host, address.port))


class TcpClient:
    """A raw TCP ingest client: write msgpack objects, read msgpack replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.unpacker = msgpack.Unpacker()

    @classmethod
    async def connect(cls, address: Address) -> TcpClient:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer)

    async def send(self, *objects: Any) -> None:
        for obj in objects:
            self.writer.write(obj if isinstance(obj, bytes) else msgpack.packb(obj))
        await self.writer.drain()

    async def reply(self, within: float = IO_TIMEOUT) -> Any:
        """The next msgpack object the daemon sends; raises EOFError if it closes first."""
        async with asyncio.timeout(within):
            while True:
                for obj in self.unpacker:
                    return obj
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("connection closed by the daemon")
                self.unpacker.feed(data)

    async def closed_by_peer(self, within: float = IO_TIMEOUT) -> bool:
        """True once the daemon closes the connection (replies are skipped)."""
        async with asyncio.timeout(within):
            while await self.reader.read(65536):
                pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class QueryClient:
    """A client of the query port: send lines, read replies up to their status line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: Address) -> QueryClient:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer)

    async def send(self, *lines: str) -> None:
        self.writer.write("".join(line + "\n" for line in lines).encode())
        await self.writer.drain()

    async def reply(self, within: float = IO_TIMEOUT) -> tuple[list[str], str]:
        """The data lines (one leading "." removed where stuffed) and the status line."""
        data: list[str] = []
        async with asyncio.timeout(within):
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise EOFError("query connection closed before a status line")
                line = raw.decode().rstrip("\r\n")
                if line == "OK" or line.startswith(("OK ", "ERR ")):
                    return data, line
                data.append(line[1:] if line.startswith(".") else line)

    async def ask(self, line: str, within: float = IO_TIMEOUT) -> tuple[list[str], str]:
        await self.send(line)
        return await self.reply(within)

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
