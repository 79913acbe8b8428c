"""Time expressions, day ranges and calendar buckets: exact values in UTC, Berlin and New York."""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from collector.query import timeexpr
from collector.query.errors import QueryError
from collector.query.timeexpr import (
    bucket_label,
    bucket_starts,
    day_range,
    format_ms,
    parse_time,
    resolve_zone,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
HOUR = 3_600_000
DAY = 24 * HOUR


def utc_ms(text: str) -> int:
    """Epoch ms of a naive ISO text read as UTC, computed without the module under test."""
    moment = dt.datetime.fromisoformat(text)
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


NOW = utc_ms("2024-05-01T10:15:00")


def raises_error(error_class: str, call: object, *args: object) -> QueryError:
    assert callable(call)
    with pytest.raises(QueryError) as info:
        call(*args)
    assert info.value.error_class == error_class
    return info.value


# resolve_zone


@pytest.mark.parametrize("name", [None, "UTC"])
def test_resolve_zone_utc(name: str | None) -> None:
    assert resolve_zone(name) is dt.UTC


def test_resolve_zone_by_iana_name() -> None:
    zone = resolve_zone("Europe/Berlin")
    assert isinstance(zone, ZoneInfo)
    assert zone.key == "Europe/Berlin"


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "utc", "", "/etc/passwd", "../x"])
def test_resolve_zone_unknown(name: str) -> None:
    error = raises_error("ARG", resolve_zone, name)
    assert error.message == f"unknown time zone '{name}'"


# parse_time: keywords


@pytest.mark.parametrize("text", ["now", "NOW", " now "])
def test_now(text: str) -> None:
    assert parse_time(text, NOW, BERLIN) == NOW


@pytest.mark.parametrize(
    ("zone", "yesterday", "today", "tomorrow"),
    [
        (UTC, "2024-04-30T00:00", "2024-05-01T00:00", "2024-05-02T00:00"),
        (BERLIN, "2024-04-29T22:00", "2024-04-30T22:00", "2024-05-01T22:00"),
        (NEW_YORK, "2024-04-30T04:00", "2024-05-01T04:00", "2024-05-02T04:00"),
    ],
)
def test_day_keywords_start_at_local_midnight(
    zone: dt.tzinfo, yesterday: str, today: str, tomorrow: str
) -> None:
    assert parse_time("yesterday", NOW, zone) == utc_ms(yesterday)
    assert parse_time("today", NOW, zone) == utc_ms(today)
    assert parse_time("Today", NOW, zone) == utc_ms(today)
    assert parse_time("tomorrow", NOW, zone) == utc_ms(tomorrow)


def test_today_is_the_local_date_not_the_utc_date() -> None:
    late_evening_utc = utc_ms("2024-05-01T23:30")  # already 2 May in Berlin
    assert parse_time("today", late_evening_utc, BERLIN) == utc_ms("2024-05-01T22:00")
    assert parse_time("today", late_evening_utc, NEW_YORK) == utc_ms("2024-05-01T04:00")


def test_day_keywords_across_spring_forward() -> None:
    now = utc_ms("2024-03-31T12:00")  # Berlin switched to +02:00 at 01:00 UTC
    assert parse_time("yesterday", now, BERLIN) == utc_ms("2024-03-29T23:00")
    assert parse_time("today", now, BERLIN) == utc_ms("2024-03-30T23:00")
    assert parse_time("tomorrow", now, BERLIN) == utc_ms("2024-03-31T22:00")


# parse_time: relative


@pytest.mark.parametrize(
    ("text", "offset_ms"),
    [
        ("-30s", -30_000),
        ("-30m", -30 * 60_000),
        ("-90m", -90 * 60_000),
        ("-6h", -6 * HOUR),
        ("-7d", -7 * DAY),
        ("-2w", -14 * DAY),
        ("+30s", 30_000),
        ("+1d", DAY),
        ("-0s", 0),
        ("-365d", -365 * DAY),
    ],
)
def test_relative(text: str, offset_ms: int) -> None:
    assert parse_time(text, NOW, UTC) == NOW + offset_ms


def test_relative_days_are_exactly_24_hours_across_dst() -> None:
    now = utc_ms("2024-03-31T12:00")
    assert parse_time("-1d", now, BERLIN) == now - DAY
    assert parse_time("-1w", now, NEW_YORK) == now - 7 * DAY


# parse_time: ISO dates and times


@pytest.mark.parametrize(
    ("zone", "expected"),
    [(UTC, "2024-05-01T00:00"), (BERLIN, "2024-04-30T22:00"), (NEW_YORK, "2024-05-01T04:00")],
)
def test_iso_date_is_local_midnight(zone: dt.tzinfo, expected: str) -> None:
    assert parse_time("2024-05-01", NOW, zone) == utc_ms(expected)


def test_iso_date_in_winter() -> None:
    assert parse_time("2024-01-15", NOW, BERLIN) == utc_ms("2024-01-14T23:00")
    assert parse_time("2024-01-15", NOW, NEW_YORK) == utc_ms("2024-01-15T05:00")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:30", "2024-05-01T10:30"),
        ("2024-05-01 12:30", "2024-05-01T10:30"),
        ("2024-05-01T12:30:15", "2024-05-01T10:30:15"),
        ("2024-05-01T12:30:15.123", "2024-05-01T10:30:15.123"),
        ("2024-05-01T12:30:15.5", "2024-05-01T10:30:15.500"),
        ("2024-05-01T12:30:15.123999", "2024-05-01T10:30:15.123"),
        ("2024-05-01T12:30Z", "2024-05-01T12:30"),
        ("2024-05-01t12:30z", "2024-05-01T12:30"),
        ("2024-05-01T12:30:15.123Z", "2024-05-01T12:30:15.123"),
        ("2024-05-01T12:30+02:00", "2024-05-01T10:30"),
        ("2024-05-01T12:30-0530", "2024-05-01T18:00"),
        ("2024-05-01 12:30:15+00:00", "2024-05-01T12:30:15"),
        ("2024-05-01T00:30+05:30", "2024-04-30T19:00"),
    ],
)
def test_iso_datetime_in_berlin(text: str, expected: str) -> None:
    assert parse_time(text, NOW, BERLIN) == utc_ms(expected)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [(UTC, "2024-05-01T12:30"), (NEW_YORK, "2024-05-01T16:30"), (KOLKATA, "2024-05-01T07:00")],
)
def test_iso_datetime_without_offset_uses_the_zone(zone: dt.tzinfo, expected: str) -> None:
    assert parse_time("2024-05-01T12:30", NOW, zone) == utc_ms(expected)


def test_iso_datetime_in_dst_gap_and_overlap() -> None:
    # 02:30 does not exist on 2024-03-31 in Berlin: read with the offset before the change.
    assert parse_time("2024-03-31T02:30", NOW, BERLIN) == utc_ms("2024-03-31T01:30")
    # 02:30 happens twice on 2024-10-27: the first one (+02:00) is meant.
    assert parse_time("2024-10-27T02:30", NOW, BERLIN) == utc_ms("2024-10-27T00:30")


# parse_time: epoch seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714567890", 1_714_567_890_000),
        ("1714567890.5", 1_714_567_890_500),
        ("1714567890.123456", 1_714_567_890_123),
        ("0", 0),
        ("86400", DAY),
        ("99999999999", 99_999_999_999_000),
    ],
)
def test_epoch_seconds(text: str, expected: int) -> None:
    assert parse_time(text, NOW, BERLIN) == expected


# parse_time: errors


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "-7x",
        "7d",
        "-7",
        "- 7d",
        "-7D",
        "-1.5h",
        "yesterdayy",
        "nowx",
        "1e9",
        "-1",
        "1714567890.",
        ".5",
        "0x10",
        "2024-13-01",
        "2024-02-30",
        "2024-5-1",
        "2024-05-01T24:00",
        "2024-05-01T12:60",
        "2024-05-01T12:30:60",
        "2024-05-01T12",
        "2024-05-01T12:30.5",
        "2024-05-01T12:30+2:00",
        "2024-05-01T12:30+02:60",
        "2024-05-01T12:30+24:00",
        "2024-05-01Z",
        "0000-01-01",
        "10000-01-01",
    ],
)
def test_unreadable_time(text: str) -> None:
    error = raises_error("ARG", parse_time, text, NOW, BERLIN)
    assert error.message.startswith(f"cannot read time '{text}': ")


def test_unreadable_time_message_lists_the_forms() -> None:
    error = raises_error("ARG", parse_time, "soon", NOW, UTC)
    expected = "expected now, today, yesterday, -7d, an ISO date or epoch seconds"
    assert error.message == f"cannot read time 'soon': {expected}"


@pytest.mark.parametrize("text", ["123456789012", "1714567890123", "9" * 40, "1714567890123.5"])
def test_numbers_too_long_for_epoch_seconds(text: str) -> None:
    error = raises_error("ARG", parse_time, text, NOW, UTC)
    assert "at most 11 digits" in error.message


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("1969-12-31", UTC),
        ("1970-01-01", BERLIN),  # 1969-12-31T23:00Z
        ("1969-12-31T23:59:59.999Z", NEW_YORK),
        ("-99999d", UTC),
        ("+999999999999w", UTC),
        ("9999-12-31T23:00-05:00", UTC),
    ],
)
def test_outside_1970_to_9999(text: str, zone: dt.tzinfo) -> None:
    error = raises_error("ARG", parse_time, text, NOW, zone)
    assert "outside the years 1970 to 9999" in error.message


def test_edges_of_the_range_are_accepted() -> None:
    assert parse_time("1970-01-01", NOW, UTC) == 0
    assert parse_time("1970-01-01", NOW, NEW_YORK) == 5 * HOUR
    assert parse_time("9999-12-31T23:59:59.999Z", NOW, UTC) == timeexpr.MAX_MS


def test_tomorrow_after_9999_is_outside_the_range() -> None:
    last_day = utc_ms("9999-12-31T12:00")
    error = raises_error("ARG", parse_time, "tomorrow", last_day, UTC)
    assert "outside the years 1970 to 9999" in error.message


# day_range


@pytest.mark.parametrize(
    ("zone", "start"),
    [(UTC, "2024-05-01T00:00"), (BERLIN, "2024-04-30T22:00"), (NEW_YORK, "2024-05-01T04:00")],
)
def test_day_range_today(zone: dt.tzinfo, start: str) -> None:
    assert day_range("today", NOW, zone) == (utc_ms(start), utc_ms(start) + DAY)


@pytest.mark.parametrize(
    ("day", "zone", "hours"),
    [
        ("2024-03-31", BERLIN, 23),
        ("2024-10-27", BERLIN, 25),
        ("2024-05-01", BERLIN, 24),
        ("2024-03-10", NEW_YORK, 23),
        ("2024-11-03", NEW_YORK, 25),
        ("2024-03-31", NEW_YORK, 24),
        ("2024-03-31", UTC, 24),
    ],
)
def test_day_range_length_follows_dst(day: str, zone: dt.tzinfo, hours: int) -> None:
    start, end = day_range(day, NOW, zone)
    assert end - start == hours * HOUR


def test_day_range_berlin_dst_days_exactly() -> None:
    assert day_range("2024-03-31", NOW, BERLIN) == (
        utc_ms("2024-03-30T23:00"),
        utc_ms("2024-03-31T22:00"),
    )
    assert day_range("2024-10-27", NOW, BERLIN) == (
        utc_ms("2024-10-26T22:00"),
        utc_ms("2024-10-27T23:00"),
    )


def test_day_range_of_a_time_is_the_local_day_containing_it() -> None:
    assert day_range("2024-05-01T23:30Z", NOW, BERLIN) == (
        utc_ms("2024-05-01T22:00"),
        utc_ms("2024-05-02T22:00"),
    )
    assert day_range("-1d", NOW, UTC) == (utc_ms("2024-04-30T00:00"), utc_ms("2024-05-01T00:00"))
    assert day_range("yesterday", NOW, NEW_YORK) == (
        utc_ms("2024-04-30T04:00"),
        utc_ms("2024-05-01T04:00"),
    )


def test_day_range_errors() -> None:
    raises_error("ARG", day_range, "2024-02-30", NOW, BERLIN)
    error = raises_error("ARG", day_range, "9999-12-31", NOW, NEW_YORK)
    assert "outside the years 1970 to 9999" in error.message


# bucket_starts


def test_hour_buckets_in_utc() -> None:
    starts = bucket_starts(utc_ms("2024-05-01T10:15"), utc_ms("2024-05-01T13:00"), "hour", UTC)
    assert starts == [utc_ms(f"2024-05-01T{hour}:00") for hour in (10, 11, 12)]


def test_bucket_boundaries_are_half_open() -> None:
    starts = bucket_starts(
        utc_ms("2024-05-01T10:00"), utc_ms("2024-05-01T12:00:00.001"), "hour", UTC
    )
    assert starts == [
        utc_ms("2024-05-01T10:00"),
        utc_ms("2024-05-01T11:00"),
        utc_ms("2024-05-01T12:00"),
    ]


@pytest.mark.parametrize(("start", "end"), [(NOW, NOW), (NOW, NOW - 1)])
def test_empty_range_has_no_buckets(start: int, end: int) -> None:
    assert bucket_starts(start, end, "day", BERLIN) == []


def test_hour_buckets_keep_both_hours_of_a_fall_back() -> None:
    start, end = utc_ms("2024-10-26T23:30"), utc_ms("2024-10-27T03:00")
    starts = bucket_starts(start, end, "hour", BERLIN)
    assert starts == [utc_ms("2024-10-26T23:00") + n * HOUR for n in range(4)]
    labels = [bucket_label(bucket, "hour", BERLIN) for bucket in starts]
    assert labels == [
        "2024-10-27T01:00+02:00",
        "2024-10-27T02:00+02:00",
        "2024-10-27T02:00+01:00",
        "2024-10-27T03:00+01:00",
    ]


def test_hour_buckets_skip_the_missing_hour_of_spring_forward() -> None:
    start, end = utc_ms("2024-03-31T00:00"), utc_ms("2024-03-31T02:00")
    labels = [
        bucket_label(bucket, "hour", BERLIN) for bucket in bucket_starts(start, end, "hour", BERLIN)
    ]
    assert labels == ["2024-03-31T01:00+01:00", "2024-03-31T03:00+02:00"]


def test_hour_buckets_follow_a_half_hour_offset() -> None:
    starts = bucket_starts(utc_ms("2024-05-01T07:00"), utc_ms("2024-05-01T09:00"), "hour", KOLKATA)
    assert starts == [
        utc_ms("2024-05-01T06:30"),
        utc_ms("2024-05-01T07:30"),
        utc_ms("2024-05-01T08:30"),
    ]
    assert bucket_label(starts[0], "hour", KOLKATA) == "2024-05-01T12:00+05:30"


def test_day_buckets_in_berlin_across_spring_forward() -> None:
    start, end = utc_ms("2024-03-30T12:00"), utc_ms("2024-04-01T12:00")
    assert bucket_starts(start, end, "day", BERLIN) == [
        utc_ms("2024-03-29T23:00"),
        utc_ms("2024-03-30T23:00"),
        utc_ms("2024-03-31T22:00"),
    ]


def test_day_buckets_in_new_york() -> None:
    start, end = utc_ms("2024-05-01T02:00"), utc_ms("2024-05-02T05:00")
    starts = bucket_starts(start, end, "day", NEW_YORK)
    assert starts == [
        utc_ms("2024-04-30T04:00"),
        utc_ms("2024-05-01T04:00"),
        utc_ms("2024-05-02T04:00"),
    ]
    assert [bucket_label(bucket, "day", NEW_YORK) for bucket in starts] == [
        "2024-04-30",
        "2024-05-01",
        "2024-05-02",
    ]


def test_week_buckets_start_on_monday() -> None:
    start, end = utc_ms("2024-05-01T10:00"), utc_ms("2024-05-15T00:00")  # a Wednesday
    starts = bucket_starts(start, end, "week", BERLIN)
    assert starts == [
        utc_ms("2024-04-28T22:00"),
        utc_ms("2024-05-05T22:00"),
        utc_ms("2024-05-12T22:00"),
    ]
    assert [bucket_label(bucket, "week", BERLIN) for bucket in starts] == [
        "2024-W18",
        "2024-W19",
        "2024-W20",
    ]


def test_week_buckets_across_a_year_end_use_iso_weeks() -> None:
    start, end = utc_ms("2024-12-25T00:00"), utc_ms("2025-01-08T00:00")
    starts = bucket_starts(start, end, "week", UTC)
    assert starts == [
        utc_ms("2024-12-23T00:00"),
        utc_ms("2024-12-30T00:00"),
        utc_ms("2025-01-06T00:00"),
    ]
    assert [bucket_label(bucket, "week", UTC) for bucket in starts] == [
        "2024-W52",
        "2025-W01",
        "2025-W02",
    ]


def test_month_buckets_across_a_year_end() -> None:
    start, end = utc_ms("2023-11-15T00:00"), utc_ms("2024-02-10T00:00")
    starts = bucket_starts(start, end, "month", NEW_YORK)
    assert starts == [
        utc_ms("2023-11-01T04:00"),  # still EDT on 1 November
        utc_ms("2023-12-01T05:00"),
        utc_ms("2024-01-01T05:00"),
        utc_ms("2024-02-01T05:00"),
    ]
    assert [bucket_label(bucket, "month", NEW_YORK) for bucket in starts] == [
        "2023-11",
        "2023-12",
        "2024-01",
        "2024-02",
    ]


def test_day_buckets_skip_a_day_the_zone_never_had() -> None:
    samoa = ZoneInfo("Pacific/Apia")  # went from 29 to 31 December 2011
    start, end = utc_ms("2011-12-29T12:00"), utc_ms("2011-12-31T12:00")
    labels = [
        bucket_label(bucket, "day", samoa) for bucket in bucket_starts(start, end, "day", samoa)
    ]
    assert labels == ["2011-12-29", "2011-12-31", "2012-01-01"]


@pytest.mark.parametrize("unit", timeexpr.BUCKET_UNITS)
@pytest.mark.parametrize("zone", [UTC, BERLIN, NEW_YORK, KOLKATA, ZoneInfo("Australia/Lord_Howe")])
def test_buckets_cover_the_range_in_order(unit: str, zone: dt.tzinfo) -> None:
    start, end = utc_ms("2023-12-20T07:45"), utc_ms("2025-01-10T00:00")
    starts = bucket_starts(start, end, unit, zone)
    assert starts[0] <= start < starts[1]
    assert starts[-1] < end
    assert all(earlier < later for earlier, later in itertools.pairwise(starts))


def test_range_end_is_clamped_to_9999() -> None:
    starts = bucket_starts(timeexpr.MAX_MS - 1000, timeexpr.MAX_MS + 10 * DAY, "month", UTC)
    assert starts == [utc_ms("9999-12-01T00:00")]


def test_unknown_unit() -> None:
    raises_error("ARG", bucket_starts, 0, DAY, "minute", UTC)
    raises_error("ARG", bucket_label, 0, "year", UTC)


def test_exactly_the_bucket_limit_is_allowed() -> None:
    starts = bucket_starts(0, timeexpr.MAX_BUCKETS * HOUR, "hour", UTC)
    assert len(starts) == timeexpr.MAX_BUCKETS


def test_one_bucket_over_the_limit() -> None:
    raises_error("LIMIT", bucket_starts, 0, timeexpr.MAX_BUCKETS * HOUR + 1, "hour", UTC)


@pytest.mark.parametrize("unit", ["hour", "day", "week"])  # 1970..9999 is fewer than 100 000 months
def test_huge_range_over_the_limit(unit: str) -> None:
    error = raises_error("LIMIT", bucket_starts, 0, timeexpr.MAX_MS, unit, BERLIN)
    assert error.message.startswith(f"more than 100000 {unit} buckets")


# bucket_label and format_ms


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (UTC, "2024-05-01T10:00Z"),
        (BERLIN, "2024-05-01T12:00+02:00"),
        (NEW_YORK, "2024-05-01T06:00-04:00"),
        (KOLKATA, "2024-05-01T15:30+05:30"),
    ],
)
def test_hour_label(zone: dt.tzinfo, expected: str) -> None:
    assert bucket_label(utc_ms("2024-05-01T10:00"), "hour", zone) == expected


def test_day_week_month_labels_use_the_local_calendar() -> None:
    berlin_may_first = utc_ms("2024-04-30T22:00")
    assert bucket_label(berlin_may_first, "day", BERLIN) == "2024-05-01"
    assert bucket_label(berlin_may_first, "day", UTC) == "2024-04-30"
    assert bucket_label(berlin_may_first, "week", BERLIN) == "2024-W18"
    assert bucket_label(berlin_may_first, "month", BERLIN) == "2024-05"
    assert bucket_label(berlin_may_first, "month", UTC) == "2024-04"


@pytest.mark.parametrize(
    ("ms", "zone", "expected"),
    [
        (NOW, UTC, "2024-05-01T10:15:00.000Z"),
        (utc_ms("2024-05-01T12:30:15.123"), UTC, "2024-05-01T12:30:15.123Z"),
        (NOW + 7, BERLIN, "2024-05-01T12:15:00.007+02:00"),
        (NOW, NEW_YORK, "2024-05-01T06:15:00.000-04:00"),
        (utc_ms("2024-01-15T12:00"), BERLIN, "2024-01-15T13:00:00.000+01:00"),
        (0, UTC, "1970-01-01T00:00:00.000Z"),
        (timeexpr.MAX_MS, UTC, "9999-12-31T23:59:59.999Z"),
        (utc_ms("2024-01-15T12:00"), ZoneInfo("Europe/London"), "2024-01-15T12:00:00.000Z"),
        (
            utc_ms("1971-06-01T12:00"),
            ZoneInfo("Africa/Monrovia"),
            "1971-06-01T11:15:30.000-00:44:30",
        ),
    ],
)
def test_format_ms(ms: int, zone: dt.tzinfo, expected: str) -> None:
    assert format_ms(ms, zone) == expected


def test_format_ms_past_9999_in_local_time_falls_back_to_utc() -> None:
    assert format_ms(timeexpr.MAX_MS, ZoneInfo("Asia/Tokyo")) == "9999-12-31T23:59:59.999Z"
