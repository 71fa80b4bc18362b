"""workers.formats: AWS's CSV / TSV / Custom rules, round trips (hypothesis), and malformed data with line numbers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import InvalidTask
from bridge.taskmodel import Field, PipelineObject
from workers.formats import (
    DEFAULT_FORMAT,
    Column,
    DataFormat,
    DataFormatError,
    RowReader,
    RowWriter,
    UnsupportedDataFormat,
    data_format,
)

TSV = DataFormat("TSV", "\t", "\n", "\\")
#: Layouts a property test picks from: AWS's CSV and TSV, and Custom ones with other characters.
LAYOUTS = [
    DEFAULT_FORMAT,
    TSV,
    DataFormat("Custom", "|", "\n", "\\"),
    DataFormat("Custom", ";", "~", "^"),
    DataFormat("Custom", "\u00a6", "\u2029", "\u00a7"),
]


def format_object(object_id: str, kind: str, **fields: str | list[str]) -> PipelineObject:
    """A dataFormat object as a task carries it."""
    items = [Field("type", kind)]
    for key, value in fields.items():
        items += [Field(key, v) for v in (value if isinstance(value, list) else [value])]
    return PipelineObject(object_id, object_id, tuple(items))


def encode(fmt: DataFormat, rows: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(RowWriter(fmt, chunk_chars=7).encode(rows))


def pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """``data`` cut at ``cuts`` (anywhere, even inside a UTF-8 character)."""
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


def decode(fmt: DataFormat, *chunks: bytes, width: int | None = None) -> list[tuple[str | None, ...]]:
    return list(RowReader(fmt, width).read(chunks, "s3://bucket/data.csv"))


# -- the data format objects ----------------------------------------------------------------------------------


def test_no_data_format_is_aws_csv() -> None:
    fmt = data_format(None)
    assert (fmt.kind, fmt.column_separator, fmt.record_separator, fmt.escape_char) == ("CSV", ",", "\n", "\\")
    assert fmt.null == "\\N"


def test_csv_takes_its_escape_char_and_declared_columns() -> None:
    fmt = data_format(format_object("Csv", "CSV", column=["Name STRING", "Score INT"], escapeChar="^"))
    assert (fmt.column_separator, fmt.escape_char, fmt.null) == (",", "^", "^N")
    assert fmt.columns == (Column("Name", "STRING"), Column("Score", "INT"))
    assert fmt.width == 2


def test_csv_refuses_another_separator() -> None:
    with pytest.raises(InvalidTask, match="CSV separator is always ','"):
        data_format(format_object("Csv", "CSV", columnSeparator=";"))


def test_tsv_defaults_and_escaped_spellings() -> None:
    default = data_format(format_object("Tsv", "TSV"))
    assert (default.column_separator, default.record_separator, default.escape_char) == ("\t", "\n", "\\")
    spelled = data_format(format_object("Tsv", "TSV", columnSeparator="\\t", recordSeparator="\\n"))
    assert spelled.same_layout(default)
    # the TSV page separates several columns with commas in one value
    assert data_format(format_object("Tsv", "TSV", column="a INT, b STRING")).columns == (
        Column("a", "INT"),
        Column("b", "STRING"),
    )


def test_custom_needs_a_column_separator() -> None:
    fmt = data_format(format_object("C", "Custom", columnSeparator="|", recordSeparator=";"))
    assert (fmt.column_separator, fmt.record_separator, fmt.extension) == ("|", ";", "txt")
    with pytest.raises(InvalidTask, match="needs 'columnSeparator'"):
        data_format(format_object("C", "Custom"))


@pytest.mark.parametrize("kind", ["RegEx", "DynamoDBDataFormat", "DynamoDBExportDataFormat"])
def test_other_formats_are_unsupported(kind: str) -> None:
    with pytest.raises(UnsupportedDataFormat, match=kind) as failed:
        data_format(format_object("F", kind))
    assert failed.value.error_id == "BridgeUnsupportedDataFormat"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"columnSeparator": "ab"}, "must be one character"),
        ({"columnSeparator": "|", "escapeChar": "|"}, "must differ"),
        ({"columnSeparator": "N"}, "reserved"),
    ],
)
def test_bad_characters_are_invalid(fields: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidTask, match=says):
        data_format(format_object("T", "TSV", **fields))


# -- writing ------------------------------------------------------------------------------------------------


def test_csv_bytes_follow_aws_rules() -> None:
    # given values with a comma, a newline, a backslash, a NULL, an empty string and a CR
    rows = [("a,b", "line\nbreak", "back\\slash", None, "", "cr\r"), ("2", "é", "N", "\\N", "x", "y")]

    # then nothing is quoted, specials are escaped with a backslash, NULL is \N, records end with \n
    assert encode(DEFAULT_FORMAT, rows) == (
        b"a\\,b,line\\\nbreak,back\\\\slash,\\N,,cr\\\r\n" + "2,é,N,\\\\N,x,y\n".encode()
    )


def test_database_values_become_text() -> None:
    row = [
        1,
        Decimal("1E+3"),
        1.5,
        True,
        False,
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.date(2024, 1, 2),
        b"\x00\xff",
        None,
    ]
    assert encode(TSV, [row]) == b"1\t1000\t1.5\t1\t0\t2024-01-02 03:04:05\t2024-01-02\t00ff\t\\N\n"


def test_a_row_of_the_wrong_width_for_declared_columns_fails() -> None:
    fmt = DataFormat(columns=(Column("a"), Column("b")), object_id="Out")
    with pytest.raises(DataFormatError, match="row 2 has 3 values, but data format 'Out' declares 2 columns"):
        encode(fmt, [("1", "2"), ("1", "2", "3")])


# -- reading ------------------------------------------------------------------------------------------------


def test_reading_unescapes_and_reads_nulls() -> None:
    data = b"a\\,b,\\N,,x\\\\\\N\nnext\\\nline,N,\\q,\n"
    assert decode(DEFAULT_FORMAT, data) == [("a,b", None, "", "x\\N"), ("next\nline", "N", "q", "")]


def test_the_last_record_may_lack_its_separator_and_empty_data_has_no_rows() -> None:
    assert decode(DEFAULT_FORMAT, b"1,2\n3,4") == [("1", "2"), ("3", "4")]
    assert decode(DEFAULT_FORMAT, b"") == []
    assert decode(DEFAULT_FORMAT, b"\n") == [("",)]


def test_a_wrong_number_of_fields_names_the_line() -> None:
    with pytest.raises(DataFormatError, match=r"s3://bucket/data.csv: line 3: 3 fields where 2 fields") as failed:
        decode(DEFAULT_FORMAT, b"1,2\n3,4\n5,6,7\n")
    assert failed.value.error_id == "BridgeDataFormatError"


def test_the_line_counts_escaped_newlines_and_the_declared_width_wins() -> None:
    with pytest.raises(DataFormatError, match=r"line 3 \(record 2\): 2 fields where 3 fields"):
        decode(DEFAULT_FORMAT, b"a,b\\\nc,d\ne,f\n")
    with pytest.raises(DataFormatError, match=r"line 1: 2 fields where 3 fields"):
        decode(DEFAULT_FORMAT, b"a,b\n", width=3)


def test_crlf_data_fails_as_aws_says_it_does() -> None:
    with pytest.raises(DataFormatError, match=r"line 2: the line ends with a carriage return \(CRLF"):
        decode(DEFAULT_FORMAT, b"a,b\n", b"c,d\r\n")


def test_a_dangling_escape_and_text_that_is_not_utf8_fail() -> None:
    with pytest.raises(DataFormatError, match=r"line 2: the record ends with a dangling escape"):
        decode(DEFAULT_FORMAT, b"a,b\nc,d\\")
    with pytest.raises(DataFormatError, match=r"line 2: the data is not UTF-8 text.*compression: gzip"):
        decode(DEFAULT_FORMAT, b"a,b\n\x1f\x8b\x08\x00\xff\n")


def test_one_reader_keeps_its_width_across_objects() -> None:
    reader = RowReader(DEFAULT_FORMAT)
    assert list(reader.read([b"1,2\n"], "s3://b/one")) == [("1", "2")]
    with pytest.raises(DataFormatError, match="s3://b/two: line 1: 3 fields where 2"):
        list(reader.read([b"1,2,3\n"], "s3://b/two"))


# -- round trips --------------------------------------------------------------------------------------------

#: Text that favours every character with a meaning in some layout.
SPECIALS = ",\t\n\r\\|;~^N\u00a6\u2029\u00a7"
values = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from(SPECIALS) | st.characters(codec="utf-8"), max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    data=st.data(),
    width=st.integers(min_value=1, max_value=5),
)
def test_rows_survive_a_round_trip_cut_anywhere(layout: DataFormat, data: st.DataObject, width: int) -> None:
    # given rows of text with separators, newlines, escapes, CRs, "N", NULLs and unicode
    rows = data.draw(st.lists(st.lists(values, min_size=width, max_size=width).map(tuple), max_size=8))
    encoded = encode(layout, rows)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(encoded)), max_size=6))

    # when written, cut into chunks anywhere (even inside a character) and read back
    read = decode(layout, *pieces(encoded, cuts))

    # then the rows are exactly the same, NULLs and empty strings included
    assert read == rows


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(values | st.just('say "hi"'), min_size=3, max_size=3).map(tuple), max_size=6))
def test_csv_output_is_never_quoted_and_has_no_crlf_line_ends(rows: list[tuple[str | None, ...]]) -> None:
    text = encode(DEFAULT_FORMAT, rows).decode()
    # no quoting: the output's double quotes are exactly the values' own
    assert text.count('"') == sum((value or "").count('"') for row in rows for value in row)
    # every carriage return is escaped, so no record can be mistaken for CRLF data
    assert all(text[i - 1] == "\\" for i, char in enumerate(text) if char == "\r")


@settings(max_examples=200, deadline=None)
@given(
    source=st.sampled_from(LAYOUTS),
    target=st.sampled_from(LAYOUTS),
    rows=st.lists(st.lists(values, min_size=2, max_size=2).map(tuple), max_size=6),
)
def test_converting_between_layouts_keeps_the_rows(
    source: DataFormat, target: DataFormat, rows: list[tuple[str | None, ...]]
) -> None:
    # given rows in one layout, when they are read and written in another, then reading that gives them back
    converted = b"".join(RowWriter(target).encode(RowReader(source).read([encode(source, rows)], "s3://b/in")))
    assert decode(target, converted) == rows
