"""Queries answered from the rollup table (migration 2) instead of scanning events.

`hourly_counts` holds the number of events per (hour, action); a trigger keeps it in the
transaction that inserts the events, so it agrees with `events` at every commit. A count over a
window takes the whole hours inside it from `hourly_counts` and only the partial hours at
its edges from `events` (through the `ts` index), so it reads a few thousand rollup rows
plus at most two hours of events, whatever the window. Pure: no database, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.backends.sqlite.compiler import (
    MAX_BUCKETS,
    Query,
    Where,
    add_filter,
    build_where,
)
from collector.clock import HOUR_MS
from collector.query.errors import QueryError
from collector.query.model import Filter

# The end of year 9999, the latest event time the daemon accepts; a whole hour.
END_OF_TIME = 253_402_300_800_000


def covers(filters: Sequence[Filter]) -> bool:
    """Whether the rollup holds what these filters ask (it keeps the action only)."""
    return all(flt.field == "action" for flt in filters)


def action_where(filters: Sequence[Filter], alias: str) -> Where:
    where = Where()
    for flt in filters:
        add_filter(where, flt, alias)
    return where


def hour_split(start: int, stop: int) -> tuple[int, int]:
    """[start, stop) = [start, first) + whole hours [first, last) + [last, stop)."""
    first = min(-(-start // HOUR_MS) * HOUR_MS, stop)
    return first, max(stop // HOUR_MS * HOUR_MS, first)


def bucket_count_query(
    filters: Sequence[Filter], starts: Sequence[int], window: tuple[int, int]
) -> Query:
    """Events per time bucket, empty buckets included; as compiler.bucket_query, the first
    and last calendar buckets are clipped to the window [since, until)."""
    if len(starts) > MAX_BUCKETS:
        raise QueryError("LIMIT", f"{len(starts)} buckets, more than {MAX_BUCKETS}: narrow since=")
    rollup = action_where(filters, "h.")
    edge = action_where(filters, "e.")
    values = ",".join(["(?, ?)"] * len(starts))
    sql = (
        f"WITH b(start, stop) AS (VALUES {values}), "
        "c AS (SELECT start, max(start, ?) AS lo, stop FROM b), "
        "s AS (SELECT start, lo, stop,"
        f" min((lo + {HOUR_MS - 1}) / {HOUR_MS} * {HOUR_MS}, stop) AS hs FROM c), "
        f"w AS (SELECT start, lo, stop, hs, max(stop / {HOUR_MS} * {HOUR_MS}, hs) AS he FROM s) "
        "SELECT w.start AS start, "
        "(SELECT coalesce(sum(h.events), 0) FROM hourly_counts h"
        f" WHERE h.hour >= w.hs AND h.hour < w.he AND {rollup.sql()})"
        " + (SELECT count(*) FROM events e"
        f" WHERE e.ts >= w.lo AND e.ts < w.hs AND {edge.sql()})"
        " + (SELECT count(*) FROM events e"
        f" WHERE e.ts >= w.he AND e.ts < w.stop AND {edge.sql()}) AS n "
        "FROM w ORDER BY w.start"
    )
    bounds = [*starts[1:], window[1]]
    params = [p for pair in zip(starts, bounds, strict=True) for p in pair]
    return Query(
        sql,
        (*params, window[0], *rollup.params, *edge.params, *edge.params),
        ("bucket", "events"),
    )


def total_count_query(filters: Sequence[Filter], since: int | None, until: int | None) -> Query:
    start = 0 if since is None else since
    stop = END_OF_TIME if until is None else max(until, start)
    query = bucket_count_query(filters, [start], (start, stop))
    return Query(f"SELECT n FROM ({query.sql})", query.params, ("events",))


def action_count_query(
    filters: Sequence[Filter], since: int | None, until: int | None, limit: int
) -> Query:
    """Events per action in [since, until), most frequent first."""
    start = 0 if since is None else since
    stop = END_OF_TIME if until is None else max(until, start)
    first, last = hour_split(start, stop)
    rollup = action_where(filters, "")
    head = build_where(filters, start, first)
    tail = build_where(filters, last, stop)
    sql = (
        "SELECT action, sum(n) AS total FROM ("
        "SELECT action, sum(events) AS n FROM hourly_counts"
        f" WHERE hour >= ? AND hour < ? AND {rollup.sql()} GROUP BY action"
        f" UNION ALL SELECT action, count(*) FROM events WHERE {head.sql()} GROUP BY action"
        f" UNION ALL SELECT action, count(*) FROM events WHERE {tail.sql()} GROUP BY action"
        ") GROUP BY action ORDER BY total DESC, action LIMIT ?"
    )
    params = (first, last, *rollup.params, *head.params, *tail.params, limit)
    return Query(sql, params, ("action", "events"))
