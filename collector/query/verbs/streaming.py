"""Verbs that stream: EXPORT (every matching event) and TAIL (new events as committed).

Both read in short queries keyed on the event id, so no read transaction stays open while
a client is slow, and memory holds one chunk at a time.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from collector.query import api
from collector.query.context import WINDOW_OPTIONS, Context, Session, positive_int, window
from collector.query.errors import QueryError
from collector.query.model import EVENT_COLUMNS, Window
from collector.query.output import Reply, cell_text, stuff
from collector.query.parser import Command
from collector.query.presentation import event_row
from collector.query.registry import verb

EXPORT_FORMATS = ("jsonl", "json", "csv")


class Stream:
    """The connection of a streaming verb: send lines, notice a line from the client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, lines: Sequence[str]) -> None:
        if lines:
            self.writer.write(("\r\n".join(lines) + "\r\n").encode())
            await self.writer.drain()


def session_stream(session: Session) -> Stream:
    if not isinstance(session.stream, Stream):
        raise QueryError("INTERNAL", "this verb needs a connection")
    return session.stream


def export_lines(rows: list[tuple[Any, ...]], fmt: str, span: Window) -> list[str]:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow([csv_cell(value) for value in event_row(row, span.zone)])
        return [stuff(line) for line in buffer.getvalue().splitlines()]
    return [json.dumps(event_object(row, span), ensure_ascii=False) for row in rows]


def event_object(row: tuple[Any, ...], span: Window) -> dict[str, Any]:
    return dict(zip(EVENT_COLUMNS, event_row(row, span.zone), strict=True))


def csv_cell(value: Any) -> Any:
    """One record per line: a newline inside a value is written as the two characters \\n;
    extra is written as its JSON text."""
    if isinstance(value, dict):
        return cell_text(value)
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n")
    return value


@verb(
    "EXPORT",
    usage="EXPORT [filters] [format=jsonl|csv]",
    summary="every matching event, no row cap, in commit order",
    options=WINDOW_OPTIONS,
    example="EXPORT action=purchase since=-30d format=csv",
    own_format=True,
)
async def export(ctx: Context, session: Session, command: Command) -> Reply:
    fmt = command.options.get("format", "jsonl").lower()
    if fmt not in EXPORT_FORMATS:
        raise QueryError("ARG", "EXPORT format= must be jsonl or csv")
    span = window(ctx, command)
    stream = session_stream(session)
    if fmt == "csv":
        await stream.send([",".join(EVENT_COLUMNS)])
    sent = 0
    async for rows in api.export(ctx.backend, filters=command.filters, window=span):
        await stream.send(export_lines(rows, fmt, span))
        sent += len(rows)
    return Reply(summary=f"{sent} events exported")


@verb(
    "TAIL",
    usage="TAIL [n=10] [filters]",
    summary="the last n events, then new ones as committed, until you send any line",
    options=("n", "tz"),
    example="TAIL n=0 action=purchase",
)
async def tail(ctx: Context, session: Session, command: Command) -> Reply:
    """The last n events, then new ones as they are committed, until the client sends a line."""
    count = positive_int(command, "n", 10, ctx.max_rows, minimum=0)
    fmt = command.options.get("format", session.format).lower()
    span = window(ctx, command)
    stream = session_stream(session)
    # Listen before reading, so a commit in between still wakes the loop.
    signal = ctx.commits.listen()
    newest = await api.latest_events(ctx.backend, filters=command.filters, n=count)
    last_id = newest[-1][0] if newest else await api.max_event_id(ctx.backend)
    await stream.send([*tail_lines(newest, fmt, span), LIVE_LINES[fmt]])
    stop = asyncio.ensure_future(stream.reader.readline())
    sent, missed = len(newest), 0
    try:
        while not stop.done():
            waiter = asyncio.ensure_future(signal.wait())
            await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            signal.clear()
            new = await api.events_after(ctx.backend, filters=command.filters, after=last_id)
            last_id = new.last_id
            if new.skipped:
                missed += new.skipped
                await stream.send(missed_lines(new.skipped, fmt))
            await stream.send(tail_lines(new.rows, fmt, span))
            sent += len(new.rows)
    finally:
        ctx.commits.forget(signal)
        stop.cancel()
    return Reply(summary=f"{sent} events, {missed} missed")


def tail_lines(rows: list[tuple[Any, ...]], fmt: str, span: Window) -> list[str]:
    if fmt == "json":
        return [json.dumps(event_object(row, span), ensure_ascii=False) for row in rows]
    return [stuff(" ".join(cell_text(v) for v in event_row(row, span.zone))) for row in rows]


# Sent once the last n events are out: from here on, lines are events as they are
# committed. Lets a client (n=0 especially) know the TAIL is listening.
LIVE_LINES = {
    "json": json.dumps({"live": True}),
    "text": "# live: new events follow as they are committed; send any line to stop",
}


def missed_lines(count: int, fmt: str) -> list[str]:
    if fmt == "json":
        return [json.dumps({"missed": count})]
    return [f"# missed {count} events (the reader was too slow)"]
