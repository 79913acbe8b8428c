"""One user's events, through the by-user tables. Pure.

Each partition's `<name>_by_user` table is keyed (action, user, ts, id): a user's events
are found with one seek per action the partition's day has seen (from `hourly_counts`),
and joined to the partition's row by (ts, id) when other filters need it. What the
indexer has not reached yet is read from the partition itself; the legacy table is read
whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.backends.sqlite.compiler import Arms, Query
from collector.backends.sqlite.sources import Source, Where, filtered
from collector.clock import DAY_MS
from collector.query.model import EVENT_COLUMNS, Filter, Window

USER_ID = "(SELECT id FROM users WHERE name = ?)"


def actions_seen(source: Source) -> tuple[str, list[Any]]:
    """The action ids a partition can hold: those of its day (every one for late rows)."""
    if source.day is None:
        return "SELECT id FROM actions", []
    start = source.day * DAY_MS
    return "SELECT DISTINCT action FROM hourly_counts WHERE hour >= ? AND hour < ?", [
        start,
        start + DAY_MS,
    ]


def indexed_arm(
    index: int, source: Source, user: str, filters: Sequence[Filter], window: Window
) -> tuple[str, list[Any]]:
    actions, action_params = actions_seen(source)
    where = filtered(source, filters, window.since, window.until)
    sql = (
        f"SELECT {index} AS src, p.action AS action, p.ts AS ts, p.id AS id"
        f" FROM {source.by_user} b JOIN {source.name} p ON p.ts = b.ts AND p.id = b.id"
        f" WHERE b.action IN ({actions}) AND b.user = {USER_ID} AND {where.sql()}"
    )
    return sql, [*action_params, user, *where.params]


def tail_arm(
    index: int, source: Source, user: str, filters: Sequence[Filter], window: Window
) -> tuple[str, list[Any]]:
    where = filtered(source, filters, window.since, window.until)
    tail, tail_params = source.tail()
    where.add(tail, *tail_params)
    if source.mapped:
        where.add(f"p.user = {USER_ID}", user)
    else:
        where.add("p.user_id = ?", user)
    sql = (
        f"SELECT {index} AS src, {source.action_key()} AS action, p.ts AS ts, p.id AS id"
        f" FROM {source.name} p WHERE {where.sql()}"
    )
    return sql, where.params


def user_events(
    sources: Sequence[Source], user: str, filters: Sequence[Filter], window: Window
) -> Arms:
    """(src, action, ts, id) of the user's matching events; src indexes `sources`."""
    result = Arms([], [])
    for index, source in enumerate(sources):
        if not source.overlaps(window.since, window.until):
            continue
        builders = [tail_arm] if not source.mapped else [indexed_arm, tail_arm]
        for build in builders:
            sql, params = build(index, source, user, filters, window)
            result.sql.append(sql)
            result.params += params
    return result


EMPTY = "SELECT NULL AS src, NULL AS action, NULL AS ts, NULL AS id WHERE 0"


def summary_query(
    sources: Sequence[Source], user: str, filters: Sequence[Filter], window: Window
) -> Query:
    events = user_events(sources, user, filters, window)
    sql = (
        "SELECT min(ts), max(ts), count(*), count(DISTINCT action)"
        f" FROM ({events.union('UNION ALL', EMPTY)})"
    )
    return Query(sql, tuple(events.params), ("first_seen", "last_seen", "events", "actions"))


def newest_query(
    sources: Sequence[Source], user: str, filters: Sequence[Filter], window: Window, limit: int
) -> Query:
    """(src, ts, id) of the user's newest matching events."""
    events = user_events(sources, user, filters, window)
    sql = (
        f"SELECT src, ts, id FROM ({events.union('UNION ALL', EMPTY)})"
        " ORDER BY ts DESC, id DESC LIMIT ?"
    )
    return Query(sql, (*events.params, limit), ("src", "ts", "id"))


def rows_query(source: Source, keys: Sequence[tuple[int, int]]) -> Query:
    """The events of one source with these (ts, id) keys."""
    values = ",".join(["(?, ?)"] * len(keys))
    where = Where().add(f"(p.ts, p.id) IN (VALUES {values})", *(v for key in keys for v in key))
    sql = f"SELECT {source.event_columns()} FROM {source.rows()} WHERE {where.sql()}"
    return Query(sql, tuple(where.params), EVENT_COLUMNS)
