"""Socket activation (sd_listen_fds(3)): listening sockets handed over by the service manager.

The service manager keeps its own copy of each socket, so a restart of the daemon leaves
them open and datagrams sent meanwhile wait in the kernel. For the same reason an inherited
socket is only ever closed by us, never shut down: shutdown() would act on the shared socket.

Each socket's role comes from its name (FileDescriptorName=): "udp", "tcp" or "query".
A socket without one of these names is given a role by its type: a datagram socket is UDP
ingest, the first unnamed stream socket is TCP ingest, the next the query port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from collector.config import Address
from collector.sockets import udp_socket

log = structlog.get_logger("collector.activation")

LISTEN_FDS_START = 3
ROLES = ("udp", "tcp", "query")
ROLE_TYPES = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM, "query": socket.SOCK_STREAM}
ENV_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(RuntimeError):
    """Passed sockets that cannot be used as they are."""


def listen_fds(env: MutableMapping[str, str]) -> list[tuple[int, str]]:
    """(fd, name) for each descriptor passed to this process; the variables are removed
    so that no child process takes them for its own."""
    try:
        pid = env.get("LISTEN_PID", "")
        count = env.get("LISTEN_FDS", "")
        names = env.get("LISTEN_FDNAMES")
        if not (pid.isascii() and pid.isdecimal()) or int(pid) != os.getpid():
            return []
        if not (count.isascii() and count.isdecimal()):
            raise ActivationError(f"LISTEN_FDS is not a number: {count!r}")
        fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
        labels = names.split(":") if names is not None else ["unknown"] * len(fds)
        if len(labels) != len(fds):
            raise ActivationError(f"LISTEN_FDNAMES names {len(labels)} sockets, not {len(fds)}")
        return list(zip(fds, labels, strict=True))
    finally:
        for name in ENV_VARS:
            env.pop(name, None)


def inherited_sockets(env: MutableMapping[str, str] | None = None) -> dict[str, socket.socket]:
    """The passed sockets by role, each checked for its type; {} without activation."""
    passed = listen_fds(os.environ if env is None else env)
    sockets: dict[str, socket.socket] = {}
    try:
        for fd, name in passed:
            try:
                os.set_inheritable(fd, False)
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                raise ActivationError(f"descriptor {fd} ({name}) is not a socket") from exc
            try:
                role = assign_role(sock, name, sockets)
            except BaseException:
                sock.close()
                raise
            sockets[role] = sock
            log.info("socket passed by the service manager", role=role, fd=fd, name=name)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def passed_sockets() -> dict[str, socket.socket] | None:
    """inherited_sockets(), or None (the reason logged) when they cannot be used."""
    try:
        return inherited_sockets()
    except ActivationError as exc:
        log.error("cannot use the sockets passed by the service manager", error=str(exc))
        return None


def assign_role(sock: socket.socket, name: str, taken: dict[str, socket.socket]) -> str:
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ActivationError(f"socket {name!r} is not an IPv4 or IPv6 socket")
    if name in ROLES:
        role = name
    else:
        free = [r for r in ROLES if r not in taken and ROLE_TYPES[r] == kind]
        if not free:
            raise ActivationError(f"no role left for the unnamed socket {name!r}")
        role = free[0]
    if role in taken:
        raise ActivationError(f"two sockets are named {role!r}")
    if kind != ROLE_TYPES[role]:
        expected = "datagram" if ROLE_TYPES[role] == socket.SOCK_DGRAM else "stream"
        raise ActivationError(f"socket {name!r} must be a {expected} socket")
    if kind == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError(f"stream socket {name!r} is not listening")
    sock.setblocking(False)
    return role


def udp_listener(
    inherited: Mapping[str, socket.socket], address: Address | None, receive_buffer: int
) -> socket.socket | None:
    """The UDP ingest socket: the inherited one, else a new one bound to `address`.

    An inherited socket keeps the receive buffer its socket unit gave it (ReceiveBuffer=):
    the service manager can size it past net.core.rmem_max, the daemon alone cannot.
    """
    sock = inherited.get("udp")
    if sock is None:
        return None if address is None else udp_socket(address, receive_buffer)
    return sock


def listen_on(
    inherited: Mapping[str, socket.socket], role: str, address: Address | None
) -> dict[str, Any] | None:
    """Where a stream server listens, as create_server() keywords: the inherited socket,
    else the configured address; None when the role is off."""
    sock = inherited.get(role)
    if sock is not None:
        return {"sock": sock}
    if address is None:
        return None
    return {"host": address.host, "port": address.port}
