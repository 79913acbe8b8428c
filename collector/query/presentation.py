"""How answers look on the query port: times as ISO text in the query's zone, extra as a
map, and the summary of a table."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from collector.query import timeexpr
from collector.query.model import Result
from collector.query.output import Reply, Table


def rows_summary(count: int, truncated: bool, seconds: float) -> str:
    more = " (more rows not shown)" if truncated else ""
    return f"{count} rows {seconds * 1000:.1f}ms{more}"


def table_reply(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], result: Result, truncated: bool = False
) -> Reply:
    """One table, summarised by its row count, its time and whether the row cap cut it."""
    summary = rows_summary(len(rows), truncated or result.truncated, result.seconds)
    return Reply(tables=[Table(columns, rows)], summary=summary)


def event_row(row: Sequence[Any], zone: datetime.tzinfo) -> tuple[Any, ...]:
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
