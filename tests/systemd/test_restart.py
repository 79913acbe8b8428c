"""A restart loses no datagram: the socket outlives the daemon, as with systemd."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from systemd_helpers import RATE, ActivatedDaemon, Sender, bound_udp, kernel_drops

from collector.testing import count_rows, wait_until

# Room for several seconds of the stream while no daemon reads (~1 KiB each in the kernel).
RECEIVE_BUFFER = 16 * 1024 * 1024


def distinct_values(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(DISTINCT value) FROM events").fetchone()[0])
    finally:
        conn.close()


async def test_restart_while_sending_loses_nothing(db_path: Path) -> None:
    udp = bound_udp(RECEIVE_BUFFER)
    assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * 1024 * 1024
    args = ["--batch-max-age-ms", "20"]
    first = ActivatedDaemon(db_path, [udp], ["udp"], args).start()
    second = ActivatedDaemon(db_path, [udp], ["udp"], args)
    sender = Sender(udp.getsockname())
    sender.start()
    try:
        await wait_until(lambda: count_rows(db_path) >= RATE // 2, within=30)
        assert first.stop() == 0
        stopped_at = sender.sent
        second.start()
        # The stream went on while no daemon was running: that part waited in the queue.
        assert sender.sent > stopped_at
        await wait_until(lambda: count_rows(db_path) >= stopped_at, within=30)
        await wait_until(lambda: sender.sent >= stopped_at + RATE // 2, within=30)
    finally:
        sender.done.set()
        sender.join()
    total = sender.sent
    try:
        await wait_until(lambda: count_rows(db_path) >= total, within=30)
    finally:
        assert second.stop() == 0
        drops = kernel_drops(udp)
        udp.close()
    assert (count_rows(db_path), distinct_values(db_path), drops) == (total, total, 0)
