"""SIGHUP: read the configuration again and apply what can change while running.

Live: the log level and format, the limits on input and on the buffer, the query token
(its file is read again too), the query row cap, time limit, SQL switch, connection cap and
idle timeout. Everything else (addresses, the database, the writer's batching, TCP settings,
...) needs a restart: a reload names those settings in the log and leaves them as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from collector.config import FIELDS, Config, ConfigError
from collector.logs import configure_logging

if TYPE_CHECKING:
    from collector.daemon import Daemon

log = structlog.get_logger("collector.reload")

LIMITS = ("max_event_bytes", "max_extra_bytes", "max_extra_depth", "max_batch_events")
BUFFER = ("buffer_max_events", "buffer_max_bytes", "buffer_low_water")
QUERIES = (
    "query_max_rows",
    "query_timeout_ms",
    "query_sql_enabled",
    "query_max_connections",
    "query_idle_timeout",
)
LOGGING = ("log_level", "log_format")
TOKEN = ("query_token", "query_token_file")
LIVE = frozenset(LIMITS + BUFFER + QUERIES + LOGGING + TOKEN)


@dataclasses.dataclass(frozen=True)
class Outcome:
    applied: dict[str, Any]
    needs_restart: list[str]
    token_changed: bool


def reload_config(daemon: Daemon, load: Callable[[], Config]) -> Outcome | None:
    """Load the configuration again and apply it to `daemon`; None (and the old settings
    kept) when it cannot be read or is invalid."""
    try:
        new = load()
        token = load_token(new)
    except (ConfigError, OSError, ValueError) as exc:  # ValueError: a token file not UTF-8
        log.error("reload failed, the running configuration is kept", error=str(exc))
        return None
    old = daemon.config
    changed = [name for name in FIELDS if getattr(old, name) != getattr(new, name)]
    live = {name: getattr(new, name) for name in changed if name in LIVE}
    outcome = Outcome(
        applied=live,
        needs_restart=[name for name in changed if name not in LIVE],
        token_changed=token != daemon.queries.context.token,
    )
    effective = dataclasses.replace(old, **live)
    apply(daemon, effective, token)
    report(old, outcome)
    # Last, so that the report is logged even when the new level would hide it.
    configure_logging(effective.log_level, effective.log_format)
    return outcome


def load_token(config: Config) -> str | None:
    from collector.daemon import load_query_token

    return load_query_token(config)


def apply(daemon: Daemon, config: Config, token: str | None) -> None:
    from collector.daemon import event_limits

    daemon.config = config
    daemon.ingest.limits = event_limits(config)
    buffer = daemon.buffer
    buffer.max_events = config.buffer_max_events
    buffer.max_bytes = config.buffer_max_bytes
    buffer.low_water = config.buffer_low_water
    context = daemon.queries.context
    context.token = token
    context.max_rows = config.query_max_rows
    context.sql_enabled = config.query_sql_enabled
    daemon.reader.max_rows = config.query_max_rows
    daemon.reader.timeout = config.query_timeout_ms / 1000.0
    daemon.queries.limits = dataclasses.replace(
        daemon.queries.limits,
        max_connections=config.query_max_connections,
        idle_timeout=config.query_idle_timeout,
    )


def report(old: Config, outcome: Outcome) -> None:
    changes = {
        name: "(secret changed)" if FIELDS[name].metadata["secret"] else [getattr(old, name), value]
        for name, value in outcome.applied.items()
    }
    log.info(
        "configuration reloaded",
        changed=changes,
        query_token_changed=outcome.token_changed,
        needs_restart=outcome.needs_restart,
    )
    if outcome.needs_restart:
        log.warning(
            "some changed settings apply only after a restart", settings=outcome.needs_restart
        )
