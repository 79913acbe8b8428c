"""The query port: one command per line, answered in order, each reply ending in a status line.

Framing and limits live here; each verb is declared with its handler in query/verbs/
(see query/registry.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from collector.query import registry
from collector.query.context import Context, Session
from collector.query.errors import QueryError
from collector.query.output import FORMATS, Reply, render
from collector.query.parser import Command, parse
from collector.query.verbs.streaming import Stream
from collector.settings import QueryServerSettings
from collector.text import sanitise

log = structlog.get_logger("collector.query")

IDLE = b"idle"


class QueryServer:
    def __init__(self, context: Context, settings: QueryServerSettings) -> None:
        self.context = context
        self.limits = settings  # replaced at reload, but for max_line_bytes
        self.max_line_bytes = settings.max_line_bytes
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
            await self.serve_lines(reader, writer, Session(stream=Stream(reader, writer)))
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
        verb = registry.find(command.verb)
        if not verb.open and not self.context.is_authenticated(session):
            raise QueryError("AUTH", "authenticate first: AUTH TOKEN")
        verb.check_options(command)
        return await verb.handler(self.context, session, command)


def command_format(command: Command, default: str) -> str:
    verb = registry.VERBS.get(command.verb)
    if verb is not None and verb.own_format:
        return default  # EXPORT's format= chooses jsonl or csv; its status line is plain
    fmt = command.options.get("format", default).lower()
    if fmt not in FORMATS:
        raise QueryError("ARG", f"format= must be text or json, got {fmt!r}")
    return fmt


async def discard_line(reader: asyncio.StreamReader) -> None:
    """Skip the rest of an over-long line without buffering it."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
