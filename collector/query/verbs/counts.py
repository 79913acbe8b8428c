"""Verbs that count: COUNT, UNIQUE, TOP."""

from __future__ import annotations

from collector.query import api, timeexpr
from collector.query.context import WINDOW_OPTIONS, Context, Session, positive_int, window
from collector.query.errors import QueryError
from collector.query.model import TIME_UNITS
from collector.query.output import Reply
from collector.query.parser import Command
from collector.query.presentation import table_reply
from collector.query.registry import verb


@verb(
    "COUNT",
    usage="COUNT [filters] [by=hour|day|week|month|action|value|user|extra.KEY]",
    summary="number of events, grouped with by=",
    options=(*WINDOW_OPTIONS, "by", "limit"),
    example="COUNT action=signup by=day since=-7d",
)
async def count(ctx: Context, session: Session, command: Command) -> Reply:
    return await count_or_unique(ctx, command, distinct_users=False)


@verb(
    "UNIQUE",
    usage="UNIQUE [filters] [by=...]",
    summary="number of distinct users (DAU with by=day)",
    options=(*WINDOW_OPTIONS, "by", "limit"),
    example="UNIQUE on=yesterday",
)
async def unique(ctx: Context, session: Session, command: Command) -> Reply:
    return await count_or_unique(ctx, command, distinct_users=True)


async def count_or_unique(ctx: Context, command: Command, distinct_users: bool) -> Reply:
    span = window(ctx, command)
    group = command.options.get("by")
    limit = ctx.max_rows
    if group not in TIME_UNITS:
        limit = positive_int(command, "limit", ctx.max_rows, ctx.max_rows)
    measure = api.unique if distinct_users else api.count
    result = await measure(ctx.backend, filters=command.filters, window=span, by=group, limit=limit)
    if group in TIME_UNITS:
        rows = [(timeexpr.bucket_label(start, group, span.zone), n) for start, n in result.rows]
        return table_reply(result.columns, rows, result)
    return table_reply(result.columns, result.rows, result)


@verb(
    "TOP",
    usage="TOP FIELD [n=10] [filters]",
    summary="most frequent values of action, value, user or extra.KEY, with events and users",
    options=(*WINDOW_OPTIONS, "n"),
    example="TOP action n=5 since=-7d",
)
async def top(ctx: Context, session: Session, command: Command) -> Reply:
    if len(command.args) != 1:
        raise QueryError(
            "ARG", "usage: TOP FIELD [n=10] [filters]; FIELD is action, value, user or extra.KEY"
        )
    span = window(ctx, command)
    n = positive_int(command, "n", 10, ctx.max_rows)
    result = await api.top(ctx.backend, command.args[0], filters=command.filters, window=span, n=n)
    return table_reply(result.columns, result.rows, result)
