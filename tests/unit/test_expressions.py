"""``#{...}`` expressions: the Developer Guide's functions and examples, errors, and robustness."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.expressions import (
    FUNCTIONS,
    OPERATORS,
    ExpressionError,
    Scope,
    Value,
    check,
    evaluate,
    parameter_value,
)
from emulator.jodatime import PATTERN_LETTERS
from emulator.periods import Period, PeriodUnit

DOC = Path(__file__).resolve().parents[2] / "docs" / "expressions.md"
# The guide's examples use myDateTime = May 24, 2011 @ 5:10 pm GMT; fields arrive as strings.
MY_DATETIME = "2011-05-24T17:10:00"


def scope(**names: Value) -> Scope:
    return Scope.of({"myDateTime": MY_DATETIME, **{k.replace("__", "@"): v for k, v in names.items()}})


# --- The documented functions ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_gives_the_guides_result_for_its_example(name: str) -> None:
    # Given the guide's example for the function
    function = FUNCTIONS[name]
    # When it is evaluated with myDateTime as a field value
    # Then it prints the guide's result
    assert evaluate(function.example, scope()) == function.result


def test_the_catalog_is_exactly_the_date_and_time_page() -> None:
    assert set(FUNCTIONS) == {
        *("day", "dayOfYear", "firstOfMonth", "format", "hour", "makeDate", "makeDateTime", "midnight"),
        *("minute", "month", "sunday", "year", "yesterday"),
        *(f"{verb}{unit}" for verb in ("plus", "minus") for unit in ("Years", "Months", "Weeks", "Days", "Hours")),
        "plusMinutes",
        "minusMinutes",
    }


def test_functions_accept_aware_and_naive_datetimes_as_utc() -> None:
    aware = datetime(2011, 5, 24, 17, 10, tzinfo=UTC)
    naive = datetime(2011, 5, 24, 17, 10)
    assert evaluate("#{plusHours(d, 1)}", Scope.of({"d": aware})) == "2011-05-24T18:10:00"
    assert evaluate("#{plusHours(d, 1)}", Scope.of({"d": naive})) == "2011-05-24T18:10:00"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("#{plusMonths(makeDate(2024,1,31),1)}", "2024-02-29T00:00:00"),  # clamped, leap year
        ("#{plusMonths(makeDate(2023,1,31),1)}", "2023-02-28T00:00:00"),
        ("#{minusYears(makeDate(2024,2,29),1)}", "2023-02-28T00:00:00"),
        ("#{plusDays(makeDate(2011,12,31),1)}", "2012-01-01T00:00:00"),
        ("#{plusDays(myDateTime,-1)}", "2011-05-23T17:10:00"),  # negative amounts move back
        ("#{minusWeeks(myDateTime,-1)}", "2011-05-31T17:10:00"),
        ("#{sunday(makeDateTime(2011,5,22,9,30))}", "2011-05-22T09:30:00"),  # a Sunday is its own
        ("#{sunday(makeDate(2011,5,28))}", "2011-05-22T00:00:00"),
        ("#{midnight(makeDateTime(2011,5,25,17,10))}", "2011-05-25T00:00:00"),  # the guide's own input
        ("#{dayOfYear(makeDate(2012,12,31))}", "366"),
        ("#{yesterday(makeDate(2012,3,1))}", "2012-02-29T00:00:00"),
    ],
)
def test_calendar_arithmetic_follows_joda(expression: str, expected: str) -> None:
    assert evaluate(expression, scope()) == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("YYYY-MM-dd hh:mm:ss", "2011-05-24 05:10:00"),  # the Expressions page's example
        ("YYYY-MM-dd-HH-mm-ss", "2011-05-24-17-10-00"),  # the usual S3 path in AWS samples
        ("YYYY-ww", "2011-21"),
        ("yyyy yyy yy y", "2011 2011 11 2011"),
        ("M MM MMM MMMM", "5 05 May May"),
        ("d dd D DDD", "24 24 144 144"),
        ("E EEE EEEE e", "Tue Tue Tuesday 2"),
        ("H HH h hh K k a", "17 17 5 05 5 17 PM"),
        ("m mm s ss S SSS SSSSS", "10 10 0 00 0 000 00000"),
        ("z zzzz Z ZZ ZZZ", "UTC Coordinated Universal Time +0000 +00:00 UTC"),
        ("G C x xx", "AD 20 2011 11"),
        ("YYYY-MM-dd'T'HH:mm:ss", "2011-05-24T17:10:00"),
        ("h 'o''clock'", "5 o'clock"),
        ("''HH''", "'17'"),
        ("'unterminated quote HH", "unterminated quote HH"),
        ("[YYYY] / 100% #1 ä", "[2011] / 100% #1 ä"),
    ],
)
def test_format_prints_joda_patterns(pattern: str, expected: str) -> None:
    # The pattern is passed through a parameter so quotes in it need no escaping.
    assert evaluate("#{format(myDateTime, myPattern)}", scope(myPattern=pattern)) == expected


@pytest.mark.parametrize(
    ("when", "pattern", "expected"),
    [
        ("0999-01-02T00:05:09", "YYYY-M-d h:m:s k K a", "0999-1-2 12:5:9 24 0 AM"),
        ("2011-01-01T12:00:00", "hh a xxxx-'W'ww-e", "12 PM 2010-W52-6"),  # ISO week-based year
    ],
)
def test_format_pads_and_uses_iso_weeks(when: str, pattern: str, expected: str) -> None:
    assert evaluate("#{format(t, p)}", Scope.of({"t": when, "p": pattern})) == expected


@pytest.mark.parametrize(("pattern", "reason"), [("YYYY-MM-ddTHH", "illegal pattern component 'T'"), ("", "empty")])
def test_format_rejects_what_joda_rejects(pattern: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        evaluate("#{format(myDateTime, p)}", scope(p=pattern))


# --- Operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # The Mathematical Functions and String Functions pages, verbatim.
        ("#{1 + 2}", "3"),
        ("#{1 - 2}", "-1"),
        ("#{1 * 2}", "2"),
        ("#{1 / 2}", "0"),
        ("#{1.0 / 2}", "0.5"),
        ("#{2 ^ 2}", "4.0"),
        ('#{"hel" + "lo"}', "hello"),
        # Precedence, grouping and Java arithmetic.
        ("#{2 + 3 * 4}", "14"),
        ("#{(2 + 3) * 4}", "20"),
        ("#{2 ^ 3 ^ 2}", "512.0"),
        ("#{-2 ^ 2}", "-4.0"),
        ("#{2 ^ -1}", "0.5"),
        ("#{- -3}", "3"),
        ("#{-7 / 2}", "-3"),
        ("#{7 / -2}", "-3"),
        ("#{7.0 / 2}", "3.5"),
        ("#{9223372036854775807 + 1}", "-9223372036854775808"),
        ("#{1.0 / 0}", "Infinity"),
        ("#{-1.0 / 0}", "-Infinity"),
        ("#{0.0 / 0}", "NaN"),
        ("#{2.0 ^ 1024}", "Infinity"),
        ("#{10000000.0 * 1}", "1.0E7"),
        ("#{1234567.5 * 1}", "1234567.5"),
        ("#{0.001 * 1}", "0.001"),
        ("#{0.0001 * 1}", "1.0E-4"),
        ("#{100 * 1.0}", "100.0"),
        ("#{0 * -1.0}", "-0.0"),
        ("#{2 ^ 0.5}", "1.4142135623730951"),
        ("#{'n=' + 1 + 2}", "n=12"),  # left to right: concatenation wins once a string is in
        ("#{1 + 2 + 'n'}", "3n"),
        ("#{'at ' + makeDate(2011,5,24)}", "at 2011-05-24T00:00:00"),
    ],
)
def test_operators(expression: str, expected: str) -> None:
    assert evaluate(expression, scope()) == expected


def test_integer_division_by_zero_is_an_error() -> None:
    with pytest.raises(ExpressionError, match=r"integer division by zero at position 3"):
        evaluate("#{1/0}", scope())


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("#{myDateTime - 1}", "'-' needs numbers, got a string that is not a number"),
        ("#{makeDate(2011,5,24) * 2}", "'\\*' needs numbers, got a DateTime"),
        ("#{p + 1}", "'\\+' needs numbers, got a Period"),
        ("#{-'abc'}", "unary '-' needs numbers"),
    ],
)
def test_arithmetic_on_non_numbers_is_an_error(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        evaluate(expression, scope(p=Period(1, PeriodUnit.DAYS)))


# --- Names, references and parameters --------------------------------------------------------


def test_the_guides_reference_examples() -> None:
    # Given an S3DataNode, its schedule's runtime fields and an alarm's back-reference
    fields = Scope.of(
        {
            "name": "ExampleDataNode",
            "@scheduledStartTime": "2012-12-12T00:00:00",
            "@scheduledEndTime": "2012-12-12T01:00:00",
        },
        {
            "parent": {"@id": "ExampleDataNode"},
            "node": {
                "@scheduledStartTime": "2011-05-24T17:10:00",
                "@scheduledEndTime": "2011-05-24T18:10:00",
                "@actualEndTime": "2011-05-24T18:12:31",
                "output.directoryPath": "s3://bucket/out",
            },
        },
    )
    cases = {
        "s3://mybucket/#{parent.@id}.csv": "s3://mybucket/ExampleDataNode.csv",
        "s3://myBucket/#{name}.csv": "s3://myBucket/ExampleDataNode.csv",
        "/home/userName/xxx.sh #{@scheduledStartTime} #{@scheduledEndTime}": (
            "/home/userName/xxx.sh 2012-12-12T00:00:00 2012-12-12T01:00:00"
        ),
        "Error for interval #{node.@scheduledStartTime}..#{node.@scheduledEndTime}.": (
            "Error for interval 2011-05-24T17:10:00..2011-05-24T18:10:00."
        ),
        "S3 bucket '#{node.output.directoryPath}' succeeded at #{node.@actualEndTime}.": (
            "S3 bucket 's3://bucket/out' succeeded at 2011-05-24T18:12:31."
        ),
        "#{format(minusMinutes(@scheduledStartTime,30),'YYYY-MM-dd hh:mm:ss')}": "2012-12-11 11:30:00",
        "#{format(minusMinutes(node.@scheduledStartTime,30),'YYYY-MM-dd hh:mm:ss')}": "2011-05-24 04:40:00",
    }
    for text, expected in cases.items():
        assert evaluate(text, fields) == expected


def test_dotted_names_go_through_follow_with_the_first_segment_as_the_reference() -> None:
    asked: list[tuple[str, str]] = []

    def follow(ref: str, rest: str) -> Value | None:
        asked.append((ref, rest))
        return "v"

    evaluate("#{input.directoryPath} #{node.output.directoryPath} #{node.@status}", Scope(lambda _: None, follow))
    assert asked == [("input", "directoryPath"), ("node", "output.directoryPath"), ("node", "@status")]


def test_the_api_evaluate_expression_example() -> None:
    schedule = Scope.of({"startDateTime": "2012-12-12T00:00:00", "endDateTime": "2012-12-21T18:00:00"})
    text = "Transform started at #{startDateTime} and finished at #{endDateTime}"
    assert evaluate(text, schedule) == "Transform started at 2012-12-12T00:00:00 and finished at 2012-12-21T18:00:00"


def test_parameters_plain_masked_and_typed() -> None:
    params = Scope.of(
        {
            "myS3OutputLoc": "s3://bucket/backup",
            "@scheduledStartTime": "2014-03-28T18:05:11",
            "*myPassword": "hunter2",
            "myDays": "3",
            "myCount": parameter_value("5", "Integer"),
            "myRatio": parameter_value("0.25", "Double"),
            "myText": "5",
        }
    )
    sample = "#{myS3OutputLoc}/#{format(@scheduledStartTime, 'YYYY-MM-dd-HH-mm-ss')}"
    assert evaluate(sample, params) == "s3://bucket/backup/2014-03-28-18-05-11"
    assert evaluate("pw=#{*myPassword}", params) == "pw=hunter2"
    assert evaluate("#{minusDays(@scheduledStartTime, myDays)}", params) == "2014-03-25T18:05:11"
    assert evaluate("#{myCount + 1} #{myRatio * 2} #{myText + 1} #{myText * 2}", params) == "6 0.5 51 10"
    assert evaluate("#{2*myCount} #{2 * *myPassword + ''}", Scope.of({"myCount": 4, "*myPassword": "3"})) == "8 6"


def test_parameter_value_keeps_text_it_cannot_type() -> None:
    assert parameter_value("abc", "Integer") == "abc"
    assert parameter_value("99999999999999999999", "Integer") == "99999999999999999999"
    assert parameter_value("1.5e3", "Double") == 1500.0
    assert parameter_value("7", "String") == "7"


def test_unknown_names_are_named_but_resolved_values_are_never_quoted() -> None:
    with pytest.raises(ExpressionError, match=r"unknown name 'input.directoryPath' at position 8") as info:
        evaluate("path: #{input.directoryPath}", scope())
    assert info.value.position == 8
    with pytest.raises(ExpressionError) as secret:
        evaluate("#{minusDays(*myPassword, 1)}", scope(**{"*myPassword": "hunter2"}))
    assert "hunter2" not in str(secret.value)
    assert "minusDays() argument 1 (myDateTime) must be a DateTime" in str(secret.value)


# --- Text around expressions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        (
            "cost: # { 5 } and {braces} and ${INPUT1_STAGING_DIR}",
            "cost: # { 5 } and {braces} and ${INPUT1_STAGING_DIR}",
        ),
        ("#{year(myDateTime)}#{month(myDateTime)}-#{day(myDateTime)}!", "20115-24!"),
        ("#{ year( myDateTime ) }", "2011"),
        ("#{format(myDateTime,'}')}", "}"),
        ("#{'#{'}literal", "#{literal"),
        ("#{'a\\'b\\\\c\\d'}", "a'b\\c\\d"),
        ('#{"say \\"hi\\""}', 'say "hi"'),
    ],
)
def test_text_around_and_inside_expressions(text: str, expected: str) -> None:
    assert evaluate(text, scope()) == expected


def test_long_flat_sums_do_not_hit_the_nesting_limit() -> None:
    assert evaluate("#{" + "+".join(["1"] * 3000) + "}", scope()) == "3000"


# --- Errors and check() ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x #{", "unterminated expression: no '}' at position 2"),
        ("#{'abc}", "no closing ' of a string and '}'"),
        ("#{}", "empty expression at position 2"),
        ("#{   }", "empty expression"),
        ("#{1 +}", "expected a value, found the end of the expression at position 5"),
        ("#{2 2}", "expected an operator or '}', found '2' at position 4"),
        ("#{(1 + 2}", "expected ')' to close '('"),
        ("#{day(myDateTime}", "expected ')' after the arguments of day()"),
        ("#{day(,)}", "expected a value, found ','"),
        ("#{a # b}", "unexpected character '#' at position 4"),
        ("#{{x}}", "unexpected character '{'"),
        ("#{@x(1)}", "'@x' cannot be called"),
        ("#{input.path(1)}", "'input.path' cannot be called"),
        ("#{99999999999999999999}", "integer out of range"),
        ("#{fromat(myDateTime,'YYYY')}", "unknown function 'fromat' (did you mean 'format'?) at position 2"),
        ("#{now()}", "unknown function 'now' at position 2"),
        ("#{Day(myDateTime)}", "unknown function 'Day'"),
        ("#{day()}", "int day(DateTime myDateTime) takes 1 argument(s), got 0"),
        ("#{makeDate(2011,5)}", "takes 3 argument(s), got 2"),
        ("#{makeDate(2011,13,1)}", "makeDate(): month must be in 1..12"),
        ("#{makeDate(2011,5,24.0)}", "makeDate() argument 3 (day) must be an integer, got a double"),
        ("#{plusYears(myDateTime, 9000)}", "plusYears(): date value out of range: year 11011"),
        ("#{plusDays(myDateTime, 999999999999)}", "plusDays(): "),
        ("#{format(myDateTime, 5)}", "format() argument 2 (format) must be a string, got an integer"),
        ("#{format(day(myDateTime), 'YYYY')}", "argument 1 (myDateTime) must be a DateTime, got an integer"),
        ("#{day('2011-05-24')}", "must be a DateTime: got a string that is not YYYY-MM-DDTHH:MM:SS"),
        ("#{" + "(" * 100 + "1" + ")" * 100 + "}", "nested more than 64 levels deep"),
    ],
)
def test_bad_expressions_raise_expression_error_saying_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        evaluate(text, scope())


@pytest.mark.parametrize(
    "text",
    [
        "#{1 +}",
        "#{fromat(@scheduledStartTime,'YYYY')}",
        "#{day(@scheduledStartTime, 1)}",
        "#{format(@scheduledStartTime, 'YYYY-MM-ddTHH')}",  # a literal pattern is checked statically
        "#{format(day(@scheduledStartTime), 'YYYY')}",  # a function's result type is known
        "#{minusDays(@scheduledStartTime, 'one')}",
        "#{makeDate(2011, 2, 30)}",  # all-literal calls are run
        "#{plusDays(@scheduledStartTime, 1) - 1}",
        "#{'unterminated}",
    ],
)
def test_check_finds_errors_without_resolving_names(text: str) -> None:
    errors = check(text)
    assert len(errors) == 1
    assert "position" in errors[0]


@pytest.mark.parametrize(
    "text",
    [
        "no expressions here",
        "#{myS3OutputLoc}/#{format(@scheduledStartTime, 'YYYY-MM-dd-HH-mm-ss')}",
        "#{node.@scheduledStartTime}..#{node.@scheduledEndTime}",
        "#{format(minusMinutes(node.@scheduledStartTime,30),'YYYY-MM-dd hh:mm:ss')}",
        "#{myCount * 2 + 1} #{'a' + @x} #{-myN} #{2 ^ myExponent}",
        "#{format(@scheduledStartTime, myPattern)}",  # a pattern in a name cannot be checked
        "#{*myPassword}",
    ],
)
def test_check_accepts_valid_expressions_with_unresolved_names(text: str) -> None:
    assert check(text) == []


def test_check_reports_every_bad_expression_in_a_field() -> None:
    errors = check("#{foo()} ok #{day(@x)} #{bar(1)} #{1 +}")
    assert [e.split(" at position ")[0] for e in errors] == [
        "unknown function 'foo'",
        "unknown function 'bar'",
        "expected a value, found the end of the expression",
    ]


# --- Properties ------------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        *("#{", "}", "(", ")", ",", "'", '"', "\\", "+", "-", "*", "/", "^", ".", "@", "#", "{", " ", "\n"),
        *("format", "minusDays", "makeDate", "plusMonths", "sunday", "@scheduledStartTime", "node.", "input."),
        *("myN", "*myPassword", "myDateTime", "1", "0", "2.5", ".5", "9" * 25, "'YYYY-MM-dd'", "'T'", "é"),
    ]
)
_EXPRESSIONISH = st.lists(_FRAGMENTS, max_size=30).map("".join)
_FUZZ_SCOPE = scope(myN="7", **{"*myPassword": "x", "__scheduledStartTime": "2011-05-24T17:10:00"})


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), _EXPRESSIONISH))
def test_arbitrary_text_only_ever_raises_expression_error(text: str) -> None:
    try:
        result = evaluate(text, _FUZZ_SCOPE)
    except ExpressionError:
        pass
    else:
        assert isinstance(result, str)
    assert all(isinstance(error, str) for error in check(text))


@given(st.text().filter(lambda t: "#{" not in t))
def test_text_without_expressions_is_returned_unchanged(text: str) -> None:
    assert evaluate(text, scope()) == text
    assert check(text) == []


@given(st.text())
def test_a_quoted_string_literal_evaluates_to_itself(text: str) -> None:
    literal = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assert evaluate("<#{" + literal + "}>", scope()) == f"<{text}>"


_LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _wrapped(n: int) -> int:
    return (n + 2**63) % 2**64 - 2**63


@given(_LONGS, _LONGS)
def test_integer_arithmetic_matches_java_long(a: int, b: int) -> None:
    names = scope(a=a, b=b)
    expected = f"{_wrapped(a + b)},{_wrapped(a - b)},{_wrapped(a * b)}"
    assert evaluate("#{a + b},#{a - b},#{a * b}", names) == expected
    if b:
        truncated = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
        assert evaluate("#{a / b}", names) == str(_wrapped(truncated))


# --- docs/expressions.md ---------------------------------------------------------------------


def _table_rows(heading: str) -> list[list[str]]:
    """Body rows of the markdown tables under ``## heading``, cells stripped of backticks."""
    section = DOC.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    rows = [
        line
        for line, following in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("| ") and not following.startswith("|---")
    ]
    return [[cell.strip().strip("`") for cell in row.split(" | ")] for row in (r[2:-2] for r in rows)]


def test_the_doc_lists_exactly_the_implemented_functions_with_their_examples() -> None:
    rows = _table_rows("Functions")
    assert [row[0] for row in rows] == [f.signature for f in FUNCTIONS.values()]
    for signature, summary, example, result in rows:
        function = next(f for f in FUNCTIONS.values() if f.signature == signature)
        assert (summary, example, result) == (function.summary, function.example, function.result)
        assert evaluate(example, scope()) == result


def test_the_doc_lists_exactly_the_operators_and_their_examples_hold() -> None:
    rows = _table_rows("Operators")
    assert {row[0] for row in rows} == set(OPERATORS)
    for _, _, example, result in rows:
        assert evaluate(example, scope()) == result


def test_the_doc_lists_exactly_the_pattern_letters_and_its_samples_hold() -> None:
    rows = _table_rows("`format()` patterns")
    letters = [row[0] for row in rows if len(row) == 2 and len(row[0]) == 1]
    assert letters == list(PATTERN_LETTERS)
    for pattern, result in (row for row in rows if len(row) == 2 and len(row[0]) > 1):
        assert evaluate(f"#{{format(myDateTime, {pattern})}}", scope()) == result
