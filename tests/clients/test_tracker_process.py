"""The tracker across processes, against a daemon subprocess: os.fork(), interpreter exit,
and `python -m collector_client send`."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
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


def reap(pids: list[int], within: float) -> list[int]:
    """Wait for the children without blocking on any one of them; return the exit codes.
    Those still running after `within` seconds are killed, and the test fails."""
    codes: dict[int, int] = {}
    deadline = time.monotonic() + within
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        threading.Event().wait(0.01)
    hung = [pid for pid in pids if pid not in codes]
    for pid in hung:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not hung, f"{len(hung)} of {len(pids)} forked children hung"
    return [codes[pid] for pid in pids]


def track_in_child_and_exit(tracker: Tracker, child: int) -> None:
    """A forked child's own 20 events, sent by its own sender; exit 0 once acknowledged."""
    complete = False
    try:
        for i in range(20):
            tracker.track("child", user_id=child, value=i)
        complete = tracker.flush(WAIT).complete and tracker.stats().queued == 20
    finally:
        os._exit(0 if complete else 1)


def test_a_fork_while_threads_track_over_tcp_never_hangs_the_child(
    daemon: DaemonProcess,
) -> None:
    # Small batches: the tracking threads are often inside assist(), holding the sender's
    # lock, the queue's lock or the Packer, when the main thread forks.
    tracker = Tracker(
        "127.0.0.1", port_of(daemon, "tcp"), "tcp", batch_size=10, max_queue=10_000_000
    )
    stop = threading.Event()
    tracked = [0, 0, 0]

    def work(n: int) -> None:
        while not stop.is_set():
            tracker.track(f"thread{n}", value=tracked[n])
            tracked[n] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    pids = []
    try:
        for child in range(50):
            if pid := os.fork():
                pids.append(pid)
            else:
                track_in_child_and_exit(tracker, child)
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert reap(pids, WAIT) == [0] * 50
    assert tracker.flush(WAIT).complete
    stats = tracker.stats()
    tracker.close()
    assert (stats.queued, stats.acknowledged, stats.dropped) == (sum(tracked),) * 2 + (0,)
    expected = sum(tracked) + 50 * 20
    assert count_rows(daemon.db) == expected and distinct_ids(daemon.db) == expected
    assert count_rows(daemon.db, where="action = 'child'") == 50 * 20


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


# The exit flush ends when all is sent or acknowledged, not at exit_timeout: a process that
# waited for it (60 s) would miss run_python's timeout (30 s).
EXIT_TIMEOUT, EXITS_WITHIN = 60, 30


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_what_is_queued_is_sent_when_the_interpreter_exits(
    daemon: DaemonProcess, transport: Transport
) -> None:
    finished = run_python(
        f"""
        from collector_client import Tracker
        tracker = Tracker("127.0.0.1", {port_of(daemon, transport)}, "{transport}",
                          linger_ms=60_000, exit_timeout={EXIT_TIMEOUT})
        for i in range(500):
            tracker.track("at_exit", value=i)
        """,
        timeout=EXITS_WITHIN,
    )
    assert finished.returncode == 0, finished.stderr
    wait_for(lambda: count_rows(daemon.db) >= 500)
    assert sorted(e["value"] for e in stored_events(daemon.db)) == list(range(500))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_async_tracker_left_open_is_flushed_at_exit(
    daemon: DaemonProcess, transport: Transport
) -> None:
    finished = run_python(
        f"""
        import asyncio
        from collector_client import AsyncTracker

        async def main():
            tracker = AsyncTracker("127.0.0.1", {port_of(daemon, transport)}, "{transport}",
                                   linger_ms=60_000, exit_timeout={EXIT_TIMEOUT})
            for i in range(300):
                tracker.track("left_open", value=i)

        asyncio.run(main())
        """,
        timeout=EXITS_WITHIN,
    )
    assert finished.returncode == 0, finished.stderr
    if transport == "udp":
        wait_for(lambda: count_rows(daemon.db) >= 300)
    assert count_rows(daemon.db) == 300  # over TCP, acknowledged before the process ended


SIGNALS = """
import signal, socket
from collector_client import Tracker

transport, tcp_port, caller_sends, loops, wait = "{}", {}, {}, {}, {}
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
port = receiver.getsockname()[1] if transport == "udp" else tcp_port
tracker = Tracker("127.0.0.1", port, transport, max_queue=1_000_000,
                  caller_sends=caller_sends, linger_ms=60_000)
handled = 0

def on_alarm(signum, frame):
    global handled
    handled += 1
    tracker.track("alarm", value=handled)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
for i in range(loops):
    tracker.track("loop", value=i)
signal.setitimer(signal.ITIMER_REAL, 0)
complete = tracker.flush(wait).complete
s = tracker.stats()
done = s.sent if transport == "udp" else s.acknowledged
print(handled, complete, s.queued, done, s.dropped, s.pending, s.sent)
tracker.close(0)
"""


@pytest.mark.parametrize(
    ("transport", "caller_sends", "loops"),
    [("udp", False, 200_000), ("udp", True, 200_000), ("tcp", True, 100_000)],
)
def test_a_signal_handler_may_track_while_track_is_interrupted(
    daemon: DaemonProcess, transport: Transport, caller_sends: bool, loops: int
) -> None:
    # A SIGALRM every 0.5 ms lands anywhere: inside track() with the lock held, inside a send
    # made by track() (caller_sends), between two sections. Every event must be counted once
    # and sent once: over UDP to a socket that is never read, over TCP to the daemon.
    port = port_of(daemon, "tcp")
    finished = run_python(SIGNALS.format(transport, port, caller_sends, loops, WAIT))
    assert finished.returncode == 0, finished.stderr
    handled, complete, queued, done, dropped, pending, sent = finished.stdout.split()
    assert int(handled) > 0 and complete == "True"
    assert int(queued) == loops + int(handled)
    assert (int(done), int(dropped), int(pending), int(sent)) == (int(queued), 0, 0, int(queued))
    if transport == "tcp":  # acknowledged, so stored: each event once
        assert count_rows(daemon.db) == distinct_ids(daemon.db) == int(queued)
        assert count_rows(daemon.db, where="action = 'alarm'") == int(handled)


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


def test_send_over_tcp_says_when_the_event_is_too_large() -> None:
    # More than max_batch_bytes (1 MiB) in arguments of at most 128 KiB each; nothing listens,
    # and nothing needs to: the event never leaves.
    extras = [arg for n in range(9) for arg in ("--extra", f"pad{n}={'x' * 120_000}")]
    with refused_tcp_port() as port:
        finished = send("huge", *extras, "--tcp", "--port", str(port))
    assert finished.returncode == 2
    assert finished.stderr.startswith("event too large, not sent: event 'huge' dropped: ")
    assert "more than max_batch_bytes (1048576)" in finished.stderr


def test_send_refuses_an_extra_without_a_value() -> None:
    finished = send("x", "--extra", "lonely")
    assert finished.returncode == 2 and "expected KEY=VALUE" in finished.stderr
