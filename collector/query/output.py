"""Replies on the query port: data lines in text or JSON, then exactly one status line.

A reply ends with a line that is `OK`, `OK <summary>` or `ERR <CLASS> <message>`. In text
format a data line that could be read as a status line (it starts with `OK`, `ERR` or `.`)
is sent with one extra `.` in front, as POP3 does; a client removes one leading `.` from
data lines. JSON data lines always start with `{`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("text", "json")


@dataclass
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]] = field(default_factory=list)


@dataclass
class Reply:
    """What a verb answers: tables, plain text lines, or nothing; and a short summary."""

    tables: list[Table] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    summary: str = ""


def stuff(line: str) -> str:
    if line.startswith(("OK", "ERR", ".")):
        return "." + line
    return line


def cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return " ".join(str(value).split()) if "\n" in str(value) else str(value)


def text_table(table: Table) -> list[str]:
    header = [str(c) for c in table.columns]
    cells = [[cell_text(v) for v in row] for row in table.rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    lines = []
    for row in [header, *cells]:
        padded = [value.ljust(width) for value, width in zip(row, widths, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return lines


def json_table(table: Table) -> list[str]:
    return [
        json.dumps(dict(zip(table.columns, row, strict=True)), ensure_ascii=False, default=str)
        for row in table.rows
    ]


def render(reply: Reply, fmt: str) -> list[str]:
    """Data lines and the final status line of a successful reply."""
    lines: list[str] = []
    for number, table in enumerate(reply.tables):
        if fmt == "json":
            lines += json_table(table)
        else:
            lines += [""] * (number > 0) + text_table(table)
    if fmt == "json":
        lines += [json.dumps({"text": line}, ensure_ascii=False) for line in reply.lines]
    else:
        lines += reply.lines
    if fmt == "text":
        lines = [stuff(line) for line in lines]
    lines.append(f"OK {reply.summary}".rstrip())
    return lines
