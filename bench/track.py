"""The tracking library against a real daemon: `python -m bench.track [options]`.

Each part (and each transport) starts its own daemon (`python -m collector serve`, through
collector.testing.DaemonProcess) on free 127.0.0.1 ports with a database in a fresh temporary
directory, and measures:

calls   The cost of `Tracker.track()` in the calling thread: --calls calls in a tight loop,
        for each transport, --repeat times, each with a fresh Tracker. Reported: calls per
        second, and whether the sender kept up (what it had sent or had acknowledged by the
        end of the loop, what was dropped, and how long the final flush took).
e2e     One process tracking over UDP (or --e2e-transport tcp) as fast as it can for
        --duration seconds: events tracked, sent, dropped by the tracker, stored by the
        daemon (counted in the database once it stops growing), stored per second (from the
        first call to the last row), the loss, and the daemon's and the kernel's counters.

Each call is the one-liner of an app, `track(action, user_id=..., value=..., extra=...)`,
with an action from a small set, an int user id, a small int value and an `extra` of three
keys: about 110 bytes of msgpack with the event's time, id and sent_at.

    python -m bench.track                       # both parts, default options
    python -m bench.track --part calls --calls 500000 --repeat 5
    python -m bench.track --part e2e --duration 10 --max-datagram-bytes 8192
    python -m bench.track --part e2e --e2e-transport tcp
    python -m bench.track --json
    python -m bench.track --part calls --transports udp --udp-sink   # track() alone
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from collector_client import Tracker

from bench.common import (
    ACTIONS,
    LOOPBACK,
    counter_delta,
    machine_info,
    started_daemon,
    stopped_stats,
    udp_kernel_counters,
    wait_until_settled,
)
from collector.config import Address
from collector.testing import DaemonProcess, count_rows

EXTRAS = tuple({"page": f"/product/{i}", "ref": "newsletter", "position": i} for i in range(8))
FLUSH_TIMEOUT = 120.0
SETTLE_TIMEOUT = 120.0
CLOCK_CHECK_EVERY = 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.track", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--part", choices=("calls", "e2e", "all"), default="all")
    parser.add_argument("--calls", type=int, default=300_000, help="track() calls per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per transport")
    parser.add_argument("--duration", type=float, default=10.0, help="e2e seconds of tracking")
    parser.add_argument("--max-datagram-bytes", type=int, default=1400)
    parser.add_argument("--transports", default="udp,tcp", help="for --part calls")
    parser.add_argument("--e2e-transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument(
        "--udp-sink",
        action="store_true",
        help="calls over UDP go to a bound socket nobody reads instead of a daemon, so the"
        " daemon does not compete for the CPUs (the cost of track() alone)",
    )
    return parser.parse_args(argv)


def track_loop(tracker: Tracker, calls: int) -> float:
    """`calls` track() calls as fast as possible; return the seconds they took."""
    track = tracker.track
    began = time.perf_counter()
    for i in range(calls):
        track(ACTIONS[i % 7], user_id=i, value=i & 7, extra=EXTRAS[i & 7])
    return time.perf_counter() - began


def track_for(tracker: Tracker, seconds: float) -> tuple[int, float]:
    """Track as fast as possible for `seconds`; return (calls, seconds taken)."""
    track = tracker.track
    clock = time.perf_counter
    began = clock()
    deadline = began + seconds
    calls = 0
    while clock() < deadline:
        for i in range(calls, calls + CLOCK_CHECK_EVERY):
            track(ACTIONS[i % 7], user_id=i, value=i & 7, extra=EXTRAS[i & 7])
        calls += CLOCK_CHECK_EVERY
    return calls, clock() - began


def measure_calls(
    daemon: DaemonProcess | None, transport: Literal["udp", "tcp"], options: argparse.Namespace
) -> dict[str, Any]:
    if daemon is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind((LOOPBACK, 0))
            return calls_to(Address(*sink.getsockname()), transport, options)
    address = daemon.udp if transport == "udp" else daemon.tcp
    assert address is not None
    return calls_to(address, transport, options)


def calls_to(
    address: Address, transport: Literal["udp", "tcp"], options: argparse.Namespace
) -> dict[str, Any]:
    runs = []
    for _ in range(options.repeat):
        tracker = Tracker(
            address.host, address.port, transport, max_datagram_bytes=options.max_datagram_bytes
        )
        seconds = track_loop(tracker, options.calls)
        at_end = tracker.stats()
        began = time.monotonic()
        flushed = tracker.flush(FLUSH_TIMEOUT)
        flush_seconds = time.monotonic() - began
        final = tracker.stats()
        tracker.close(1.0)
        done_at_end = at_end.sent if transport == "udp" else at_end.acknowledged
        runs.append(
            {
                "calls_per_second": round(options.calls / seconds),
                "done_by_loop_end": done_at_end,
                "dropped": final.dropped,
                "flush_seconds": round(flush_seconds, 3),
                "flush_complete": flushed.complete,
            }
        )
    rates = [run["calls_per_second"] for run in runs]
    return {
        "transport": transport,
        "calls": options.calls,
        "runs": runs,
        "calls_per_second_best": max(rates),
        "calls_per_second_median": round(statistics.median(rates)),
    }


def measure_e2e(daemon: DaemonProcess, options: argparse.Namespace) -> dict[str, Any]:
    transport: Literal["udp", "tcp"] = options.e2e_transport
    address = daemon.udp if transport == "udp" else daemon.tcp
    assert address is not None
    kernel_before = udp_kernel_counters()
    tracker = Tracker(
        address.host, address.port, transport, max_datagram_bytes=options.max_datagram_bytes
    )
    began = time.monotonic()
    calls, seconds = track_for(tracker, options.duration)
    flushed = tracker.flush(FLUSH_TIMEOUT)
    stats = tracker.stats()
    tracker.close(1.0)
    settled_at = wait_until_settled(daemon.db, SETTLE_TIMEOUT)
    stored = count_rows(daemon.db)
    kernel_delta = counter_delta(kernel_before, udp_kernel_counters())
    storing_seconds = max(settled_at - began, seconds)
    return {
        "transport": transport,
        "seconds": round(seconds, 2),
        "tracked": calls,
        "tracked_per_second": round(calls / seconds),
        "tracker": {"sent": stats.sent, "acknowledged": stats.acknowledged,
                    "dropped": stats.dropped, "errors": stats.errors,
                    "oversized": stats.oversized, "flush_complete": flushed.complete},
        "stored": stored,
        "stored_per_second": round(stored / storing_seconds),
        "storing_seconds": round(storing_seconds, 2),
        "loss_percent": round(100 * (1 - stored / calls), 2) if calls else 0.0,
        "kernel_udp_rcvbuf_errors": kernel_delta.get("RcvbufErrors", 0),
    }  # fmt: skip


def with_daemon(workdir: Path, name: str, measure: Callable[[DaemonProcess], Any]) -> Any:
    """Run `measure` against a daemon of its own; return its result and the daemon's final
    counters."""
    with started_daemon(workdir / f"{name}.db") as daemon:
        result = measure(daemon)
        daemon.stop()
    counters = {
        key: value
        for key, value in stopped_stats(daemon).items()
        if key.startswith(("events_", "datagrams_", "decode"))
    }
    return result, counters


def calls_part(
    workdir: Path, transport: Literal["udp", "tcp"], options: argparse.Namespace
) -> dict[str, Any]:
    if transport == "udp" and options.udp_sink:
        return {**measure_calls(None, transport, options), "receiver": "socket"}
    measure = partial(measure_calls, transport=transport, options=options)
    return {**with_daemon(workdir, f"calls-{transport}", measure)[0], "receiver": "daemon"}


def run(options: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "options": vars(options)}
    wanted = options.transports.split(",")
    transports: list[Literal["udp", "tcp"]] = [t for t in ("udp", "tcp") if t in wanted]
    with tempfile.TemporaryDirectory(prefix="bench-track-") as directory:
        workdir = Path(directory)
        if options.part in ("calls", "all"):
            report["calls"] = [calls_part(workdir, t, options) for t in transports]
        if options.part in ("e2e", "all"):
            report["e2e"], report["e2e_daemon"] = with_daemon(
                workdir, "e2e", partial(measure_e2e, options=options)
            )
    return report


def render(report: dict[str, Any]) -> str:
    lines = []
    for part in report.get("calls", []):
        lines.append(
            f"track() {part['transport']} to a {part['receiver']}: "
            f"best {part['calls_per_second_best']:,} calls/s, "
            f"median {part['calls_per_second_median']:,} ({part['calls']:,} calls per run)"
        )
        for run_result in part["runs"]:
            lines.append("    " + ", ".join(f"{k}={v}" for k, v in run_result.items()))
    if "e2e" in report:
        e2e = report["e2e"]
        lines.append(
            f"e2e {e2e['transport']}: tracked {e2e['tracked']:,} in {e2e['seconds']} s "
            f"({e2e['tracked_per_second']:,}/s), stored {e2e['stored']:,} "
            f"({e2e['stored_per_second']:,}/s over {e2e['storing_seconds']} s), "
            f"loss {e2e['loss_percent']}%"
        )
        lines.append("    tracker: " + ", ".join(f"{k}={v}" for k, v in e2e["tracker"].items()))
        lines.append(f"    kernel UDP RcvbufErrors: {e2e['kernel_udp_rcvbuf_errors']:,}")
        daemon = report["e2e_daemon"]
        lines.append("    daemon: " + ", ".join(f"{k}={v}" for k, v in daemon.items()))
    machine = report["machine"]
    lines.append(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, "
                 f"Python {machine['python']}, Linux {machine['kernel']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    report = run(options)
    print(json.dumps(report, indent=2) if options.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
