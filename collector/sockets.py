"""Listening sockets: the UDP ingest socket and the address a socket is bound to."""

from __future__ import annotations

import socket
import sys

from collector.config import Address

# listen() backlog, also applied to sockets passed by systemd (listen() again resets theirs):
# systemd's own default (Backlog=, SOMAXCONN), capped by net.core.somaxconn.
LISTEN_BACKLOG = 4096
# Python's socket module lacks the constant; it lets CAP_NET_ADMIN exceed rmem_max.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def udp_socket(address: Address, receive_buffer: int) -> socket.socket:
    """A bound UDP socket with a large receive buffer (forced past rmem_max when allowed)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if receive_buffer:
            set_receive_buffer(sock, receive_buffer)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    force = SO_RCVBUFFORCE
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def receive_buffer_size(sock: socket.socket) -> int:
    """The receive buffer the kernel gave (Linux reports twice the size, its bookkeeping
    included)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)
