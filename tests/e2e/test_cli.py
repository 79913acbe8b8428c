"""`collector --help` and `collector check-config` as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from collector.config import FIELDS, env_name, flag_fields, flag_name


def collector(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_help_documents_every_option() -> None:
    result = collector("--help")
    assert result.returncode == 0
    for name in flag_fields():
        assert flag_name(name) in result.stdout
    for name in set(FIELDS) - set(flag_fields()):
        assert re.search(re.escape(flag_name(name)) + r"\b(?!-)", result.stdout) is None
        assert env_name(name) in result.stdout
    assert "COLLECTOR_BATCH_SIZE" in result.stdout


def test_a_secret_cannot_be_given_as_a_flag() -> None:
    result = collector("check-config", "--query-token", "hunter2")
    assert result.returncode == 2
    assert "hunter2" not in result.stdout


def test_check_config_does_not_print_secrets() -> None:
    result = collector("check-config", env={"COLLECTOR_QUERY_TOKEN": "hunter2"})
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert 'query_token = "(set, not shown)"' in result.stdout


def test_check_config_applies_file_env_and_flags_in_order(tmp_path: Path) -> None:
    config_file = tmp_path / "collector.toml"
    config_file.write_text('batch_size = 11\nstats_interval = 5.0\nudp = "off"\ndb = "/x.db"\n')
    env = {"COLLECTOR_BATCH_SIZE": "22", "COLLECTOR_STATS_INTERVAL": "6"}
    result = collector(
        "check-config", "--config", str(config_file), "--stats-interval", "7", env=env
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["batch_size"] == 22
    assert effective["stats_interval"] == 7.0
    assert effective["udp"] == "off"
    assert effective["db"] == "/x.db"
    assert effective["tcp"] == "127.0.0.1:24224"
    assert set(effective) == set(FIELDS)


def test_check_config_rejects_a_bad_value_naming_it() -> None:
    result = collector("check-config", env={"COLLECTOR_BATCH_SIZE": "zero"})
    assert result.returncode == 2
    assert "batch_size" in result.stderr and "COLLECTOR_BATCH_SIZE" in result.stderr


def test_check_config_rejects_unknown_keys_in_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "collector.toml"
    config_file.write_text("batch_sise = 3\n")
    result = collector("check-config", "--config", str(config_file))
    assert result.returncode == 2
    assert "batch_sise" in result.stderr
