"""Where events are read from: the partitions of the catalog, each with its shape.

A mapped partition (a day, or the late events) holds dictionary ids for the user and the
action; `legacy_events`, the table of a database made before partitions, holds their text
until the writer has moved its rows. Filters, groupings and projections are written here
for either shape, so the queries of compiler.py and rollups.py read them all alike. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.query.errors import QueryError
from collector.query.model import Filter
from collector.storage.layout import BLOCK_BITS, BY_USER_SUFFIX

# Past the last instant an event may have (end of 9999): a time bound that holds nothing.
END_OF_TIME = 253_402_300_800_000


@dataclass
class Where:
    """A WHERE clause and its parameters, built up filter by filter."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "1"

    def add(self, clause: str, *params: Any) -> Where:
        self.clauses.append(clause)
        self.params += params
        return self


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    kind: str  # day | late | legacy
    day: int | None
    min_ts: int
    max_ts: int
    min_id: int
    max_id: int
    indexed_through: int  # as the catalog said when it was read

    @property
    def mapped(self) -> bool:
        return self.kind != "legacy"

    @property
    def by_user(self) -> str:
        return self.name + BY_USER_SUFFIX

    def overlaps(self, since: int | None, until: int | None) -> bool:
        return (since is None or self.max_ts >= since) and (until is None or self.min_ts < until)

    def holds_ids(self, after: int, through: int | None) -> bool:
        return self.max_id > after and (through is None or self.min_id <= through)

    def rows(self, alias: str = "p", names: bool = True) -> str:
        """FROM clause of the source; with `names`, giving the event's names too:
        `{alias}u.name` and `{alias}a.name` for a mapped source (joined), the columns
        themselves for legacy (always joined to users, for its user_key)."""
        if not self.mapped:
            return (
                f"{self.name} {alias} LEFT JOIN users {alias}u ON {alias}u.name = {alias}.user_id"
            )
        if not names:
            return f"{self.name} {alias}"
        return (
            f"{self.name} {alias} LEFT JOIN users {alias}u ON {alias}u.id = {alias}.user"
            f" JOIN actions {alias}a ON {alias}a.id = {alias}.action"
        )

    def event_columns(self, alias: str = "p") -> str:
        """id, ts, received_at, user_id, action, value, extra (EVENT_COLUMNS)."""
        a = alias
        if not self.mapped:
            return f"{a}.id, {a}.ts, {a}.received_at, {a}.user_id, {a}.action, {a}.value, {a}.extra"
        return (
            f"{a}.id, {a}.ts, {a}.ts + {a}.received_after, {a}u.name, {a}a.name, {a}.value,"
            f" {a}.extra"
        )

    def user_key(self, alias: str = "p") -> str:
        """The user's dictionary id (NULL for none)."""
        return f"{alias}.user" if self.mapped else f"{alias}u.id"

    def action_key(self, alias: str = "p") -> str:
        """The action's dictionary id."""
        if self.mapped:
            return f"{alias}.action"
        return f"(SELECT id FROM actions WHERE name = {alias}.action)"

    @property
    def has_tail(self) -> bool:
        """Rows the indexer had not reached when the catalog was read (the legacy table
        is all tail)."""
        return not self.mapped or self.indexed_through < self.max_id

    def tail(self, alias: str = "p") -> tuple[str, list[Any]]:
        """Rows the indexer has not reached yet (none for legacy: it is read whole). The
        watermark is read in the same statement as the rows, so both come from one
        snapshot."""
        if not self.mapped:
            return "1", []
        watermark = "(SELECT indexed_through FROM partitions WHERE name = ?)"
        first_ts = (
            f"(SELECT coalesce(min(min_ts), {END_OF_TIME}) FROM blocks WHERE part = ?"
            f" AND block >= ({watermark} + 1) >> {BLOCK_BITS})"
        )
        return (
            f"{alias}.ts >= {first_ts} AND {alias}.id > {watermark}",
            [self.name, self.name, self.name],
        )


def sources_of(rows: Sequence[Sequence[Any]]) -> list[Source]:
    return [Source(*row) for row in rows]


def in_window(sources: Sequence[Source], since: int | None, until: int | None) -> list[Source]:
    return [source for source in sources if source.overlaps(since, until)]


def time_where(since: int | None, until: int | None, alias: str = "p") -> Where:
    where = Where()
    if since is not None:
        where.add(f"{alias}.ts >= ?", since)
    if until is not None:
        where.add(f"{alias}.ts < ?", until)
    return where


def filtered(
    source: Source,
    filters: Sequence[Filter],
    since: int | None,
    until: int | None,
    alias: str = "p",
) -> Where:
    where = time_where(since, until, alias)
    for flt in filters:
        add_filter(where, flt, source, alias)
    return where


def add_filter(where: Where, flt: Filter, source: Source, alias: str = "p") -> None:
    if flt.field in ("action", "user") and source.mapped:
        add_dictionary_filter(where, flt, alias)
        return
    expression, expression_params = field_expression(flt.field, source, alias)
    tests, params = matches(expression, expression_params, flt.values)
    if flt.negated:
        # "not X" keeps the events that have no such field at all.
        where.add(f"({expression} IS NULL OR NOT {tests})", *expression_params, *params)
    else:
        where.add(tests, *params)


def matches(
    expression: str, expression_params: list[Any], values: Sequence[str]
) -> tuple[str, list[Any]]:
    tests: list[str] = []
    params: list[Any] = []
    for value in values:
        operator, operand = ("GLOB", glob_pattern(value)) if "*" in value else ("=", value)
        tests.append(f"{expression} {operator} ?")
        params += [*expression_params, operand]
    return "(" + " OR ".join(tests) + ")", params


def dictionary_ids(flt: Filter) -> tuple[str, list[Any]]:
    """SELECT of the dictionary ids whose names match the filter's values."""
    table = "actions" if flt.field == "action" else "users"
    tests, params = matches("name", [], flt.values)
    return f"SELECT id FROM {table} WHERE {tests}", params


def add_dictionary_filter(where: Where, flt: Filter, alias: str) -> None:
    column = f"{alias}.{flt.field}"
    ids, params = dictionary_ids(flt)
    if flt.negated:
        where.add(f"({column} IS NULL OR {column} NOT IN ({ids}))", *params)
    else:
        where.add(f"{column} IN ({ids})", *params)


def field_expression(name: str, source: Source, alias: str = "p") -> tuple[str, list[Any]]:
    """The value of a filter or grouping field as users see it (names, text)."""
    if name == "action":
        return (f"{alias}a.name" if source.mapped else f"{alias}.action"), []
    if name == "user":
        return (f"{alias}u.name" if source.mapped else f"{alias}.user_id"), []
    if name == "value":
        # Values are stored as sent (text, integer or real); users type text.
        return f"CAST({alias}.value AS TEXT)", []
    if name.startswith("extra.") and len(name) > len("extra."):
        path = json_path(name[len("extra.") :])
        return f"CAST(json_extract({alias}.extra, ?) AS TEXT)", [path]
    raise QueryError("ARG", f"unknown field {name!r}: use action, user, value or extra.KEY")


def check_field(name: str) -> None:
    if name not in ("action", "user", "value") and not (
        name.startswith("extra.") and len(name) > len("extra.")
    ):
        raise QueryError("ARG", f"unknown field {name!r}: use action, user, value or extra.KEY")


def json_path(dotted: str) -> str:
    """page.path -> $."page"."path" (quoted, so keys may hold any character)."""
    return "$" + "".join("." + json.dumps(part) for part in dotted.split("."))


def glob_pattern(value: str) -> str:
    """* is the only wildcard users type; GLOB's other special characters match themselves."""
    return value.replace("[", "[[]").replace("?", "[?]")


def only_actions(filters: Sequence[Filter]) -> bool:
    """Whether every filter is on the action (what the rollups keep)."""
    return all(flt.field == "action" for flt in filters)
