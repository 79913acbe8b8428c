"""Queries answered from the rollups instead of the events. Pure.

`hourly_counts` (events per hour and action id) is kept by every commit, so a count over a
window takes its whole hours from there and only the partial hours at its edges from the
partitions. `daily_users` (distinct users per UTC day and action id, action 0 for any,
with the first and last time of each within the day) is kept by the indexer for what it
has indexed: distinct users over a window take whole days from there, the partial days at
its edges from the first and last times, and what the indexer has not reached (the tail of
each partition) from the events. A window within one UTC day is read from the events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from collector.backends.sqlite.compiler import Arms, Query, arms, check_buckets, compound
from collector.backends.sqlite.sources import (
    Source,
    Where,
    dictionary_ids,
    filtered,
    in_window,
    only_actions,
)
from collector.clock import DAY_MS, HOUR_MS
from collector.query.model import Filter
from collector.storage.layout import ANY_ACTION

# The end of year 9999, the latest event time the daemon accepts; a whole hour and day.
END_OF_TIME = 253_402_300_800_000
# Counts and distinct users per bucket from the rollups up to this many buckets (each is a
# subquery, and a term of one compound SELECT).
MAX_ROLLUP_BUCKETS = 400

covers = only_actions


def action_ids(filters: Sequence[Filter], column: str) -> Where:
    """`column` (an action id) limited by the action filters."""
    where = Where()
    for flt in filters:
        ids, params = dictionary_ids(flt)
        operator = "NOT IN" if flt.negated else "IN"
        where.add(f"{column} {operator} ({ids})", *params)
    return where


def hour_split(start: int, stop: int) -> tuple[int, int]:
    """[start, stop) = [start, first) + whole hours [first, last) + [last, stop)."""
    first = min(-(-start // HOUR_MS) * HOUR_MS, stop)
    return first, max(stop // HOUR_MS * HOUR_MS, first)


def edge_counts(
    sources: Sequence[Source], filters: Sequence[Filter], start: int, stop: int
) -> Arms:
    """count(*) AS c of the events in [start, stop), one arm per source."""
    chosen = in_window(sources, start, stop) if start < stop else []

    def arm(source: Source) -> tuple[str, list[Any]]:
        where = filtered(source, filters, start, stop)
        return f"SELECT count(*) AS c FROM {source.name} p WHERE {where.sql()}", where.params

    return arms(chosen, arm)


def total_count_query(
    sources: Sequence[Source], filters: Sequence[Filter], since: int | None, until: int | None
) -> Query:
    start = 0 if since is None else since
    stop = END_OF_TIME if until is None else max(until, start)
    first, last = hour_split(start, stop)
    rollup = action_ids(filters, "action")
    edges = edge_counts(sources, filters, start, first)
    tail = edge_counts(sources, filters, last, stop)
    counts = [
        "SELECT coalesce(sum(events), 0) AS c FROM hourly_counts"
        f" WHERE hour >= ? AND hour < ? AND {rollup.sql()}",
        *edges.sql,
        *tail.sql,
    ]
    sql = f"SELECT sum(c) FROM ({' UNION ALL '.join(counts)})"
    return Query(sql, (first, last, *rollup.params, *edges.params, *tail.params), ("events",))


def action_count_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    since: int | None,
    until: int | None,
    limit: int,
) -> Query:
    """Events per action in [since, until), most frequent first."""
    start = 0 if since is None else since
    stop = END_OF_TIME if until is None else max(until, start)
    first, last = hour_split(start, stop)
    rollup = action_ids(filters, "action")
    parts = [
        "SELECT action AS k, sum(events) AS n FROM hourly_counts"
        f" WHERE hour >= ? AND hour < ? AND {rollup.sql()} GROUP BY action"
    ]
    params: list[Any] = [first, last, *rollup.params]
    for lo, hi in ((start, first), (last, stop)):
        edge = edge_by_action(sources, filters, lo, hi)
        parts += edge.sql
        params += edge.params
    sql = (
        f"SELECT a.name, sum(n) AS total FROM ({' UNION ALL '.join(parts)}) t"
        " JOIN actions a ON a.id = t.k GROUP BY a.name ORDER BY total DESC, a.name LIMIT ?"
    )
    return Query(sql, (*params, limit), ("action", "events"))


def edge_by_action(
    sources: Sequence[Source], filters: Sequence[Filter], start: int, stop: int
) -> Arms:
    chosen = in_window(sources, start, stop) if start < stop else []

    def arm(source: Source) -> tuple[str, list[Any]]:
        where = filtered(source, filters, start, stop)
        key = source.action_key()
        return (
            f"SELECT {key} AS k, count(*) AS n FROM {source.name} p WHERE {where.sql()} GROUP BY k",
            where.params,
        )

    return arms(chosen, arm)


def per_bucket(
    starts: Sequence[int],
    window: tuple[int, int],
    count: Callable[[int, int], Query],
    name: str,
) -> Query | None:
    """(bucket start, n) per bucket, `count(start, stop)` giving each bucket's n; the first
    and last calendar buckets are clipped to the window. None past MAX_ROLLUP_BUCKETS
    buckets (each is a subquery of its own)."""
    if len(starts) > MAX_ROLLUP_BUCKETS:
        return None
    check_buckets(starts)
    bounds = [*starts[1:], window[1]]
    parts: list[str] = []
    params: list[Any] = []
    for index, (start, stop) in enumerate(zip(starts, bounds, strict=True)):
        query = count(max(start, window[0]), stop)
        parts.append(f"SELECT {index} AS i, ? AS start, ({query.sql}) AS n")
        params += [start, *query.params]
    sql = f"SELECT start, n FROM ({' UNION ALL '.join(parts)}) ORDER BY i"
    return Query(sql, tuple(params), ("bucket", name))


def bucket_count_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    starts: Sequence[int],
    window: tuple[int, int],
) -> Query | None:
    """Events per time bucket, empty buckets included, each from the rollup and its edges."""
    return per_bucket(
        starts, window, lambda a, b: total_count_query(sources, filters, a, b), "events"
    )


def day_split(start: int, stop: int) -> tuple[int, int, int, int] | None:
    """For [start, stop) over at least two UTC days: its first day, the offset it starts
    at within that day, its last day and the offset it ends at (exclusive) within that one;
    None for a window within one day."""
    first_day, last_day = start // DAY_MS, (stop - 1) // DAY_MS
    if first_day == last_day and not (start % DAY_MS == 0 and stop - start == DAY_MS):
        return None
    return first_day, start % DAY_MS, last_day, stop - last_day * DAY_MS


# Up to this many days, the days' users are merged one day at a time (each day's rows come
# ordered by user, so the merge needs no sort); past it the middle days are one range.
MAX_MERGE_DAYS = 400


def rollup_action(filters: Sequence[Filter], action: str | None) -> Where:
    """Which daily_users rows count: one action (`action` is SQL giving its id), the
    actions the filters allow, or the rows of any action (action 0)."""
    if action is not None:
        return action_ids(filters, "action").add(f"action = {action}")
    if not filters:
        return Where().add("action = ?", ANY_ACTION)
    return action_ids(filters, "action").add("action != ?", ANY_ACTION)


def day_arms(days: tuple[int, int, int, int], which: Where) -> tuple[list[str], list[Any]]:
    """One arm per day of daily_users (the edge days limited by first and last time), or
    the edge days and one range for the days between when there are many. Each arm is
    DISTINCT: a user has a row per action, and a lone arm has no UNION to merge them."""
    first_day, first_at, last_day, last_until = days
    condition = which.sql()
    rows = "SELECT DISTINCT user FROM daily_users WHERE"
    parts: list[str] = []
    params: list[Any] = []
    middle = range(first_day + 1, last_day)
    edges = [(first_day, "last_ms >= ?", first_at), (last_day, "first_ms < ?", last_until)]
    for day, edge, at in edges[: 1 if first_day == last_day else 2]:
        parts.append(f"{rows} day = ? AND {edge} AND {condition}")
        params += [day, at, *which.params]
    if len(middle) > MAX_MERGE_DAYS:
        parts.append(f"{rows} day > ? AND day < ? AND {condition}")
        params += [first_day, last_day, *which.params]
    else:
        for day in middle:
            parts.append(f"{rows} day = ? AND {condition}")
            params += [day, *which.params]
    return parts, params


def users_union(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    start: int,
    stop: int,
    action: str | None = None,
) -> tuple[str, list[Any]]:
    """A compound SELECT of the user ids with a matching event in [start, stop), ordered by
    user: daily_users for what is indexed, the events for the rest. `filters` are on the
    action only; `action` (SQL giving an action id) narrows to that action."""
    days = day_split(start, stop)
    if days is None:
        raw = raw_users(sources, filters, start, stop, action=action, indexed_too=True)
        return raw.union("UNION", "SELECT NULL WHERE 0") + " ORDER BY 1", raw.params
    parts, params = day_arms(days, rollup_action(filters, action))
    raw = raw_users(sources, filters, start, stop, action=action, indexed_too=False)
    return compound([*parts, *raw.sql], "UNION") + " ORDER BY 1", [*params, *raw.params]


def raw_users(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    start: int,
    stop: int,
    *,
    action: str | None,
    indexed_too: bool,
) -> Arms:
    """From the events: every matching row in [start, stop) when `indexed_too`, else only
    the rows the indexer has not reached (and the legacy table, which it never indexes);
    of `action` only, when given."""

    def arm(source: Source) -> tuple[str, list[Any]]:
        where = filtered(source, filters, start, stop)
        key = source.user_key()
        where.add(f"{key} IS NOT NULL")
        if action is not None:
            where.add(f"{source.action_key()} = {action}")
        if not indexed_too:
            tail, tail_params = source.tail()
            where.add(tail, *tail_params)
        return f"SELECT DISTINCT {key} FROM {source.rows()} WHERE {where.sql()}", where.params

    chosen = in_window(sources, start, stop)
    return arms(chosen if indexed_too else [s for s in chosen if s.has_tail], arm)


def data_span(sources: Sequence[Source], since: int | None, until: int | None) -> tuple[int, int]:
    """[since, until) narrowed to the times the sources hold (an open end would otherwise
    reach the year 9999 and its days)."""
    start = 0 if since is None else since
    stop = END_OF_TIME if until is None else max(until, start)
    if sources:
        start = max(start, min(s.min_ts for s in sources))
        stop = min(stop, max(s.max_ts for s in sources) + 1)
    return start, max(stop, start)


def unique_query(
    sources: Sequence[Source], filters: Sequence[Filter], since: int | None, until: int | None
) -> Query:
    start, stop = data_span(sources, since, until)
    if start >= stop:
        return Query("SELECT 0", (), ("users",))
    union, params = users_union(sources, filters, start, stop)
    return Query(f"SELECT count(*) FROM ({union})", tuple(params), ("users",))


def users_by_action_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    since: int | None,
    until: int | None,
    actions: Sequence[tuple[int, str]],
) -> Query:
    """(action, distinct users) for each of `actions` ((id, name) from the dictionary),
    each merged day by day."""
    start, stop = data_span(sources, since, until)
    if start >= stop or not actions:
        return Query("SELECT NULL, 0 WHERE 0", (), ("action", "users"))
    parts: list[str] = []
    params: list[Any] = []
    for action_id, name in actions:
        union, union_params = users_union(sources, filters, start, stop, action=str(int(action_id)))
        parts.append(f"SELECT ? AS action, (SELECT count(*) FROM ({union})) AS users")
        params += [name, *union_params]
    return Query(" UNION ALL ".join(parts), tuple(params), ("action", "users"))


def bucket_users_query(
    sources: Sequence[Source],
    filters: Sequence[Filter],
    starts: Sequence[int],
    window: tuple[int, int],
) -> Query | None:
    """Distinct users per bucket from the rollups."""
    return per_bucket(starts, window, lambda a, b: unique_query(sources, filters, a, b), "users")
