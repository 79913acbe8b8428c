"""sd_notify: the real daemon against a fake service manager socket."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_helpers import NotifyListener, has, kind

from collector.sdnotify import Notifier, notify_address, watchdog_interval
from collector.testing import DaemonProcess, count_rows, send_udp

WATCHDOG_USEC = 400_000  # pings every 0.2 s


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield notify
    notify.close()


def started(db: Path, listener: NotifyListener, *args: str, watchdog: bool = True) -> DaemonProcess:
    env = {"NOTIFY_SOCKET": listener.address}
    if watchdog:
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    return DaemonProcess(db, ["--stats-interval", "0", *args], env=env).start()


def test_no_notify_socket_means_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


def test_addresses_and_watchdog_settings() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("vsock:2:1234") is None
    assert notify_address("") is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_messages_reach_path_and_abstract_sockets(listener: NotifyListener) -> None:
    notifier = Notifier(notify_address(listener.address))
    assert notifier.ready() and notifier.status("a\nb") and notifier.extend_timeout(2.5)
    assert listener.drain() == [["READY=1"], ["STATUS=a b"], ["EXTEND_TIMEOUT_USEC=2500000"]]
    notifier.close()


def test_ready_status_watchdog_pace_and_stopping(db_path: Path, listener: NotifyListener) -> None:
    daemon = started(db_path, listener)
    first = listener.wait_for(lambda lines: True)
    assert first == ["READY=1"]
    status = listener.wait_for(lambda lines: True)
    assert kind(status) == "STATUS"
    assert status[0] == "STATUS=0 events/s, 0 stored, 0 buffered"
    ping_times = []
    while len(ping_times) < 11:
        listener.wait_for(has("WATCHDOG"), timeout=5)
        ping_times.append(listener.messages[-1][0])
    # Half of WATCHDOG_USEC is 0.2 s, so ten intervals take 2 s; the margins allow for a
    # late read here (a shorter span) and a busy machine there (a longer one).
    assert 1.5 < ping_times[-1] - ping_times[0] < 4.0
    assert daemon.stop() == 0
    # Pings may go on while the stop runs; the other messages end with these two.
    rest = [lines for lines in listener.drain() if kind(lines) != "WATCHDOG"]
    assert rest[-2:] == [["STOPPING=1"], ["STATUS=stopping: flushing 0 buffered events"]]
    assert [kind(lines) for lines in listener.received()].count("READY") == 1


def test_status_line_counts_events(db_path: Path, listener: NotifyListener) -> None:
    daemon = started(db_path, listener, "--batch-max-age-ms", "5", watchdog=False)
    listener.wait_for(has("READY"))
    send_udp(daemon.udp, *({"action": "s", "value": i} for i in range(50)))
    listener.wait_for(lambda lines: lines[0].endswith(", 50 stored, 0 buffered"))
    assert daemon.stop() == 0


def test_no_pings_while_the_writer_is_blocked(db_path: Path, listener: NotifyListener) -> None:
    daemon = started(db_path, listener, "--batch-max-age-ms", "5")
    listener.wait_for(has("WATCHDOG"))
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the writer's BEGIN IMMEDIATE now waits, then retries
    send_udp(daemon.udp, {"action": "blocked"})
    daemon.wait_for_log(lambda r: r.get("event") == "a commit is taking too long; watchdog "
                        "pings held back")  # fmt: skip
    # Every ping sent before that warning is already queued here: take them out.
    listener.drain()
    daemon.wait_for_log(lambda r: r.get("event") == "commit failed, will retry")
    held = listener.drain()
    assert [lines for lines in held if kind(lines) == "WATCHDOG"] == []
    assert any("commit stalled for" in lines[0] for lines in held if kind(lines) == "STATUS")
    lock.execute("ROLLBACK")
    lock.close()
    daemon.wait_for_log(lambda r: r.get("event") == "writer progressing again, watchdog pings "
                        "resumed")  # fmt: skip
    listener.wait_for(has("WATCHDOG"), timeout=5)
    assert daemon.stop() == 0
    assert count_rows(db_path) == 1


def test_stop_extends_the_timeout_while_the_final_flush_runs(
    db_path: Path, listener: NotifyListener
) -> None:
    daemon = started(
        db_path,
        listener,
        *("--batch-max-age-ms", "600000", "--batch-size", "1000000"),
        *("--writer-delay-ms", "2500"),
        watchdog=False,
    )
    send_udp(daemon.udp, *({"action": "late", "value": i} for i in range(20)))
    daemon.wait_for_log(lambda r: r.get("event") == "collector started")
    listener.wait_for(lambda lines: lines[0].endswith(", 20 buffered"))
    daemon.signal(signal.SIGTERM)
    assert listener.wait_for(lambda lines: kind(lines) != "STATUS") == ["STOPPING=1"]
    assert listener.wait_for(lambda lines: True) == ["STATUS=stopping: flushing 20 buffered events"]
    extend = listener.wait_for(lambda lines: True)
    assert kind(extend) == "EXTEND_TIMEOUT_USEC"
    assert int(extend[0].split("=")[1]) >= 1_000_000
    assert daemon.wait() == 0
    assert count_rows(db_path) == 20


def test_notifier_survives_a_vanished_manager(tmp_path: Path) -> None:
    gone = NotifyListener(tmp_path)
    notifier = Notifier(gone.address)
    gone.close()
    assert notifier.ready() is False  # logged, not raised
    notifier.close()
