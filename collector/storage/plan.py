"""Database work written once, run by either driver: a plan is a generator that yields
statements and receives their results (sans-IO, as the TCP connection is). The writer runs
plans on its aiosqlite connection; tests, benchmarks and the migrations run them on a plain
sqlite3 connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Run:
    """One statement; its result is the number of rows it changed."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class RunMany:
    """One statement for each parameter list; its result is the rows changed in all."""

    sql: str
    params: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Fetch:
    """A query; its result is every row."""

    sql: str
    params: Sequence[Any] = ()


Step = Run | RunMany | Fetch
Plan = Generator[Step, Any, T]


def run_sync(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    result: Any = None
    while True:
        try:
            step = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(step, Fetch):
            result = conn.execute(step.sql, step.params).fetchall()
        elif isinstance(step, RunMany):
            result = conn.executemany(step.sql, step.params).rowcount
        else:
            result = conn.execute(step.sql, step.params).rowcount


async def run_async(db: aiosqlite.Connection, plan: Plan[T]) -> T:
    result: Any = None
    while True:
        try:
            step = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(step, Fetch):
            result = list(await db.execute_fetchall(step.sql, step.params))
        elif isinstance(step, RunMany):
            # Not closed: that would be one more hop to the database thread per statement;
            # the finished statement holds nothing open.
            result = (await db.executemany(step.sql, step.params)).rowcount
        else:
            result = (await db.execute(step.sql, step.params)).rowcount


def started(plan: Plan[T]) -> tuple[Step | None, T | None]:
    """The plan's first step, or (None, its result) when it needs no statement at all."""
    try:
        return next(plan), None
    except StopIteration as done:
        return None, done.value


def resumed(first: Step, plan: Plan[T]) -> Plan[T]:
    """The plan again, from its first step (already taken with `started`)."""
    step = first
    while True:
        result = yield step
        try:
            step = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def transaction_sync(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    """`plan` in one BEGIN IMMEDIATE transaction, rolled back on any error; a plan that
    needs no statement takes no lock."""
    first, done = started(plan)
    if first is None:
        return done  # type: ignore[return-value]
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = run_sync(conn, resumed(first, plan))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


async def transaction_async(db: aiosqlite.Connection, plan: Plan[T]) -> T:
    """`plan` as one transaction on aiosqlite's own thread, in one call.

    aiosqlite hands each statement to its thread and waits for the event loop to take the
    result; under load each hand-off waits for the loop's GIL slice, so a commit of a dozen
    statements spent most of its time waiting (docs/performance.md). This runs the whole
    transaction in one hand-off, through aiosqlite's `_execute` and `_conn`: private, but
    unchanged since aiosqlite 0.17; tests/unit/test_plan.py fails if they go.
    """
    return await db._execute(  # type: ignore[no-untyped-call,no-any-return]
        lambda: transaction_sync(db._conn, plan)
    )
