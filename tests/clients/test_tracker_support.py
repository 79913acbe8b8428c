"""Helpers shared by the tracker tests (test_tracker_*.py); this module holds no tests."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.testing import read_rows, wait_until_sync

WAIT = 20.0  # seconds any condition may take; generous, since other work shares the machine
FIXED_CLOCK = 1_700_000_000.25  # the tracker's clock in tests that check times exactly


def stored_events(db: Path, where: str = "1") -> list[dict[str, Any]]:
    """The stored events in commit order, `extra` parsed from its JSON text."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id").fetchall()
    finally:
        conn.close()
    events = [dict(row) for row in rows]
    for event in events:
        if event["extra"] is not None:
            event["extra"] = json.loads(event["extra"])
    return events


def distinct_ids(db: Path) -> int:
    return int(read_rows(db, "SELECT count(DISTINCT msg_id) FROM events")[0][0])


def wait_for(condition: Callable[[], bool], within: float = WAIT) -> None:
    """Poll `condition` from a synchronous test; raise TimeoutError after `within` s."""
    wait_until_sync(condition, within)


@contextmanager
def refused_tcp_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextmanager
def unreachable_udp_port() -> Iterator[int]:
    """A loopback UDP port where nothing receives: held by a socket connected elsewhere,
    which takes datagrams from its peer only, so that the kernel answers the others with
    "port unreachable" (a send error on the sender's next datagram)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        sock.connect(("127.0.0.1", port ^ 1))
        yield port


@contextmanager
def udp_receiver() -> Iterator[socket.socket]:
    """A bound loopback UDP socket standing in for the daemon, to look at the datagrams."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(WAIT)
        yield sock
