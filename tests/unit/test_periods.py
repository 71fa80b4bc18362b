"""Period and datetime parsing as pipeline definitions spell them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.periods import (
    Period,
    PeriodUnit,
    format_datetime,
    format_seconds,
    parse_datetime,
    parse_period,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 Day", Period(1, PeriodUnit.DAYS)),
        ("1 Days", Period(1, PeriodUnit.DAYS)),
        ("1 day", Period(1, PeriodUnit.DAYS)),
        ("1 days", Period(1, PeriodUnit.DAYS)),
        ("1 Hour", Period(1, PeriodUnit.HOURS)),
        ("2 Hours", Period(2, PeriodUnit.HOURS)),
        ("2 hours", Period(2, PeriodUnit.HOURS)),
        ("15 Minutes", Period(15, PeriodUnit.MINUTES)),
        ("20 Minutes", Period(20, PeriodUnit.MINUTES)),
        ("70 Minutes", Period(70, PeriodUnit.MINUTES)),
        ("1 week", Period(1, PeriodUnit.WEEKS)),
        ("1 month", Period(1, PeriodUnit.MONTHS)),
        ("3 years", Period(3, PeriodUnit.YEARS)),
        ("  5 MINUTE\t", Period(5, PeriodUnit.MINUTES)),
        ("007 days", Period(7, PeriodUnit.DAYS)),
    ],
)
def test_every_sample_spelling_parses(text: str, expected: Period) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0 minutes", "must be positive"),
        ("-5 minutes", "expected"),
        ("5 fortnights", "unknown unit 'fortnights'"),
        ("abc", "expected"),
        ("", "expected"),
        ("15", "expected"),
        ("minutes", "expected"),
        ("1.5 hours", "expected"),
        ("15minutes", "expected"),
        ("1 day 2 hours", "expected"),
        ("\u0661 day", "expected"),  # Arabic-Indic digit: int() would take it, the service would not
        ("1234567890123 days", "too large"),
        ("20 seconds", "unknown unit 'seconds'"),
    ],
)
def test_invalid_periods_are_rejected_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_period(text)


def test_seconds_are_only_accepted_when_asked_for() -> None:
    assert parse_period("20 seconds", allow_seconds=True) == Period(20, PeriodUnit.SECONDS)
    assert parse_period("1 Second", allow_seconds=True) == Period(1, PeriodUnit.SECONDS)


@pytest.mark.parametrize(
    ("period", "seconds"),
    [
        (Period(15, PeriodUnit.MINUTES), 900.0),
        (Period(2, PeriodUnit.HOURS), 7200.0),
        (Period(1, PeriodUnit.DAYS), 86400.0),
        (Period(1, PeriodUnit.WEEKS), 604800.0),
        (Period(1, PeriodUnit.MONTHS), 30 * 86400.0),
        (Period(3, PeriodUnit.YEARS), 3 * 365 * 86400.0),
    ],
)
def test_seconds_use_30_day_months_and_365_day_years(period: Period, seconds: float) -> None:
    assert period.seconds() == seconds


def test_scaled_seconds_divide_by_the_time_scale() -> None:
    assert Period(1, PeriodUnit.HOURS).scaled_seconds(60) == 60.0
    assert Period(15, PeriodUnit.MINUTES).scaled_seconds(0.5) == 1800.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="time_scale"):
            Period(1, PeriodUnit.HOURS).scaled_seconds(bad)


def test_add_to_moves_by_exact_durations_for_fixed_units() -> None:
    start = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert Period(15, PeriodUnit.MINUTES).add_to(start, 4) == start + timedelta(hours=1)
    assert Period(1, PeriodUnit.WEEKS).add_to(start) == datetime(2024, 3, 8, 12, 0, tzinfo=UTC)
    assert Period(1, PeriodUnit.DAYS).add_to(start, -1) == datetime(2024, 2, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "times", "start", "expected"),
    [
        (Period(1, PeriodUnit.MONTHS), 1, datetime(2024, 1, 31), datetime(2024, 2, 29)),
        (Period(1, PeriodUnit.MONTHS), 1, datetime(2023, 1, 31), datetime(2023, 2, 28)),
        (Period(1, PeriodUnit.MONTHS), 2, datetime(2024, 1, 31, 6, 30), datetime(2024, 3, 31, 6, 30)),
        (Period(1, PeriodUnit.MONTHS), 12, datetime(2024, 5, 15), datetime(2025, 5, 15)),
        (Period(3, PeriodUnit.MONTHS), -1, datetime(2024, 1, 31), datetime(2023, 10, 31)),
        (Period(1, PeriodUnit.YEARS), 1, datetime(2024, 2, 29), datetime(2025, 2, 28)),
        (Period(2, PeriodUnit.YEARS), 2, datetime(2024, 2, 29), datetime(2028, 2, 29)),
    ],
)
def test_add_to_follows_the_calendar_for_months_and_years(
    period: Period, times: int, start: datetime, expected: datetime
) -> None:
    assert period.add_to(start, times) == expected
    aware = start.replace(tzinfo=UTC)
    assert period.add_to(aware, times) == expected.replace(tzinfo=UTC)


def test_add_to_past_the_calendar_raises_overflow() -> None:
    with pytest.raises(OverflowError):
        Period(3, PeriodUnit.YEARS).add_to(datetime(9998, 1, 1))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (20.0, "20 seconds"),
        (1, "1 second"),
        (0.2, "1 second"),
        (3.6, "4 seconds"),
        (90, "90 seconds"),
        (120, "2 minutes"),
        (60, "1 minute"),
        (3600, "1 hour"),
        (5400, "90 minutes"),
        (7200.0, "2 hours"),
        (86400, "1 day"),
        (14 * 86400, "14 days"),
        (3600 / 3 * 3, "1 hour"),
    ],
)
def test_format_seconds_uses_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_format_seconds_rejects_non_positive_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        format_seconds(bad)


@given(st.floats(min_value=1e-3, max_value=1e9, allow_nan=False))
def test_formatted_seconds_parse_back_to_at_least_the_duration(seconds: float) -> None:
    period = parse_period(format_seconds(seconds), allow_seconds=True)
    assert period.seconds() >= round(seconds, 6)
    assert period.seconds() - seconds < 1


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from([u for u in PeriodUnit]))
def test_str_round_trips_through_parse(count: int, unit: PeriodUnit) -> None:
    period = Period(count, unit)
    assert parse_period(str(period), allow_seconds=True) == period


def test_parse_datetime_returns_aware_utc() -> None:
    assert parse_datetime("2013-08-26T00:00:00") == datetime(2013, 8, 26, tzinfo=UTC)
    assert parse_datetime("2024-02-29T23:59:59").tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2013-08-26",
        "2013-08-26 00:00:00",
        "2013-08-26T00:00",
        "2013-08-26T00:00:00Z",
        "2013-08-26T00:00:00+00:00",
        "2013-08-26T00:00:00.000",
        " 2013-08-26T00:00:00",
        "2013-02-30T00:00:00",
        "2013-13-01T00:00:00",
        "FIRST_ACTIVATION_DATE_TIME",
        "#{myStart}",
    ],
)
def test_parse_datetime_rejects_anything_but_the_literal_format(text: str) -> None:
    with pytest.raises(ValueError, match="invalid datetime"):
        parse_datetime(text)


def test_format_datetime_writes_utc_for_naive_and_aware_values() -> None:
    assert format_datetime(datetime(2013, 8, 26, 1, 2, 3)) == "2013-08-26T01:02:03"
    plus_two = timezone(timedelta(hours=2))
    assert format_datetime(datetime(2013, 8, 26, 1, 2, 3, tzinfo=plus_two)) == "2013-08-25T23:02:03"
    assert format_datetime(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00"


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_datetimes_round_trip_to_the_second(dt: datetime) -> None:
    assert parse_datetime(format_datetime(dt)) == dt.replace(microsecond=0, tzinfo=UTC)
