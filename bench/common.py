"""What the benchmarks share: a daemon to measure, what to watch of it, the machine they ran on.

Not a benchmark itself; the benchmarks import it:

- `started_daemon`: `python -m collector serve` through collector.testing.DaemonProcess on
  free 127.0.0.1 ports, stopped on leaving; `stopped_stats` and `daemon_complaints` read
  its final counters and the warnings it logged;
- `RssSampler`, `proc_status_kb`: the daemon's memory (VmRSS sampled, VmHWM at the end);
- `udp_kernel_counters`, `counter_delta`: the kernel's system-wide UDP counters;
- `wait_until_settled`: wait until the events table stops growing;
- `read_reply`: the daemon's next msgpack reply on a TCP connection;
- `writer_connection`, `bulk_writer`: a database written as the daemon's writer does,
  for the benchmarks that insert without a daemon;
- `machine_info`: CPUs, CPU model, Python and kernel of the report;
- `per_second`, `quantile_ms`, `kb_to_mb`: the figures as the reports round them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from collector.storage import schema
from collector.storage.bulk import BulkWriter
from collector.storage.writer import prepare_database
from collector.testing import DaemonProcess, count_rows

LOOPBACK = "127.0.0.1"
# The actions an app tracks, in the events the benchmarks make.
ACTIONS = ("page_view", "click", "search", "add_to_cart", "checkout", "purchase", "login")

RECV_BYTES = 65_536
RSS_SAMPLE_SECONDS = 0.05
SETTLE_QUIET_SECONDS = 1.0
SETTLE_POLL_SECONDS = 0.1


# The daemon


@contextlib.contextmanager
def started_daemon(db: Path, args: Sequence[str] = ()) -> Iterator[DaemonProcess]:
    """A daemon on free 127.0.0.1 ports with its database at `db` and `args` passed through.

    It is stopped on leaving unless the caller stopped it already (to read its exit code or
    its final counters). A daemon that does not start ends the benchmark with a message.
    """
    daemon = DaemonProcess(db, args)
    try:
        try:
            daemon.start()
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"bench: the daemon did not start: {exc}".rstrip()) from None
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()


def stopped_stats(daemon: DaemonProcess) -> dict[str, Any]:
    """The counters the daemon logged as it stopped (its last `stopped` record)."""
    for record in reversed(daemon.log_records()):
        if record.get("event") == "stopped":
            return {k: v for k, v in record.items() if k not in ("event", "level", "timestamp")}
    return {}


def daemon_complaints(daemon: DaemonProcess) -> dict[str, int]:
    """Warning and error log events, with how often each was logged."""
    levels = ("warning", "error", "critical")
    records = daemon.log_records()
    return dict(Counter(str(r.get("event")) for r in records if r.get("level") in levels))


def read_reply(
    sock: socket.socket, deadline: float | None = None, unpacker: msgpack.Unpacker | None = None
) -> Any:
    """The next msgpack object the daemon sends, or None once it closes the connection or
    the monotonic `deadline` passes (no deadline: wait as the socket's timeout says). Pass
    the same `unpacker` for every reply of a connection, so none read early is lost."""
    if unpacker is None:
        unpacker = msgpack.Unpacker()
    while True:
        for reply in unpacker:
            return reply
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
        data = sock.recv(RECV_BYTES)
        if not data:
            return None
        unpacker.feed(data)


# The database as the daemon's writer writes it


def writer_connection(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to `path` set up as the writer sets up its own: autocommit, and the
    writer's pragmas with synchronous=NORMAL."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    for pragma in schema.writer_pragmas("normal"):
        conn.execute(pragma)
    return conn


def bulk_writer(path: Path, late_after_days: int = 1) -> BulkWriter:
    """The writer's commit plans on a connection set up as the writer's (the database is
    created and migrated first)."""
    prepare_database(path, "normal")
    return BulkWriter(writer_connection(path, check_same_thread=False), late_after_days)


# Watching the daemon


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


class RssSampler:
    """Samples a process's VmRSS (and the size of a database's WAL file, when given) in a
    thread and keeps the largest values seen."""

    def __init__(self, pid: int, db: Path | None = None) -> None:
        self.pid = pid
        self.wal = None if db is None else db.with_name(db.name + "-wal")
        self.max_kb = 0
        self.max_wal_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.max_kb = max(self.max_kb, proc_status_kb(self.pid, "VmRSS") or 0)
            if self.wal is not None:
                with contextlib.suppress(OSError):
                    self.max_wal_bytes = max(self.max_wal_bytes, self.wal.stat().st_size)
            if self._stop.wait(RSS_SAMPLE_SECONDS):
                return


def udp_kernel_counters() -> dict[str, int]:
    """The system-wide `Udp:` counters of /proc/net/snmp (RcvbufErrors and so on)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    udp = [fields[1:] for fields in lines if fields and fields[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    return dict(zip(udp[0], map(int, udp[1]), strict=False))


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if name in before}


def wait_until_settled(db: Path, timeout: float) -> float:
    """Poll the events row count until it holds still for a second; return the monotonic
    time of its last change (or of the first poll)."""
    changed_at = time.monotonic()
    deadline = changed_at + timeout
    last = count_rows(db)
    while True:
        now = time.monotonic()
        if now - changed_at >= SETTLE_QUIET_SECONDS or now >= deadline:
            return changed_at
        time.sleep(SETTLE_POLL_SECONDS)
        count = count_rows(db)
        if count != last:
            last, changed_at = count, time.monotonic()


# The machine and the figures


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def quantile_ms(ordered: list[float], q: float) -> float | None:
    """The `q` quantile of sorted seconds, in milliseconds (None when there are none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def kb_to_mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)
