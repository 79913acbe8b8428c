"""Runs as root inside the container of nspawn-check.sh, against the real collector.service.

Prints one line per check and, when every check held, ALL CHECKS PASSED.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

DB = "/var/lib/private/collector/events.db"
UDP = ("127.0.0.1", 24224)
QUERY = ("127.0.0.1", 24225)
failures: list[str] = []


def check(name: str, ok: bool, detail: Any = "") -> None:
    print(f"{'ok' if ok else 'FAIL'}: {name} {detail}", flush=True)
    if not ok:
        failures.append(name)


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).strip()


def show(*props: str) -> dict[str, str]:
    text = run("systemctl", "show", "collector.service", *(f"-p{p}" for p in props))
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait(predicate: Callable[[], bool], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def active() -> bool:
    return run("systemctl", "is-active", "collector.service") == "active"


def ask(*lines: str) -> list[str]:
    """The status line of each command sent on one query connection."""
    statuses = []
    with socket.create_connection(QUERY, timeout=10) as conn:
        stream = conn.makefile("rwb")
        for line in lines:
            stream.write(f"{line}\n".encode())
            stream.flush()
            while True:
                reply = stream.readline().decode().rstrip("\r\n")
                if reply == "OK" or reply.startswith(("OK ", "ERR ")):
                    statuses.append(reply)
                    break
    return statuses


def stored(action: str) -> int:
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    try:
        query = "SELECT count(DISTINCT value) FROM events WHERE action = ?"
        return int(conn.execute(query, (action,)).fetchone()[0])
    finally:
        conn.close()


class Sender(threading.Thread):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.done.is_set():
                while self.sent < int((time.monotonic() - started) * 1000):
                    sock.sendto(msgpack.packb({"action": "r", "value": self.sent}), UDP)
                    self.sent += 1
                self.done.wait(0.01)


def sandbox() -> None:
    state = show("MainPID", "StatusText", "Type", "WatchdogUSec")
    check("ready and running", active(), state)
    check("status line", state["StatusText"].endswith(" buffered"), state["StatusText"])
    with open(f"/proc/{state['MainPID']}/status", encoding="ascii") as handle:
        fields = dict(line.split(":\t", 1) for line in handle.read().splitlines())
    check("no capabilities", fields["CapEff"].strip("0\n") == "", fields["CapEff"])
    check("no new privileges", fields["NoNewPrivs"].strip() == "1")
    check("seccomp filters", fields["Seccomp"].strip() == "2", fields["Seccomp_filters"])
    check("dynamic user", fields["Uid"].split()[0] != "0", fields["Uid"])


def restart_loses_nothing() -> None:
    sender = Sender()
    sender.start()
    wait(lambda: sender.sent > 1500)
    before = show("MainPID")["MainPID"]
    run("systemctl", "restart", "collector.service")
    check("restarted", show("MainPID")["MainPID"] != before)
    wait(lambda: sender.sent > 3000)
    sender.done.set()
    sender.join()
    wait(lambda: stored("r") >= sender.sent)
    check("restart lost no datagram", stored("r") == sender.sent, (stored("r"), sender.sent))


def tcp_and_queries(token: str) -> None:
    with socket.create_connection(UDP, timeout=10) as conn:
        conn.sendall(msgpack.packb({"events": [{"action": "tcp"}], "ack": "a"}))
        unpacker = msgpack.Unpacker()
        while (reply := next(iter(unpacker), None)) is None:
            unpacker.feed(conn.recv(4096))
    check("tcp ack", reply == {"ack": "a", "stored": 1, "rejected": 0}, reply)
    statuses = ask("COUNT", f"AUTH {token}", "COUNT")
    check("token from the credential", statuses[0].startswith("ERR AUTH"), statuses)
    check("query after AUTH", statuses[1:] == ["OK authenticated", statuses[2]], statuses)


def reload_and_backup() -> None:
    run("systemctl", "reload", "collector.service")
    journal = run("journalctl", "-u", "collector.service", "-o", "cat", "--no-pager")
    check("reload", '"event": "configuration reloaded"' in journal and active())
    out = run("/opt/collector/.venv/bin/collector", "backup", "/results/backup.db",
              "--db", "/var/lib/collector/events.db")  # fmt: skip
    check("backup while running", out.startswith("backup of"), out)


def watchdog_restarts_a_stuck_writer() -> None:
    time.sleep(6)  # longer than WatchdogSec=4s: the pings must keep an idle daemon alive
    restarts = show("NRestarts")["NRestarts"]
    check("idle daemon kept alive", active() and restarts == "0", restarts)
    lock = sqlite3.connect(DB, isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(msgpack.packb({"action": "stuck"}), UDP)
    fired = wait(lambda: show("NRestarts")["NRestarts"] != restarts)
    lock.execute("ROLLBACK")
    lock.close()
    journal = run("journalctl", "-u", "collector.service", "-o", "cat", "--no-pager")
    check("watchdog fired on a stuck writer", fired and "result 'watchdog'" in journal)
    check("restarted after the watchdog", wait(active))


def main() -> None:
    wait(active)
    sandbox()
    restart_loses_nothing()
    with open("/etc/collector/query-token", encoding="ascii") as handle:
        tcp_and_queries(handle.read().strip())
    reload_and_backup()
    watchdog_restarts_a_stuck_writer()
    run("systemctl", "stop", "collector.service")
    state = show("ActiveState", "Result", "ExecMainStatus")
    check("clean stop", state["Result"] == "success" and state["ExecMainStatus"] == "0", state)
    print("ALL CHECKS PASSED" if not failures else f"FAILED: {', '.join(failures)}", flush=True)


if __name__ == "__main__":
    main()
