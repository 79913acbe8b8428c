"""Load generator for the collector daemon: `python -m bench.ingest [options]`.

It starts its own daemon (`python -m collector serve`, through
collector.testing.DaemonProcess) on free 127.0.0.1 ports, with its database in a fresh
temporary directory. K sender processes then offer events for --duration seconds; the
benchmark waits until the database stops growing, stops the daemon and reports what was
sent, stored, dropped and acknowledged, the daemon's receive-to-commit latency and its
peak memory.

Modes:
  udp         one msgpack object per datagram: an event map, or an array of
              --per-datagram N events
  tcp-stream  back-to-back event maps (or arrays of --per-datagram N events) on one
              connection per sender, never acknowledged
  tcp-acked   envelopes {"events": [...], "ack": TOKEN} of --batch N events; each sender
              keeps up to --window W of them waiting for their ack

--rate R is the total offered load in events/s, split evenly between the senders and sent
in 2 ms slices; --rate 0 sends as fast as possible. Payloads are encoded before the timed
loop; with --ids every event carries a unique id, patched into the pre-encoded bytes.

Daemon options are passed through unchanged, either one per `--daemon-arg=OPTION` (note
the `=`) or all of them after `--daemon-args`, which must come last:

  python -m bench.ingest --mode udp --rate 50000 --duration 3
  python -m bench.ingest --mode tcp-acked --senders 2 --daemon-arg=--batch-size=2000
  python -m bench.ingest --mode udp --json --daemon-args --buffer-max-events 20000

--then-acked-probe sends one acknowledged TCP batch of 1000 events right after the senders
stop and reports how long its ack took. --json prints one JSON object instead of the table.
Only 127.0.0.1 is ever targeted, and every wait is bounded (--duration, --ack-timeout,
--settle-timeout).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import math
import multiprocessing
import queue
import random
import secrets
import select
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import msgpack

from bench.common import (
    ACTIONS,
    LOOPBACK,
    RECV_BYTES,
    RssSampler,
    counter_delta,
    daemon_complaints,
    kb_to_mb,
    machine_info,
    per_second,
    proc_status_kb,
    quantile_ms,
    read_reply,
    started_daemon,
    stopped_stats,
    udp_kernel_counters,
    wait_until_settled,
)
from collector.testing import DaemonProcess, count_rows

MODES = ("udp", "tcp-stream", "tcp-acked")
DAEMON_ARGS_SEPARATOR = "--daemon-args"

PAGES = ("/", "/search", "/product", "/cart", "/checkout", "/account", "/help")
USER_ID_RANGE = 10_000_000
PROBE_ACTION = "bench_probe"
PROBE_EVENTS = 1000

COUNTER_FORMAT = b"%016x"
COUNTER_DIGITS = len(COUNTER_FORMAT % 0)
POOL_EVENTS = 65_536
POOL_MAX_FRAMES = 4096
POOL_MIN_FRAMES = 8
MAX_DATAGRAM_BYTES = 65_507

SLICE_SECONDS = 0.002
UNPACED_BURST_FRAMES = 256
TCP_CHUNK_BYTES = 64 * 1024
SEND_GRACE_SECONDS = 2.0
READY_TIMEOUT = 120.0
REPORT_GRACE_SECONDS = 60.0


# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    options = build_parser().parse_args(argv)
    options.daemon_args = [*options.daemon_arg, *options.daemon_args]
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--mode", choices=MODES, default="udp", help="how events are sent (default %(default)s)")
    for flags, kind, default, metavar, text in VALUE_OPTIONS:
        add(
            *flags,
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{text} (default %(default)s)",
        )
    add("--ids", action="store_true", help="give every event a unique id")
    add("--then-acked-probe", action="store_true", help="then time the ack of one TCP batch")
    add("--json", action="store_true", help="print one JSON object instead of the table")
    add(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="pass OPTION to the daemon, e.g. --daemon-arg=--batch-size=2000 (repeatable)",
    )
    add(
        DAEMON_ARGS_SEPARATOR,
        nargs=argparse.REMAINDER,
        default=[],
        metavar="OPTION",
        help="pass every remaining argument to the daemon (must come last)",
    )
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


VALUE_OPTIONS: tuple[tuple[tuple[str, ...], Callable[[str], Any], Any, str, str], ...] = (
    (("--senders",), positive_int, 1, "K", "sender processes"),
    (("--rate",), non_negative_float, 0.0, "R", "total events/s offered, 0: unpaced"),
    (("--duration",), positive_float, 5.0, "S", "seconds of sending"),
    (
        ("--per-datagram", "--per-object"),
        positive_int,
        1,
        "N",
        "udp, tcp-stream: events per msgpack object; 1 sends bare maps",
    ),
    (("--batch",), positive_int, 1000, "N", "tcp-acked: events per batch"),
    (("--window",), positive_int, 4, "W", "tcp-acked: batches awaiting their ack"),
    (("--ack-timeout",), positive_float, 30.0, "S", "seconds to wait for acks"),
    (("--settle-timeout",), positive_float, 60.0, "S", "seconds to wait for the db to settle"),
    (("--seed",), int, 1, "N", "random seed of the event pool"),
)


# Payloads


def make_event(rng: random.Random, action: str | None = None, msg_id: str | None = None) -> Any:
    user = rng.randrange(USER_ID_RANGE)
    event: dict[str, Any] = {
        "action": action or rng.choice(ACTIONS),
        "user_id": user if rng.random() < 0.5 else f"user-{user}",
        "value": round(rng.uniform(0, 500), 2) if rng.random() < 0.7 else rng.randrange(100),
        "extra": {
            "page": rng.choice(PAGES),
            "ms": rng.randrange(5, 5000),
            "variant": rng.choice("AB"),
        },
    }
    if msg_id is not None:
        event["id"] = msg_id
    return event


@dataclasses.dataclass(slots=True)
class Frame:
    """One pre-encoded msgpack object and where its id and ack-token counters go."""

    data: bytearray
    id_offsets: list[int]
    token_offset: int | None = None


def encode_frame(events: list[bytes], has_ids: bool, envelope: bool) -> Frame:
    """Events encoded with their id last, so each id's counter is the event's last bytes."""
    packer = msgpack.Packer()
    data = bytearray()
    if envelope:
        data += packer.pack_map_header(2) + packer.pack("events")
    if envelope or len(events) > 1:
        data += packer.pack_array_header(len(events))
    id_offsets = []
    for encoded in events:
        data += encoded
        if has_ids:
            id_offsets.append(len(data) - COUNTER_DIGITS)
    if not envelope:
        return Frame(data, id_offsets)
    data += packer.pack("ack") + packer.pack("0" * COUNTER_DIGITS)
    return Frame(data, id_offsets, len(data) - COUNTER_DIGITS)


class FramePool:
    """Pre-encoded frames used in turn; `take` patches fresh ids and token in place."""

    def __init__(self, frames: list[Frame], events_per_frame: int) -> None:
        self.frames = frames
        self.events_per_frame = events_per_frame
        self.index = 0
        self.next_id = 0
        self.next_token = 0
        self.token = ""

    def take(self) -> bytearray:
        """The next frame; valid until the next call, as the same buffers are reused."""
        frame = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        data = frame.data
        counter = self.next_id
        for offset in frame.id_offsets:
            data[offset : offset + COUNTER_DIGITS] = COUNTER_FORMAT % counter
            counter += 1
        self.next_id = counter
        if frame.token_offset is not None:
            token = COUNTER_FORMAT % self.next_token
            self.next_token += 1
            data[frame.token_offset :] = token
            self.token = token.decode()
        return data


def pool_size(events_per_frame: int) -> int:
    return max(POOL_MIN_FRAMES, min(POOL_MAX_FRAMES, POOL_EVENTS // events_per_frame))


def build_pool(plan: SenderPlan, frames: int | None = None) -> FramePool:
    rng = random.Random(plan.seed)
    id_template = plan.id_prefix + "0" * COUNTER_DIGITS if plan.ids else None
    per_frame = plan.per_frame
    encoded = [
        encode_frame(
            [msgpack.packb(make_event(rng, msg_id=id_template)) for _ in range(per_frame)],
            plan.ids,
            plan.mode == "tcp-acked",
        )
        for _ in range(frames or pool_size(per_frame))
    ]
    return FramePool(encoded, per_frame)


# Senders


@dataclasses.dataclass(frozen=True)
class SenderPlan:
    mode: str
    port: int
    rate: float
    duration: float
    per_frame: int
    window: int
    ids: bool
    id_prefix: str
    seed: int
    ack_timeout: float


@dataclasses.dataclass
class SenderResult:
    events_sent: int = 0
    frames_sent: int = 0
    send_errors: int = 0
    elapsed: float = 0.0
    events_acked: int = 0
    acks_received: int = 0
    ack_stored: int = 0
    ack_rejected: int = 0
    ack_duplicates: int = 0
    unexpected_replies: int = 0
    batches_unacked: int = 0
    ack_latencies: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


class Pacer:
    """How many events are due by `now` at `rate` events/s (no limit when rate is 0)."""

    def __init__(self, rate: float, start: float) -> None:
        self.rate = rate
        self.start = start

    def due(self, now: float) -> float:
        return math.inf if self.rate <= 0 else self.rate * (now - self.start)

    def pause_if_ahead(self, sent: int, end: float) -> float:
        """Sleep one slice when everything due is sent; return the time."""
        now = time.monotonic()
        if sent >= self.due(now) and now < end:
            time.sleep(min(SLICE_SECONDS, end - now))
            now = time.monotonic()
        return now


def send_udp(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    result = SenderResult()
    start = now = time.monotonic()
    end = start + plan.duration
    pacer = Pacer(plan.rate, start)
    while now < end:
        send_datagrams(sock, pool, result, pacer.due(now))
        now = pacer.pause_if_ahead(result.events_sent, end)
    result.elapsed = time.monotonic() - start
    return result


def send_datagrams(sock: socket.socket, pool: FramePool, result: SenderResult, due: float) -> None:
    for _ in range(UNPACED_BURST_FRAMES):
        if result.events_sent >= due:
            return
        try:
            sock.send(pool.take())
        except OSError:
            result.send_errors += 1
            continue
        result.events_sent += pool.events_per_frame
        result.frames_sent += 1


def send_tcp_stream(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    result = SenderResult()
    start = now = time.monotonic()
    end = start + plan.duration
    pacer = Pacer(plan.rate, start)
    while now < end:
        chunk, frame_ends = fill_chunk(pool, pacer.due(now) - result.events_sent)
        written, problem = write_before(sock, chunk, end + SEND_GRACE_SECONDS)
        frames = bisect.bisect_right(frame_ends, written)
        result.frames_sent += frames
        result.events_sent += frames * pool.events_per_frame
        if problem:
            result.error = problem
            break
        now = pacer.pause_if_ahead(result.events_sent, end)
    result.elapsed = time.monotonic() - start
    return result


def fill_chunk(pool: FramePool, wanted_events: float) -> tuple[bytearray, list[int]]:
    """Frames for one write, and where each of them ends."""
    chunk = bytearray()
    frame_ends: list[int] = []
    queued = 0
    while queued < wanted_events and len(chunk) < TCP_CHUNK_BYTES:
        chunk += pool.take()
        frame_ends.append(len(chunk))
        queued += pool.events_per_frame
    return chunk, frame_ends


def write_before(sock: socket.socket, data: bytearray, deadline: float) -> tuple[int, str | None]:
    """Write `data` to a non-blocking socket; return the bytes written and any problem."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        try:
            written += sock.send(view[written:])
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return written, "write timed out: the daemon stopped reading"
            select.select([], [sock], [], remaining)
        except OSError as exc:
            return written, f"write failed: {exc}"
    return written, None


class AckTracker:
    """Batches waiting for their ack, and what the acks said."""

    def __init__(self, result: SenderResult) -> None:
        self.result = result
        self.unpacker = msgpack.Unpacker()
        self.in_flight: dict[str, tuple[int, float]] = {}
        self.closed = False

    def sent(self, token: str, events: int, sent_at: float) -> None:
        self.in_flight[token] = (events, sent_at)

    def read(self, sock: socket.socket, timeout: float) -> None:
        """Wait up to `timeout` seconds for acks and record every one that arrived."""
        readable, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        if not readable:
            return
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.unpacker.feed(data)
        for reply in self.unpacker:
            self.record(reply)

    def record(self, reply: Any) -> None:
        result = self.result
        token = reply.get("ack") if isinstance(reply, dict) else None
        if not isinstance(token, str) or token not in self.in_flight:
            result.unexpected_replies += 1
            return
        events, sent_at = self.in_flight.pop(token)
        result.ack_latencies.append(time.monotonic() - sent_at)
        result.acks_received += 1
        result.events_acked += events
        result.ack_stored += int(reply.get("stored", 0))
        result.ack_rejected += int(reply.get("rejected", 0))
        result.ack_duplicates += int(reply.get("duplicates", 0))


def send_tcp_acked(plan: SenderPlan, pool: FramePool, sock: socket.socket) -> SenderResult:
    return AckedSender(plan, pool, sock).run()


class AckedSender:
    """Acked batches on one connection, at most `plan.window` of them unacknowledged."""

    def __init__(self, plan: SenderPlan, pool: FramePool, sock: socket.socket) -> None:
        self.plan = plan
        self.pool = pool
        self.sock = sock
        self.result = SenderResult()
        self.acks = AckTracker(self.result)
        self.end = 0.0

    def run(self) -> SenderResult:
        result, acks = self.result, self.acks
        start = now = time.monotonic()
        self.end = start + self.plan.duration
        pacer = Pacer(self.plan.rate, start)
        while now < self.end and not acks.closed:
            due = pacer.due(now)
            if not self.fill_window(due):
                break
            acks.read(self.sock, self.ack_wait(due))
            now = time.monotonic()
        result.elapsed = time.monotonic() - start
        drain_acks(self.sock, acks, self.plan.ack_timeout)
        result.batches_unacked = len(acks.in_flight)
        if acks.closed and result.error is None:
            result.error = "the daemon closed the connection"
        return result

    def window_full(self) -> bool:
        return len(self.acks.in_flight) >= self.plan.window

    def ack_wait(self, due: float) -> float:
        """How long to wait for acks before trying to send again."""
        if self.window_full():
            return self.end - time.monotonic()
        return SLICE_SECONDS if self.result.events_sent >= due else 0.0

    def fill_window(self, due: float) -> bool:
        """Send batches while the window has room and events are due; False on a problem."""
        result, pool = self.result, self.pool
        while not self.window_full() and result.events_sent < due:
            sent_at = time.monotonic()
            _, problem = write_before(self.sock, pool.take(), self.end + SEND_GRACE_SECONDS)
            if problem:
                result.error = problem
                return False
            self.acks.sent(pool.token, pool.events_per_frame, sent_at)
            result.events_sent += pool.events_per_frame
            result.frames_sent += 1
        return True


def drain_acks(sock: socket.socket, acks: AckTracker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while acks.in_flight and not acks.closed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        acks.read(sock, remaining)


SEND_LOOPS: dict[str, Callable[[SenderPlan, FramePool, socket.socket], SenderResult]] = {
    "udp": send_udp,
    "tcp-stream": send_tcp_stream,
    "tcp-acked": send_tcp_acked,
}


def connect(plan: SenderPlan) -> socket.socket:
    if plan.mode == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)
        sock.connect((LOOPBACK, plan.port))
        return sock
    sock = socket.create_connection((LOOPBACK, plan.port), timeout=10.0)
    sock.setblocking(False)
    return sock


def close_stream(sock: socket.socket) -> None:
    """Half-close so the daemon reads everything sent before it sees the end."""
    if sock.type == socket.SOCK_STREAM:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return


def sender_main(plan: SenderPlan, start: Barrier, results: Queue[dict[str, Any]]) -> None:
    """A sender process: build the pool, wait for the start, send, report."""
    result = SenderResult()
    try:
        pool = build_pool(plan)
        with connect(plan) as sock:
            start.wait(READY_TIMEOUT)
            result = SEND_LOOPS[plan.mode](plan, pool, sock)
            close_stream(sock)
    except Exception as exc:
        start.abort()
        result.error = f"{type(exc).__name__}: {exc}"
    results.put(dataclasses.asdict(result))


def run_senders(plans: list[SenderPlan]) -> list[SenderResult]:
    """Start every sender, release them together, collect their reports."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(plans) + 1)
    results: Queue[dict[str, Any]] = context.Queue()
    processes = [
        context.Process(target=sender_main, args=(plan, start, results), name=f"sender-{i}")
        for i, plan in enumerate(plans)
    ]
    for process in processes:
        process.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(READY_TIMEOUT)
        return collect_results(results, len(plans), sender_timeout(plans[0]))
    finally:
        for process in processes:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join()


def sender_timeout(plan: SenderPlan) -> float:
    return plan.duration + SEND_GRACE_SECONDS + plan.ack_timeout + REPORT_GRACE_SECONDS


def collect_results(
    results: Queue[dict[str, Any]], expected: int, timeout: float
) -> list[SenderResult]:
    deadline = time.monotonic() + timeout
    collected = []
    for _ in range(expected):
        try:
            report = results.get(timeout=max(deadline - time.monotonic(), 0.1))
        except queue.Empty:
            collected.append(SenderResult(error="no report from the sender"))
            continue
        collected.append(SenderResult(**report))
    return collected


def sender_plans(options: argparse.Namespace, port: int) -> list[SenderPlan]:
    run_tag = secrets.token_hex(3)
    acked = options.mode == "tcp-acked"
    return [
        SenderPlan(
            mode=options.mode,
            port=port,
            rate=options.rate / options.senders,
            duration=options.duration,
            per_frame=options.batch if acked else options.per_datagram,
            window=options.window,
            ids=options.ids,
            id_prefix=f"{run_tag}-s{index}-",
            seed=options.seed + index,
            ack_timeout=options.ack_timeout,
        )
        for index in range(options.senders)
    ]


def check_datagram_size(plan: SenderPlan) -> None:
    if plan.mode != "udp":
        return
    size = max(len(frame.data) for frame in build_pool(plan, frames=POOL_MIN_FRAMES).frames)
    if size > MAX_DATAGRAM_BYTES:
        raise SystemExit(
            f"bench: a datagram of {plan.per_frame} events is {size} bytes, more than UDP allows"
        )


# The acked probe


def acked_probe(port: int, ids: bool, timeout: float) -> dict[str, Any]:
    """Send one acked batch and time its ack."""
    rng = random.Random(0)
    prefix = f"probe-{secrets.token_hex(3)}-"
    events = [
        make_event(rng, PROBE_ACTION, f"{prefix}{i}" if ids else None) for i in range(PROBE_EVENTS)
    ]
    payload = msgpack.packb({"events": events, "ack": "probe"})
    began = time.monotonic()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(payload)
            reply = read_reply(sock, began + timeout)
    except OSError as exc:
        return {"events": PROBE_EVENTS, "error": f"{type(exc).__name__}: {exc}"}
    if not isinstance(reply, dict):
        return {"events": PROBE_EVENTS, "error": "no ack", "waited_ms": ms_since(began)}
    return {
        "events": PROBE_EVENTS,
        "ack_ms": ms_since(began),
        "stored": reply.get("stored"),
        "rejected": reply.get("rejected"),
    }


def ms_since(began: float) -> float:
    return round((time.monotonic() - began) * 1000, 1)


# The run


def run_benchmark(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with started_daemon(workdir / "events.db", options.daemon_args) as daemon:
        assert daemon.process is not None
        print(
            f"bench: daemon pid {daemon.process.pid}, udp {daemon.udp}, tcp {daemon.tcp}",
            file=sys.stderr,
        )
        return measure(options, daemon)


def measure(options: argparse.Namespace, daemon: DaemonProcess) -> dict[str, Any]:
    assert daemon.process is not None
    pid = daemon.process.pid
    plans = sender_plans(options, daemon_port(daemon, options.mode))
    check_datagram_size(plans[0])
    kernel_before = udp_kernel_counters()
    with RssSampler(pid) as sampler:
        results = run_senders(plans)
        senders_done = time.monotonic()
        probe = run_probe(options, daemon)
        settle_seconds = wait_until_settled(daemon.db, options.settle_timeout) - senders_done
    peak_kb = proc_status_kb(pid, "VmHWM")
    exit_code = daemon.stop()
    observed = {
        "settle_s": round(settle_seconds, 2),
        "peak_rss_kb": peak_kb,
        "max_sampled_rss_kb": sampler.max_kb,
        "exit_code": exit_code,
        "kernel_udp_delta": counter_delta(kernel_before, udp_kernel_counters()),
    }
    return build_report(options, results, probe, observed, daemon)


def daemon_port(daemon: DaemonProcess, mode: str) -> int:
    address = daemon.udp if mode == "udp" else daemon.tcp
    if address is None:
        transport = "UDP" if mode == "udp" else "TCP"
        raise SystemExit(f"bench: the daemon does not listen for {transport}")
    return address.port


def run_probe(options: argparse.Namespace, daemon: DaemonProcess) -> dict[str, Any]:
    if not options.then_acked_probe:
        return {}
    return acked_probe(daemon_port(daemon, "tcp-acked"), options.ids, options.ack_timeout)


# The report


def build_report(
    options: argparse.Namespace,
    results: list[SenderResult],
    probe: dict[str, Any],
    observed: dict[str, Any],
    daemon: DaemonProcess,
) -> dict[str, Any]:
    probe_rows = count_rows(daemon.db, where=f"action = '{PROBE_ACTION}'") if probe else 0
    if probe:
        probe["rows_in_db"] = probe_rows
    stored = count_rows(daemon.db) - probe_rows
    report = {
        **run_settings(options),
        **send_summary(results, stored),
        **(ack_summary(results) if options.mode == "tcp-acked" else {}),
        "daemon": daemon_summary(stopped_stats(daemon), observed),
        "probe": probe,
        "machine": machine_info(),
        "daemon_args": options.daemon_args,
        "sender_errors": [r.error for r in results if r.error],
        "daemon_complaints": daemon_complaints(daemon),
    }
    return report


def run_settings(options: argparse.Namespace) -> dict[str, Any]:
    acked = options.mode == "tcp-acked"
    return {
        "mode": options.mode,
        "senders": options.senders,
        "events_per_object": options.batch if acked else options.per_datagram,
        "window": options.window if acked else None,
        "ids": options.ids,
        "rate_offered": options.rate,
        "duration_s": options.duration,
    }


def send_summary(results: list[SenderResult], stored: int) -> dict[str, Any]:
    sent = sum(r.events_sent for r in results)
    seconds = max((r.elapsed for r in results), default=0.0)
    loss = sent - stored
    return {
        "send_seconds": round(seconds, 3),
        "events_sent": sent,
        "send_rate": per_second(sent, seconds),
        "send_errors": sum(r.send_errors for r in results),
        "events_stored": stored,
        "loss": loss,
        "loss_pct": round(100.0 * loss / sent, 3) if sent else 0.0,
        "stored_per_s": per_second(stored, seconds),
    }


def ack_summary(results: list[SenderResult]) -> dict[str, Any]:
    latencies = sorted(latency for r in results for latency in r.ack_latencies)
    return {
        "events_acked": sum(r.events_acked for r in results),
        "acks_received": sum(r.acks_received for r in results),
        "ack_stored": sum(r.ack_stored for r in results),
        "ack_rejected": sum(r.ack_rejected for r in results),
        "ack_duplicates": sum(r.ack_duplicates for r in results),
        "batches_unacked": sum(r.batches_unacked for r in results),
        "unexpected_replies": sum(r.unexpected_replies for r in results),
        "ack_p50_ms": quantile_ms(latencies, 0.5),
        "ack_p99_ms": quantile_ms(latencies, 0.99),
        "ack_max_ms": quantile_ms(latencies, 1.0),
    }


def daemon_summary(stats: dict[str, Any], observed: dict[str, Any]) -> dict[str, Any]:
    picked = (
        "events_received", "events_stored", "events_rejected", "events_duplicate",
        "events_dropped", "datagrams_received", "datagrams_dropped", "decode_errors",
        "tcp_pauses", "tcp_truncated_bytes", "acks_sent", "batches_committed",
        "commit_errors", "latency_p50_ms", "latency_p99_ms", "latency_max_ms",
    )  # fmt: skip
    return {
        **{name: stats.get(name) for name in picked},
        "peak_rss_mb": kb_to_mb(observed["peak_rss_kb"]),
        "max_sampled_rss_mb": kb_to_mb(observed["max_sampled_rss_kb"]),
        "settle_s": observed["settle_s"],
        "exit_code": observed["exit_code"],
        "kernel_udp_rcvbuf_errors": observed["kernel_udp_delta"].get("RcvbufErrors"),
        "stats": stats,
    }


def render_table(report: dict[str, Any]) -> str:
    rows = [*run_rows(report), *result_rows(report), *daemon_rows(report["daemon"])]
    rows += probe_rows(report["probe"]) + machine_rows(report)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def run_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rate = report["rate_offered"]
    rows = [
        ("mode", report["mode"]),
        ("senders", str(report["senders"])),
        ("events per object", str(report["events_per_object"])),
        ("unique ids", "yes" if report["ids"] else "no"),
        ("rate offered", f"{rate:,.0f} events/s" if rate else "unpaced (as fast as possible)"),
        ("duration", f"{report['duration_s']} s (sent for {report['send_seconds']} s)"),
    ]
    if report["window"] is not None:
        rows.insert(3, ("window", f"{report['window']} batches"))
    if report["daemon_args"]:
        rows.append(("daemon args", " ".join(report["daemon_args"])))
    return rows


def result_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("events sent", f"{report['events_sent']:,} ({report['send_rate']:,.0f}/s)"),
        ("send errors", f"{report['send_errors']:,}"),
        ("events stored", f"{report['events_stored']:,}"),
        ("loss", f"{report['loss']:,} ({report['loss_pct']}%)"),
        ("stored events/s", f"{report['stored_per_s']:,.0f}"),
    ]
    if "events_acked" in report:
        rows += [
            ("events acked", f"{report['events_acked']:,} ({report['acks_received']:,} acks)"),
            ("ack stored/rejected", f"{report['ack_stored']:,} / {report['ack_rejected']:,}"),
            ("batches unacked", f"{report['batches_unacked']:,}"),
            ("ack time p50/p99/max", ms_triplet(report, "ack_p50_ms", "ack_p99_ms", "ack_max_ms")),
        ]
    return rows


def daemon_rows(daemon: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("daemon events_dropped", str(daemon["events_dropped"])),
        ("daemon datagrams_dropped", str(daemon["datagrams_dropped"])),
        ("daemon decode_errors", str(daemon["decode_errors"])),
        ("daemon events_rejected", str(daemon["events_rejected"])),
        ("daemon tcp_pauses", str(daemon["tcp_pauses"])),
        ("kernel UDP rcvbuf drops", f"{daemon['kernel_udp_rcvbuf_errors']} (system-wide)"),
        ("commit latency p50/p99/max", ms_triplet(daemon, *LATENCY_KEYS)),
        ("daemon peak RSS (VmHWM)", f"{daemon['peak_rss_mb']} MB"),
        ("daemon max sampled VmRSS", f"{daemon['max_sampled_rss_mb']} MB"),
        ("db settled", f"{daemon['settle_s']} s after the senders finished"),
        ("daemon exit code", str(daemon["exit_code"])),
    ]


LATENCY_KEYS = ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")


def ms_triplet(values: dict[str, Any], *keys: str) -> str:
    return " / ".join(str(values[key]) for key in keys) + " ms"


def probe_rows(probe: dict[str, Any]) -> list[tuple[str, str]]:
    if not probe:
        return []
    if "error" in probe:
        return [("acked probe", f"{probe['events']} events: {probe['error']}")]
    stored = f"stored {probe['stored']}, rejected {probe['rejected']}"
    return [("acked probe", f"{probe['events']} events acked in {probe['ack_ms']} ms ({stored})")]


def machine_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    machine = report["machine"]
    rows = [
        ("machine", f"{machine['nproc']} CPUs, {machine['cpu_model']}"),
        ("python, kernel", f"{machine['python']}, Linux {machine['kernel']}"),
    ]
    rows += [("sender error", error) for error in report["sender_errors"]]
    rows += [(f"daemon logged {n}x", event) for event, n in report["daemon_complaints"].items()]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as workdir:
        report = run_benchmark(options, Path(workdir))
    print(json.dumps(report) if options.json else render_table(report))
    failed = report["sender_errors"] or report["daemon"]["exit_code"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
