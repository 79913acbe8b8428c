"""The values the query language works with, whatever store answers it. Pure."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

EVENT_COLUMNS = ("id", "ts", "received_at", "user_id", "action", "value", "extra")
TIME_UNITS = ("hour", "day", "week", "month")


@dataclass(frozen=True, slots=True)
class Filter:
    """`field=v1,v2` (any of the values) or `field!=...` (none of them); `*` is a wildcard."""

    field: str
    negated: bool
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Window:
    """[since, until) in epoch milliseconds (None: unbounded), and the zone whose calendar
    days and buckets follow."""

    since: int | None = None
    until: int | None = None
    zone: datetime.tzinfo = datetime.UTC


ALL_TIME = Window()


@dataclass(frozen=True, slots=True)
class Result:
    """Rows of an answer: its columns, the rows, whether the row cap cut it, and the time
    the store took."""

    rows: list[tuple[Any, ...]]
    truncated: bool = False
    seconds: float = 0.0
    columns: tuple[str, ...] = field(default=())
