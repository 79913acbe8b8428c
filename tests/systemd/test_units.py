"""The unit files and the example configuration: checked by systemd's own tools, and
against the code they describe."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from collector.activation import ROLES
from collector.cli import example_config
from collector.config import FIELDS, Config, load_config
from collector.reload import LIVE
from collector.service import STOP_MARGIN

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SOCKETS = ["collector.socket", "collector-tcp.socket", "collector-query.socket"]
INSTALLED = "/opt/collector/.venv/bin/collector"
MAX_EXPOSURE = 1.5


def systemd_analyze() -> str:
    """The tool's path; skips only where it cannot be had (CI installs it: make systemd-tools)."""
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing in CI; `make systemd-tools` installs it")
        pytest.skip(
            "systemd-analyze not installed (apt-get install systemd, or make systemd-tools)"
        )
    return path


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_example_config_is_generated_from_the_declarations() -> None:
    shipped = (UNITS / "collector.toml").read_text()
    assert shipped == example_config(), (
        "systemd/collector.toml is stale: collector example-config > systemd/collector.toml"
    )
    assert set(tomllib.loads(shipped)) == set(FIELDS)
    config, sources = load_config(env={}, config_file=UNITS / "collector.toml")
    assert config == Config()
    assert set(sources.values()) == {f"file {UNITS / 'collector.toml'}"}


def test_example_config_command_prints_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "example-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == example_config()


def test_service_matches_the_code() -> None:
    service = unit("collector.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == f"{INSTALLED} serve --config /etc/collector/collector.toml"
    assert service["Sockets"].split() == SOCKETS
    stop = seconds(service["TimeoutStopSec"])
    assert stop >= Config().shutdown_timeout + STOP_MARGIN
    names = [unit(name)["Socket"]["FileDescriptorName"] for name in SOCKETS]
    assert names == list(ROLES)
    for name in SOCKETS:
        assert unit(name)["Socket"]["Service"] == "collector.service"


def test_deploy_doc_names_every_live_setting() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    missing = [name for name in sorted(LIVE) if f"`{name}`" not in text]
    assert missing == []


def test_security_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(UNITS / "collector.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for collector\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_verify_is_clean_on_every_unit(tmp_path: Path) -> None:
    """verify insists that ExecStart exists: the copies point it at this checkout's
    collector, everything else is the shipped text."""
    installed = Path(sys.executable).parent / "collector"
    assert installed.exists()
    for name in ["collector.service", *SOCKETS]:
        text = (UNITS / name).read_text().replace(INSTALLED, str(installed))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [
            systemd_analyze(),
            "verify",
            *(str(tmp_path / n) for n in ["collector.service", *SOCKETS]),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
