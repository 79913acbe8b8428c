"""collector-query: run query-port commands from the shell, a pipe, or an interactive prompt.

    collector-query COUNT by=action          one command; exit 0 on OK, 1 on ERR
    printf 'PING\\nCOUNT\\n' | collector-query  each stdin line in order; 1 if any answered ERR
    collector-query                          a `collector> ` prompt with line editing and history

Exit status 2 when the daemon cannot be reached. The token comes from --token-file or from
COLLECTOR_QUERY_TOKEN, never from the command line, where every local user could read it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from collector_client.query import (
    DEFAULT_PORT,
    QueryClient,
    QueryError,
    has_format_option,
    verb_of,
)

PROMPT = "collector> "
HISTORY_FILE = ".collector_query_history"
HISTORY_LENGTH = 1000
TOKEN_VARIABLE = "COLLECTOR_QUERY_TOKEN"
EXIT_OK, EXIT_ERR, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OutputClosed(Exception):
    """Whoever read our stdout went away (`collector-query EXPORT | head`)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="collector-query",
        description="Run commands on the collector's query port (see HELP).",
        epilog=f"The query token is read from --token-file or ${TOKEN_VARIABLE}.",
    )
    parser.add_argument("-H", "--host", default="127.0.0.1", help="daemon host (127.0.0.1)")
    parser.add_argument(
        "-p", "--port", type=int, default=DEFAULT_PORT, help=f"query port ({DEFAULT_PORT})"
    )
    parser.add_argument("--json", action="store_true", help="JSON data lines (format=json)")
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help="file holding the query token"
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND ...", help="a command to run"
    )
    return parser.parse_args(argv)


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip() or None
    return os.environ.get(TOKEN_VARIABLE) or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except OSError as exc:
        return complain(f"cannot read the token file: {exc}", EXIT_UNREACHABLE)
    client = QueryClient(args.host, args.port, token=token)
    try:
        client.connect()
    except QueryError as exc:
        report(str(exc), show_status=False)
        return EXIT_ERR
    except OSError as exc:
        return complain(f"cannot connect to {args.host}:{args.port}: {exc}", EXIT_UNREACHABLE)
    with client:
        try:
            code = run_mode(client, args)
            flush_output()
            return code
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except OutputClosed:
            # Keep Python from complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERR
        except OSError as exc:
            return complain(f"connection to {args.host}:{args.port} lost: {exc}", EXIT_UNREACHABLE)


def run_mode(client: QueryClient, args: argparse.Namespace) -> int:
    if args.command:
        ok = run_command(client, " ".join(args.command), args.json, show_status=False)
        return EXIT_OK if ok else EXIT_ERR
    if not sys.stdin.isatty():
        return run_lines(client, sys.stdin, args.json)
    return run_interactive(client, args.json)


def run_command(client: QueryClient, command: str, json_output: bool, show_status: bool) -> bool:
    """Print the reply's data lines; True if it ended in OK."""
    if verb_of(command) == "TAIL":
        return run_tail(client, command, json_output, show_status)
    for line in client.stream_raw(command, json_format=json_output):
        emit(line)
    return report(client.last_status, show_status)


def run_tail(client: QueryClient, command: str, json_output: bool, show_status: bool) -> bool:
    """Print a TAIL until Ctrl-C, then end it as the protocol asks: by sending a line."""
    if json_output and not has_format_option(command):
        command += " format=json"
    stream = client.tail_raw(command, wait=None)
    try:
        try:
            for line in stream:
                emit(line, flush=True)
        except KeyboardInterrupt:
            stream.stop()
    except QueryError as exc:
        return report(str(exc), show_status)
    return report(stream.status or "OK", show_status)


def run_lines(client: QueryClient, lines: Iterable[str], json_output: bool) -> int:
    """Run each non-blank line as a command, in order; EXIT_ERR if any answered ERR."""
    all_ok = True
    for line in lines:
        command = line.strip()
        if not command:
            continue
        all_ok = run_command(client, command, json_output, show_status=False) and all_ok
        if verb_of(command) == "QUIT":
            break
    return EXIT_OK if all_ok else EXIT_ERR


def run_interactive(client: QueryClient, json_output: bool) -> int:
    history = load_history()
    try:
        while True:
            try:
                command = input(PROMPT).strip()
            except EOFError:
                print(file=sys.stderr)
                return EXIT_OK
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            if command:
                run_at_prompt(client, command, json_output)
            if verb_of(command) == "QUIT":
                return EXIT_OK
    finally:
        save_history(history)


def run_at_prompt(client: QueryClient, command: str, json_output: bool) -> None:
    try:
        run_command(client, command, json_output, show_status=True)
    except KeyboardInterrupt:
        # The reply cannot be cancelled; the client dropped the connection and reconnects.
        print("interrupted", file=sys.stderr)
    except OSError as exc:
        print(f"connection lost: {exc}", file=sys.stderr)
        client.close()


def load_history() -> Path | None:
    """Turn on line editing and history for input(); the history file, if readline exists."""
    try:
        import readline
    except ImportError:
        return None
    path = Path.home() / HISTORY_FILE
    with suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    return path


def save_history(path: Path | None) -> None:
    if path is None:
        return
    import readline

    with suppress(OSError):
        readline.write_history_file(path)


def emit(line: str, flush: bool = False) -> None:
    try:
        sys.stdout.write(line + "\n")
        if flush:
            sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def flush_output() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def report(status: str, show_status: bool) -> bool:
    """Show a status line (ERR always, OK at the prompt) on stderr; True if it is OK."""
    ok = not status.startswith("ERR")
    if show_status or not ok:
        print(status, file=sys.stderr)
    return ok


def complain(message: str, code: int) -> int:
    print(f"collector-query: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
