"""What the systemd tests share: a fake notify socket and a daemon started the way systemd
starts it (sockets passed from fd 3 on, LISTEN_PID set to the daemon's own pid)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import msgpack

from collector.testing import DaemonProcess

# Runs in the child: move the passed sockets to fds 3, 4, ... (through high numbers first,
# so no move overwrites a socket not yet moved), then become the daemon under this pid.
LAUNCHER = """
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: a path or an abstract AF_UNIX name."""

    def __init__(self, directory: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"collector-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        # (monotonic time of receipt, the message's VAR=value lines)
        self.messages: list[tuple[float, list[str]]] = []

    def receive(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        lines = data.decode().split("\n")
        self.messages.append((time.monotonic(), lines))
        return lines

    def drain(self) -> list[list[str]]:
        """Every message already queued, without waiting."""
        drained = []
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return drained
            lines = data.decode().split("\n")
            self.messages.append((time.monotonic(), lines))
            drained.append(lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            lines = self.receive(remaining)
            if lines is not None and predicate(lines):
                return lines
        raise TimeoutError(f"no matching notification within {timeout}s")

    def received(self) -> list[list[str]]:
        return [lines for _, lines in self.messages]

    def close(self) -> None:
        self.sock.close()


def kind(lines: list[str]) -> str:
    """The first variable of a message: READY, STATUS, WATCHDOG, STOPPING, ..."""
    return lines[0].split("=", 1)[0]


def has(name: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(line.split("=", 1)[0] == name for line in lines)


class ActivatedDaemon(DaemonProcess):
    """The daemon with `sockets` passed as systemd passes them; names go to LISTEN_FDNAMES
    unless `names` is None."""

    def __init__(
        self,
        db: Path,
        sockets: Sequence[socket.socket],
        names: Sequence[str] | None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        activation_env = {"LISTEN_FDS": str(len(sockets))}
        if names is not None:
            activation_env["LISTEN_FDNAMES"] = ":".join(names)
        super().__init__(db, args, {**activation_env, **(env or {})})
        self.fds = [sock.fileno() for sock in sockets]

    def command(self) -> list[str]:
        daemon = super().command()
        return [sys.executable, "-c", LAUNCHER, ",".join(map(str, self.fds)), *daemon[1:]]

    def start(self, timeout: float = 20.0) -> ActivatedDaemon:
        self.launch()
        self.read_startup(timeout)
        return self

    def launch(self) -> None:
        """Start the process and its log reader without waiting for it to be ready."""
        env = {**os.environ, **(self.env or {})}
        env.pop("LISTEN_PID", None)
        self.process = subprocess.Popen(
            self.command(),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            pass_fds=self.fds,
        )
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()


def bound_udp(receive_buffer: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if receive_buffer:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, receive_buffer)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind(("127.0.0.1", 0))
    return sock


def listening_tcp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


RATE = 1000  # datagrams per second, sent every 10 ms


class Sender(threading.Thread):
    """A steady stream of numbered datagrams until stopped; `sent` counts them."""

    def __init__(self, target: tuple[str, int], rate: int = RATE) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.rate = rate
        self.sent = 0
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.done.is_set():
                due = int((time.monotonic() - started) * self.rate)
                while self.sent < due:
                    sock.sendto(msgpack.packb({"action": "r", "value": self.sent}), self.target)
                    self.sent += 1
                self.done.wait(0.01)


def kernel_drops(sock: socket.socket) -> int:
    """The socket's drop counter from /proc/net/udp (what overflowed its buffer)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/udp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[-1])
    raise LookupError("socket not in /proc/net/udp")
