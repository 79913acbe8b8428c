"""What every verb handler works with: the daemon-wide Context, the connection's Session,
and the helpers that read a command's common options (the time window, integer options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.clock import now_ms
from collector.commits import CommitSignal
from collector.query import timeexpr
from collector.query.backend import Backend
from collector.query.errors import QueryError
from collector.query.model import Window
from collector.query.parser import Command
from collector.settings import QuerySettings
from collector.stats import Stats

WINDOW_OPTIONS = ("since", "until", "on", "tz")


@dataclass
class Session:
    """Per-connection state."""

    format: str = "text"
    quit: bool = False
    # The token this connection authenticated with: a new token (a reload) logs it out.
    authenticated_with: str | None = None
    stream: Any = None  # the connection, for verbs that stream (verbs.streaming.Stream)


@dataclass
class Context:
    """What every verb may use; settings and token are replaced at reload."""

    backend: Backend
    stats: Stats
    settings: QuerySettings
    token: str | None = None
    commits: CommitSignal = field(default_factory=CommitSignal)

    @property
    def max_rows(self) -> int:
        return self.settings.max_rows

    @property
    def sql_enabled(self) -> bool:
        return self.settings.sql_enabled

    def is_authenticated(self, session: Session) -> bool:
        """No token configured, or this connection gave the current one (not one since
        replaced by a reload)."""
        return self.token is None or session.authenticated_with == self.token


def window(ctx: Context, command: Command) -> Window:
    """The command's since=, until=, on= and tz=, as a Window."""
    options = command.options
    zone = timeexpr.resolve_zone(options.get("tz") or ctx.settings.default_tz)
    now = now_ms()
    if "on" in options:
        if "since" in options or "until" in options:
            raise QueryError("ARG", "on= cannot be combined with since= or until=")
        start, end = timeexpr.day_range(options["on"], now, zone)
        return Window(start, end, zone)
    since = timeexpr.parse_time(options["since"], now, zone) if "since" in options else None
    until = timeexpr.parse_time(options["until"], now, zone) if "until" in options else None
    return Window(since, until, zone)


def positive_int(command: Command, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    raw = command.options.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise QueryError("ARG", f"{name}= must be {kind}, got {raw!r}")
    if int(raw) > maximum:
        raise QueryError("LIMIT", f"{name}={raw} is more than the limit of {maximum}")
    return int(raw)
