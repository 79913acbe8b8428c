"""sd_notify(3) in plain Python: datagrams to the service manager's $NOTIFY_SOCKET.

A no-op when the variable is absent, so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("collector.sdnotify")

# A send must never hold up the event loop for long; a lost STATUS or ping is harmless.


def notify_address(raw: str | None) -> str | None:
    """The AF_UNIX address in $NOTIFY_SOCKET: a path, or '@name' for an abstract name."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # vsock: and other forms are for VMs; we do not speak them.
    log.warning("NOTIFY_SOCKET not supported, notifications off", notify_socket=raw)
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Half of $WATCHDOG_USEC in seconds when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdecimal()) or int(usec) == 0:
        return None
    if owner and (not (owner.isascii() and owner.isdecimal()) or int(owner) != pid):
        return None
    return int(usec) / 2_000_000


class Notifier:
    """Sends state changes to the service manager; does nothing without an address."""

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        address = notify_address(env.get("NOTIFY_SOCKET"))
        watchdog = watchdog_interval(env, os.getpid()) if address else None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of VAR=value lines; False when it could not be delivered."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # Never block the event loop: a busy manager loses this message instead.
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager", error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # systemd 253+ pairs the reload with this clock reading (CLOCK_MONOTONIC in us).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
