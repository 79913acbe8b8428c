"""Verbs about the connection itself: HELP, PING, QUIT, FORMAT, AUTH."""

from __future__ import annotations

import hmac

from collector.query.context import Context, Session
from collector.query.errors import QueryError
from collector.query.output import FORMATS, Reply
from collector.query.parser import Command
from collector.query.registry import ANY_OPTIONS, VERBS, find, verb

FILTER_HELP = [
    "filters: action=, user=, value=, extra.KEY= (dotted keys reach nested maps);",
    "  != negates, a,b,c means any of, * is a wildcard; since= until= on=DAY tz=Area/City",
    "times: now today yesterday -30m -6h -7d -2w 2024-05-01 2024-05-01T12:00Z 1714567890",
    "every command also takes format=text|json",
]


@verb(
    "HELP",
    usage="HELP [VERB]",
    summary="list the verbs, or explain one",
    options=ANY_OPTIONS,
    example="HELP COUNT",
    open=True,
)
async def help_verb(ctx: Context, session: Session, command: Command) -> Reply:
    if not command.args:
        lines = [line for v in VERBS.values() for line in (v.usage, f"    {v.summary}")]
        return Reply(lines=[*lines, *FILTER_HELP], summary=f"{len(VERBS)} verbs")
    name = command.args[0].upper()
    found = find(name)
    example = [f"  example: {found.example}"] if found.example else []
    return Reply(lines=[found.usage, f"  {found.summary}", *example, *FILTER_HELP], summary=name)


@verb("PING", usage="PING", summary="answers OK PONG", options=ANY_OPTIONS, open=True)
async def ping(ctx: Context, session: Session, command: Command) -> Reply:
    return Reply(summary="PONG")


@verb("QUIT", usage="QUIT", summary="close the connection", options=ANY_OPTIONS, open=True)
async def quit_(ctx: Context, session: Session, command: Command) -> Reply:
    session.quit = True
    return Reply(summary="bye")


@verb(
    "FORMAT",
    usage="FORMAT text|json",
    summary="output format of this connection",
    options=ANY_OPTIONS,
    example="FORMAT json",
)
async def set_format(ctx: Context, session: Session, command: Command) -> Reply:
    if len(command.args) != 1 or command.args[0].lower() not in FORMATS:
        raise QueryError("ARG", "usage: FORMAT text|json")
    session.format = command.args[0].lower()
    return Reply(summary=f"format {session.format}")


@verb(
    "AUTH",
    usage="AUTH TOKEN",
    summary="authenticate this connection",
    options=ANY_OPTIONS,
    open=True,
)
async def auth(ctx: Context, session: Session, command: Command) -> Reply:
    if ctx.token is None:
        return Reply(summary="no token is needed")
    if len(command.args) != 1:
        raise QueryError("ARG", "usage: AUTH TOKEN")
    if not hmac.compare_digest(command.args[0].encode(), ctx.token.encode()):
        raise QueryError("AUTH", "wrong token")
    session.authenticated_with = ctx.token
    return Reply(summary="authenticated")
