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
import json
import math
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RssSampler,
    counter_delta,
    daemon_complaints,
    kb_to_mb,
    machine_info,
    per_second,
    proc_status_kb,
    quantile_ms,
    started_daemon,
    stopped_stats,
    udp_kernel_counters,
    wait_until_settled,
)
from bench.load import PROBE_ACTION, acked_probe, check_datagram_size, run_senders
from bench.senders import SenderPlan, SenderResult
from collector.testing import DaemonProcess, count_rows

MODES = ("udp", "tcp-stream", "tcp-acked")
DAEMON_ARGS_SEPARATOR = "--daemon-args"


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
    with RssSampler(pid, daemon.db) as sampler:
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
        "max_wal_bytes": sampler.max_wal_bytes,
        "exit_code": exit_code,
        "kernel_udp_delta": counter_delta(kernel_before, udp_kernel_counters()),
    }
    return build_report(options, results, probe, observed, daemon)


def daemon_port(daemon: DaemonProcess, mode: str) -> int:
    address = daemon.addresses.get("udp" if mode == "udp" else "tcp")
    if address is None:
        transport = "UDP" if mode == "udp" else "TCP"
        raise SystemExit(f"bench: the daemon does not listen for {transport}")
    return address.port


def run_probe(options: argparse.Namespace, daemon: DaemonProcess) -> dict[str, Any]:
    if not options.then_acked_probe:
        return {}
    return acked_probe(daemon_port(daemon, "tcp-acked"), options.ids, options.ack_timeout)


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
        "max_wal_mb": round(observed["max_wal_bytes"] / 1e6, 1),
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
        ("largest WAL file sampled", f"{daemon['max_wal_mb']} MB"),
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
