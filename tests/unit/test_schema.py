"""collector.storage.schema: migrations on real SQLite files, and the insert statements."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.storage import schema
from collector.storage.bulk import BulkWriter
from collector.storage.schema import Migration
from collector.storage.upgrade import progress_logger


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    """Tables and views: `events` is a view over the partitions."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    return {name for (name,) in rows}


def indexes(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    return {name for (name,) in rows}


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def recorded(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return list(conn.execute("SELECT version, name FROM schema_migrations ORDER BY version"))


ALL_VERSIONS = [migration.version for migration in schema.MIGRATIONS]
ALL_RECORDED = [(migration.version, migration.name) for migration in schema.MIGRATIONS]
NEXT = ALL_VERSIONS[-1] + 1

BROKEN = Migration(
    NEXT,
    "half applied",
    """
    CREATE TABLE broken_new (x INTEGER);
    CREATE INDEX broken_new_x ON broken_new (x);
    INSERT INTO quarantine (received_at, source, reason, raw)
        VALUES (1, 'test', 'from broken migration', x'00');
    CREATE INDEX nope ON no_such_table (x);
    """,
)


def test_migrate_creates_the_schema_on_a_fresh_file(conn: sqlite3.Connection) -> None:
    before = int(time.time() * 1000)
    assert schema.migrate(conn) == ALL_VERSIONS
    assert {"events", "quarantine", "schema_migrations"} <= tables(conn)
    assert columns(conn, "events") == [
        "id",
        "ts",
        "received_at",
        "user_id",
        "action",
        "value",
        "extra",
        "msg_id",
    ]
    assert columns(conn, "quarantine") == ["id", "received_at", "source", "reason", "raw"]
    assert {"event_ids_day", "quarantine_received_at"} <= indexes(conn)
    assert {
        "partitions",
        "users",
        "actions",
        "hourly_counts",
        "daily_users",
        "event_ids",
        "blocks",
    } <= tables(conn)
    assert recorded(conn) == ALL_RECORDED
    (applied_at,) = conn.execute("SELECT applied_at FROM schema_migrations").fetchone()
    assert before <= applied_at <= int(time.time() * 1000)
    assert not conn.in_transaction


def test_migrate_is_idempotent(conn: sqlite3.Connection) -> None:
    assert schema.migrate(conn) == ALL_VERSIONS
    schema_sql = sorted(conn.execute("SELECT name, sql FROM sqlite_master"))
    assert schema.migrate(conn) == []
    assert schema.migrate(conn) == []
    assert recorded(conn) == ALL_RECORDED
    assert sorted(conn.execute("SELECT name, sql FROM sqlite_master")) == schema_sql


def test_migrate_keeps_existing_data(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = sqlite3.connect(path, isolation_level=None)
    schema.migrate(first)
    BulkWriter(first).store([(1, 2, "u", "a", 3, None, "m")])
    first.close()
    second = sqlite3.connect(path, isolation_level=None)
    try:
        assert schema.migrate(second) == []
        assert second.execute("SELECT ts, action, msg_id FROM events").fetchall() == [(1, "a", "m")]
    finally:
        second.close()


def test_failing_migration_leaves_neither_its_tables_nor_its_record(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert schema.migrate(conn) == ALL_VERSIONS
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, BROKEN))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        schema.migrate(conn)
    assert "broken_new" not in tables(conn)
    assert "broken_new_x" not in indexes(conn)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    assert recorded(conn) == ALL_RECORDED
    assert not conn.in_transaction


def test_failing_migration_on_a_fresh_file_keeps_the_ones_before_it(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, BROKEN))
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn)
    assert recorded(conn) == ALL_RECORDED
    assert {"events", "quarantine"} <= tables(conn)
    assert "broken_new" not in tables(conn)


def test_failed_migration_is_retried_once_fixed(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, BROKEN))
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn)
    fixed = Migration(NEXT, "fixed", "CREATE TABLE fixed_new (x INTEGER)")
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS[:-1], fixed))
    assert schema.migrate(conn) == [NEXT]
    assert "fixed_new" in tables(conn)
    assert recorded(conn) == [*ALL_RECORDED, (NEXT, "fixed")]


def test_migration_whose_record_cannot_be_written_is_rolled_back(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration's statements all succeed but recording it fails (its version number
    is taken): since the record is written in the same transaction, the statements are
    rolled back with it."""
    duplicate = Migration(1, "duplicate version", "CREATE TABLE duplicate_new (x INTEGER)")
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, duplicate))
    with pytest.raises(sqlite3.IntegrityError):
        schema.migrate(conn)
    assert "duplicate_new" not in tables(conn)
    assert {"events", "quarantine"} <= tables(conn)
    assert recorded(conn) == ALL_RECORDED
    assert not conn.in_transaction


def test_split_statements() -> None:
    assert schema.split_statements(" A ;\n\n B;C ; ") == ["A", "B", "C"]
    assert schema.split_statements(";;\n") == []


@pytest.mark.parametrize("mode", ["normal", "full"])
def test_writer_pragmas(conn: sqlite3.Connection, mode: str) -> None:
    pragmas = schema.writer_pragmas(mode)
    assert f"PRAGMA synchronous = {mode.upper()}" in pragmas
    for pragma in pragmas:
        conn.execute(pragma)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    expected = {"normal": 1, "full": 2}[mode]
    assert conn.execute("PRAGMA synchronous").fetchone() == (expected,)


# --- storing events (the writer's commit plan) and INSERT_QUARANTINE ---------------------


def stored(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT ts, action, msg_id FROM events ORDER BY id").fetchall()


def test_a_repeated_msg_id_is_stored_once(conn: sqlite3.Connection) -> None:
    schema.migrate(conn)
    writer = BulkWriter(conn)
    assert writer.store([(1, 10, "u1", "first", 1, None, "m-1")]) == 1
    assert writer.store([(2, 20, "u2", "second", 2, '{"a":1}', "m-1")]) == 0
    assert writer.store([(3, 30, None, "third", None, None, "m-2")]) == 1
    assert stored(conn) == [(1, "first", "m-1"), (3, "third", "m-2")]


def test_rows_without_msg_id_are_never_deduplicated(conn: sqlite3.Connection) -> None:
    schema.migrate(conn)
    row = (1, 10, "u", "same", 1, None, None)
    assert BulkWriter(conn).store([row, row, row]) == 3
    assert conn.execute("SELECT count(*) FROM events WHERE msg_id IS NULL").fetchone() == (3,)


def test_dedup_within_one_commit(conn: sqlite3.Connection) -> None:
    schema.migrate(conn)
    count = BulkWriter(conn).store(
        [
            (1, 1, None, "a", None, None, "x"),
            (2, 2, None, "b", None, None, "x"),
            (3, 3, None, "c", None, None, None),
            (4, 4, None, "d", None, None, "y"),
        ]
    )
    # The duplicate is left out of the count and of the rows (the rollups' rows are not
    # counted either).
    assert count == 3
    assert conn.execute("SELECT action FROM events ORDER BY id").fetchall() == [
        ("a",),
        ("c",),
        ("d",),
    ]


def test_every_value_type_is_stored_as_given(conn: sqlite3.Connection) -> None:
    schema.migrate(conn)
    values = ["text", 2**63 - 1, -(2**63), 2.5, True, None]
    BulkWriter(conn).store([(1, 1, None, "a", value, None, None) for value in values])
    stored_values = [row[0] for row in conn.execute("SELECT value FROM events ORDER BY id")]
    assert stored_values == ["text", 2**63 - 1, -(2**63), 2.5, 1, None]


def test_insert_quarantine(conn: sqlite3.Connection) -> None:
    schema.migrate(conn)
    conn.execute(schema.INSERT_QUARANTINE, (5, "udp:127.0.0.1:1", "bad", b"\x00\xc1"))
    conn.execute(schema.INSERT_QUARANTINE, (6, "tcp:[::1]:2", "bad", b"\x00\xc1"))
    rows = conn.execute("SELECT received_at, source, reason, raw FROM quarantine ORDER BY id")
    assert rows.fetchall() == [
        (5, "udp:127.0.0.1:1", "bad", b"\x00\xc1"),
        (6, "tcp:[::1]:2", "bad", b"\x00\xc1"),
    ]


def test_split_statements_keeps_a_trigger_body_whole() -> None:
    script = "CREATE TABLE t (x); CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;"
    assert schema.split_statements(script) == [
        "CREATE TABLE t (x)",
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END",
    ]


def test_a_long_upgrade_statement_logs_its_progress_every_few_seconds() -> None:
    now = [100.0]
    report = progress_logger("naming users", clock=lambda: now[0])
    with capture_logs() as logs:
        for now[0] in (101.0, 104.5, 105.0, 109.0, 110.0, 112.5):
            assert report() == 0  # never interrupts the statement
    assert [(r["event"], r["step"], r["seconds"]) for r in logs] == [
        ("upgrade in progress", "naming users", 5),
        ("upgrade in progress", "naming users", 10),
    ]
