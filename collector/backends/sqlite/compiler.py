"""Filters and verbs -> parameterised SQL. Pure: no database, no clock.

Every value a user types reaches SQLite as a bound parameter, never as SQL text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.query.errors import QueryError
from collector.query.model import EVENT_COLUMNS, Filter

# SQLite binds at most 32,766 parameters; two per bucket leaves room for the filters.
MAX_BUCKETS = 10_000


@dataclass
class Where:
    """A WHERE clause and its parameters, built up filter by filter."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "1"


@dataclass(frozen=True)
class Query:
    sql: str
    params: tuple[Any, ...]
    columns: tuple[str, ...]


def field_expression(name: str, alias: str = "") -> tuple[str, list[Any]]:
    """The SQL expression of a filter or grouping field, with its parameters."""
    if name == "action":
        return f"{alias}action", []
    if name == "user":
        return f"{alias}user_id", []
    if name == "value":
        # Values are stored as sent (text, integer or real); users type text.
        return f"CAST({alias}value AS TEXT)", []
    if name.startswith("extra.") and len(name) > len("extra."):
        path = json_path(name[len("extra.") :])
        return f"CAST(json_extract({alias}extra, ?) AS TEXT)", [path]
    raise QueryError("ARG", f"unknown field {name!r}: use action, user, value or extra.KEY")


def json_path(dotted: str) -> str:
    """page.path -> $."page"."path" (quoted, so keys may hold any character)."""
    return "$" + "".join("." + json.dumps(part) for part in dotted.split("."))


def add_filter(where: Where, flt: Filter, alias: str = "") -> None:
    expression, expression_params = field_expression(flt.field, alias)
    tests: list[str] = []
    params: list[Any] = []
    for value in flt.values:
        operator, operand = ("GLOB", glob_pattern(value)) if "*" in value else ("=", value)
        tests.append(f"{expression} {operator} ?")
        params += [*expression_params, operand]
    matched = "(" + " OR ".join(tests) + ")"
    if flt.negated:
        # "not X" keeps the events that have no such field at all.
        where.clauses.append(f"({expression} IS NULL OR NOT {matched})")
        where.params += [*expression_params, *params]
    else:
        where.clauses.append(matched)
        where.params += params


def glob_pattern(value: str) -> str:
    """* is the only wildcard users type; GLOB's other special characters match themselves."""
    return value.replace("[", "[[]").replace("?", "[?]")


def build_where(
    filters: Sequence[Filter], since: int | None, until: int | None, alias: str = ""
) -> Where:
    where = Where()
    if since is not None:
        where.clauses.append(f"{alias}ts >= ?")
        where.params.append(since)
    if until is not None:
        where.clauses.append(f"{alias}ts < ?")
        where.params.append(until)
    for flt in filters:
        add_filter(where, flt, alias)
    return where


def measure(distinct_users: bool, alias: str = "") -> tuple[str, str]:
    if distinct_users:
        return f"count(DISTINCT {alias}user_id)", "users"
    return (f"count({alias}id)" if alias else "count(*)"), "events"


def count_query(where: Where, distinct_users: bool, group: str | None, limit: int) -> Query:
    aggregate, name = measure(distinct_users)
    if group is None:
        sql = f"SELECT {aggregate} FROM events WHERE {where.sql()}"
        return Query(sql, tuple(where.params), (name,))
    expression, params = field_expression(group)
    sql = (
        f"SELECT {expression} AS grp, {aggregate} AS n FROM events WHERE {where.sql()}"
        " GROUP BY grp ORDER BY n DESC, grp LIMIT ?"
    )
    return Query(sql, (*params, *where.params, limit), (group, name))


def bucket_query(
    filters: Sequence[Filter],
    distinct_users: bool,
    starts: Sequence[int],
    window: tuple[int, int],
) -> Query:
    """Counts per time bucket, empty buckets included (a LEFT JOIN on the bucket list).

    The first and last buckets are calendar buckets clipped to the window [since, until).
    """
    if len(starts) > MAX_BUCKETS:
        raise QueryError("LIMIT", f"{len(starts)} buckets, more than {MAX_BUCKETS}: narrow since=")
    since, end = window
    where = build_where(filters, since, end, alias="e.")
    aggregate, name = measure(distinct_users, alias="e.")
    values = ",".join(["(?, ?)"] * len(starts))
    sql = (
        f"WITH b(start, stop) AS (VALUES {values}) "
        f"SELECT b.start, {aggregate} FROM b LEFT JOIN events e "
        f"ON e.ts >= b.start AND e.ts < b.stop AND {where.sql()} "
        "GROUP BY b.start ORDER BY b.start"
    )
    bounds = [*starts[1:], end]
    params = [p for pair in zip(starts, bounds, strict=True) for p in pair]
    return Query(sql, (*params, *where.params), ("bucket", name))


def top_query(where: Where, group: str, limit: int) -> Query:
    expression, params = field_expression(group)
    sql = (
        f"SELECT {expression} AS grp, count(*) AS n, count(DISTINCT user_id) AS u"
        f" FROM events WHERE {where.sql()} GROUP BY grp ORDER BY n DESC, grp LIMIT ?"
    )
    return Query(sql, (*params, *where.params, limit), (group, "events", "users"))


def events_query(where: Where, limit: int, descending: bool, order_by: str = "ts") -> Query:
    """Events in time order, or in commit (id) order for paging with `id > ?`."""
    order = "DESC" if descending else "ASC"
    keys = f"ts {order}, id {order}" if order_by == "ts" else f"id {order}"
    sql = (
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {where.sql()} ORDER BY {keys} LIMIT ?"
    )
    return Query(sql, (*where.params, limit), EVENT_COLUMNS)


def quarantine_query(limit: int) -> Query:
    sql = (
        "SELECT id, received_at, source, reason, length(raw), hex(substr(raw, 1, 24))"
        " FROM quarantine ORDER BY id DESC LIMIT ?"
    )
    return Query(sql, (limit,), ("id", "received_at", "source", "reason", "bytes", "raw_hex"))


def user_summary_query(where: Where) -> Query:
    sql = (
        f"SELECT min(ts), max(ts), count(*), count(DISTINCT action) FROM events WHERE {where.sql()}"
    )
    return Query(sql, tuple(where.params), ("first_seen", "last_seen", "events", "actions"))


def users_query(where: Where, minimum: int, limit: int) -> Query:
    sql = (
        f"SELECT user_id, count(*) AS n FROM events WHERE user_id IS NOT NULL AND {where.sql()}"
        " GROUP BY user_id HAVING n >= ? ORDER BY n DESC, user_id LIMIT ?"
    )
    return Query(sql, (*where.params, minimum, limit), ("user", "events"))


def summary_query() -> Query:
    return Query(
        "SELECT count(*), min(ts), max(ts) FROM events", (), ("events", "oldest", "newest")
    )


def first_time_query(filters: Sequence[Filter]) -> Query:
    where = build_where(filters, None, None)
    return Query(f"SELECT min(ts) FROM events WHERE {where.sql()}", tuple(where.params), ("ts",))


def max_id_query() -> Query:
    return Query("SELECT coalesce(max(id), 0) FROM events", (), ("id",))


def id_range_where(
    filters: Sequence[Filter], since: int | None, until: int | None, after: int, through: int | None
) -> Where:
    """Matching events with after < id <= through (through None: no upper bound)."""
    where = build_where(filters, since, until)
    where.clauses.append("id > ?")
    where.params.append(after)
    if through is not None:
        where.clauses.append("id <= ?")
        where.params.append(through)
    return where


def count_where_query(where: Where) -> Query:
    return Query(f"SELECT count(*) FROM events WHERE {where.sql()}", tuple(where.params), ("n",))
