"""Command line: `collector serve`, `collector check-config`.

Every Config option becomes a flag of both commands, with its help text and default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from collector import __version__
from collector.config import (
    FIELDS,
    ConfigError,
    env_name,
    flag_fields,
    flag_name,
    load_config,
    render_toml,
)

DESCRIPTION = """\
collector receives msgpack events over UDP and TCP, group-commits them to SQLite
and answers queries. Every option can also be set in the TOML file given with
--config (same name) or in the environment as COLLECTOR_<NAME>; precedence is
flags > environment > file > defaults."""


def option_parser() -> argparse.ArgumentParser:
    """The options shared by every command, one flag per Config field."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("options (flag / COLLECTOR_<NAME> / TOML key)")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration file (env COLLECTOR_CONFIG)",
    )
    for name in flag_fields():
        fld = FIELDS[name]
        meta = fld.metadata
        choices = f" ({'|'.join(meta['choices'])})" if meta["choices"] else ""
        default = "off" if fld.default is None else fld.default
        group.add_argument(
            flag_name(name),
            dest=name,
            metavar=name.upper(),
            default=argparse.SUPPRESS,
            help=f"{meta['help']}{choices}; default {default}; env {env_name(name)}",
        )
    return parser


def build_parser() -> argparse.ArgumentParser:
    shared = option_parser()
    secrets = [name for name in FIELDS if name not in flag_fields()]
    secret_help = "".join(
        f"\n  {name}: {FIELDS[name].metadata['help']} ({env_name(name)} or the file only)"
        for name in secrets
    )
    parser = argparse.ArgumentParser(
        prog="collector",
        allow_abbrev=False,
        description=DESCRIPTION + ("\n\nsecrets, never on the command line:" + secret_help),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"collector {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", parents=[shared], allow_abbrev=False, help="run the daemon")
    commands.add_parser(
        "check-config",
        allow_abbrev=False,
        parents=[shared],
        help="validate the configuration and print the effective settings as TOML",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if name in FIELDS}
    try:
        config, sources = load_config(flags, config_file=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"collector: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        sys.stdout.write(render_toml(config, sources))
        return 0
    from collector.daemon import run
    from collector.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    return run(config)
