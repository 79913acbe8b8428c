"""Time expressions of the query protocol and calendar buckets, as epoch milliseconds (UTC).

Pure: the caller passes the current time and the zone, so every result is reproducible.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

from collector.clock import HOUR_MS
from collector.query.errors import QueryError

MAX_BUCKETS = 100_000
BUCKET_UNITS = ("hour", "day", "week", "month")
MIN_MS = 0
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant an event may have

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)
_UNIT_MS = {"s": 1000, "m": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS, "w": 7 * 24 * HOUR_MS}
# No calendar bucket is longer than twice these, which bounds the bucket count from below.
_NOMINAL_BUCKET_MS = {"hour": HOUR_MS, "day": 24 * HOUR_MS, "week": 168 * HOUR_MS}
_NOMINAL_BUCKET_MS["month"] = 30 * _NOMINAL_BUCKET_MS["day"]
_DAY_KEYWORDS = {"yesterday": -1, "today": 0, "tomorrow": 1}
_EXPECTED = "expected now, today, yesterday, -7d, an ISO date or epoch seconds"

# Digits are bounded so int() never meets an absurdly long string.
_RELATIVE = re.compile(r"([+-])(\d{1,12})([smhdw])")
_EPOCH_SECONDS = re.compile(r"(\d{1,11})(?:\.(\d{1,30}))?")
_LONG_NUMBER = re.compile(r"\d{12,}(?:\.\d*)?")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_ISO_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)


def resolve_zone(name: str | None) -> dt.tzinfo:
    """The zone called `name` (an IANA name such as Europe/Berlin); UTC when None."""
    if name is None or name == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ValueError also covers paths (/etc/passwd, ../x) and non-zone files in the tz directory.
        raise QueryError("ARG", f"unknown time zone '{name}'") from exc


def parse_time(text: str, now_ms: int, zone: dt.tzinfo) -> int:
    """Epoch ms of a time expression; dates and times without an offset are read in `zone`."""
    try:
        ms = _read_time(text.strip(), now_ms, zone)
    except OverflowError as exc:
        raise QueryError("ARG", f"time '{text}' is outside the years 1970 to 9999") from exc
    except ValueError as exc:
        raise QueryError("ARG", f"cannot read time '{text}': {exc}") from exc
    if not MIN_MS <= ms <= MAX_MS:
        raise QueryError("ARG", f"time '{text}' is outside the years 1970 to 9999")
    return ms


def day_range(text: str, now_ms: int, zone: dt.tzinfo) -> tuple[int, int]:
    """[start, end) in epoch ms of the calendar day in `zone` that contains the time `text`."""
    try:
        day = _to_local(parse_time(text, now_ms, zone), zone).date()
        return _start_of_day(day, zone), _start_of_day(day + dt.timedelta(days=1), zone)
    except OverflowError as exc:
        raise QueryError("ARG", f"day '{text}' is outside the years 1970 to 9999") from exc


def bucket_starts(start_ms: int, end_ms: int, unit: str, zone: dt.tzinfo) -> list[int]:
    """Starts of the `unit` buckets of `zone`'s calendar overlapping [start_ms, end_ms)."""
    _check_unit(unit)
    end_ms = min(end_ms, MAX_MS + 1)
    if end_ms <= start_ms:
        return []
    if end_ms - start_ms > 2 * MAX_BUCKETS * _NOMINAL_BUCKET_MS[unit]:
        raise _too_many_buckets(unit)
    try:
        bucket = _bucket_containing(start_ms, unit, zone)
    except (OverflowError, ValueError) as exc:
        raise QueryError("ARG", f"time {start_ms} ms is outside the years 1970 to 9999") from exc
    starts: list[int] = []
    while bucket < end_ms:
        if len(starts) == MAX_BUCKETS:
            raise _too_many_buckets(unit)
        starts.append(bucket)
        bucket = _next_bucket(bucket, unit, zone)
    return starts


def bucket_label(start_ms: int, unit: str, zone: dt.tzinfo) -> str:
    """How a bucket is shown: 2024-05-01T13:00+02:00, 2024-05-01, 2024-W18 or 2024-05."""
    _check_unit(unit)
    local = _to_local(start_ms, zone)
    if unit == "hour":
        return local.replace(tzinfo=None).isoformat(timespec="minutes") + _offset_text(local)
    if unit == "day":
        return local.date().isoformat()
    if unit == "week":
        year, week, _ = local.date().isocalendar()
        return f"{year:04d}-W{week:02d}"
    return f"{local.year:04d}-{local.month:02d}"


def format_ms(ms: int, zone: dt.tzinfo) -> str:
    """ISO 8601 with milliseconds and offset: 2024-05-01T12:30:15.123Z."""
    try:
        local = _to_local(ms, zone)
    except OverflowError:
        # The last hours of 9999 in zones east of UTC fall in year 10000, which datetime lacks.
        local = _to_local(ms, dt.UTC)
    return local.replace(tzinfo=None).isoformat(timespec="milliseconds") + _offset_text(local)


def _read_time(text: str, now_ms: int, zone: dt.tzinfo) -> int:
    keyword = text.lower()
    if keyword == "now":
        return now_ms
    if keyword in _DAY_KEYWORDS:
        today = _to_local(now_ms, zone).date()
        return _start_of_day(today + dt.timedelta(days=_DAY_KEYWORDS[keyword]), zone)
    if match := _RELATIVE.fullmatch(text):
        sign = -1 if match[1] == "-" else 1
        return now_ms + sign * int(match[2]) * _UNIT_MS[match[3]]
    if match := _EPOCH_SECONDS.fullmatch(text):
        return int(match[1]) * 1000 + _fraction_ms(match[2])
    if _LONG_NUMBER.fullmatch(text):
        raise ValueError("epoch seconds have at most 11 digits (milliseconds are not accepted)")
    if match := _ISO_DATE.fullmatch(text):
        year, month, day = (int(part) for part in match.groups())
        return _start_of_day(dt.date(year, month, day), zone)
    if match := _ISO_DATETIME.fullmatch(text):
        return _iso_datetime_ms(match, zone)
    raise ValueError(_EXPECTED)


def _iso_datetime_ms(match: re.Match[str], zone: dt.tzinfo) -> int:
    year, month, day, hour, minute = (int(match[group]) for group in range(1, 6))
    second = int(match[6] or 0)
    tzinfo = zone if match[8] is None else _fixed_offset(match[8])
    # Without an offset, a time skipped by DST takes the offset before the change (PEP 495,
    # fold=0) and a repeated time means its first occurrence.
    local = dt.datetime(year, month, day, hour, minute, second, tzinfo=tzinfo)
    return _to_ms(local) + _fraction_ms(match[7])


def _fixed_offset(text: str) -> dt.tzinfo:
    if text.upper() == "Z":
        return dt.UTC
    hours, minutes = int(text[1:3]), int(text[-2:])
    if minutes > 59:
        raise ValueError(f"offset minutes must be in 0..59, got {text}")
    offset = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-offset if text[0] == "-" else offset)


def _fraction_ms(digits: str | None) -> int:
    # Finer than a millisecond is cut off, never rounded into the next millisecond.
    return int((digits or "")[:3].ljust(3, "0"))


def _to_ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def _to_local(ms: int, zone: dt.tzinfo) -> dt.datetime:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(zone)


def _start_of_day(day: dt.date, zone: dt.tzinfo) -> int:
    # Where DST skips midnight, fold=0 maps it to the end of the gap: the day's first instant.
    return _to_ms(dt.datetime.combine(day, dt.time(), tzinfo=zone))


def _bucket_containing(ms: int, unit: str, zone: dt.tzinfo) -> int:
    local = _to_local(ms, zone)
    if unit == "hour":
        if local.minute == local.second == local.microsecond == 0:
            return ms  # the usual case when stepping hour by hour, and a quick one
        return _to_ms(local.replace(minute=0, second=0, microsecond=0))
    day = local.date()
    if unit == "week":
        day -= dt.timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return _start_of_day(day, zone)


def _next_bucket(start_ms: int, unit: str, zone: dt.tzinfo) -> int:
    try:
        if unit == "hour":
            # Stepping real hours keeps both 02:00 of a DST fall-back; taking the local hour
            # start again keeps buckets on the hour after a half-hour offset change.
            one_hour_later = start_ms + HOUR_MS
            hour_start = _bucket_containing(one_hour_later, unit, zone)
            return hour_start if hour_start > start_ms else one_hour_later
        day = _to_local(start_ms, zone).date()
        if unit == "day":
            return _start_of_day(day + dt.timedelta(days=1), zone)
        if unit == "week":
            return _start_of_day(day + dt.timedelta(days=7), zone)
        year, month = divmod(day.year * 12 + day.month, 12)  # the month after, zero-based
        return _start_of_day(dt.date(year, month + 1, 1), zone)
    except (OverflowError, ValueError):
        return MAX_MS + 1  # no bucket starts after 9999


def _offset_text(local: dt.datetime) -> str:
    offset = local.utcoffset()
    if not offset:
        return "Z"
    sign = "-" if offset < dt.timedelta() else "+"
    minutes, seconds = divmod(int(abs(offset).total_seconds()), 60)
    text = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return f"{text}:{seconds:02d}" if seconds else text


def _check_unit(unit: str) -> None:
    if unit not in BUCKET_UNITS:
        raise QueryError("ARG", f"unknown time unit '{unit}': expected hour, day, week or month")


def _too_many_buckets(unit: str) -> QueryError:
    return QueryError(
        "LIMIT", f"more than {MAX_BUCKETS} {unit} buckets: use a larger unit or a shorter range"
    )
