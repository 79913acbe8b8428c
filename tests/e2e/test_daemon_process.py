"""The real daemon as a subprocess: `python -m collector serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from collector import __version__
from collector.testing import DaemonProcess, TcpClient, count_rows, send_udp

SIGTERM_EXIT = 128 + signal.SIGTERM


@pytest.fixture
def daemon(db_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(db_path, ["--batch-max-age-ms", "20", "--stats-interval", "0.05"])
    process.start()
    yield process
    process.stop()


def received(count: int) -> object:
    return lambda record: record.get("event") == "stats" and record["events_received"] == count


def test_start_up_line_names_addresses_database_and_version(
    daemon: DaemonProcess, db_path: Path
) -> None:
    assert daemon.startup["version"] == __version__
    assert daemon.startup["db"] == str(db_path)
    assert daemon.udp is not None and daemon.udp.port != 0
    assert daemon.tcp is not None and daemon.tcp.port != 0


async def test_udp_and_tcp_ingest_end_to_end(daemon: DaemonProcess, db_path: Path) -> None:
    send_udp(daemon.udp, {"action": "u1", "user_id": 7}, [{"action": "u2"}, {"action": "u3"}])
    client = await TcpClient.connect(daemon.tcp)
    await client.send({"action": "t1"}, [{"action": "t2"}, {"nope": True}])
    await client.send({"events": [{"action": "t3", "id": "x"}, {"action": "t3", "id": "x"}],
                       "ack": b"\x00\x01"})  # fmt: skip
    reply = await client.reply()
    assert reply == {"ack": b"\x00\x01", "stored": 1, "rejected": 0, "duplicates": 1}
    await client.close()
    await asyncio.to_thread(daemon.wait_for_log, received(8))
    assert daemon.stop() == 0
    assert count_rows(db_path) == 6
    assert count_rows(db_path, "quarantine") == 1
    assert count_rows(db_path, where="user_id = '7' AND action = 'u1'") == 1


async def test_corrupt_stream_is_closed_and_daemon_keeps_serving(
    daemon: DaemonProcess, db_path: Path
) -> None:
    bad = await TcpClient.connect(daemon.tcp)
    await bad.send({"action": "kept"}, b"\xc1\x00\x00")
    assert await bad.closed_by_peer()
    await bad.close()
    good = await TcpClient.connect(daemon.tcp)
    await good.send({"events": [{"action": "fine"}], "ack": "ok"})
    assert (await good.reply())["stored"] == 1
    await good.close()
    await asyncio.to_thread(daemon.wait_for_log, received(2))
    warning = daemon.wait_for_log(lambda r: r.get("event") == "closing TCP connection on bad input")
    assert warning["reason"].startswith("not valid msgpack")
    assert daemon.stop() == 0
    assert count_rows(db_path) == 2


async def test_sigterm_commits_everything_already_received(db_path: Path) -> None:
    process = DaemonProcess(
        db_path,
        ["--batch-max-age-ms", "600000", "--batch-size", "1000000", "--stats-interval", "0.05"],
    ).start()
    send_udp(process.udp, *({"action": "udp", "value": i} for i in range(300)))
    client = await TcpClient.connect(process.tcp)
    await client.send(*({"action": "tcp", "value": i} for i in range(500)))
    await asyncio.to_thread(process.wait_for_log, received(800))
    assert count_rows(db_path) == 0
    assert process.stop() == 0
    await client.close()
    assert count_rows(db_path) == 800
    stopped = [r for r in process.log_records() if r.get("event") == "stopped"]
    assert stopped[0]["events_stored"] == 800


async def test_sigterm_sends_pending_acks_before_exit(db_path: Path) -> None:
    process = DaemonProcess(
        db_path,
        ["--batch-max-age-ms", "600000", "--eager-ack-commit", "false", "--stats-interval", "0.05"],
    ).start()
    client = await TcpClient.connect(process.tcp)
    await client.send({"events": [{"action": "late"}] * 3, "ack": "final"})
    await asyncio.to_thread(process.wait_for_log, received(3))
    process.signal(signal.SIGTERM)
    assert await client.reply() == {"ack": "final", "stored": 3, "rejected": 0}
    assert process.wait() == 0
    await client.close()
    assert count_rows(db_path) == 3


def test_second_signal_exits_at_once(db_path: Path) -> None:
    process = DaemonProcess(
        db_path, ["--writer-delay-ms", "600000", "--stats-interval", "0.05"]
    ).start()
    send_udp(process.udp, {"action": "stuck"})
    process.wait_for_log(received(1))
    process.signal(signal.SIGTERM)
    process.wait_for_log(lambda r: r.get("event") == "stopping")
    # Signals within the grace period repeat the first; a later one exits at once.
    assert process.process is not None
    for _ in range(100):
        process.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.process.wait(timeout=0.1)
            break
    assert process.wait(timeout=20) == SIGTERM_EXIT
    events = [r.get("event") for r in process.log_records()]
    assert events.count("second signal, exiting at once") == 1
    assert "stopped" not in events


def test_a_signal_delivered_twice_still_stops_gracefully(db_path: Path) -> None:
    process = DaemonProcess(
        db_path, ["--batch-max-age-ms", "600000", "--stats-interval", "0.05"]
    ).start()
    send_udp(process.udp, *({"action": "twice", "value": i} for i in range(50)))
    process.wait_for_log(received(50))
    # Two different signals, so the kernel cannot merge them into one delivery.
    process.signal(signal.SIGTERM)
    process.signal(signal.SIGINT)
    assert process.wait() == 0
    assert count_rows(db_path) == 50
    events = [r.get("event") for r in process.log_records()]
    assert "repeated signal ignored" in events


def test_garbage_datagram_is_quarantined(daemon: DaemonProcess, db_path: Path) -> None:
    send_udp(daemon.udp, b"\xff\xfe\xfd", msgpack.packb({"action": "fine"}))
    daemon.wait_for_log(lambda r: r.get("event") == "stats" and r["datagrams_received"] == 2)
    assert daemon.stop() == 0
    assert count_rows(db_path) == 1
    assert count_rows(db_path, "quarantine", "raw = x'fffefd'") == 1


def test_a_port_in_use_is_a_clear_error_and_exit_code_1(db_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "collector", "serve", "--db", str(db_path),
             "--udp", "off", "--query", "off", "--tcp", f"127.0.0.1:{port}",
             "--log-format", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"cannot start"' in line]
    assert len(errors) == 1 and "address already in use" in errors[0]["error"].lower()
