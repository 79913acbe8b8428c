"""The query port: one command per line, answered in order, each reply ending in a status line.

Framing and limits live here; what each verb does lives in verbs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from collector.ingest.core import sanitise
from collector.query import streaming, verbs
from collector.query.errors import QueryError
from collector.query.output import FORMATS, Reply, render
from collector.query.parser import Command, parse
from collector.query.verbs import Context, Handler, Session

log = structlog.get_logger("collector.query")


@dataclass(frozen=True)
class Verb:
    handler: Handler
    usage: str
    summary: str


VERBS: dict[str, Verb] = {
    "HELP": Verb(
        lambda ctx, session, command: help_verb(command),
        "HELP [VERB]",
        "list the verbs, or explain one",
    ),
    "PING": Verb(verbs.ping, "PING", "answers OK PONG"),
    "QUIT": Verb(verbs.quit_, "QUIT", "close the connection"),
    "FORMAT": Verb(verbs.set_format, "FORMAT text|json", "output format of this connection"),
    "STATS": Verb(verbs.stats, "STATS", "every counter of the daemon, database size, uptime"),
    "COUNT": Verb(
        verbs.count,
        "COUNT [filters] [by=hour|day|week|month|action|value|user|extra.KEY]",
        "number of events, grouped with by=",
    ),
    "UNIQUE": Verb(
        verbs.unique, "UNIQUE [filters] [by=...]", "number of distinct users (DAU with by=day)"
    ),
    "TOP": Verb(
        verbs.top,
        "TOP FIELD [n=10] [filters]",
        "most frequent values of action, value, user or extra.KEY, with events and users",
    ),
    "EVENTS": Verb(
        verbs.events, "EVENTS [filters] [limit=100] [order=asc|desc]", "raw events, newest first"
    ),
    "USER": Verb(
        verbs.user,
        "USER USER_ID [filters] [limit=100]",
        "one user's first and last seen, events, distinct actions, and timeline (newest first)",
    ),
    "USERS": Verb(
        verbs.users,
        "USERS [filters] [min=1]",
        "ids of the users with at least min matching events, most active first",
    ),
    "QUARANTINE": Verb(verbs.quarantine, "QUARANTINE [limit=20]", "latest rejected inputs"),
    "AUTH": Verb(verbs.auth, "AUTH TOKEN", "authenticate this connection"),
    "EXPORT": Verb(
        streaming.export,
        "EXPORT [filters] [format=jsonl|csv]",
        "every matching event, no row cap, in commit order",
    ),
    "TAIL": Verb(
        streaming.tail,
        "TAIL [n=10] [filters]",
        "the last n events, then new ones as committed, until you send any line",
    ),
    "SQL": Verb(
        verbs.sql,
        "SQL SELECT ...",
        "a read-only SQL query on the tables events and quarantine (time limit, row cap)",
    ),
}

IDLE = b"idle"
OPEN_VERBS = frozenset({"PING", "HELP", "QUIT", "AUTH"})

FILTER_HELP = [
    "filters: action=, user=, value=, extra.KEY= (dotted keys reach nested maps);",
    "  != negates, a,b,c means any of, * is a wildcard; since= until= on=DAY tz=Area/City",
    "times: now today yesterday -30m -6h -7d -2w 2024-05-01 2024-05-01T12:00Z 1714567890",
    "every command also takes format=text|json",
]


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 8192
    max_connections: int = 64
    idle_timeout: float = 600.0


class QueryServer:
    def __init__(self, context: Context, limits: Limits) -> None:
        self.context = context
        self.limits = limits
        self.max_line_bytes = limits.max_line_bytes
        self.connections: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if task is None or len(self.connections) >= self.limits.max_connections:
                busy = QueryError("BUSY", "too many query connections; try again later")
                writer.write((busy.status_line() + "\r\n").encode())
                await writer.drain()
                return
            self.connections.add(task)
            await self.serve_lines(reader, writer, Session(stream=streaming.Stream(reader, writer)))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The daemon is stopping. Ending quietly: asyncio reports a connection handler
            # that ends cancelled as an error ("Exception in callback ...").
            pass
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def serve_lines(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session
    ) -> None:
        while not session.quit:
            line = await self.read_line(reader)
            if line is None:
                return
            if line is IDLE:
                idle = QueryError("TIMEOUT", f"idle for {self.limits.idle_timeout:g}s; closing")
                writer.write((idle.status_line() + "\r\n").encode())
                return
            reply_lines = await self.answer(line, session)
            writer.write(("\r\n".join(reply_lines) + "\r\n").encode())
            await writer.drain()

    async def read_line(self, reader: asyncio.StreamReader) -> str | bytes | None:
        """The next line as text, bytes b"" for a line over the limit, IDLE after the idle
        timeout, None at EOF."""
        idle = self.limits.idle_timeout or None
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n"), idle)
        except TimeoutError:
            return IDLE
        except asyncio.IncompleteReadError as exc:
            raw = exc.partial
            if not raw:
                return None
        except asyncio.LimitOverrunError:
            await discard_line(reader)
            return b""
        if len(raw) > self.max_line_bytes:
            return b""
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")

    async def answer(self, line: str | bytes, session: Session) -> list[str]:
        if isinstance(line, bytes):  # b"": over the limit
            message = f"line longer than {self.max_line_bytes} bytes"
            return [QueryError("LIMIT", message).status_line()]
        fmt = session.format
        try:
            command = parse(line)
            if command is None:
                return [QueryError("SYNTAX", "empty line; try HELP").status_line()]
            fmt = command_format(command, session.format)
            reply = await self.dispatch(command, session)
        except QueryError as exc:
            return [exc.status_line()]
        except Exception as exc:
            log.exception("query failed", line=sanitise(line))
            return [QueryError("INTERNAL", f"{type(exc).__name__}").status_line()]
        return render(reply, fmt)

    async def dispatch(self, command: Command, session: Session) -> Reply:
        verb = VERBS.get(command.verb)
        if verb is None:
            raise QueryError("UNKNOWN", f"unknown verb {command.verb}; try HELP")
        if not verbs.is_authenticated(self.context, session) and command.verb not in OPEN_VERBS:
            raise QueryError("AUTH", "authenticate first: AUTH TOKEN")
        return await verb.handler(self.context, session, command)


def command_format(command: Command, default: str) -> str:
    if command.verb == "EXPORT":
        return default  # EXPORT's format= chooses jsonl or csv; its status line is plain
    fmt = command.options.get("format", default).lower()
    if fmt not in FORMATS:
        raise QueryError("ARG", f"format= must be text or json, got {fmt!r}")
    return fmt


async def help_verb(command: Command) -> Reply:
    if not command.args:
        lines = [line for verb in VERBS.values() for line in (verb.usage, f"    {verb.summary}")]
        return Reply(lines=[*lines, *FILTER_HELP], summary=f"{len(VERBS)} verbs")
    name = command.args[0].upper()
    verb = VERBS.get(name)
    if verb is None:
        raise QueryError("UNKNOWN", f"unknown verb {name}; try HELP")
    return Reply(lines=[verb.usage, f"  {verb.summary}", *FILTER_HELP], summary=name)


async def discard_line(reader: asyncio.StreamReader) -> None:
    """Skip the rest of an over-long line without buffering it."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
