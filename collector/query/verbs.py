"""One handler per verb: Command -> Reply. Shared time window and filter handling."""

from __future__ import annotations

import datetime
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector import __version__
from collector.query import compiler, rollups, timeexpr
from collector.query.errors import QueryError
from collector.query.output import FORMATS, Reply, Table
from collector.query.parser import Command, Filter
from collector.query.reader import Reader, Rows
from collector.stats import Stats
from collector.storage.writer import CommitSignal

WINDOW_OPTIONS = ("since", "until", "on", "tz")
SQL_STARTS = ("SELECT", "WITH", "VALUES")


@dataclass
class Session:
    """Per-connection state."""

    format: str = "text"
    quit: bool = False
    # The token this connection authenticated with: a new token (a reload) logs it out.
    authenticated_with: str | None = None
    stream: Any = None  # the connection, for verbs that stream (streaming.Stream)


@dataclass
class Context:
    """What every verb may use."""

    reader: Reader
    stats: Stats
    db_path: Path
    default_tz: str
    max_rows: int
    token: str | None = None
    sql_enabled: bool = True
    commits: CommitSignal = field(default_factory=CommitSignal)


Handler = Callable[[Context, Session, Command], Awaitable[Reply]]


@dataclass(frozen=True)
class Window:
    since: int | None
    until: int | None
    zone: datetime.tzinfo


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def allow_options(command: Command, *names: str) -> None:
    unknown = sorted(set(command.options) - set(names) - {"format"})
    if unknown:
        allowed = ", ".join(names) or "none"
        raise QueryError("ARG", f"{command.verb} does not take {unknown[0]}= (options: {allowed})")


def window(ctx: Context, command: Command) -> Window:
    options = command.options
    zone = timeexpr.resolve_zone(options.get("tz") or ctx.default_tz)
    now = now_ms()
    if "on" in options:
        if "since" in options or "until" in options:
            raise QueryError("ARG", "on= cannot be combined with since= or until=")
        start, end = timeexpr.day_range(options["on"], now, zone)
        return Window(start, end, zone)
    since = timeexpr.parse_time(options["since"], now, zone) if "since" in options else None
    until = timeexpr.parse_time(options["until"], now, zone) if "until" in options else None
    return Window(since, until, zone)


def positive_int(command: Command, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    raw = command.options.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise QueryError("ARG", f"{name}= must be {kind}, got {raw!r}")
    if int(raw) > maximum:
        raise QueryError("LIMIT", f"{name}={raw} is more than the limit of {maximum}")
    return int(raw)


def rows_summary(count: int, truncated: bool, seconds: float) -> str:
    more = " (more rows not shown)" if truncated else ""
    return f"{count} rows {seconds * 1000:.1f}ms{more}"


def table_reply(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], result: Rows, truncated: bool = False
) -> Reply:
    """One table, summarised by its row count, its time and whether the row cap cut it."""
    summary = rows_summary(len(rows), truncated or result.truncated, result.seconds)
    return Reply(tables=[Table(columns, rows)], summary=summary)


async def ping(ctx: Context, session: Session, command: Command) -> Reply:
    return Reply(summary="PONG")


async def quit_(ctx: Context, session: Session, command: Command) -> Reply:
    session.quit = True
    return Reply(summary="bye")


async def set_format(ctx: Context, session: Session, command: Command) -> Reply:
    if len(command.args) != 1 or command.args[0].lower() not in FORMATS:
        raise QueryError("ARG", "usage: FORMAT text|json")
    session.format = command.args[0].lower()
    return Reply(summary=f"format {session.format}")


async def stats(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command)
    values: dict[str, Any] = {"version": __version__, **ctx.stats.snapshot()}
    query = compiler.Query("SELECT count(*), min(ts), max(ts) FROM events", (), ())
    result = await ctx.reader.fetch(query)
    count, oldest, newest = result.rows[0]
    zone = timeexpr.resolve_zone(ctx.default_tz)
    values["events_in_database"] = count
    values["oldest_event"] = None if oldest is None else timeexpr.format_ms(oldest, zone)
    values["newest_event"] = None if newest is None else timeexpr.format_ms(newest, zone)
    values["database_bytes"] = file_size(ctx.db_path)
    values["wal_bytes"] = file_size(ctx.db_path.with_name(ctx.db_path.name + "-wal"))
    table = Table(("name", "value"), [(name, value) for name, value in values.items()])
    return Reply(tables=[table], summary=f"{len(values)} values")


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


async def count(ctx: Context, session: Session, command: Command) -> Reply:
    return await count_or_unique(ctx, command, distinct_users=False)


async def unique(ctx: Context, session: Session, command: Command) -> Reply:
    return await count_or_unique(ctx, command, distinct_users=True)


async def count_or_unique(ctx: Context, command: Command, distinct_users: bool) -> Reply:
    allow_options(command, *WINDOW_OPTIONS, "by", "limit")
    span = window(ctx, command)
    group = command.options.get("by")
    if group in compiler.TIME_UNITS:
        return await bucket_counts(ctx, command, span, group, distinct_users)
    limit = positive_int(command, "limit", ctx.max_rows, ctx.max_rows)
    query = count_query(command.filters, span, distinct_users, group, limit)
    result = await ctx.reader.fetch(query)
    return table_reply(query.columns, result.rows, result)


def count_query(
    filters: Sequence[Filter], span: Window, distinct_users: bool, group: str | None, limit: int
) -> compiler.Query:
    """From the rollups when they hold the answer (event counts by action), else from events."""
    if not distinct_users and rollups.covers(filters):
        if group is None:
            return rollups.total_count_query(filters, span.since, span.until)
        if group == "action":
            return rollups.action_count_query(filters, span.since, span.until, limit)
    where = compiler.build_where(filters, span.since, span.until)
    return compiler.count_query(where, distinct_users, group, limit)


async def bucket_counts(
    ctx: Context, command: Command, span: Window, unit: str, distinct_users: bool
) -> Reply:
    end = span.until if span.until is not None else now_ms()
    start = span.since if span.since is not None else await first_event_time(ctx, command)
    if start is None or start >= end:
        return Reply(
            tables=[Table(("bucket", "users" if distinct_users else "events"))], summary="0 rows"
        )
    starts = timeexpr.bucket_starts(start, end, unit, span.zone)
    if not distinct_users and rollups.covers(command.filters):
        query = rollups.bucket_count_query(command.filters, starts, (start, end))
    else:
        query = compiler.bucket_query(command.filters, distinct_users, starts, (start, end))
    result = await ctx.reader.fetch(query, max_rows=compiler.MAX_BUCKETS)
    rows = [(timeexpr.bucket_label(bucket, unit, span.zone), n) for bucket, n in result.rows]
    return table_reply(query.columns, rows, result)


async def first_event_time(ctx: Context, command: Command) -> int | None:
    where = compiler.build_where(command.filters, None, None)
    query = compiler.Query(
        f"SELECT min(ts) FROM events WHERE {where.sql()}", tuple(where.params), ()
    )
    result = await ctx.reader.fetch(query)
    value = result.rows[0][0]
    return None if value is None else int(value)


async def top(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, *WINDOW_OPTIONS, "n")
    if len(command.args) != 1:
        raise QueryError(
            "ARG", "usage: TOP FIELD [n=10] [filters]; FIELD is action, value, user or extra.KEY"
        )
    group = command.args[0]
    span = window(ctx, command)
    where = compiler.build_where(command.filters, span.since, span.until)
    limit = positive_int(command, "n", 10, ctx.max_rows)
    query = compiler.top_query(where, group, limit)
    result = await ctx.reader.fetch(query)
    return table_reply(query.columns, result.rows, result)


async def events(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, *WINDOW_OPTIONS, "limit", "order")
    span = window(ctx, command)
    order = command.options.get("order", "desc").lower()
    if order not in ("asc", "desc"):
        raise QueryError("ARG", f"order= must be asc or desc, got {order!r}")
    where = compiler.build_where(command.filters, span.since, span.until)
    limit = positive_int(command, "limit", 100, ctx.max_rows)
    query = compiler.events_query(where, limit, descending=order == "desc")
    result = await ctx.reader.fetch(query)
    rows = [event_row(row, span.zone) for row in result.rows]
    return table_reply(query.columns, rows, result)


def event_row(row: tuple[Any, ...], zone: datetime.tzinfo) -> tuple[Any, ...]:
    """Times as ISO text; extra as a map, so JSON replies nest it (text shows its JSON)."""
    event_id, ts, received_at, user_id, action, value, extra = row
    return (
        event_id,
        timeexpr.format_ms(ts, zone),
        timeexpr.format_ms(received_at, zone),
        user_id,
        action,
        value,
        None if extra is None else json.loads(extra),
    )


async def quarantine(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, "limit", "tz")
    zone = timeexpr.resolve_zone(command.options.get("tz") or ctx.default_tz)
    limit = positive_int(command, "limit", 20, ctx.max_rows)
    query = compiler.quarantine_query(limit)
    result = await ctx.reader.fetch(query)
    rows = [(r[0], timeexpr.format_ms(r[1], zone), *r[2:]) for r in result.rows]
    return table_reply(query.columns, rows, result)


async def user(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, *WINDOW_OPTIONS, "limit")
    if len(command.args) != 1:
        raise QueryError("ARG", "usage: USER USER_ID [filters] [limit=100]")
    span = window(ctx, command)
    user_id = command.args[0]
    filters = (*command.filters, Filter("user", False, (user_id,)))
    where = compiler.build_where(filters, span.since, span.until)
    summary = await ctx.reader.fetch(compiler.user_summary_query(where))
    first, last, total, actions = summary.rows[0]
    if not total:
        raise QueryError("ARG", f"no events for user {user_id!r}")
    # The user's events all lie between first and last: the newest-first scan of the ts
    # index starts at the user's last event instead of at the newest event of all.
    where = compiler.build_where(filters, first, last + 1)
    head = Table(
        ("user", "first_seen", "last_seen", "events", "actions"),
        [(user_id, format_time(first, span), format_time(last, span), total, actions)],
    )
    limit = positive_int(command, "limit", 100, ctx.max_rows)
    query = compiler.events_query(where, limit, descending=True)
    result = await ctx.reader.fetch(query)
    timeline = Table(query.columns, [event_row(row, span.zone) for row in result.rows])
    return Reply(tables=[head, timeline], summary=f"{len(result.rows)} of {total} events")


def format_time(ms: int, span: Window) -> str:
    return timeexpr.format_ms(ms, span.zone)


async def users(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, *WINDOW_OPTIONS, "min", "limit")
    span = window(ctx, command)
    where = compiler.build_where(command.filters, span.since, span.until)
    minimum = positive_int(command, "min", 1, 2**62)
    limit = positive_int(command, "limit", ctx.max_rows, ctx.max_rows)
    query = compiler.users_query(where, minimum, limit)
    result = await ctx.reader.fetch(query)
    return table_reply(query.columns, result.rows, result, truncated=len(result.rows) == limit)


async def auth(ctx: Context, session: Session, command: Command) -> Reply:
    if ctx.token is None:
        return Reply(summary="no token is needed")
    if len(command.args) != 1:
        raise QueryError("ARG", "usage: AUTH TOKEN")
    if not hmac.compare_digest(command.args[0].encode(), ctx.token.encode()):
        raise QueryError("AUTH", "wrong token")
    session.authenticated_with = ctx.token
    return Reply(summary="authenticated")


def is_authenticated(ctx: Context, session: Session) -> bool:
    """No token configured, or this connection gave the current one (not one since
    replaced by a reload)."""
    return ctx.token is None or session.authenticated_with == ctx.token


async def sql(ctx: Context, session: Session, command: Command) -> Reply:
    if not ctx.sql_enabled:
        raise QueryError("UNKNOWN", "the SQL verb is switched off (query_sql_enabled)")
    statement = command.args[0].strip() if command.args else ""
    if not statement.split(None, 1) or statement.split(None, 1)[0].upper() not in SQL_STARTS:
        raise QueryError("ARG", "usage: SQL SELECT ... (read-only: SELECT, WITH or VALUES)")
    query = compiler.Query(statement, (), ())
    result = await ctx.reader.fetch(query, read_only_sql=True)
    return table_reply(result.columns, result.rows, result)
