"""Run a daemon for tests and benchmarks: in-process on port 0, or as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from collector.config import Address, Config
from collector.daemon import Daemon

LOOPBACK_ANY_PORT = Address("127.0.0.1", 0)


def test_config(db: Path, **overrides: Any) -> Config:
    """A config bound to free loopback ports, with the query port and stats logs off."""
    values: dict[str, Any] = {
        "db": db,
        "udp": LOOPBACK_ANY_PORT,
        "tcp": LOOPBACK_ANY_PORT,
        "query": None,
        "stats_interval": 0.0,
    }
    values.update(overrides)
    return Config(**values)


@asynccontextmanager
async def running_daemon(db: Path, **overrides: Any) -> AsyncIterator[Daemon]:
    daemon = Daemon(test_config(db, **overrides))
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


def count_rows(db: Path, table: str = "events", where: str = "1") -> int:
    """Rows in a table, read through a fresh connection, as any outside reader would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0])
    finally:
        conn.close()


class DaemonProcess:
    """`python -m collector serve` as a subprocess; addresses read from its start-up line."""

    def __init__(self, db: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.db = db
        self.args = list(args)
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.udp: Address | None = None
        self.tcp: Address | None = None
        self.startup: dict[str, Any] = {}
        self.log_lines: list[str] = []

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        command = [
            sys.executable, "-m", "collector", "serve", "--db", str(self.db),
            "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--query", "off",
            "--log-format", "json", *self.args,
        ]  # fmt: skip
        env = {**os.environ, **(self.env or {})}
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.startup = self._read_until("collector started", timeout)
        self.udp = parse_address(self.startup.get("udp"))
        self.tcp = parse_address(self.startup.get("tcp"))
        return self

    def _read_until(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stderr is not None
        deadline = time.monotonic() + timeout
        stream: IO[str] = self.process.stderr
        while time.monotonic() < deadline:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"daemon exited early: {''.join(self.log_lines)}")
            self.log_lines.append(line)
            record = json.loads(line)
            if record.get("event") == event:
                return dict(record)
        raise TimeoutError(f"no {event!r} log line within {timeout}s")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for exit, return the exit code; the rest of stderr is kept."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, rest = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, rest = self.process.communicate()
        self.log_lines.extend(rest.splitlines(keepends=True))
        return self.process.returncode

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_lines if line.startswith("{")]


def parse_address(text: Any) -> Address | None:
    if not text or text == "off":
        return None
    return Address.parse(str(text))
