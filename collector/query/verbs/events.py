"""Verbs that list events and users: EVENTS, USER, USERS."""

from __future__ import annotations

from collector.query import api, timeexpr
from collector.query.context import WINDOW_OPTIONS, Context, Session, positive_int, window
from collector.query.errors import QueryError
from collector.query.output import Reply, Table
from collector.query.parser import Command
from collector.query.presentation import event_row, table_reply
from collector.query.registry import verb


@verb(
    "EVENTS",
    usage="EVENTS [filters] [limit=100] [order=asc|desc]",
    summary="raw events, newest first",
    options=(*WINDOW_OPTIONS, "limit", "order"),
    example="EVENTS action=signup limit=10",
)
async def events(ctx: Context, session: Session, command: Command) -> Reply:
    span = window(ctx, command)
    order = command.options.get("order", "desc").lower()
    if order not in ("asc", "desc"):
        raise QueryError("ARG", f"order= must be asc or desc, got {order!r}")
    limit = positive_int(command, "limit", 100, ctx.max_rows)
    result = await api.events(
        ctx.backend,
        filters=command.filters,
        window=span,
        limit=limit,
        descending=order == "desc",
    )
    rows = [event_row(row, span.zone) for row in result.rows]
    return table_reply(result.columns, rows, result)


@verb(
    "USER",
    usage="USER USER_ID [filters] [limit=100]",
    summary="one user's first and last seen, events, distinct actions, and timeline (newest first)",
    options=(*WINDOW_OPTIONS, "limit"),
    example="USER u42 limit=20",
)
async def user(ctx: Context, session: Session, command: Command) -> Reply:
    if len(command.args) != 1:
        raise QueryError("ARG", "usage: USER USER_ID [filters] [limit=100]")
    span = window(ctx, command)
    user_id = command.args[0]
    limit = positive_int(command, "limit", 100, ctx.max_rows)
    history = await api.user(
        ctx.backend, user_id, filters=command.filters, window=span, limit=limit
    )
    zone = span.zone
    head = Table(
        ("user", "first_seen", "last_seen", "events", "actions"),
        [
            (
                user_id,
                timeexpr.format_ms(history.first_seen, zone),
                timeexpr.format_ms(history.last_seen, zone),
                history.events,
                history.actions,
            )
        ],
    )
    timeline = history.timeline
    rows = [event_row(row, zone) for row in timeline.rows]
    return Reply(
        tables=[head, Table(timeline.columns, rows)],
        summary=f"{len(rows)} of {history.events} events",
    )


@verb(
    "USERS",
    usage="USERS [filters] [min=1]",
    summary="ids of the users with at least min matching events, most active first",
    options=(*WINDOW_OPTIONS, "min", "limit"),
    example="USERS action=purchase min=3 since=-30d",
)
async def users(ctx: Context, session: Session, command: Command) -> Reply:
    span = window(ctx, command)
    minimum = positive_int(command, "min", 1, 2**62)
    limit = positive_int(command, "limit", ctx.max_rows, ctx.max_rows)
    result = await api.users(
        ctx.backend, filters=command.filters, window=span, minimum=minimum, limit=limit
    )
    return table_reply(result.columns, result.rows, result, truncated=len(result.rows) == limit)
