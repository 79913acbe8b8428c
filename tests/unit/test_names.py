"""The writer's memory of dictionary ids: bounded, used by commits, forgotten on rollback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.clock import now_ms
from collector.events import Row
from collector.storage import schema
from collector.storage.bulk import BulkWriter
from collector.storage.commit import commit_plan
from collector.storage.names import Names
from collector.storage.plan import Plan


def test_names_past_the_limit_forget_the_older_half() -> None:
    names = Names(limit=4)
    names.learn([("a", 1), ("b", 2), ("c", 3), ("d", 4)])
    assert names.ids == {"a": 1, "b": 2, "c": 3, "d": 4}
    names.learn([("e", 5)])
    assert names.ids == {"d": 4, "e": 5}
    names.learn([("d", 4), ("f", 6)])
    assert names.ids == {"d": 4, "e": 5, "f": 6}


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[BulkWriter]:
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    schema.migrate(conn)
    yield BulkWriter(conn)
    conn.close()


def rows(users: list[str | None], action: str) -> list[Row]:
    ts = now_ms()
    return [(ts, ts, user, action, n, None, None) for n, user in enumerate(users)]


def stored(conn: sqlite3.Connection) -> list[tuple[str | None, str]]:
    return conn.execute("SELECT user_id, action FROM events ORDER BY id").fetchall()


def test_commits_learn_ids_and_use_them(writer: BulkWriter) -> None:
    writer.store(rows(["u1", "u2", None], "open"))
    assert writer.catalog.users.ids == dict(writer.conn.execute("SELECT name, id FROM users"))
    assert set(writer.catalog.actions.ids) == {"open"}
    writer.store(rows(["u2", "u3", "u1"], "open") + rows(["u3"], "close"))
    assert len(writer.catalog.users) == 3
    assert stored(writer.conn) == [
        ("u1", "open"), ("u2", "open"), (None, "open"),
        ("u2", "open"), ("u3", "open"), ("u1", "open"), ("u3", "close"),
    ]  # fmt: skip
    assert writer.conn.execute("SELECT count(*) FROM users").fetchone() == (3,)


def failing(plan: Plan[list[int]]) -> Plan[list[int]]:
    yield from plan
    raise RuntimeError("disk went away")


def test_a_rolled_back_commit_leaves_no_id_in_memory(writer: BulkWriter) -> None:
    writer.store(rows(["u1"], "open"))
    plan = commit_plan(writer.catalog, [rows(["u2", "u3"], "buy")], [], now_ms(), 1)
    with pytest.raises(RuntimeError):
        writer.transaction(failing(plan))
    assert writer.catalog.users.ids == {} and writer.catalog.actions.ids == {}
    # The ids the rolled-back commit gave u2, u3 and buy go to other names now.
    writer.store(rows(["u4", "u3"], "sell"))
    writer.store(rows(["u4", "u3", "u1"], "sell"))
    assert stored(writer.conn)[1:] == [
        ("u4", "sell"), ("u3", "sell"), ("u4", "sell"), ("u3", "sell"), ("u1", "sell"),
    ]  # fmt: skip
