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
from dataclasses import dataclass
from typing import Any

from collector.query import compiler
from collector.query.errors import QueryError
from collector.query.output import Reply, cell_text, stuff
from collector.query.parser import Command
from collector.query.verbs import (
    WINDOW_OPTIONS,
    Context,
    Session,
    Window,
    allow_options,
    event_row,
    positive_int,
    window,
)
from collector.storage.writer import CommitSignal

CHUNK_ROWS = 1000
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


@dataclass
class Page:
    rows: list[tuple[Any, ...]]
    last_id: int


async def next_page(ctx: Context, command: Command, span: Window, after_id: int) -> Page:
    where = compiler.build_where(command.filters, span.since, span.until)
    where.clauses.append("id > ?")
    where.params.append(after_id)
    query = compiler.events_query(where, CHUNK_ROWS, descending=False, order_by="id")
    result = await ctx.reader.fetch(query, max_rows=CHUNK_ROWS)
    last = result.rows[-1][0] if result.rows else after_id
    return Page(list(result.rows), int(last))


def export_lines(rows: list[tuple[Any, ...]], fmt: str, span: Window) -> list[str]:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow([csv_cell(value) for value in event_row(row, span.zone)])
        return [stuff(line) for line in buffer.getvalue().splitlines()]
    return [json.dumps(event_object(row, span), ensure_ascii=False) for row in rows]


def event_object(row: tuple[Any, ...], span: Window) -> dict[str, Any]:
    return dict(zip(compiler.EVENT_COLUMNS, event_row(row, span.zone), strict=True))


def csv_cell(value: Any) -> Any:
    """One record per line: a newline inside a value is written as the two characters \\n;
    extra is written as its JSON text."""
    if isinstance(value, dict):
        return cell_text(value)
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n")
    return value


async def export(ctx: Context, session: Session, command: Command) -> Reply:
    allow_options(command, *WINDOW_OPTIONS)
    fmt = command.options.get("format", "jsonl").lower()
    if fmt not in EXPORT_FORMATS:
        raise QueryError("ARG", "EXPORT format= must be jsonl or csv")
    span = window(ctx, command)
    stream = session_stream(session)
    if fmt == "csv":
        await stream.send([",".join(compiler.EVENT_COLUMNS)])
    sent, after = 0, 0
    while True:
        page = await next_page(ctx, command, span, after)
        if not page.rows:
            return Reply(summary=f"{sent} events exported")
        await stream.send(export_lines(page.rows, fmt, span))
        sent += len(page.rows)
        after = page.last_id


def session_stream(session: Session) -> Stream:
    if not isinstance(session.stream, Stream):
        raise QueryError("INTERNAL", "this verb needs a connection")
    return session.stream


async def tail(ctx: Context, session: Session, command: Command) -> Reply:
    """The last n events, then new ones as they are committed, until the client sends a line."""
    allow_options(command, "n", "tz")
    count = positive_int(command, "n", 10, ctx.max_rows, minimum=0)
    fmt = command.options.get("format", session.format).lower()
    span = window(ctx, command)
    stream = session_stream(session)
    # Listen before reading, so a commit in between still wakes the loop.
    commits: CommitSignal = ctx.commits
    signal = commits.listen()
    newest = await latest_events(ctx, command, span, count)
    last_id = newest[-1][0] if newest else await max_event_id(ctx)
    await stream.send([*tail_lines(newest, fmt, span), LIVE_LINES[fmt]])
    stop = asyncio.ensure_future(stream.reader.readline())
    sent, missed = len(newest), 0
    try:
        while not stop.done():
            waiter = asyncio.ensure_future(signal.wait())
            await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            signal.clear()
            rows, skipped, last_id = await new_events(ctx, command, span, last_id)
            if skipped:
                missed += skipped
                await stream.send(missed_lines(skipped, fmt))
            await stream.send(tail_lines(rows, fmt, span))
            sent += len(rows)
    finally:
        commits.forget(signal)
        stop.cancel()
    return Reply(summary=f"{sent} events, {missed} missed")


async def latest_events(
    ctx: Context, command: Command, span: Window, count: int
) -> list[tuple[Any, ...]]:
    if count == 0:
        return []
    where = compiler.build_where(command.filters, None, None)
    query = compiler.events_query(where, count, descending=True, order_by="id")
    result = await ctx.reader.fetch(query, max_rows=count)
    return list(reversed(result.rows))


async def max_event_id(ctx: Context) -> int:
    result = await ctx.reader.fetch(
        compiler.Query("SELECT coalesce(max(id), 0) FROM events", (), ())
    )
    return int(result.rows[0][0])


async def new_events(
    ctx: Context, command: Command, span: Window, after_id: int
) -> tuple[list[tuple[Any, ...]], int, int]:
    """Rows after `after_id`; when more than a chunk arrived, only the newest chunk and how
    many were skipped (a slow reader misses events, ingestion never waits for it)."""
    page = await next_page(ctx, command, span, after_id)
    if len(page.rows) < CHUNK_ROWS:
        return page.rows, 0, page.last_id
    top_id = await max_event_id(ctx)
    where = compiler.build_where(command.filters, None, None)
    where.clauses.append("id > ? AND id <= ?")
    where.params += [after_id, top_id]
    counted = await ctx.reader.fetch(
        compiler.Query(f"SELECT count(*) FROM events WHERE {where.sql()}", tuple(where.params), ())
    )
    newest = await ctx.reader.fetch(compiler.events_query(where, CHUNK_ROWS, True, "id"))
    rows = list(reversed(newest.rows))
    return rows, int(counted.rows[0][0]) - len(rows), top_id


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
