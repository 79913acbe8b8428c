"""The one projection from Config to the settings each component takes.

A settings field names the Config option it comes from (`from_option`), so its default is
that option's default and `Settings.from_config` fills every component's settings the same
way, at start and at reload. Components keep no defaults of their own.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Self

from collector.config import FIELDS, Config


def from_option(name: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A settings field that takes the Config option `name`, through `convert` if given."""
    default = FIELDS[name].default
    meta = {"option": name, "convert": convert}
    if convert is None:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(default_factory=lambda: convert(default), metadata=meta)


def option_default(name: str) -> Any:
    return FIELDS[name].default


def milliseconds_to_seconds(ms: float) -> float:
    return ms / 1000.0


def this_host_if_empty(hostname: str) -> str:
    return hostname or socket.gethostname()


class FromConfig:
    """What every settings class shares: being built from a Config."""

    @classmethod
    def from_config(cls, config: Config) -> Self:
        values = {}
        for fld in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = getattr(config, fld.metadata["option"])
            convert = fld.metadata["convert"]
            values[fld.name] = value if convert is None else convert(value)
        return cls(**values)


class EventLimits(NamedTuple):
    """Limits on one event and one batch (collector.events, collector.codec); each field
    is the Config option of the same name."""

    max_event_bytes: int = option_default("max_event_bytes")
    max_extra_bytes: int = option_default("max_extra_bytes")
    max_extra_depth: int = option_default("max_extra_depth")
    max_batch_events: int = option_default("max_batch_events")

    @classmethod
    def from_config(cls, config: Config) -> EventLimits:
        return cls(*(getattr(config, name) for name in cls._fields))


@dataclasses.dataclass(frozen=True, slots=True)
class BufferSettings(FromConfig):
    max_events: int = from_option("buffer_max_events")
    max_bytes: int = from_option("buffer_max_bytes")
    low_water: float = from_option("buffer_low_water")
    eager_acks: bool = from_option("eager_ack_commit")


@dataclasses.dataclass(frozen=True, slots=True)
class WriterSettings(FromConfig):
    path: Path = from_option("db")
    batch_size: int = from_option("batch_size")
    batch_max_age: float = from_option("batch_max_age_ms", milliseconds_to_seconds)
    synchronous: str = from_option("synchronous")
    delay: float = from_option("writer_delay_ms", milliseconds_to_seconds)
    retention_days: int = from_option("retention_days")
    late_after_days: int = from_option("late_after_days")


@dataclasses.dataclass(frozen=True, slots=True)
class ReaderSettings(FromConfig):
    path: Path = from_option("db")
    timeout: float = from_option("query_timeout_ms", milliseconds_to_seconds)
    max_rows: int = from_option("query_max_rows")
    concurrency: int = from_option("query_concurrency")


@dataclasses.dataclass(frozen=True, slots=True)
class QuerySettings(FromConfig):
    """What the verbs of the query port use."""

    default_tz: str = from_option("query_tz")
    max_rows: int = from_option("query_max_rows")
    sql_enabled: bool = from_option("query_sql_enabled")


@dataclasses.dataclass(frozen=True, slots=True)
class QueryServerSettings(FromConfig):
    """Framing and connection limits of the query port."""

    max_line_bytes: int = from_option("query_max_line_bytes")
    max_connections: int = from_option("query_max_connections")
    idle_timeout: float = from_option("query_idle_timeout")


@dataclasses.dataclass(frozen=True, slots=True)
class TcpSettings(FromConfig):
    max_buffer_bytes: int = from_option("tcp_max_buffer_bytes")
    max_connections: int = from_option("tcp_max_connections")
    idle_timeout: float = from_option("tcp_idle_timeout")


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardSettings(FromConfig):
    """How forward records become events; an empty field name turns that mapping off."""

    action_field: str = from_option("forward_action_field")
    user_field: str = from_option("forward_user_field")
    value_field: str = from_option("forward_value_field")
    tag_key: str = from_option("forward_tag_key")
    max_decompressed_bytes: int = from_option("forward_max_decompressed_bytes")
    shared_key: str = from_option("forward_shared_key")
    hostname: str = from_option("forward_hostname", this_host_if_empty)


@dataclasses.dataclass(frozen=True, slots=True)
class UdpSettings(FromConfig):
    receive_buffer: int = from_option("udp_receive_buffer")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every component's settings, from one Config."""

    events: EventLimits
    buffer: BufferSettings
    writer: WriterSettings
    reader: ReaderSettings
    query: QuerySettings
    query_server: QueryServerSettings
    tcp: TcpSettings
    forward: ForwardSettings
    udp: UdpSettings

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        return cls(
            events=EventLimits.from_config(config),
            buffer=BufferSettings.from_config(config),
            writer=WriterSettings.from_config(config),
            reader=ReaderSettings.from_config(config),
            query=QuerySettings.from_config(config),
            query_server=QueryServerSettings.from_config(config),
            tcp=TcpSettings.from_config(config),
            forward=ForwardSettings.from_config(config),
            udp=UdpSettings.from_config(config),
        )
