"""collector.config: defaults, layers (file < env < flags), conversion, bounds, TOML."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from collector.config import (
    FIELDS,
    Address,
    Config,
    ConfigError,
    env_name,
    flag_name,
    load_config,
    render_toml,
)


def write_toml(tmp_path: Path, text: str, name: str = "collector.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[Config, dict[str, str]]:
    return load_config(flags=flags, env=env or {}, config_file=config_file)


# --- defaults ------------------------------------------------------------------------------


def test_defaults() -> None:
    config, sources = load()
    assert config == Config()
    assert set(sources) == set(FIELDS)
    assert set(sources.values()) == {"default"}
    assert config.db == Path("data/events.db")
    assert config.udp == Address("127.0.0.1", 24224)
    assert config.tcp == Address("127.0.0.1", 24224)
    assert config.query == Address("127.0.0.1", 24225)
    assert config.log_level == "info"
    assert config.log_format == "auto"
    assert config.batch_size == 5000
    assert config.batch_max_age_ms == 50.0
    assert config.batch_max_age == 0.05
    assert config.buffer_low_water == 0.5
    assert config.synchronous == "normal"
    assert config.max_event_bytes == 64 * 1024
    assert config.max_extra_depth == 8


def test_naming_of_env_variables_and_flags() -> None:
    assert env_name("batch_max_age_ms") == "COLLECTOR_BATCH_MAX_AGE_MS"
    assert flag_name("batch_max_age_ms") == "--batch-max-age-ms"


def test_unrelated_environment_is_ignored() -> None:
    config, sources = load(env={"PATH": "/bin", "COLLECTOR": "x", "BATCH_SIZE": "1"})
    assert config == Config()
    assert set(sources.values()) == {"default"}


# --- precedence ----------------------------------------------------------------------------


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'batch_size = 100\nlog_level = "debug"\nstats_interval = 5\nmax_extra_depth = 4\n',
    )
    env = {"COLLECTOR_BATCH_SIZE": "200", "COLLECTOR_LOG_LEVEL": "warning"}
    config, sources = load(flags={"batch_size": "300"}, env=env, config_file=path)
    assert config.batch_size == 300
    assert config.log_level == "warning"
    assert config.stats_interval == 5.0
    assert config.max_extra_depth == 4
    assert config.synchronous == "normal"
    assert sources["batch_size"] == "flag"
    assert sources["log_level"] == "env"
    assert sources["stats_interval"] == f"file {path}"
    assert sources["max_extra_depth"] == f"file {path}"
    assert sources["synchronous"] == "default"


@pytest.mark.parametrize(
    ("layers", "expected", "source"),
    [
        ("", 5000, "default"),
        ("file", 11, "file"),
        ("env", 22, "env"),
        ("file env", 22, "env"),
        ("flag", 33, "flag"),
        ("file flag", 33, "flag"),
        ("file env flag", 33, "flag"),
    ],
)
def test_each_layer_overrides_the_ones_below(
    tmp_path: Path, layers: str, expected: int, source: str
) -> None:
    given = layers.split()
    path = write_toml(tmp_path, "batch_size = 11\n" if "file" in given else "")
    env = {"COLLECTOR_BATCH_SIZE": "22"} if "env" in given else {}
    flags = {"batch_size": "33"} if "flag" in given else {}
    config, sources = load(flags=flags, env=env, config_file=path)
    assert config.batch_size == expected
    assert sources["batch_size"].split(" ")[0] == source


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "batch_size = 77\n")
    config, sources = load(env={"COLLECTOR_CONFIG": str(path)})
    assert config.batch_size == 77
    assert sources["batch_size"] == f"file {path}"


def test_explicit_config_file_wins_over_the_environment(tmp_path: Path) -> None:
    from_env = write_toml(tmp_path, "batch_size = 1\n", "env.toml")
    explicit = write_toml(tmp_path, "batch_size = 2\n", "explicit.toml")
    config, _ = load(env={"COLLECTOR_CONFIG": str(from_env)}, config_file=explicit)
    assert config.batch_size == 2


def test_flags_accept_already_typed_values() -> None:
    config, _ = load(
        flags={"batch_size": 10, "stats_interval": 1, "db": Path("x.db"), "udp": "off"}
    )
    assert config.batch_size == 10
    assert config.stats_interval == 1.0
    assert type(config.stats_interval) is float
    assert config.db == Path("x.db")
    assert config.udp is None


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:24224", Address("127.0.0.1", 24224)),
        ("localhost:0", Address("localhost", 0)),
        ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
        ("[::1]:0", Address("::1", 0)),
        ("[::]:8080", Address("::", 8080)),
        ("[fe80::1]:53", Address("fe80::1", 53)),
        ("  example.org:80 ", Address("example.org", 80)),
    ],
)
def test_address_parse(text: str, address: Address) -> None:
    assert Address.parse(text) == address


@pytest.mark.parametrize(
    "text",
    ["", "localhost", ":80", "localhost:", "localhost:http", "host:65536", "host:-1", "[::1]"],
)
def test_address_parse_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port out of range"):
        Address.parse(text)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("127.0.0.1", 80), "127.0.0.1:80"),
        (Address("::1", 0), "[::1]:0"),
        (Address("localhost", 65535), "localhost:65535"),
    ],
)
def test_address_str_parses_back(address: Address, text: str) -> None:
    assert str(address) == text
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize("name", ["udp", "tcp", "query"])
@pytest.mark.parametrize("layer", ["file", "env", "flag"])
@pytest.mark.parametrize("off", ["off", ""])
def test_off_disables_a_listener(tmp_path: Path, name: str, layer: str, off: str) -> None:
    path = write_toml(tmp_path, f'{name} = "{off}"\n' if layer == "file" else "")
    env = {env_name(name): off} if layer == "env" else {}
    flags = {name: off} if layer == "flag" else {}
    config, _ = load(flags=flags, env=env, config_file=path)
    assert getattr(config, name) is None
    others = {"udp", "tcp", "query"} - {name}
    assert all(getattr(config, other) is not None for other in others)


def test_address_from_each_layer(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'udp = "[::1]:9000"\n')
    config, _ = load(
        flags={"query": "0.0.0.0:0"}, env={"COLLECTOR_TCP": "10.0.0.1:7"}, config_file=path
    )
    assert config.udp == Address("::1", 9000)
    assert config.tcp == Address("10.0.0.1", 7)
    assert config.query == Address("0.0.0.0", 0)


# --- conversion errors, named with their source --------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('batch_size = "many"', "batch_size (from file {path}): "),
        ("batch_size = 1.5", "batch_size (from file {path}): expected an integer, got 1.5"),
        ("batch_size = true", "batch_size (from file {path}): expected an integer, got True"),
        ("batch_size = [1]", "batch_size (from file {path}): expected an integer, got [1]"),
        ("stats_interval = true", "stats_interval (from file {path}): expected a number"),
        ('stats_interval = "soon"', "stats_interval (from file {path}): "),
        ("log_level = 3", "log_level (from file {path}): expected a string, got 3"),
        ('udp = "localhost"', "udp (from file {path}): expected HOST:PORT, got 'localhost'"),
        ("udp = 5", "udp (from file {path}): expected HOST:PORT, got '5'"),
    ],
)
def test_type_errors_in_the_file(tmp_path: Path, toml: str, message: str) -> None:
    path = write_toml(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as info:
        load(config_file=path)
    assert str(info.value).startswith(message.format(path=path))


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("batch_size", "abc", "batch_size (from COLLECTOR_BATCH_SIZE): "),
        ("batch_size", "1.5", "batch_size (from COLLECTOR_BATCH_SIZE): "),
        ("batch_size", "0", "batch_size (from COLLECTOR_BATCH_SIZE): must be at least 1, got 0"),
        ("stats_interval", "x", "stats_interval (from COLLECTOR_STATS_INTERVAL): "),
        ("tcp", "nowhere", "tcp (from COLLECTOR_TCP): expected HOST:PORT"),
        ("log_format", "xml", "log_format (from COLLECTOR_LOG_FORMAT): must be one of"),
    ],
)
def test_errors_in_the_environment_name_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={env_name(name): raw})
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("batch_size", "x", "batch_size (from flag): "),
        ("buffer_low_water", "2", "buffer_low_water (from flag): must be at most 1.0, got 2.0"),
        ("query", "host:99999", "query (from flag): port out of range in 'host:99999'"),
        ("synchronous", "off", "synchronous (from flag): must be one of normal, full, got 'off'"),
    ],
)
def test_errors_in_flags_name_the_flag(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={name: raw})
    assert str(info.value).startswith(message)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        load(flags={"batch_size": "x"})


# --- bounds and choices --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lowest"),
    [
        ("batch_size", "1"),
        ("buffer_max_events", "1"),
        ("buffer_max_bytes", "1024"),
        ("max_event_bytes", "256"),
        ("max_extra_bytes", "2"),
        ("max_extra_depth", "1"),
        ("max_batch_events", "1"),
        ("tcp_max_buffer_bytes", "1024"),
        ("tcp_max_connections", "1"),
        ("udp_receive_buffer", "0"),
    ],
)
def test_integer_minimums(name: str, lowest: str) -> None:
    config, _ = load(flags={name: lowest})
    assert getattr(config, name) == int(lowest)
    too_low = str(int(lowest) - 1)
    with pytest.raises(ConfigError, match=rf"^{name} \(from flag\): must be at least"):
        load(flags={name: too_low})


@pytest.mark.parametrize(
    "name",
    [
        "stats_interval",
        "batch_max_age_ms",
        "shutdown_timeout",
        "writer_delay_ms",
        "tcp_idle_timeout",
    ],
)
def test_float_options_are_non_negative(name: str) -> None:
    config, _ = load(flags={name: "0"})
    assert getattr(config, name) == 0.0
    with pytest.raises(ConfigError, match=rf"^{name} \(from flag\): must be at least 0"):
        load(flags={name: "-0.5"})


@pytest.mark.parametrize(
    ("raw", "ok"), [("0", True), ("1", True), ("0.75", True), ("1.01", False), ("-0.1", False)]
)
def test_buffer_low_water_is_a_fraction(raw: str, ok: bool) -> None:
    if ok:
        assert load(env={"COLLECTOR_BUFFER_LOW_WATER": raw})[0].buffer_low_water == float(raw)
    else:
        with pytest.raises(ConfigError, match=r"^buffer_low_water "):
            load(env={"COLLECTOR_BUFFER_LOW_WATER": raw})


@pytest.mark.parametrize("name", ["buffer_low_water", "batch_max_age_ms", "stats_interval"])
def test_nan_is_rejected_for_bounded_numbers(name: str) -> None:
    """NaN compares false with every bound, so it must be refused explicitly: a NaN
    low-water mark would never let paused connections resume, a NaN batch age would
    make the writer's wait meaningless."""
    with pytest.raises(ConfigError, match=rf"^{name} "):
        load(env={env_name(name): "nan"})


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("log_level", "DEBUG", "debug"),
        ("log_level", "Warning", "warning"),
        ("log_format", "JSON", "json"),
        ("synchronous", "FULL", "full"),
    ],
)
def test_choices_are_case_insensitive(name: str, raw: str, value: str) -> None:
    assert getattr(load(flags={name: raw})[0], name) == value


@pytest.mark.parametrize(
    ("name", "raw"),
    [("log_level", "verbose"), ("log_format", "text"), ("synchronous", "extra"), ("log_level", "")],
)
def test_unknown_choice_is_rejected(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} \(from flag\): must be one of"):
        load(flags={name: raw})


# --- the TOML file -------------------------------------------------------------------------


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "batch_size = 10\nbatch_sise = 10\nzzz = 1\n")
    with pytest.raises(ConfigError) as info:
        load(config_file=path)
    assert str(info.value) == f"config file {path}: unknown option(s) batch_sise, zzz"


def test_toml_table_is_an_unknown_option(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nbatch_size = 10\n")
    with pytest.raises(ConfigError, match="unknown option\\(s\\) server"):
        load(config_file=path)


@pytest.mark.parametrize("text", ["batch_size = \n", "batch_size = 1\nbatch_size = 2\n", "= 3\n"])
def test_invalid_toml_is_rejected(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(
        ConfigError, match=rf"^config file {re.escape(str(path))} is not valid TOML: "
    ):
        load(config_file=path)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^cannot read config file {re.escape(str(path))}: "):
        load(config_file=path)


def test_toml_values_of_every_type(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'db = "/var/lib/collector/e.db"\n'
        'tcp = "[::]:24224"\n'
        'query = "off"\n'
        "batch_max_age_ms = 5\n"  # an integer for a float option
        "buffer_low_water = 0.25\n"
        'synchronous = "full"\n',
    )
    config, _ = load(config_file=path)
    assert config.db == Path("/var/lib/collector/e.db")
    assert config.tcp == Address("::", 24224)
    assert config.query is None
    assert config.batch_max_age_ms == 5.0
    assert type(config.batch_max_age_ms) is float
    assert config.batch_max_age == 0.005
    assert config.buffer_low_water == 0.25
    assert config.synchronous == "full"


# --- render_toml ---------------------------------------------------------------------------


def round_trip(tmp_path: Path, config: Config) -> Config:
    text = render_toml(config)
    parsed = tomllib.loads(text)
    assert set(parsed) == set(FIELDS)
    path = write_toml(tmp_path, text, "rendered.toml")
    loaded, sources = load(config_file=path)
    assert set(sources.values()) == {f"file {path}"}
    return loaded


def test_render_toml_of_the_defaults_round_trips(tmp_path: Path) -> None:
    assert round_trip(tmp_path, Config()) == Config()


def test_render_toml_of_a_changed_config_round_trips(tmp_path: Path) -> None:
    config, _ = load(
        flags={
            "db": 'dir with space/q"uote\\back/é.db',
            "udp": "off",
            "tcp": "[::1]:0",
            "query": "0.0.0.0:1",
            "log_level": "ERROR",
            "log_format": "json",
            "stats_interval": "0",
            "batch_size": "1",
            "batch_max_age_ms": "0.00001",
            "buffer_low_water": "1",
            "shutdown_timeout": "86400",
            "max_extra_depth": "1",
            "synchronous": "full",
        }
    )
    assert round_trip(tmp_path, config) == config


def test_render_toml_documents_every_option_and_its_source(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "batch_size = 9\n")
    config, sources = load(
        flags={"udp": "off"}, env={"COLLECTOR_LOG_LEVEL": "debug"}, config_file=path
    )
    text = render_toml(config, sources)
    lines = text.splitlines()
    assert len(lines) == 2 * len(FIELDS)
    for index, (name, fld) in enumerate(FIELDS.items()):
        comment, assignment = lines[2 * index], lines[2 * index + 1]
        assert comment.startswith(f"# {fld.metadata['help']} [")
        assert assignment.startswith(f"{name} = ")
    assert f"# {FIELDS['batch_size'].metadata['help']} [file {path}]" in lines
    assert 'udp = "off"' in lines
    assert 'log_level = "debug"' in lines
    assert "batch_size = 9" in lines
    parsed = tomllib.loads(text)
    assert parsed["udp"] == "off"
    assert parsed["batch_size"] == 9
    assert parsed["log_level"] == "debug"


def test_every_option_has_help_and_a_valid_default() -> None:
    for name, fld in FIELDS.items():
        assert fld.metadata["help"], name
        default = fld.default
        meta = fld.metadata
        if meta["choices"]:
            assert default in meta["choices"], name
        if meta["minimum"] is not None:
            assert default >= meta["minimum"], name
        if meta["maximum"] is not None:
            assert default <= meta["maximum"], name


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().batch_size = 1  # type: ignore[misc]


# --- booleans ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("true", True), ("YES", True), ("1", True), ("on", True)],
        *[("false", False), ("No", False), ("0", False), ("off", False)],
    ],
)
def test_boolean_option_from_the_environment(raw: str, expected: bool) -> None:
    config, sources = load(env={"COLLECTOR_EAGER_ACK_COMMIT": raw})
    assert config.eager_ack_commit is expected
    assert sources["eager_ack_commit"] == "env"


def test_boolean_option_from_toml_and_flag(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "eager_ack_commit = false\n")
    assert load(config_file=path)[0].eager_ack_commit is False
    assert load(flags={"eager_ack_commit": "true"}, config_file=path)[0].eager_ack_commit is True


@pytest.mark.parametrize("raw", ["maybe", "2", ""])
def test_boolean_option_rejects_other_words(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"eager_ack_commit .*expected true or false"):
        load(env={"COLLECTOR_EAGER_ACK_COMMIT": raw})


def test_boolean_renders_as_toml_boolean() -> None:
    text = render_toml(Config(eager_ack_commit=False))
    assert tomllib.loads(text)["eager_ack_commit"] is False
