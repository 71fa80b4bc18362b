"""The functions Data Pipeline expressions can call, with the Java and Joda-Time behaviour behind them.

AWS Data Pipeline runs on Java and Joda-Time; its Developer Guide ("Date and Time Functions")
lists the functions in :data:`FUNCTIONS` and points at Joda's ``DateTimeFormat`` for the
patterns ``format()`` takes. :func:`format_pattern` reproduces how Joda *prints* a UTC
``DateTime`` (English locale): the tokenizer is a port of ``DateTimeFormat.parseToken``, so
quoting, ``''`` and runs of letters behave the same, and a letter Joda does not know (``T``
unquoted, ``u``, ``F``...) is an error just as Joda's "Illegal pattern component" is.

Numbers follow Java too: integers are ``long`` (wrapping past 64 bits, ``/`` truncating),
``^`` is ``Math.pow``, and a double prints as ``Double.toString`` does (``0.5``, ``4.0``, ``1.0E10``).

Every datetime here is UTC; a naive ``datetime`` is taken to be UTC already.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias

from emulator.periods import Period, PeriodUnit

#: What an expression computes with; a datetime is always aware UTC.
Value: TypeAlias = str | int | float | datetime | Period

# English whatever the process locale (calendar.month_name follows it); the service prints en_US.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

#: The pattern letters Joda's ``DateTimeFormat`` accepts, with what each prints.
PATTERN_LETTERS: dict[str, str] = {
    "G": "era (AD)",
    "C": "century of era (20)",
    "Y": "year of era (2011); YY is the two-digit year",
    "x": "ISO week-based year (2011); xx is two digits",
    "w": "ISO week of the week-based year (21)",
    "e": "ISO day of week as a number, Monday = 1 (2)",
    "E": "day of week: E to EEE short (Tue), EEEE or more full (Tuesday)",
    "y": "year (2011); yy is the two-digit year (11)",
    "D": "day of year (144)",
    "M": "month: M or MM a number (5, 05), MMM short text (Sep), MMMM or more full text (September)",
    "d": "day of month (24)",
    "a": "half day (AM, PM)",
    "K": "hour of half day, 0-11",
    "h": "clock hour of half day, 1-12",
    "H": "hour of day, 0-23",
    "k": "clock hour of day, 1-24",
    "m": "minute of hour",
    "s": "second of minute",
    "S": "fraction of second, as many digits as letters (millisecond precision)",
    "z": "time zone name: z to zzz short (UTC), zzzz or more full (Coordinated Universal Time)",
    "Z": "offset: Z +0000, ZZ +00:00, ZZZ or more the zone id (UTC)",
}


class PatternError(ValueError):
    """A ``DateTimeFormat`` pattern Joda would reject."""


def format_pattern(dt: datetime, pattern: str) -> str:
    """Print ``dt`` (UTC) with a Joda ``DateTimeFormat`` pattern, e.g. ``'YYYY-MM-dd HH:mm:ss z'``.

    Letter runs are fields (``PATTERN_LETTERS``); anything else is literal text; ``'...'`` quotes
    letters and ``''`` is one quote. Numbers are zero-padded to the length of the run.

    Raises:
        PatternError: the pattern is empty or has a letter Joda does not know.
    """
    dt = _utc(dt)
    return "".join(_print_token(dt, token) for token in _tokens(pattern))


def check_pattern(pattern: str) -> None:
    """Raise :class:`PatternError` when Joda would reject ``pattern``; do nothing otherwise.

    Raises:
        PatternError: the pattern is empty or has a letter Joda does not know.
    """
    format_pattern(datetime(2000, 1, 1, tzinfo=UTC), pattern)


def _tokens(pattern: str) -> list[str]:
    """Split like Joda's ``parseToken``: a run of one letter, or ``'`` followed by literal text."""
    if not pattern:
        raise PatternError("invalid pattern: the pattern is empty")
    tokens = []
    i, length = 0, len(pattern)
    while i < length:
        c = pattern[i]
        if _is_letter(c):
            start = i
            while i + 1 < length and pattern[i + 1] == c:
                i += 1
            tokens.append(pattern[start : i + 1])
        else:
            buf = ["'"]
            in_literal = False
            while i < length:
                c = pattern[i]
                if c == "'":
                    if i + 1 < length and pattern[i + 1] == "'":
                        i += 1
                        buf.append(c)
                    else:
                        in_literal = not in_literal
                elif not in_literal and _is_letter(c):
                    i -= 1
                    break
                else:
                    buf.append(c)
                i += 1
            tokens.append("".join(buf))
        i += 1
    return tokens


def _is_letter(c: str) -> bool:
    return "A" <= c <= "Z" or "a" <= c <= "z"


def _print_token(dt: datetime, token: str) -> str:
    letter, count = token[0], len(token)
    if letter == "'":
        return token[1:]
    printer = _PRINTERS.get(letter)
    if printer is None:
        raise PatternError(f"illegal pattern component {token!r}: quote literal letters, e.g. 'T'")
    return printer(dt, count)


def _number(value: int, count: int) -> str:
    return f"{value:0{count}d}"


def _year(value: int, count: int) -> str:
    return _number(value % 100, 2) if count == 2 else _number(value, count)


def _text(short: str, full: str, count: int) -> str:
    return full if count >= 4 else short


def _fraction(dt: datetime, count: int) -> str:
    # Joda keeps milliseconds; digits past the third are always zero.
    return (f"{dt.microsecond // 1000:03d}" + "0" * count)[:count]


def _zone_offset(count: int) -> str:
    return "+0000" if count == 1 else "+00:00" if count == 2 else "UTC"


_PRINTERS: dict[str, Callable[[datetime, int], str]] = {
    "G": lambda dt, n: "AD",
    "C": lambda dt, n: _number(dt.year // 100, n),
    "Y": lambda dt, n: _year(dt.year, n),
    "y": lambda dt, n: _year(dt.year, n),
    "x": lambda dt, n: _year(dt.isocalendar()[0], n),
    "w": lambda dt, n: _number(dt.isocalendar()[1], n),
    "e": lambda dt, n: _number(dt.isoweekday(), n),
    "E": lambda dt, n: _text(_WEEKDAYS[dt.weekday()][:3], _WEEKDAYS[dt.weekday()], n),
    "D": lambda dt, n: _number(dt.timetuple().tm_yday, n),
    "M": lambda dt, n: _number(dt.month, n) if n <= 2 else _text(_MONTHS[dt.month - 1][:3], _MONTHS[dt.month - 1], n),
    "d": lambda dt, n: _number(dt.day, n),
    "a": lambda dt, n: "AM" if dt.hour < 12 else "PM",
    "K": lambda dt, n: _number(dt.hour % 12, n),
    "h": lambda dt, n: _number(dt.hour % 12 or 12, n),
    "H": lambda dt, n: _number(dt.hour, n),
    "k": lambda dt, n: _number(dt.hour or 24, n),
    "m": lambda dt, n: _number(dt.minute, n),
    "s": lambda dt, n: _number(dt.second, n),
    "S": _fraction,
    "z": lambda dt, n: _text("UTC", "Coordinated Universal Time", n),
    "Z": lambda dt, n: _zone_offset(n),
}


# --- DateTime arithmetic, named after the Joda methods the service calls -------------------


def make_datetime(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A UTC datetime from its fields.

    Raises:
        ValueError: a field is out of range (month 13, February 30, hour 24...).
    """
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def plus(dt: datetime, unit: PeriodUnit, amount: int) -> datetime:
    """``dt`` moved by ``amount`` units (back when negative), as Joda's ``plusDays`` and friends do.

    Months and years follow the calendar and clamp the day (January 31 plus one month is the
    last day of February).

    Raises:
        OverflowError: the result is outside years 1-9999.
    """
    return Period(1, unit).add_to(_utc(dt), amount)


def midnight(dt: datetime) -> datetime:
    """The start of ``dt``'s day."""
    return _utc(dt).replace(hour=0, minute=0, second=0, microsecond=0)


def first_of_month(dt: datetime) -> datetime:
    """``dt`` on day 1 of its month; the time of day is kept, as the Developer Guide's example shows."""
    return _utc(dt).replace(day=1)


def previous_sunday(dt: datetime) -> datetime:
    """``dt`` on the most recent Sunday (itself when it is a Sunday); the time of day is kept.

    Raises:
        OverflowError: the Sunday would fall before year 1.
    """
    return _utc(dt) - timedelta(days=dt.isoweekday() % 7)


def day_of_year(dt: datetime) -> int:
    """1 for January 1."""
    return _utc(dt).timetuple().tm_yday


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _utc_field(name: str) -> Callable[[datetime], int]:
    return lambda dt: int(getattr(_utc(dt), name))


def _shift(unit: PeriodUnit, sign: int) -> Callable[[datetime, int], datetime]:
    return lambda dt, amount: plus(dt, unit, sign * amount)


# --- Java numbers ----------------------------------------------------------------------------

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


def java_long(n: int) -> int:
    """``n`` as a Java ``long``: a value past 64 bits wraps around."""
    return n if LONG_MIN <= n <= LONG_MAX else (n - LONG_MIN) % 2**64 + LONG_MIN


def java_arithmetic(op: str, a: int | float, b: int | float) -> int | float:
    """``a op b`` for ``+ - * / ^`` as Java computes it: ``long`` when both are whole, else ``double``.

    Integer ``/`` truncates toward zero; ``^`` is ``Math.pow`` (always a double); a double
    overflow or division by zero gives an infinity or NaN instead of an exception.

    Raises:
        ZeroDivisionError: integer division by zero (Java's ``ArithmeticException``).
    """
    if op == "^":
        return _power(float(a), float(b))
    if isinstance(a, int) and isinstance(b, int):
        if op == "/":
            quotient = abs(a) // abs(b)
            return java_long(quotient if (a < 0) == (b < 0) else -quotient)
        return java_long(a + b if op == "+" else a - b if op == "-" else a * b)
    x, y = float(a), float(b)
    if op == "/":
        if y == 0:
            return math.nan if x == 0 or math.isnan(x) else math.copysign(math.inf, x) * math.copysign(1.0, y)
        return x / y
    return x + y if op == "+" else x - y if op == "-" else x * y


def _power(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except OverflowError:
        odd = y.is_integer() and y % 2 == 1
        return -math.inf if x < 0 and odd else math.inf
    except ValueError:
        return math.inf if x == 0 else math.nan


def java_double_text(x: float) -> str:
    """``Double.toString``: plain between 10^-3 and 10^7, otherwise ``d.dddE±n``; always a fraction digit."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    text = "".join(map(str, digits))
    assert isinstance(exponent, int)  # finite
    point = len(text) + exponent  # digits before the decimal point
    minus = "-" if sign else ""
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            return f"{minus}0.{'0' * -point}{text}"
        whole, fraction = text[:point].ljust(point, "0"), text[point:]
        return f"{minus}{whole}.{fraction or '0'}"
    return f"{minus}{text[0]}.{text[1:] or '0'}E{point - 1}"


# --- The catalog -----------------------------------------------------------------------------


class Kind(StrEnum):
    """The type of a value, spelled as the Developer Guide writes signatures."""

    STRING = "String"
    INTEGER = "int"
    DOUBLE = "double"
    DATETIME = "DateTime"
    PERIOD = "Period"


@dataclass(frozen=True)
class Function:
    """One documented function: its signature, meaning, and the Developer Guide's example.

    Examples use the guide's ``myDateTime`` (May 24, 2011, 17:10 UTC); ``result`` is what
    :func:`emulator.expressions.evaluate` prints for ``example``.
    """

    name: str
    params: tuple[tuple[str, Kind], ...]
    returns: Kind
    summary: str
    example: str
    result: str
    impl: Callable[..., Value]
    static_check: Callable[[Sequence[object]], None] | None = None  # argument checks without running

    @property
    def signature(self) -> str:
        """E.g. ``DateTime minusDays(DateTime myDateTime, int daysToSub)``."""
        return f"{self.returns} {self.name}({', '.join(f'{kind} {name}' for name, kind in self.params)})"


_SIGNATURE_RE = re.compile(r"(\w+) (\w+)\((.*)\)")


def _function(
    signature: str,
    summary: str,
    example_args: str,
    result: str,
    impl: Callable[..., Value],
    static_check: Callable[[Sequence[object]], None] | None = None,
) -> Function:
    """A :class:`Function` from its signature as the guide writes it, e.g. ``int day(DateTime myDateTime)``."""
    match = _SIGNATURE_RE.fullmatch(signature)
    assert match is not None, signature
    returns, name, params = match.groups()
    typed = tuple((param.split()[1], Kind(param.split()[0])) for param in params.split(", "))
    return Function(name, typed, Kind(returns), summary, f"#{{{name}({example_args})}}", result, impl, static_check)


def _check_format_arguments(args: Sequence[object]) -> None:
    if isinstance(args[1], str):
        check_pattern(args[1])


_ONE = "DateTime myDateTime"
_SHIFT_RESULTS = {  # the guide's results for plusX(myDateTime,1) / minusX(myDateTime,1)
    PeriodUnit.YEARS: ("2012-05-24T17:10:00", "2010-05-24T17:10:00"),
    PeriodUnit.MONTHS: ("2011-06-24T17:10:00", "2011-04-24T17:10:00"),
    PeriodUnit.WEEKS: ("2011-05-31T17:10:00", "2011-05-17T17:10:00"),
    PeriodUnit.DAYS: ("2011-05-25T17:10:00", "2011-05-23T17:10:00"),
    PeriodUnit.HOURS: ("2011-05-24T18:10:00", "2011-05-24T16:10:00"),
    PeriodUnit.MINUTES: ("2011-05-24T17:11:00", "2011-05-24T17:09:00"),
}
_CLAMPED = "; the day is clamped to the month's length"
_CATALOG = [
    _function(f"int day({_ONE})", "The day of the month.", "myDateTime", "24", _utc_field("day")),
    _function(f"int dayOfYear({_ONE})", "The day of the year.", "myDateTime", "144", day_of_year),
    _function(
        f"DateTime firstOfMonth({_ONE})",
        "Day 1 of the month, same time of day.",
        "myDateTime",
        "2011-05-01T17:10:00",
        first_of_month,
    ),
    _function(
        f"String format({_ONE}, String format)",
        "The DateTime printed with a Joda-Time DateTimeFormat pattern.",
        "myDateTime,'YYYY-MM-dd HH:mm:ss z'",
        "2011-05-24 17:10:00 UTC",
        format_pattern,
        _check_format_arguments,
    ),
    _function(f"int hour({_ONE})", "The hour of the day, 0-23.", "myDateTime", "17", _utc_field("hour")),
    _function(
        "DateTime makeDate(int year, int month, int day)",
        "Midnight UTC on the given date.",
        "2011,5,24",
        "2011-05-24T00:00:00",
        make_datetime,
    ),
    _function(
        "DateTime makeDateTime(int year, int month, int day, int hour, int minute)",
        "The given date and time, UTC.",
        "2011,5,24,14,21",
        "2011-05-24T14:21:00",
        make_datetime,
    ),
    _function(f"DateTime midnight({_ONE})", "The start of the day.", "myDateTime", "2011-05-24T00:00:00", midnight),
    _function(f"int minute({_ONE})", "The minute of the hour.", "myDateTime", "10", _utc_field("minute")),
    _function(f"int month({_ONE})", "The month, 1-12.", "myDateTime", "5", _utc_field("month")),
    _function(
        f"DateTime sunday({_ONE})",
        "The most recent Sunday (the day itself on a Sunday), same time of day.",
        "myDateTime",
        "2011-05-22T17:10:00",
        previous_sunday,
    ),
    _function(f"int year({_ONE})", "The year.", "myDateTime", "2011", _utc_field("year")),
    _function(
        f"DateTime yesterday({_ONE})",
        "The day before, same time of day: minusDays(myDateTime, 1).",
        "myDateTime",
        "2011-05-23T17:10:00",
        lambda dt: plus(dt, PeriodUnit.DAYS, -1),
    ),
]
for _unit, (_added, _subtracted) in _SHIFT_RESULTS.items():
    _word = _unit.value.capitalize()
    _note = _CLAMPED if _unit in (PeriodUnit.YEARS, PeriodUnit.MONTHS) else ""
    _CATALOG += [
        _function(
            f"DateTime plus{_word}({_ONE}, int {_unit.value}ToAdd)",
            f"Adds {_unit.value}{_note}.",
            "myDateTime,1",
            _added,
            _shift(_unit, 1),
        ),
        _function(
            f"DateTime minus{_word}({_ONE}, int {_unit.value}ToSub)",
            f"Subtracts {_unit.value}{_note}.",
            "myDateTime,1",
            _subtracted,
            _shift(_unit, -1),
        ),
    ]

#: Every function an expression may call, by name: exactly those on the guide's "Date and Time Functions" page.
FUNCTIONS: Mapping[str, Function] = MappingProxyType({f.name: f for f in sorted(_CATALOG, key=lambda f: f.name)})
