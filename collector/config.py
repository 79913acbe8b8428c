"""The one typed configuration.

Every option is declared once, as a field of `Config`. Its TOML key is the field name, its
environment variable is `COLLECTOR_<NAME>` and its flag is `--name-with-dashes`.
Precedence: defaults < TOML file < environment < flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

ENV_PREFIX = "COLLECTOR_"


class ConfigError(ValueError):
    """A configuration value that cannot be used, with where it came from."""


class Address(NamedTuple):
    """A HOST:PORT pair; port 0 asks the kernel for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port_text = text.strip().rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"write an IPv6 address in brackets, [HOST]:PORT, got {text!r}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host.strip("[]"), port)


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    optional: bool = False,
    secret: bool = False,
) -> Any:
    """Declare an option: its default, its help text and its constraints.

    A secret has no command-line flag (command lines are visible to every local user) and
    is never printed.
    """
    meta = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "optional": optional,
        "secret": secret,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    # Where things live.
    db: Path = option(Path("data/events.db"), "SQLite database file; its directory is created")
    udp: Address | None = option(
        Address("127.0.0.1", 24224),
        "UDP ingest address HOST:PORT ('off' disables it)",
        optional=True,
    )
    tcp: Address | None = option(
        Address("127.0.0.1", 24224),
        "TCP ingest address HOST:PORT ('off' disables it)",
        optional=True,
    )
    query: Address | None = option(
        Address("127.0.0.1", 24225),
        "query port HOST:PORT ('off' disables it)",
        optional=True,
    )

    # Queries.
    query_timeout_ms: float = option(
        5000.0, "a query running longer than this (ms) is stopped with ERR TIMEOUT", minimum=1
    )
    query_max_rows: int = option(10_000, "most rows a query returns", minimum=1)
    query_max_line_bytes: int = option(8192, "longest command line on the query port", minimum=64)
    query_concurrency: int = option(4, "queries running at once; more wait", minimum=1)
    query_max_connections: int = option(64, "most open query connections", minimum=1)
    query_idle_timeout: float = option(
        600.0, "close a query connection idle this many seconds (0: never)", minimum=0
    )
    query_tz: str = option("UTC", "time zone for days and time buckets (Area/City)")
    query_token: str = option(
        "", "token that AUTH must present before other verbs (empty: no AUTH)", secret=True
    )
    query_token_file: str = option("", "file holding the query token (read at start and on reload)")
    query_sql_enabled: bool = option(True, "allow the read-only SQL verb")

    # Logs and stats.
    log_level: str = option("info", "log level", choices=("debug", "info", "warning", "error"))
    log_format: str = option(
        "auto",
        "log format: JSON lines, key=value for people, or auto (key=value on a terminal)",
        choices=("auto", "json", "console"),
    )
    stats_interval: float = option(
        60.0, "seconds between stats summaries in the log (0 turns them off)", minimum=0
    )

    # Group commit and the buffer.
    batch_size: int = option(5000, "commit when this many events are buffered", minimum=1)
    batch_max_age_ms: float = option(
        50.0, "commit when the oldest buffered event is this old (ms)", minimum=0
    )
    eager_ack_commit: bool = option(
        True,
        "commit as soon as the writer is free when a batch awaits its ack, without waiting "
        "for batch_size or batch_max_age_ms",
    )
    buffer_max_events: int = option(
        100_000, "buffer capacity in events; above it TCP pauses and UDP drops", minimum=1
    )
    buffer_max_bytes: int = option(
        64 * 1024 * 1024, "buffer capacity in (estimated) bytes", minimum=1024
    )
    buffer_low_water: float = option(
        0.5,
        "paused TCP connections resume when the buffer drains below this fraction",
        minimum=0.0,
        maximum=1.0,
    )
    synchronous: str = option(
        "normal",
        "SQLite synchronous mode: normal survives a process crash, full also power loss",
        choices=("normal", "full"),
    )
    shutdown_timeout: float = option(
        30.0, "seconds allowed for the final flush at shutdown", minimum=0
    )
    retention_days: int = option(
        0,
        "keep events of this many UTC days (today included); older days are dropped "
        "whole (0: keep everything)",
        minimum=0,
    )
    late_after_days: int = option(
        1,
        "events whose UTC day is more than this many days before the day they arrive on "
        "(or more than one after it) go to the late partition",
        minimum=0,
        maximum=365,
    )
    gil_switch_interval_ms: float = option(
        0.5,
        "Python thread switch interval (ms); lower lets the writer thread take the GIL back "
        "from a busy event loop sooner (Python's default is 5)",
        minimum=0.01,
        maximum=100.0,
    )
    writer_delay_ms: float = option(
        0.0, "testing only: sleep this long before every commit (ms)", minimum=0
    )

    # Limits on input.
    max_event_bytes: int = option(
        64 * 1024, "largest event, as stored (action, user_id, value and extra)", minimum=256
    )
    max_extra_bytes: int = option(32 * 1024, "largest extra, as JSON text", minimum=2)
    max_extra_depth: int = option(8, "deepest nesting of maps and lists in extra", minimum=1)
    max_batch_events: int = option(10_000, "most events in one batch", minimum=1)
    tcp_max_buffer_bytes: int = option(
        4 * 1024 * 1024,
        "bytes buffered per TCP connection; a larger msgpack object closes it",
        minimum=1024,
    )
    tcp_max_connections: int = option(256, "most open TCP ingest connections", minimum=1)
    tcp_idle_timeout: float = option(
        300.0, "close a TCP connection idle this many seconds (0: never)", minimum=0
    )

    # Fluentd forward protocol.
    forward_action_field: str = option(
        "action", "forward record field that becomes the action, else the tag (empty: the tag)"
    )
    forward_user_field: str = option(
        "user_id", "forward record field that becomes user_id (empty: none)"
    )
    forward_value_field: str = option(
        "value", "forward record field that becomes value (empty: none)"
    )
    forward_tag_key: str = option(
        "tag", "key of extra that keeps the forward tag (empty: the tag is not kept in extra)"
    )
    forward_max_decompressed_bytes: int = option(
        16 * 1024 * 1024,
        "largest decompressed CompressedPackedForward request; a larger one is refused",
        minimum=1024,
    )
    forward_shared_key: str = option(
        "",
        "shared key: every TCP ingest connection must pass the forward HELO/PING/PONG "
        "handshake first (empty: no handshake)",
        secret=True,
    )
    forward_hostname: str = option(
        "", "server hostname sent in the forward PONG (empty: this machine's hostname)"
    )

    # UDP.
    udp_receive_buffer: int = option(
        8 * 1024 * 1024, "SO_RCVBUF asked for the UDP socket (bytes)", minimum=0
    )

    @property
    def batch_max_age(self) -> float:
        return self.batch_max_age_ms / 1000.0


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_fields() -> list[str]:
    """Options that have a command-line flag (all but secrets)."""
    return [name for name, fld in FIELDS.items() if not fld.metadata["secret"]]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_kind(name: str) -> type:
    """The Python type a field holds (Address for `Address | None`)."""
    kinds = {
        "Path": Path,
        "Address | None": Address,
        "str": str,
        "int": int,
        "float": float,
        "bool": bool,
    }
    annotation = FIELDS[name].type
    return kinds[annotation if isinstance(annotation, str) else annotation.__name__]


def convert(name: str, raw: Any) -> Any:
    """Turn a raw value (text from env or flags, or a TOML value) into the field's type."""
    meta = FIELDS[name].metadata
    kind = field_kind(name)
    if meta["optional"] and raw in ("off", "", None):
        return None
    if kind is Address:
        value: Any = Address.parse(str(raw))
    elif kind is Path:
        value = Path(str(raw))
    elif kind is bool:
        value = parse_bool(raw)
    elif kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError(f"expected an integer, got {raw!r}")
        value = int(raw)
    elif kind is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError(f"expected a number, got {raw!r}")
        value = float(raw)
    else:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {raw!r}")
        value = raw.lower() if meta["choices"] else raw
    check_bounds(meta, value)
    return value


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def check_bounds(meta: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ValueError(f"must be at least {meta['minimum']}, got {value!r}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ValueError(f"must be at most {meta['maximum']}, got {value!r}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return data


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[Config, dict[str, str]]:
    """Build the effective Config and say where each value came from.

    `flags` maps field names to raw values given on the command line; `env` defaults to
    os.environ; the TOML file is `config_file`, else `COLLECTOR_CONFIG` from the environment.
    """
    env = os.environ if env is None else env
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((f"file {config_file}", read_toml(config_file)))
    layers.append(("env", {n: env[env_name(n)] for n in FIELDS if env_name(n) in env}))
    secret_flags = sorted(set(flags or {}) - set(flag_fields()))
    if secret_flags:
        raise ConfigError(f"{secret_flags[0]} is secret: set it in the environment or a file")
    layers.append(("flag", dict(flags or {})))

    values: dict[str, Any] = {}
    sources = {name: "default" for name in FIELDS}
    for source, layer in layers:
        for name, raw in layer.items():
            try:
                values[name] = convert(name, raw)
            except ValueError as exc:
                where = env_name(name) if source == "env" else source
                raise ConfigError(f"{name} (from {where}): {exc}") from exc
            sources[name] = source
    return Config(**values), sources


def render_toml(config: Config, sources: Mapping[str, str] | None = None) -> str:
    """The effective settings as TOML, each with its help text (and source when given)."""
    lines = []
    for name, fld in FIELDS.items():
        note = fld.metadata["help"]
        if sources is not None:
            note += f" [{sources[name]}]"
        lines.append(f"# {note}")
        value = getattr(config, name)
        shown = '"(set, not shown)"' if fld.metadata["secret"] and value else toml_value(value)
        lines.append(f"{name} = {shown}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if value is None:
        return '"off"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes), control characters included.
    return json.dumps(str(value), ensure_ascii=False)
