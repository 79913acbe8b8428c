"""UDP ingest against an in-process daemon on a real loopback socket."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgpack

from collector.testing import count_rows, running_daemon, send_udp, wait_until


def fetch_events(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT ts, user_id, action, value, extra, msg_id FROM events ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


async def test_single_event_is_stored_with_exact_fields(db_path: Path) -> None:
    event = {
        "action": "click",
        "user_id": 42,
        "value": "signup-button",
        "extra": {"page": {"path": "/home", "tags": [1, "a", None]}, "ab": True},
        "ts": msgpack.Timestamp(1_700_000_000, 123_456_789),
        "id": "m-1",
    }
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, event)
        await wait_until(lambda: daemon.stats.events_stored == 1)
    [row] = fetch_events(db_path)
    assert row[:4] == (1_700_000_000_123, "42", "click", "signup-button")
    assert json.loads(str(row[4])) == {
        "page": {"path": "/home", "tags": [1, "a", None]},
        "ab": True,
    }
    assert row[5] == "m-1"


async def test_batches_and_single_events_in_many_datagrams(db_path: Path) -> None:
    batch = [{"action": "view", "user_id": f"u{i}", "value": i} for i in range(50)]
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, batch, {"action": "one"}, batch)
        await wait_until(lambda: daemon.stats.events_stored == 101)
        assert daemon.stats.datagrams_received == 3
        assert daemon.stats.events_received == 101
    assert count_rows(db_path) == 101
    assert count_rows(db_path, where="action = 'view' AND value = 49") == 2


async def test_garbage_datagram_is_quarantined_with_reason(db_path: Path) -> None:
    garbage = b"\xc1 definitely not msgpack"
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, garbage, b"\x92\x01", {"action": "ok"})
        await wait_until(lambda: daemon.stats.quarantined == 2 and daemon.stats.events_stored == 1)
        assert daemon.stats.decode_errors == 2
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT source, reason, raw FROM quarantine ORDER BY id").fetchall()
    conn.close()
    assert [raw for _, _, raw in rows] == [garbage, b"\x92\x01"]
    assert all(reason.startswith("not valid msgpack") for _, reason, _ in rows)
    assert all(source.startswith("udp:127.0.0.1:") for source, _, _ in rows)


async def test_mixed_batch_keeps_good_events_and_quarantines_bad(db_path: Path) -> None:
    batch = [
        {"action": "ok", "user_id": 1},
        {"action": ""},
        {"user_id": 2},
        "not a map",
        {"action": "ok", "value": {"nested": "map"}},
        {"action": "ok", "extra": {"k": 1}, "surprise": "kept"},
    ]
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, batch)
        await wait_until(lambda: daemon.stats.quarantined == 4)
        assert daemon.stats.events_stored == 2
        assert daemon.stats.events_rejected == 4
    assert count_rows(db_path) == 2
    assert count_rows(db_path, "quarantine") == 4
    assert count_rows(db_path, where="""extra = '{"k":1,"surprise":"kept"}'""") == 1


async def test_duplicate_ids_are_stored_once(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        send_udp(daemon.udp, {"action": "a", "id": "same"})
        await wait_until(lambda: daemon.stats.events_stored == 1)
        send_udp(daemon.udp, {"action": "a", "id": "same"}, {"action": "a"})
        await wait_until(lambda: daemon.stats.events_stored == 2)
        assert daemon.stats.events_duplicate == 1
    assert count_rows(db_path) == 2
