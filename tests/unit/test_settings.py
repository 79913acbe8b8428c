"""collector.settings: the one projection from Config to every component's settings."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from collector.config import FIELDS, Config
from collector.settings import (
    BufferSettings,
    EventLimits,
    ForwardSettings,
    QueryServerSettings,
    QuerySettings,
    ReaderSettings,
    Settings,
    TcpSettings,
    UdpSettings,
    WriterSettings,
)

# Options the daemon or its process runner reads from Config itself, not through settings.
PROCESS_OPTIONS = {
    "udp",
    "tcp",
    "query",
    "query_token",
    "query_token_file",
    "log_level",
    "log_format",
    "stats_interval",
    "shutdown_timeout",
    "gil_switch_interval_ms",
}


def options_used() -> set[str]:
    used: set[str] = set(EventLimits._fields)
    for cls in (
        BufferSettings,
        WriterSettings,
        ReaderSettings,
        QuerySettings,
        QueryServerSettings,
        TcpSettings,
        ForwardSettings,
        UdpSettings,
    ):
        used |= {fld.metadata["option"] for fld in dataclasses.fields(cls)}
    return used


def test_every_option_reaches_a_component_or_the_process() -> None:
    used = options_used()
    assert used | PROCESS_OPTIONS == set(FIELDS)
    assert not used & PROCESS_OPTIONS


def test_the_defaults_of_each_settings_class_are_the_configuration_defaults() -> None:
    settings = Settings.from_config(Config())
    assert settings.events == EventLimits()
    assert settings.buffer == BufferSettings()
    assert settings.writer == WriterSettings()
    assert settings.reader == ReaderSettings()
    assert settings.query == QuerySettings()
    assert settings.query_server == QueryServerSettings()
    assert settings.tcp == TcpSettings()
    assert settings.forward == ForwardSettings()
    assert settings.udp == UdpSettings()


def test_values_are_converted_where_units_differ() -> None:
    config = Config(
        db=Path("/tmp/x.db"),
        batch_max_age_ms=250.0,
        writer_delay_ms=5.0,
        query_timeout_ms=1500.0,
        max_extra_depth=3,
        forward_hostname="",
        eager_ack_commit=False,
    )
    settings = Settings.from_config(config)
    assert (settings.writer.batch_max_age, settings.writer.delay) == (0.25, 0.005)
    assert settings.writer.path == settings.reader.path == Path("/tmp/x.db")
    assert settings.reader.timeout == 1.5
    assert settings.events == (65536, 32768, 3, 10000)
    assert settings.forward.hostname == socket.gethostname()
    assert settings.buffer.eager_acks is False


def test_a_named_forward_hostname_is_kept() -> None:
    settings = Settings.from_config(Config(forward_hostname="collector.example"))
    assert settings.forward.hostname == "collector.example"
