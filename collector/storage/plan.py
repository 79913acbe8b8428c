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
