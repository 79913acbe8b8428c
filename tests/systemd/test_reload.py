"""SIGHUP: live settings change at once, the others are named as needing a restart."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from systemd_helpers import NotifyListener, has

from collector import reload as reload_module
from collector.daemon import Daemon
from collector.reload import LIVE, reload_config
from collector.testing import (
    DaemonProcess,
    QueryClient,
    count_rows,
    send_udp,
    wait_until,
)
from collector.testing import daemon_config as config_for

BIG_VALUE = "x" * 2000


def write_config(path: Path, **values: object) -> None:
    lines = [f"{name} = {value!r}" if not isinstance(value, str) else f'{name} = "{value}"'
             for name, value in values.items()]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def reloaded(record: dict[str, object]) -> bool:
    return record.get("event") == "configuration reloaded"


def token_file_daemon(
    db_path: Path, token_file: Path, token: str, env: dict[str, str] | None = None
) -> DaemonProcess:
    """A daemon that reads its query token from `token_file`, which holds `token`."""
    token_file.write_text(token)
    environment = {"COLLECTOR_QUERY_TOKEN_FILE": str(token_file), **(env or {})}
    return DaemonProcess(db_path, env=environment).start()


def change_token(daemon: DaemonProcess, token_file: Path, token: str) -> dict[str, Any]:
    """Write the new token, send SIGHUP, return the reload's log record."""
    token_file.write_text(token)
    daemon.signal(signal.SIGHUP)
    return daemon.wait_for_log(reloaded)


async def auth(daemon: DaemonProcess, token: str) -> str:
    client = await QueryClient.connect(daemon.query)
    _, status = await client.ask(f"AUTH {token}")
    await client.close()
    return status


async def test_sighup_applies_token_limits_and_log_level(db_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    write_config(config, query_token_file=str(token_file), max_event_bytes=1024, batch_size=100)
    notify = NotifyListener(tmp_path)
    daemon = DaemonProcess(
        db_path,
        ["--config", str(config), "--batch-max-age-ms", "5", "--stats-interval", "0"],
        env={"NOTIFY_SOCKET": notify.address},
    ).start()
    notify.wait_for(has("READY"))
    assert await auth(daemon, "first") == "OK authenticated"
    send_udp(daemon.udp, {"action": "big", "value": BIG_VALUE})
    await wait_until(lambda: count_rows(db_path, "quarantine") == 1)

    token_file.write_text("second\n")
    write_config(
        config,
        query_token_file=str(token_file),
        max_event_bytes=4096,
        batch_size=200,
        log_level="warning",
    )
    daemon.signal(signal.SIGHUP)
    record = daemon.wait_for_log(reloaded)
    assert record["changed"] == {"log_level": ["info", "warning"], "max_event_bytes": [1024, 4096]}
    assert record["query_token_changed"] is True
    assert record["needs_restart"] == ["batch_size"]
    reloading = notify.wait_for(has("RELOADING"))
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert notify.wait_for(lambda lines: lines[0] != "WATCHDOG=1") == ["READY=1"]

    assert (await auth(daemon, "first")).startswith("ERR AUTH")
    assert await auth(daemon, "second") == "OK authenticated"
    send_udp(daemon.udp, {"action": "big", "value": BIG_VALUE})
    assert daemon.stop() == 0
    # The first big event was over the old limit, the second within the new one.
    assert count_rows(db_path, "quarantine") == 1
    assert count_rows(db_path, where="action = 'big'") == 1
    # At level warning, the info lines of the stop are gone.
    events = [r.get("event") for r in daemon.log_records()]
    after = events[events.index("configuration reloaded") :]
    assert "stopping" not in after and "stopped" not in after
    notify.close()


async def test_a_bad_configuration_on_reload_keeps_the_running_one(
    db_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "collector.toml"
    write_config(config, query_token="kept")
    daemon = DaemonProcess(db_path, ["--config", str(config)]).start()
    config.write_text("max_event_bytes = 'lots'\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for_log(lambda r: r.get("event", "").startswith("reload failed"))
    assert "max_event_bytes" in failed["error"]
    assert await auth(daemon, "kept") == "OK authenticated"
    config.write_text("unknown_option = 1\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for_log(lambda r: "unknown option" in r.get("error", ""))
    assert daemon.stop() == 0


async def test_sighup_without_a_config_file_rereads_the_token_file(
    db_path: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    daemon = token_file_daemon(db_path, token_file, "one")
    record = change_token(daemon, token_file, "two")
    assert (record["changed"], record["query_token_changed"], record["needs_restart"]) == (
        {},
        True,
        [],
    )
    assert await auth(daemon, "two") == "OK authenticated"
    assert daemon.stop() == 0


def test_every_live_setting_reaches_the_running_parts(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logging_set: list[tuple[str, str]] = []
    monkeypatch.setattr(reload_module, "configure_logging", lambda *args: logging_set.append(args))
    daemon = Daemon(config_for(db_path))
    new = config_for(
        db_path,
        max_event_bytes=999,
        max_extra_bytes=500,
        max_extra_depth=3,
        max_batch_events=7,
        buffer_max_events=11,
        buffer_max_bytes=4096,
        buffer_low_water=0.25,
        query_max_rows=5,
        query_timeout_ms=250.0,
        query_sql_enabled=False,
        query_max_connections=2,
        query_idle_timeout=9.0,
        query_token="t",
        batch_size=1,
        log_format="json",
    )
    outcome = reload_config(daemon, lambda: new)
    assert outcome is not None
    assert set(outcome.applied) == {*LIVE} - {"log_level", "query_token_file"}
    assert outcome.needs_restart == ["batch_size"]
    assert daemon.ingest.limits == (999, 500, 3, 7)
    buffer = daemon.buffer
    assert (buffer.max_events, buffer.max_bytes, buffer.low_water) == (11, 4096, 0.25)
    context = daemon.queries.context
    assert (context.token, context.max_rows, context.sql_enabled) == ("t", 5, False)
    assert (daemon.reader.max_rows, daemon.reader.timeout) == (5, 0.25)
    assert (daemon.queries.limits.max_connections, daemon.queries.limits.idle_timeout) == (2, 9.0)
    assert daemon.config.batch_size == 5000  # not applied: it needs a restart
    assert daemon.config.max_event_bytes == 999
    assert logging_set == [("info", "json")]


async def test_a_new_token_logs_out_the_connections_of_the_old_one(
    db_path: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    daemon = token_file_daemon(db_path, token_file, "old")
    client = await QueryClient.connect(daemon.query)
    assert await client.ask("AUTH old") == ([], "OK authenticated")
    assert (await client.ask("COUNT"))[1].startswith("OK")
    change_token(daemon, token_file, "new")
    assert (await client.ask("COUNT"))[1].startswith("ERR AUTH")
    assert await client.ask("AUTH new") == ([], "OK authenticated")
    assert (await client.ask("COUNT"))[1].startswith("OK")
    await client.close()
    assert daemon.stop() == 0


async def test_turning_a_token_on_logs_out_connections_that_needed_none(
    db_path: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    daemon = token_file_daemon(db_path, token_file, "")
    client = await QueryClient.connect(daemon.query)
    assert await client.ask("AUTH anything") == ([], "OK no token is needed")
    change_token(daemon, token_file, "now-needed")
    assert (await client.ask("COUNT"))[1].startswith("ERR AUTH")
    await client.close()
    assert daemon.stop() == 0


async def test_a_failed_reload_still_tells_systemd_it_is_ready(
    db_path: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    notify = NotifyListener(tmp_path)
    daemon = token_file_daemon(db_path, token_file, "good", {"NOTIFY_SOCKET": notify.address})
    notify.wait_for(has("READY"))
    token_file.write_bytes(b"\xff\xfe not text")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for_log(lambda r: r.get("event", "").startswith("reload failed"))
    assert "utf-8" in failed["error"]
    notify.wait_for(has("RELOADING"))
    assert notify.wait_for(lambda lines: lines[0] != "WATCHDOG=1") == ["READY=1"]
    assert await auth(daemon, "good") == "OK authenticated"
    assert daemon.stop() == 0
    notify.close()
