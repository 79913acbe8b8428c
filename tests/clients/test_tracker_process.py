"""The tracker across processes, against a daemon subprocess: os.fork(), interpreter exit,
and `python -m collector_client send`."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from collector_client import Tracker
from test_tracker_support import WAIT, distinct_ids, refused_tcp_port, stored_events, wait_for

from collector.testing import DaemonProcess, count_rows

Transport = Literal["udp", "tcp"]


@pytest.fixture
def daemon(db_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(db_path).start()
    try:
        yield process
    finally:
        process.stop()


def port_of(daemon: DaemonProcess, transport: Transport) -> int:
    address = daemon.udp if transport == "udp" else daemon.tcp
    assert address is not None
    return address.port


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_parent_and_forked_child_each_send_their_own_events_once(
    daemon: DaemonProcess, transport: Transport
) -> None:
    # A long linger keeps the parent's events queued at the fork: the child must not send them.
    tracker = Tracker("127.0.0.1", port_of(daemon, transport), transport, linger_ms=60_000)
    for i in range(100):
        tracker.track("parent", value=i)
    pid = os.fork()
    if pid == 0:
        complete = False
        try:
            for i in range(50):
                tracker.track("child", value=i)
            complete = tracker.flush(WAIT).complete and tracker.stats().queued == 50
        finally:
            os._exit(0 if complete else 1)
    for i in range(100, 200):
        tracker.track("parent", value=i)
    assert tracker.flush(WAIT).complete
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for(lambda: count_rows(daemon.db) >= 250)
    tracker.close()
    assert count_rows(daemon.db) == 250 and distinct_ids(daemon.db) == 250
    values = {(e["action"], e["value"]) for e in stored_events(daemon.db)}
    assert values == {("parent", i) for i in range(200)} | {("child", i) for i in range(50)}
    assert tracker.stats().queued == 200


def test_multiprocessing_children_flush_when_they_end(daemon: DaemonProcess) -> None:
    # They end with os._exit(), which skips atexit: the tracker hooks multiprocessing's exit.
    tracker = Tracker("127.0.0.1", port_of(daemon, "tcp"), "tcp", linger_ms=60_000)

    def work(worker: int) -> None:
        for i in range(100):
            tracker.track("worker", user_id=worker, value=i)

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=work, args=(n,)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert count_rows(daemon.db) == 300 and distinct_ids(daemon.db) == 300
    tracker.close()


def run_python(code: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_what_is_queued_is_sent_when_the_interpreter_exits(
    daemon: DaemonProcess, transport: Transport
) -> None:
    finished = run_python(f"""
        from collector_client import Tracker
        tracker = Tracker("127.0.0.1", {port_of(daemon, transport)}, "{transport}",
                          linger_ms=60_000)
        for i in range(500):
            tracker.track("at_exit", value=i)
    """)
    assert finished.returncode == 0, finished.stderr
    wait_for(lambda: count_rows(daemon.db) >= 500)
    assert sorted(e["value"] for e in stored_events(daemon.db)) == list(range(500))


def test_an_async_tracker_left_open_is_flushed_at_exit(daemon: DaemonProcess) -> None:
    finished = run_python(f"""
        import asyncio
        from collector_client import AsyncTracker

        async def main():
            tracker = AsyncTracker("127.0.0.1", {port_of(daemon, "tcp")}, "tcp",
                                   linger_ms=60_000)
            for i in range(300):
                tracker.track("left_open", value=i)

        asyncio.run(main())
    """)
    assert finished.returncode == 0, finished.stderr
    assert count_rows(daemon.db) == 300  # acknowledged before the process ended


def test_a_signal_handler_may_track_while_track_is_interrupted() -> None:
    finished = run_python("""
        import signal, socket
        from collector_client import Tracker

        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        tracker = Tracker("127.0.0.1", receiver.getsockname()[1], "udp", max_queue=1_000_000,
                          caller_sends=False, linger_ms=60_000)
        handled = 0

        def on_alarm(signum, frame):
            global handled
            handled += 1
            tracker.track("alarm")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        for i in range(200_000):
            tracker.track("loop", value=i)
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert handled > 0 and tracker.stats().queued == 200_000 + handled
        tracker.close(0)
        print("ok")
    """)
    assert (finished.returncode, finished.stdout.strip()) == (0, "ok"), finished.stderr


def send(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector_client", "send", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_send_over_udp(daemon: DaemonProcess) -> None:
    port = str(port_of(daemon, "udp"))
    extras = ["--extra", "page=/home", "--extra", "n=7", "--extra", "ratio=0.5"]
    finished = send("deploy", "--user", "ci", "--value", "42", *extras, "--port", port)
    assert (finished.returncode, finished.stderr) == (0, "")
    wait_for(lambda: count_rows(daemon.db) == 1)
    [event] = stored_events(daemon.db)
    assert (event["action"], event["user_id"], event["value"]) == ("deploy", "ci", 42)
    assert event["extra"] == {"page": "/home", "n": 7, "ratio": 0.5}


def test_send_over_tcp_waits_for_the_ack(daemon: DaemonProcess) -> None:
    port = str(port_of(daemon, "tcp"))
    finished = send("backup", "--value", "done", "--id", "backup-1", "--tcp", "--port", port)
    assert (finished.returncode, finished.stderr) == (0, "")
    [event] = stored_events(daemon.db)  # acknowledged, so already stored
    assert (event["action"], event["value"], event["msg_id"]) == ("backup", "done", "backup-1")
    again = send("backup", "--value", "done", "--id", "backup-1", "--tcp", "--port", port)
    assert again.returncode == 0 and count_rows(daemon.db) == 1


def test_send_over_tcp_says_when_the_daemon_rejects_the_event(daemon: DaemonProcess) -> None:
    finished = send("x" * 201, "--tcp", "--port", str(port_of(daemon, "tcp")))
    assert finished.returncode == 1
    assert "rejected" in finished.stderr


def test_send_over_tcp_fails_when_no_ack_comes() -> None:
    with refused_tcp_port() as port:
        finished = send("lost", "--tcp", "--port", str(port), "--timeout", "0.5")
    assert finished.returncode == 2
    assert f"no acknowledgement from 127.0.0.1:{port} within 0.5 s" in finished.stderr
    assert "refused" in finished.stderr


def test_send_refuses_an_extra_without_a_value() -> None:
    finished = send("x", "--extra", "lonely")
    assert finished.returncode == 2 and "expected KEY=VALUE" in finished.stderr
