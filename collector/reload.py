"""SIGHUP: read the configuration again and apply what can change while running.

Live: the log level and format, the limits on input and on the buffer, the query token
(its file is read again too), the query row cap, time limit, SQL switch, connection cap and
idle timeout. Everything else (addresses, the database, the writer's batching, TCP settings,
...) needs a restart: a reload names those settings in the log and leaves them as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import structlog

from collector.config import FIELDS, Config, ConfigError
from collector.daemon import Daemon
from collector.logs import configure_logging

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
    old, old_token = daemon.config, daemon.queries.context.token
    try:
        new = load()
        changed = [name for name in FIELDS if getattr(old, name) != getattr(new, name)]
        live = {name: getattr(new, name) for name in changed if name in LIVE}
        effective = dataclasses.replace(old, **live)
        daemon.apply(effective)
    except (ConfigError, OSError, ValueError) as exc:  # ValueError: a token file not UTF-8
        log.error("reload failed, the running configuration is kept", error=str(exc))
        return None
    outcome = Outcome(
        applied=live,
        needs_restart=[name for name in changed if name not in LIVE],
        token_changed=daemon.queries.context.token != old_token,
    )
    report(old, outcome)
    # Last, so that the report is logged even when the new level would hide it.
    configure_logging(effective.log_level, effective.log_format)
    return outcome


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
