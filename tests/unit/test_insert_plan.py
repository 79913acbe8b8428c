"""schema.insert_plan: multi-row INSERT statements that put rows in a commit's staging
table, in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.storage import schema
from collector.storage.commit import STAGING_DDL

ROW = "(" + ",".join("?" * len(schema.STAGING_COLUMNS)) + ")"


def make_rows(count: int) -> list[tuple[object, ...]]:
    return [(i, i, f"u{i}", "act", i, None, None, None, None) for i in range(count)]


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (0, []),
        (1, [(1, 1)]),
        (4, [(1, 4)]),
        (5, [(5, 1)]),
        (1234, [(500, 2), (50, 4), (5, 6), (1, 4)]),
        (5000, [(500, 10)]),
    ],
)
def test_plan_uses_the_largest_chunks_first(count: int, sizes: list[tuple[int, int]]) -> None:
    plan = schema.insert_plan(make_rows(count))
    assert [(sql.count(ROW), len(params)) for sql, params in plan] == sizes
    for sql, params in plan:
        rows_per_statement = sql.count(ROW)
        assert all(len(p) == len(schema.STAGING_COLUMNS) * rows_per_statement for p in params)


def test_plan_inserts_every_row_once_in_order(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    schema.migrate(conn)
    conn.execute(STAGING_DDL)
    rows = make_rows(1234)
    for sql, params in schema.insert_plan(rows):
        conn.executemany(sql, params)
    stored = conn.execute("SELECT ts, user_id FROM staging ORDER BY rowid").fetchall()
    assert stored == [(i, f"u{i}") for i in range(1234)]
    conn.close()


def test_statements_are_built_once_per_size() -> None:
    assert schema.insert_events_sql(50) is schema.insert_events_sql(50)
    assert schema.insert_events_sql(1) == schema.INSERT_EVENT
