"""`python -m collector_client send ACTION ...`: one event from a shell script or a cron job.

    python -m collector_client send deploy --user ci --value 42 --extra env=prod --tcp

Over UDP (the default) the event is sent and the command exits 0; nothing can say whether it
arrived. With --tcp it waits for the daemon's acknowledgement: exit 0 when the event is
stored (or was already, same --id), 1 when the daemon rejected it as invalid (it is in
quarantine), 2 when no acknowledgement came within --timeout, or the event is too large to
send at all (or the arguments are wrong).

Values that look like numbers are sent as numbers: `--value 42` is the integer 42,
`--value 2.5` a float, anything else a string. `--extra KEY=VALUE` follows the same rule.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

from collector_client._settings import DEFAULT_PORT
from collector_client.tracker import Tracker

INTEGER = re.compile(r"[-+]?\d+")
DECIMAL = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXIT_REJECTED = 1
EXIT_NOT_DELIVERED = 2


def number_or_text(text: str) -> int | float | str:
    """42 -> 42, 2.5 -> 2.5, anything else (and numbers the daemon cannot store) as is."""
    if INTEGER.fullmatch(text) and INT64_MIN <= int(text) <= INT64_MAX:
        return int(text)
    if DECIMAL.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    return text


def key_value(text: str) -> tuple[str, int | float | str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, number_or_text(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m collector_client",
        description="Send events to a collector daemon.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser(
        "send",
        help="send one event",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("action", help="what happened, e.g. deploy")
    send.add_argument("--user", help="the user id")
    send.add_argument("--value", type=number_or_text, help="a number or a string")
    send.add_argument(
        "--extra", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="a property of the event; repeat for more",
    )  # fmt: skip
    send.add_argument("--id", help="an event id: a retried command is then stored once")
    send.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    send.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    send.add_argument("--tcp", action="store_true", help="send over TCP and wait for the ack")
    send.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default: %(default)s)"
    )
    return parser


def send(options: argparse.Namespace) -> int:
    errors: list[Exception] = []
    tracker = Tracker(
        options.host,
        options.port,
        "tcp" if options.tcp else "udp",
        linger_ms=0.0,
        backoff_initial=0.05,
        backoff_max=1.0,
        on_error=errors.append,
    )
    extra: dict[str, Any] | None = dict(options.extra) or None
    tracker.track(
        options.action, user_id=options.user, value=options.value, extra=extra, id=options.id
    )
    if tracker.stats().dropped:  # refused by track(): the arguments make a number or a str
        tracker.close(0)
        print(f"event too large, not sent: {errors[0]}", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    tracker.close(options.timeout)
    stats = tracker.stats()
    if options.tcp and stats.acknowledged == 1:
        if stats.rejected:
            print("rejected by the daemon as invalid (see QUARANTINE)", file=sys.stderr)
            return EXIT_REJECTED
        return 0
    if not options.tcp and stats.sent == 1:
        return 0
    where = f"{options.host}:{options.port}"
    reason = f": {errors[-1]}" if errors else ""
    if options.tcp:
        print(
            f"no acknowledgement from {where} within {options.timeout} s{reason}", file=sys.stderr
        )
    else:
        print(f"could not send to {where}{reason}", file=sys.stderr)
    return EXIT_NOT_DELIVERED


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return send(options)


if __name__ == "__main__":
    sys.exit(main())
