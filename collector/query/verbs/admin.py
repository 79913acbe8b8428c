"""Verbs for operators and power users: STATS, QUARANTINE, SQL."""

from __future__ import annotations

from typing import Any

from collector import __version__
from collector.query import api, timeexpr
from collector.query.context import Context, Session, positive_int
from collector.query.errors import QueryError
from collector.query.output import Reply, Table
from collector.query.parser import Command
from collector.query.presentation import table_reply
from collector.query.registry import ANY_OPTIONS, verb

SQL_STARTS = ("SELECT", "WITH", "VALUES")


@verb("STATS", usage="STATS", summary="every counter of the daemon, database size, uptime")
async def stats(ctx: Context, session: Session, command: Command) -> Reply:
    values: dict[str, Any] = {"version": __version__, **ctx.stats.snapshot()}
    summary = await api.storage_summary(ctx.backend)
    zone = timeexpr.resolve_zone(ctx.settings.default_tz)
    for name in ("oldest_event", "newest_event"):
        if summary[name] is not None:
            summary[name] = timeexpr.format_ms(summary[name], zone)
    values.update(summary)
    table = Table(("name", "value"), [(name, value) for name, value in values.items()])
    return Reply(tables=[table], summary=f"{len(values)} values")


@verb(
    "QUARANTINE",
    usage="QUARANTINE [limit=20]",
    summary="latest rejected inputs",
    options=("limit", "tz"),
    example="QUARANTINE limit=5",
)
async def quarantine(ctx: Context, session: Session, command: Command) -> Reply:
    zone = timeexpr.resolve_zone(command.options.get("tz") or ctx.settings.default_tz)
    limit = positive_int(command, "limit", 20, ctx.max_rows)
    result = await api.quarantine(ctx.backend, limit=limit)
    rows = [(r[0], timeexpr.format_ms(r[1], zone), *r[2:]) for r in result.rows]
    return table_reply(result.columns, rows, result)


@verb(
    "SQL",
    usage="SQL SELECT ...",
    summary="a read-only SQL query on the tables events and quarantine (time limit, row cap)",
    options=ANY_OPTIONS,
    example="SQL SELECT action, count(*) FROM events GROUP BY action",
)
async def sql(ctx: Context, session: Session, command: Command) -> Reply:
    if not ctx.settings.sql_enabled:
        raise QueryError("UNKNOWN", "the SQL verb is switched off (query_sql_enabled)")
    statement = command.args[0].strip() if command.args else ""
    if not statement.split(None, 1) or statement.split(None, 1)[0].upper() not in SQL_STARTS:
        raise QueryError("ARG", "usage: SQL SELECT ... (read-only: SELECT, WITH or VALUES)")
    result = await api.sql(ctx.backend, statement)
    return table_reply(result.columns, result.rows, result)
