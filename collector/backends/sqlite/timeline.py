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
from collector.backends.sqlite.sources import (
    Source,
    Where,
    add_dictionary_filter,
    filtered,
    only_actions,
    time_where,
)
from collector.clock import DAY_MS
from collector.query.model import ALL_TIME, EVENT_COLUMNS, Filter, Window
from collector.storage.layout import ANY_ACTION

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


def user_actions(source: Source, user: str) -> tuple[str, list[Any]]:
    """The action ids under which a partition's by-user table can hold the user's events.

    For a day, those the user has in daily_users that day, looked up only when the user's
    any-action row says the user was active at all: one seek for a day without the user
    instead of one per action. The indexer writes both tables in one transaction and this
    is part of the statement that reads the by-user table, so it is never narrower than
    what that statement sees."""
    if source.day is None:
        return actions_seen(source)
    sql = (
        f"SELECT d.action FROM daily_users z JOIN daily_users d ON d.day = z.day"
        f" AND d.user = z.user WHERE z.day = {int(source.day)} AND z.action = {ANY_ACTION}"
        f" AND z.user = {USER_ID} AND d.action IN (SELECT id FROM actions)"
    )
    return sql, [user]


def indexed_arm(
    index: int, source: Source, user: str, filters: Sequence[Filter], window: Window
) -> tuple[str, list[Any]]:
    actions, action_params = user_actions(source, user)
    if only_actions(filters):
        # The by-user table holds all it needs: no row of the partition is read.
        where = time_where(window.since, window.until, "b")
        for flt in filters:
            add_dictionary_filter(where, flt, "b")
        sql = (
            f"SELECT {index} AS src, b.action AS action, b.ts AS ts, b.id AS id"
            f" FROM {source.by_user} b"
            f" WHERE b.action IN ({actions}) AND b.user = {USER_ID} AND {where.sql()}"
        )
        return sql, [*action_params, user, *where.params]
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
    sources: Sequence[Source],
    user: str,
    filters: Sequence[Filter],
    window: Window,
    only: Sequence[int] | None = None,
) -> Arms:
    """(src, action, ts, id) of the user's matching events (in the sources numbered
    `only` when given); src indexes `sources`."""
    result = Arms([], [])
    for index, source in enumerate(sources):
        if only is not None and index not in only:
            continue
        if not source.overlaps(window.since, window.until):
            continue
        builders = [indexed_arm] if source.mapped else []
        if source.has_tail:
            builders.append(tail_arm)
        for build in builders:
            sql, params = build(index, source, user, filters, window)
            result.sql.append(sql)
            result.params += params
    return result


EMPTY = "SELECT NULL AS src, NULL AS action, NULL AS ts, NULL AS id WHERE 0"


def summary_query(
    sources: Sequence[Source], user: str, filters: Sequence[Filter], window: Window
) -> Query:
    """First and last time, events and distinct actions of the user's matching events."""
    if window.since is None and window.until is None and only_actions(filters):
        return rollup_summary_query(sources, user, filters)
    events = user_events(sources, user, filters, window)
    sql = (
        "SELECT min(ts), max(ts), count(*), count(DISTINCT action)"
        f" FROM ({events.union('UNION ALL', EMPTY)})"
    )
    return Query(sql, tuple(events.params), ("first_seen", "last_seen", "events", "actions"))


def newest_query(
    sources: Sequence[Source],
    user: str,
    filters: Sequence[Filter],
    window: Window,
    limit: int,
    *,
    only: Sequence[int] | None = None,
) -> Query:
    """(src, ts, id) of the user's newest matching events (in the sources numbered `only`
    when given)."""
    events = user_events(sources, user, filters, window, only)
    sql = (
        f"SELECT src, ts, id FROM ({events.union('UNION ALL', EMPTY)})"
        " ORDER BY ts DESC, id DESC LIMIT ?"
    )
    return Query(sql, (*events.params, limit), ("src", "ts", "id"))


def rows_query(sources: Sequence[Source], keys: dict[int, list[tuple[int, int]]]) -> Query:
    """The events with these (ts, id) keys, by source number, each looked up by its key."""
    parts: list[str] = []
    params: list[Any] = []
    for src, found in keys.items():
        source = sources[src]
        values = ",".join(["(?, ?)"] * len(found))
        frm = source.rows().replace(
            f"{source.name} p", f"(VALUES {values}) k JOIN {source.name} p", 1
        )
        parts.append(
            f"SELECT {source.event_columns()} FROM {frm}"
            " WHERE p.ts = k.column1 AND p.id = k.column2"
        )
        params += [v for key in found for v in key]
    sql = " UNION ALL ".join(parts) + " ORDER BY 2 DESC, 1 DESC"
    return Query(sql, tuple(params), EVENT_COLUMNS)


def rollup_summary_query(sources: Sequence[Source], user: str, filters: Sequence[Filter]) -> Query:
    """The summary over all time from daily_users (first, last and events of each day and
    action) for the days with a partition, which include the late events of those days;
    the late events of other days, what the indexer has not reached and the legacy table
    from the events."""
    days = sorted({s.day for s in sources if s.day is not None})
    # -1 is no day an event can have (1969): an empty list that NOT IN reads as such.
    day_list = ",".join(map(str, days)) or "-1"
    actions = Where()
    for flt in filters:
        add_dictionary_filter(actions, flt, "d")
    # The user's any-action rows first: the days without the user cost one seek each.
    parts = [
        f"SELECT d.day * {DAY_MS} + d.first_ms AS f, d.day * {DAY_MS} + d.last_ms AS l,"
        " d.events AS n, d.action AS a FROM daily_users z JOIN daily_users d"
        f" ON d.day = z.day AND d.user = z.user WHERE z.day IN ({day_list})"
        f" AND z.action = {ANY_ACTION} AND z.user = {USER_ID}"
        f" AND d.action IN (SELECT id FROM actions) AND {actions.sql()}"
    ]
    params: list[Any] = [user, *actions.params]
    for index, source in enumerate(sources):
        if source.kind == "late":
            late = Where().add(f"(b.ts / {DAY_MS}) NOT IN ({day_list})")
            for flt in filters:
                add_dictionary_filter(late, flt, "b")
            parts.append(
                "SELECT b.ts, b.ts, 1, b.action"
                f" FROM {source.by_user} b WHERE b.action IN (SELECT id FROM actions)"
                f" AND b.user = {USER_ID} AND {late.sql()}"
            )
            params += [user, *late.params]
        if source.has_tail:
            sql, tail_params = tail_arm(index, source, user, filters, ALL_TIME)
            parts.append(f"SELECT ts, ts, 1, action FROM ({sql})")
            params += tail_params
    sql = (
        "SELECT min(f), max(l), coalesce(sum(n), 0), count(DISTINCT a)"
        f" FROM ({' UNION ALL '.join(parts)})"
    )
    return Query(sql, tuple(params), ("first_seen", "last_seen", "events", "actions"))
