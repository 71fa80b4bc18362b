"""Schedule intervals, cron vs timeseries run times, end conditions and the 1-day rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emulator.definition import EffectiveField
from emulator.schedules import Schedule, ScheduleType

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def schedule(**values: str) -> Schedule:
    return Schedule.from_fields("S", [EffectiveField(k, v, False) for k, v in values.items()])


def test_timeseries_runs_at_the_end_of_each_interval() -> None:
    s = schedule(period="1 hour", startDateTime="2026-01-01T00:00:00")
    due = s.due(T0, T0 + timedelta(hours=3), 0, ScheduleType.TIMESERIES)
    assert [(i, a.hour, b.hour) for i, a, b in due] == [(0, 0, 1), (1, 1, 2), (2, 2, 3)]


def test_cron_runs_at_the_start_of_each_interval() -> None:
    s = schedule(period="1 hour", startDateTime="2026-01-01T00:00:00")
    due = s.due(T0, T0 + timedelta(hours=3), 0, ScheduleType.CRON)
    assert [i for i, _, _ in due] == [0, 1, 2, 3]


def test_a_start_23_hours_ago_backfills_23_timeseries_intervals() -> None:
    now = T0 + timedelta(hours=23, seconds=1)
    s = schedule(period="1 hours", startDateTime="2026-01-01T00:00:00")
    assert len(s.due(now, now, 0, ScheduleType.TIMESERIES)) == 23
    assert not s.too_old(now)
    assert s.too_old(T0 + timedelta(hours=25))


def test_occurrences_and_end_date_stop_the_schedule() -> None:
    by_count = schedule(period="15 minutes", startDateTime="2026-01-01T00:00:00", occurrences="4")
    assert len(by_count.due(T0, T0 + timedelta(days=1), 0, ScheduleType.CRON)) == 4
    assert by_count.next_run_time(T0, 4, ScheduleType.CRON) is None
    by_end = schedule(period="1 day", startDateTime="2026-01-01T00:00:00", endDateTime="2026-01-03T00:00:00")
    assert len(by_end.due(T0, T0 + timedelta(days=30), 0, ScheduleType.TIMESERIES)) == 2


def test_first_activation_start_and_monthly_periods_follow_the_calendar() -> None:
    s = schedule(period="1 month", startAt="FIRST_ACTIVATION_DATE_TIME")
    activated = datetime(2024, 1, 31, tzinfo=UTC)
    assert s.interval(activated, 1) == (datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 31, tzinfo=UTC))
    assert s.next_run_time(activated, 0, ScheduleType.CRON) == activated


@pytest.mark.parametrize("value, expected", [(None, "timeseries"), ("CRON", "cron"), ("ONDEMAND", "ondemand")])
def test_schedule_type_is_case_insensitive(value: str | None, expected: str) -> None:
    assert ScheduleType.of(value) == expected


def test_index_at_finds_the_interval_containing_a_moment_and_clamps_to_the_schedule() -> None:
    hourly = schedule(period="1 hour", startDateTime="2026-01-01T00:00:00", occurrences="5")
    assert hourly.index_at(T0, T0 + timedelta(hours=2, minutes=30)) == 2
    assert hourly.index_at(T0, T0 + timedelta(hours=3)) == 3
    assert hourly.index_at(T0, T0 - timedelta(days=1)) == 0
    assert hourly.index_at(T0, T0 + timedelta(days=1)) == 4
    by_end = schedule(period="1 day", startDateTime="2026-01-01T00:00:00", endDateTime="2026-01-03T00:00:00")
    assert by_end.index_at(T0, T0 + timedelta(days=10)) == 1
    monthly = schedule(period="1 month", startDateTime="2024-01-31T00:00:00")
    start = datetime(2024, 1, 31, tzinfo=UTC)
    assert monthly.index_at(start, datetime(2025, 3, 30, tzinfo=UTC)) == 13
    assert monthly.index_at(start, datetime(2025, 3, 31, tzinfo=UTC)) == 14


def test_the_one_day_rule_measures_from_now_for_a_first_activation_start() -> None:
    s = schedule(period="1 hour", startAt="FIRST_ACTIVATION_DATE_TIME")
    assert not s.too_old(T0, T0 + timedelta(hours=23))
    assert s.too_old(T0, T0 + timedelta(hours=25))
