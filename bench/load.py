"""The offered load of `bench.ingest`: one process per sender, released together.

Not run on its own (`python -m bench.ingest` runs it). `run_senders` spawns a process per
`SenderPlan`; each builds its frame pool and connects before one barrier releases them all,
runs its mode's send loop and reports a `SenderResult`, collected within the duration, the
ack timeout and a grace period.
`check_datagram_size` refuses a --per-datagram that UDP cannot carry; `acked_probe` times
the ack of one TCP batch of 1000 events (--then-acked-probe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import queue
import random
import secrets
import socket
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import msgpack

from bench.common import LOOPBACK, read_reply
from bench.payloads import (
    COUNTER_DIGITS,
    POOL_MIN_FRAMES,
    FramePool,
    encode_frame,
    make_event,
    pool_size,
)
from bench.senders import SEND_GRACE_SECONDS, SEND_LOOPS, SenderPlan, SenderResult

PROBE_ACTION = "bench_probe"
PROBE_EVENTS = 1000
MAX_DATAGRAM_BYTES = 65_507
READY_TIMEOUT = 120.0
REPORT_GRACE_SECONDS = 60.0


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


def check_datagram_size(plan: SenderPlan) -> None:
    if plan.mode != "udp":
        return
    size = max(len(frame.data) for frame in build_pool(plan, frames=POOL_MIN_FRAMES).frames)
    if size > MAX_DATAGRAM_BYTES:
        raise SystemExit(
            f"bench: a datagram of {plan.per_frame} events is {size} bytes, more than UDP allows"
        )


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
