"""Filters and verbs -> parameterised SQL over the partitions of the window. Pure.

Every value a user types reaches SQLite as a bound parameter, never as SQL text. Each
query reads the sources (sources.py) that overlap its window, one arm each, and combines
them in one statement. What the rollups can answer is in rollups.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.backends.sqlite.sources import (
    Source,
    Where,
    field_expression,
    filtered,
    in_window,
)
from collector.query.errors import QueryError
from collector.query.model import EVENT_COLUMNS, Filter, Window
from collector.storage.layout import BLOCK_BITS

# SQLite binds at most 32,766 parameters; two per bucket leaves room for the filters.
MAX_BUCKETS = 10_000
# SQLite refuses a compound SELECT of more than 500 terms; past this many, the terms are
# grouped into subqueries (one or two arms per partition: a year and a half of days).
MAX_COMPOUND_TERMS = 400


@dataclass(frozen=True)
class Query:
    sql: str
    params: tuple[Any, ...]
    columns: tuple[str, ...]


@dataclass
class Arms:
    """The arms of a compound SELECT, one per source, and their parameters."""

    sql: list[str]
    params: list[Any]

    def union(self, keyword: str, empty: str) -> str:
        return compound(self.sql, keyword) if self.sql else empty


def compound(terms: Sequence[str], keyword: str) -> str:
    """The terms joined by `keyword` (UNION or UNION ALL), as one compound SELECT of at most
    MAX_COMPOUND_TERMS terms: past that, each group of terms is a subquery of its own."""
    if len(terms) <= MAX_COMPOUND_TERMS:
        return f" {keyword} ".join(terms)
    step = MAX_COMPOUND_TERMS
    groups = [terms[first : first + step] for first in range(0, len(terms), step)]
    return compound([f"SELECT * FROM ({compound(g, keyword)})" for g in groups], keyword)


def arms(sources: Sequence[Source], build: Any) -> Arms:
    """`build(source)` -> (sql, params) for each source."""
    result = Arms([], [])
    for source in sources:
        sql, params = build(source)
        result.sql.append(sql)
        result.params += params
    return result


def select_rows(
    source: Source, columns: str, where: Where, extra: str = "", *, names: bool = False
) -> tuple[str, list[Any]]:
    """SELECT of `columns` from the source; `names` when they use the event's names."""
    frm = source.rows(names=names)
    return f"SELECT {columns} FROM {frm} WHERE {where.sql()}{extra}", where.params


def events_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    window: Window,
    limit: int,
    *,
    descending: bool,
) -> Query:
    """Events in time order (ties by id): a merge of the partitions, each read in (ts, id)
    order, stopped at `limit`."""
    order = "DESC" if descending else "ASC"
    chosen = in_window(sources, window.since, window.until)
    parts = arms(
        chosen,
        lambda s: select_rows(
            s, s.event_columns(), filtered(s, filters, window.since, window.until), names=True
        ),
    )
    empty = "SELECT " + ", ".join(f"NULL AS {c}" for c in EVENT_COLUMNS) + " WHERE 0"
    sql = f"{parts.union('UNION ALL', empty)} ORDER BY 2 {order}, 1 {order} LIMIT ?"
    return Query(sql, (*parts.params, limit), EVENT_COLUMNS)


def measure(distinct_users: bool) -> str:
    return "users" if distinct_users else "events"


def count_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    window: Window,
    *,
    distinct_users: bool,
    group: str | None,
    limit: int,
) -> Query:
    """Events, or distinct users, in all or per value of `group`, read from the events."""
    chosen = in_window(sources, window.since, window.until)
    name = measure(distinct_users)
    if group is None and not distinct_users:
        parts = arms(
            chosen, lambda s: select_rows(s, "count(*) AS c", filtered(s, filters, *span(window)))
        )
        sql = f"SELECT coalesce(sum(c), 0) FROM ({parts.union('UNION ALL', 'SELECT 0 AS c')})"
        return Query(sql, tuple(parts.params), (name,))
    if group is None:
        parts = arms(chosen, lambda s: users_of(s, filters, window))
        sql = f"SELECT count(*) FROM ({parts.union('UNION', 'SELECT NULL WHERE 0')})"
        return Query(sql, tuple(parts.params), (name,))
    parts = arms(chosen, lambda s: grouped_rows(s, group, filters, window))
    value = "count(DISTINCT u)" if distinct_users else "count(*)"
    sql = (
        f"SELECT grp, {value} AS n FROM ({parts.union('UNION ALL', EMPTY_GROUPED)})"
        " GROUP BY grp ORDER BY n DESC, grp LIMIT ?"
    )
    return Query(sql, (*parts.params, limit), (group, name))


EMPTY_GROUPED = "SELECT NULL AS grp, NULL AS u WHERE 0"


def span(window: Window) -> tuple[int | None, int | None]:
    return window.since, window.until


def users_of(source: Source, filters: Sequence[Filter], window: Window) -> tuple[str, list[Any]]:
    """The dictionary ids of the users with a matching event."""
    where = filtered(source, filters, window.since, window.until)
    where.add(f"{source.user_key()} IS NOT NULL")
    # DISTINCT here too: with one source the UNION around it has nothing to merge.
    return select_rows(source, f"DISTINCT {source.user_key()}", where)


def grouped_rows(
    source: Source, group: str, filters: Sequence[Filter], window: Window
) -> tuple[str, list[Any]]:
    """(grp, u) per matching event: the value of `group` and the user's id."""
    expression, expression_params = field_expression(group, source)
    where = filtered(source, filters, window.since, window.until)
    columns = f"{expression} AS grp, {source.user_key()} AS u"
    sql = f"SELECT {columns} FROM {source.rows()} WHERE {where.sql()}"
    return sql, [*expression_params, *where.params]


def top_query(
    sources: Sequence[Source], group: str, filters: Sequence[Filter], window: Window, limit: int
) -> Query:
    chosen = in_window(sources, window.since, window.until)
    parts = arms(chosen, lambda s: grouped_rows(s, group, filters, window))
    sql = (
        f"SELECT grp, count(*) AS n, count(DISTINCT u) AS uu FROM"
        f" ({parts.union('UNION ALL', EMPTY_GROUPED)}) GROUP BY grp ORDER BY n DESC, grp LIMIT ?"
    )
    return Query(sql, (*parts.params, limit), (group, "events", "users"))


def bucket_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    starts: Sequence[int],
    window: tuple[int, int],
    *,
    distinct_users: bool,
) -> Query:
    """Counts per time bucket, empty buckets included; the first and last buckets are
    calendar buckets clipped to the window [since, until)."""
    check_buckets(starts)
    since, end = window
    chosen = in_window(sources, since, end)
    parts = arms(
        chosen,
        lambda s: select_rows(
            s, f"p.ts AS ts, {s.user_key()} AS u", filtered(s, filters, since, end)
        ),
    )
    aggregate = "count(DISTINCT e.u)" if distinct_users else "count(e.ts)"
    values = ",".join(["(?, ?)"] * len(starts))
    sql = (
        f"WITH b(start, stop) AS (VALUES {values}) "
        f"SELECT b.start, {aggregate} FROM b LEFT JOIN"
        f" ({parts.union('UNION ALL', 'SELECT NULL AS ts, NULL AS u WHERE 0')}) e"
        " ON e.ts >= b.start AND e.ts < b.stop GROUP BY b.start ORDER BY b.start"
    )
    bounds = [*starts[1:], end]
    params = [p for pair in zip(starts, bounds, strict=True) for p in pair]
    return Query(sql, (*params, *parts.params), ("bucket", measure(distinct_users)))


def check_buckets(starts: Sequence[int]) -> None:
    if len(starts) > MAX_BUCKETS:
        raise QueryError("LIMIT", f"{len(starts)} buckets, more than {MAX_BUCKETS}: narrow since=")


def users_query(
    sources: Sequence[Source], filters: Sequence[Filter], window: Window, minimum: int, limit: int
) -> Query:
    chosen = in_window(sources, window.since, window.until)
    parts = arms(chosen, lambda s: per_user_counts(s, filters, window))
    sql = (
        "SELECT u.name, t.n FROM (SELECT k, sum(c) AS n FROM"
        f" ({parts.union('UNION ALL', 'SELECT NULL AS k, 0 AS c WHERE 0')})"
        " GROUP BY k HAVING n >= ?) t JOIN users u ON u.id = t.k"
        " ORDER BY t.n DESC, u.name LIMIT ?"
    )
    return Query(sql, (*parts.params, minimum, limit), ("user", "events"))


def per_user_counts(
    source: Source, filters: Sequence[Filter], window: Window
) -> tuple[str, list[Any]]:
    where = filtered(source, filters, window.since, window.until)
    key = source.user_key()
    where.add(f"{key} IS NOT NULL")
    return select_rows(source, f"{key} AS k, count(*) AS c", where, f" GROUP BY {key}")


def first_time_query(sources: Sequence[Source], filters: Sequence[Filter]) -> Query:
    parts = arms(
        sources, lambda s: select_rows(s, "min(p.ts) AS m", filtered(s, filters, None, None))
    )
    sql = f"SELECT min(m) FROM ({parts.union('UNION ALL', 'SELECT NULL AS m')})"
    return Query(sql, tuple(parts.params), ("ts",))


def id_bounds(source: Source, after: int, through: int | None) -> Where:
    """after < id <= through, with the time range the blocks give for those ids (the
    partitions are ordered by time, not by id)."""
    where = Where()
    if source.mapped:
        blocks = "FROM blocks WHERE part = ? AND block"
        low = f"(SELECT min(min_ts) {blocks} >= {(after + 1) >> BLOCK_BITS})"
        where.add(f"p.ts >= {low}", source.name)
        if through is not None:
            high = f"(SELECT max(max_ts) {blocks} <= {through >> BLOCK_BITS})"
            where.add(f"p.ts <= {high}", source.name)
    where.add("p.id > ?", after)
    if through is not None:
        where.add("p.id <= ?", through)
    return where


def by_id_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    window: Window,
    ids: tuple[int, int | None],
    limit: int,
    *,
    newest_first: bool,
) -> Query:
    """Events with after < id <= through (`ids`) in id (commit) order, for paging."""
    after, through = ids
    chosen = [s for s in in_window(sources, *span(window)) if s.holds_ids(after, through)]
    parts = arms(
        chosen,
        lambda s: select_rows(
            s, s.event_columns(), matching_ids(s, filters, window, after, through), names=True
        ),
    )
    order = "DESC" if newest_first else "ASC"
    empty = "SELECT " + ", ".join(f"NULL AS {c}" for c in EVENT_COLUMNS) + " WHERE 0"
    sql = f"{parts.union('UNION ALL', empty)} ORDER BY 1 {order} LIMIT ?"
    return Query(sql, (*parts.params, limit), EVENT_COLUMNS)


def matching_ids(
    source: Source, filters: Sequence[Filter], window: Window, after: int, through: int | None
) -> Where:
    where = id_bounds(source, after, through)
    extra = filtered(source, filters, window.since, window.until)
    where.clauses += extra.clauses
    where.params += extra.params
    return where


def count_by_id_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    window: Window,
    ids: tuple[int, int | None],
) -> Query:
    after, through = ids
    chosen = [s for s in in_window(sources, *span(window)) if s.holds_ids(after, through)]
    parts = arms(
        chosen,
        lambda s: select_rows(s, "count(*) AS c", matching_ids(s, filters, window, after, through)),
    )
    sql = f"SELECT coalesce(sum(c), 0) FROM ({parts.union('UNION ALL', 'SELECT 0 AS c')})"
    return Query(sql, tuple(parts.params), ("n",))


CATALOG = Query(
    "SELECT name, kind, day, min_ts, max_ts, min_id, max_id, indexed_through FROM partitions"
    " WHERE dropped_at IS NULL AND rows > 0 ORDER BY coalesce(day, -1), name",
    (),
    ("name", "kind", "day", "min_ts", "max_ts", "min_id", "max_id", "indexed_through"),
)


def summary_query() -> Query:
    return Query(
        "SELECT coalesce(sum(rows), 0), min(min_ts), max(max_ts) FROM partitions"
        " WHERE dropped_at IS NULL AND rows > 0",
        (),
        ("events", "oldest", "newest"),
    )


def max_id_query() -> Query:
    return Query("SELECT coalesce(max(max_id), 0) FROM partitions", (), ("id",))


def quarantine_query(limit: int) -> Query:
    sql = (
        "SELECT id, received_at, source, reason, length(raw), hex(substr(raw, 1, 24))"
        " FROM quarantine ORDER BY id DESC LIMIT ?"
    )
    return Query(sql, (limit,), ("id", "received_at", "source", "reason", "bytes", "raw_hex"))


def action_ids_query(names: Sequence[str]) -> Query:
    marks = ",".join("?" * len(names)) or "NULL"
    return Query(
        f"SELECT id, name FROM actions WHERE name IN ({marks})", tuple(names), ("id", "name")
    )
