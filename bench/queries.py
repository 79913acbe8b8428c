"""Query latency on a large dataset while ingestion goes on.

    python -m bench.dataset /tmp/events.db            # 10 million events, once
    python -m bench.queries /tmp/events.db [--rate 20000] [--repeat 5]

Starts the daemon on DB, offers --rate events/s of acknowledged TCP batches in a thread,
and meanwhile runs each benchmark query --repeat times on the query port, measuring the
time from sending the command to its status line. Reports min/median/max per query and
whether every event sent during the run was acknowledged and stored.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from bench.common import read_reply, started_daemon
from collector.config import Address
from collector.testing import count_rows, read_rows

QUERIES = (
    "UNIQUE on=yesterday",
    "COUNT by=day since=-30d",
    "TOP action since=-7d",
    "USER {heavy_user}",
    "USER {typical_user}",
    "EVENTS limit=100",
)
BATCH = 500


@dataclass
class IngestLoad:
    address: Address
    rate: float
    sent: int = 0
    acked: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with socket.create_connection((self.address.host, self.address.port)) as sock:
            unpacker = msgpack.Unpacker()
            started = time.monotonic()
            while not self.stop.is_set():
                due = (time.monotonic() - started) * self.rate
                if self.sent + BATCH > due:
                    time.sleep(0.005)
                    continue
                events = [{"action": "bench_load", "user_id": n % 1000} for n in range(BATCH)]
                sock.sendall(msgpack.packb({"events": events, "ack": str(self.sent)}))
                self.sent += BATCH
                self.acked += wait_ack(sock, unpacker)


def wait_ack(sock: socket.socket, unpacker: msgpack.Unpacker) -> int:
    reply = read_reply(sock, unpacker=unpacker)
    if reply is None:
        raise ConnectionError("daemon closed the ingest connection")
    return int(reply["stored"])


def ask(sock: socket.socket, reader: io.BufferedReader, line: str) -> tuple[float, str]:
    started = time.perf_counter()
    sock.sendall((line + "\n").encode())
    while True:
        reply = reader.readline().decode().rstrip("\r\n")
        if reply == "OK" or reply.startswith(("OK ", "ERR ")):
            return time.perf_counter() - started, reply


def heavy_user(db: Path) -> str:
    """The most active user of the first hour of events."""
    rows = read_rows(
        db,
        "SELECT user_id FROM events WHERE ts < (SELECT min(ts) + 3600000 FROM events)"
        " GROUP BY user_id ORDER BY count(*) DESC LIMIT 1",
    )
    return str(rows[0][0])


def measure(address: Address, queries: list[str], repeat: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {query: [] for query in queries}
    with socket.create_connection((address.host, address.port), timeout=120) as sock:
        reader = sock.makefile("rb")
        for _ in range(repeat):
            for query in queries:
                seconds, status = ask(sock, reader, query)
                if not status.startswith("OK"):
                    raise RuntimeError(f"{query}: {status}")
                timings[query].append(seconds)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--typical-user",
        default="u10000",
        help="a user of ordinary activity (bench.dataset's u10000 has about 50 events)",
    )
    parser.add_argument("--only", nargs="*", default=[], help="run only queries with these words")
    args = parser.parse_args()
    users = {"heavy_user": heavy_user(args.db), "typical_user": args.typical_user}
    queries = [q.format(**users) for q in QUERIES]
    if args.only:
        queries = [q for q in queries if any(word in q for word in args.only)]
    before = count_rows(args.db)
    with started_daemon(args.db, ["--query-timeout-ms", "60000"]) as daemon:
        load = IngestLoad(daemon.tcp, args.rate)
        sender = threading.Thread(target=load.run, daemon=True)
        sender.start()
        try:
            time.sleep(1.0)  # let the ingest load reach its pace before measuring
            timings = measure(daemon.query, queries, args.repeat)
        finally:
            load.stop.set()
            sender.join(30)
    report(timings, load, count_rows(args.db) - before, args)


def report(
    timings: dict[str, list[float]], load: IngestLoad, stored: int, args: argparse.Namespace
) -> None:
    print(f"dataset {args.db}, ingest offered {args.rate:,.0f} events/s during the queries")
    print(f"{'query':<40} {'min ms':>9} {'median ms':>10} {'max ms':>9}")
    for query, seconds in timings.items():
        ms = [s * 1000 for s in seconds]
        print(f"{query:<40} {min(ms):>9.1f} {statistics.median(ms):>10.1f} {max(ms):>9.1f}")
    lost = load.sent - stored
    print(
        f"ingest: sent {load.sent:,}, acknowledged {load.acked:,}, stored {stored:,}, lost {lost}"
    )


if __name__ == "__main__":
    main()
