"""Data Pipeline ``Period`` values (``"15 Minutes"``, ``"1 Day"``) and literal datetimes.

The service writes periods as ``"<count> <unit>"``; AWS samples spell the unit in any case,
singular or plural (``1 Day``, ``1 Days``, ``2 hours``). Datetimes are ``YYYY-MM-DDTHH:MM:SS``
in UTC with no offset.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

#: The literal datetime format of ``startDateTime``, ``@scheduledStartTime`` and friends.
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

_PERIOD_RE = re.compile(r"\s*([0-9]+)\s+([A-Za-z]+)\s*", re.ASCII)
_DATETIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}", re.ASCII)
# A dozen digits spare ``int()`` from Python's digit-count limit on hostile input and still
# cover any duration ``format_seconds`` is realistically given.
_MAX_COUNT_DIGITS = 12


class PeriodUnit(StrEnum):
    """The unit of a :class:`Period`. ``seconds`` exists only for service-generated values."""

    SECONDS = "seconds"
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    WEEKS = "weeks"
    MONTHS = "months"
    YEARS = "years"


# Months and years are approximations (30 and 365 days): good enough for ordering and
# bounds checks. Calendar arithmetic goes through ``Period.add_to``.
_UNIT_SECONDS: dict[PeriodUnit, int] = {
    PeriodUnit.SECONDS: 1,
    PeriodUnit.MINUTES: 60,
    PeriodUnit.HOURS: 3600,
    PeriodUnit.DAYS: 86400,
    PeriodUnit.WEEKS: 7 * 86400,
    PeriodUnit.MONTHS: 30 * 86400,
    PeriodUnit.YEARS: 365 * 86400,
}

_UNITS_BY_SPELLING: dict[str, PeriodUnit] = {
    **{unit.value: unit for unit in PeriodUnit},
    **{unit.value[:-1]: unit for unit in PeriodUnit},
}

# The units ``format_seconds`` may emit, largest first (weeks and longer are left out so a
# scaled value reads naturally, e.g. "14 days" rather than "2 weeks").
_FORMAT_UNITS = (PeriodUnit.DAYS, PeriodUnit.HOURS, PeriodUnit.MINUTES, PeriodUnit.SECONDS)


@dataclass(frozen=True)
class Period:
    """A positive duration as written in a pipeline definition, e.g. ``Period(15, PeriodUnit.MINUTES)``."""

    count: int
    unit: PeriodUnit

    def seconds(self) -> float:
        """Length in seconds; a month counts as 30 days and a year as 365 days (approximations)."""
        return float(self.count * _UNIT_SECONDS[self.unit])

    def scaled_seconds(self, time_scale: float) -> float:
        """Length in seconds on a clock that runs ``time_scale`` times faster than real time.

        Raises:
            ValueError: ``time_scale`` is not a positive finite number.
        """
        if not math.isfinite(time_scale) or time_scale <= 0:
            raise ValueError(f"time_scale must be a positive finite number, got {time_scale!r}")
        return self.seconds() / time_scale

    def add_to(self, dt: datetime, times: int = 1) -> datetime:
        """Return ``dt`` moved forward by ``times`` periods (backward when ``times`` is negative).

        Months and years follow the calendar: the day is clamped to the target month's length,
        so 2024-01-31 plus one month is 2024-02-29.

        Raises:
            OverflowError: the result is outside the range ``datetime`` supports.
        """
        if self.unit in (PeriodUnit.MONTHS, PeriodUnit.YEARS):
            months = self.count * times * (12 if self.unit is PeriodUnit.YEARS else 1)
            year, month0 = divmod(dt.year * 12 + (dt.month - 1) + months, 12)
            if not 1 <= year <= 9999:
                raise OverflowError(f"date value out of range: year {year}")
            day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
            return dt.replace(year=year, month=month0 + 1, day=day)
        return dt + timedelta(seconds=self.count * times * _UNIT_SECONDS[self.unit])

    def __str__(self) -> str:
        return f"{self.count} {self.unit.value[:-1] if self.count == 1 else self.unit.value}"


def parse_period(text: str, *, allow_seconds: bool = False) -> Period:
    """Parse ``"<count> <unit>"``: case-insensitive, singular or plural, surrounding blanks allowed.

    Args:
        text: The field value, e.g. ``"15 Minutes"`` or ``"1 day"``.
        allow_seconds: Accept ``seconds``, which only the service itself produces (time-scaled
            ``reportProgressTimeout`` values); user definitions may not use it.

    Raises:
        ValueError: the text is not a positive whole count followed by a known unit.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid period {text!r}: expected a string such as '15 minutes'")
    match = _PERIOD_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid period {text!r}: expected '<positive whole number> <unit>', e.g. '15 minutes'")
    digits, spelling = match.groups()
    if len(digits.lstrip("0")) > _MAX_COUNT_DIGITS:
        raise ValueError(f"invalid period {text!r}: the count is too large")
    count = int(digits)
    if count <= 0:
        raise ValueError(f"invalid period {text!r}: the count must be positive")
    unit = _UNITS_BY_SPELLING.get(spelling.lower())
    if unit is None or (unit is PeriodUnit.SECONDS and not allow_seconds):
        allowed = [u.value for u in PeriodUnit if allow_seconds or u is not PeriodUnit.SECONDS]
        raise ValueError(f"invalid period {text!r}: unknown unit {spelling!r}; use one of {', '.join(allowed)}")
    return Period(count, unit)


def format_seconds(seconds: float) -> str:
    """Render a duration in Period spelling, using the largest of days/hours/minutes/seconds that divides it.

    The count is singular for 1 (``"1 hour"``) and plural otherwise (``"20 seconds"``,
    ``"2 minutes"``). Fractional seconds round up, so a scaled timeout never shrinks to zero.
    The result always parses back with ``parse_period(..., allow_seconds=True)``.

    Raises:
        ValueError: ``seconds`` is not a positive finite number.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be a positive finite number of seconds, got {seconds!r}")
    # Rounding first keeps float noise (3600 / 3 * 3) from pushing a whole value up by one.
    whole = max(1, math.ceil(round(seconds, 6)))
    for unit in _FORMAT_UNITS:
        size = _UNIT_SECONDS[unit]
        if whole % size == 0:
            return str(Period(whole // size, unit))
    raise AssertionError("unreachable: every whole number of seconds divides by 1")  # pragma: no cover


def parse_datetime(text: str) -> datetime:
    """Parse a literal ``YYYY-MM-DDTHH:MM:SS`` datetime (UTC, no offset) into an aware UTC datetime.

    Raises:
        ValueError: the text is not exactly in that format or is not a real date and time.
    """
    if not isinstance(text, str) or _DATETIME_RE.fullmatch(text) is None:
        raise ValueError(f"invalid datetime {text!r}: expected YYYY-MM-DDTHH:MM:SS")
    try:
        return datetime.strptime(text, DATETIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"invalid datetime {text!r}: {exc}") from exc


def format_datetime(dt: datetime) -> str:
    """Format ``dt`` as ``YYYY-MM-DDTHH:MM:SS`` in UTC; a naive ``dt`` is taken to be UTC already."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    # Not strftime: glibc drops the zero padding of years before 1000.
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"


def period_seconds(value: str | None) -> float | None:
    """A (possibly time-scaled) Period field value in seconds, or ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return parse_period(value, allow_seconds=True).seconds()
    except ValueError:
        return None
