"""Command line: `collector serve`, `check-config`, `backup`, `compact` and `example-config`.

Every Config option becomes a flag of each command, with its help text and default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from collector import __version__
from collector.config import (
    FIELDS,
    Config,
    ConfigError,
    env_name,
    flag_fields,
    flag_name,
    load_config,
    render_toml,
    toml_value,
)

DESCRIPTION = """\
collector receives msgpack events over UDP and TCP, group-commits them to SQLite
and answers queries. Every option can also be set in the TOML file given with
--config (same name) or in the environment as COLLECTOR_<NAME>; precedence is
flags > environment > file > defaults."""

EXAMPLE_HEADER = """\
# collector configuration: every option with its default value.
# Generated from the option declarations by `collector example-config`.
# The environment (COLLECTOR_<NAME>) and flags (--name) override what is set here.
# Secrets (query_token) belong in a file only its owner can read, or in query_token_file.
"""


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
    backup = commands.add_parser(
        "backup",
        parents=[shared],
        allow_abbrev=False,
        help="copy the live database (--db) to DEST, consistently, while it is in use",
    )
    backup.add_argument("dest", type=Path, metavar="DEST", help="file to write the copy to")
    backup.add_argument("--force", action="store_true", help="replace DEST if it exists")
    commands.add_parser(
        "compact",
        parents=[shared],
        allow_abbrev=False,
        help="give the space of dropped days back to the filesystem (see docs/storage.md)",
    )
    commands.add_parser(
        "example-config",
        allow_abbrev=False,
        help="print a TOML configuration with every option and its default",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "example-config":
        sys.stdout.write(example_config())
        return 0
    flags = {name: value for name, value in vars(args).items() if name in FIELDS}
    try:
        config, sources = load_config(flags, config_file=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"collector: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        sys.stdout.write(render_toml(config, sources))
        return 0
    if args.command == "backup":
        return run_backup(config, args.dest, args.force)
    if args.command == "compact":
        return run_compact(config)
    from collector.logs import configure_logging
    from collector.runner import run

    configure_logging(config.log_level, config.log_format)
    config_file = getattr(args, "config", None)
    return run(config, reload=lambda: load_config(flags, config_file=config_file)[0])


def example_config() -> str:
    """Every option with its help, its default and whether SIGHUP applies a change to it."""
    from collector.reload import LIVE

    defaults = Config()
    lines = [EXAMPLE_HEADER]
    for name, fld in FIELDS.items():
        when = "a reload (SIGHUP) applies a change" if name in LIVE else "needs a restart"
        lines.append(f"# {fld.metadata['help']}; {when}")
        lines.append(f"{name} = {toml_value(getattr(defaults, name))}")
    return "\n".join(lines) + "\n"


def run_backup(config: Config, dest: Path, force: bool) -> int:
    from collector.backup import BackupError, backup

    try:
        result = backup(config.db, dest, force=force)
    except BackupError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup of {config.db} written to {result.path}: {result.events} events, "
        f"{result.bytes} bytes in {result.seconds:.1f}s"
    )
    return 0


def run_compact(config: Config) -> int:
    from collector.compact import CompactError, compact

    try:
        result = compact(config.db)
    except CompactError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1
    how = "rebuilt with VACUUM" if result.rebuilt else "freed incrementally"
    print(
        f"{config.db}: {result.before_bytes:,} -> {result.after_bytes:,} bytes"
        f" ({how}) in {result.seconds:.1f}s"
    )
    return 0
