"""A restart loses no datagram: the socket outlives the daemon, as with systemd."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from systemd_helpers import RATE, ActivatedDaemon, Sender, bound_udp, kernel_drops

from collector.testing import count_rows, wait_until

RECEIVE_BUFFER = 16 * 1024 * 1024  # as in collector.socket; needs root past rmem_max
# A small datagram takes about 830 bytes of the (doubled) buffer; count 1 KiB to be safe.
DATAGRAM_COST = 1024
# The stream must fit in the buffer for this long while no daemon reads: the time to stop
# one daemon and start the next, on a busy machine.
GAP_SECONDS = 5


def distinct_values(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(DISTINCT value) FROM events").fetchone()[0])
    finally:
        conn.close()


async def test_restart_while_sending_loses_nothing(db_path: Path) -> None:
    udp = bound_udp(RECEIVE_BUFFER)
    capacity = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // DATAGRAM_COST
    rate = min(RATE, capacity // GAP_SECONDS)
    assert rate >= 50, f"a receive buffer of {capacity} datagrams is too small to test"
    args = ["--batch-max-age-ms", "20"]
    first = ActivatedDaemon(db_path, [udp], ["udp"], args).start()
    second = ActivatedDaemon(db_path, [udp], ["udp"], args)
    sender = Sender(udp.getsockname(), rate)
    sender.start()
    try:
        await wait_until(lambda: count_rows(db_path) >= rate // 2, within=30)
        assert first.stop() == 0
        stopped_at = sender.sent
        second.start()
        # The stream went on while no daemon was running: that part waited in the queue.
        assert sender.sent > stopped_at
        await wait_until(lambda: count_rows(db_path) >= stopped_at, within=30)
        await wait_until(lambda: sender.sent >= stopped_at + rate // 2, within=30)
    finally:
        sender.done.set()
        sender.join()
    total = sender.sent
    try:
        await wait_until(lambda: count_rows(db_path) >= total, within=30)
    finally:
        assert second.process is None or second.stop() == 0
        drops = kernel_drops(udp)
        udp.close()
    assert (count_rows(db_path), distinct_values(db_path), drops) == (total, total, 0)
