"""The data formats of S3 data nodes (CSV, TSV, Custom): rows to bytes and bytes to rows, streaming.

AWS's rules, as the Developer Guide states them (reference §6.5, §9; dp-object-copyactivity, dp-object-csv,
dp-object-tsv, dp-object-custom):

- **CSV**: "the column separator is a comma and the record separator is a newline character"; CopyActivity
  accepts only "a Unix/Linux variant": "the separator must be the ',' (comma) character", "the records are not
  quoted", "the default escape character is ASCII value 92 (backslash)", "the end of record identifier is ASCII
  value 10". Fields: ``column``, ``escapeChar``.
- **TSV**: ``columnSeparator`` ("Defaults to '\\t'"), ``recordSeparator`` ("Defaults to '\\n'"), ``escapeChar``,
  ``column``.
- **Custom**: ``columnSeparator`` (required), ``recordSeparator`` ("Only single characters are supported"),
  ``column``. AWS lists no ``escapeChar`` for it; one is accepted here, backslash by default, as for CSV.
- ``escapeChar``: "A character, for example "\\", that instructs the parser to ignore the next character": the
  character after it is taken literally, whatever it is (a separator, a newline, the escape character itself).
- NULL is ``\\N`` (the escape character, then ``N``), as in AWS's PostgreSQL → TSV export; a field that is
  exactly that is NULL, and an empty field is the empty string.
- "CRLF data fails repeatedly" on AWS: here a record whose newline follows a bare carriage return is rejected
  with a clear error naming the line. The writer escapes carriage returns in values, so its own output is never
  mistaken for CRLF data.

Any other format (RegEx, DynamoDBDataFormat, DynamoDBExportDataFormat...) is ``BridgeUnsupportedDataFormat``: AWS
itself supports only CSV and TSV for an S3DataNode that CopyActivity reads. A file has no header row. Text is
UTF-8. A malformed file (a record with the wrong number of fields, a dangling escape, text that is not UTF-8) is
``BridgeDataFormatError`` naming the object and the line.

``column`` values (``"Name STRING"``, or several in one value separated by commas, as the TSV page shows) fix how
many fields each record must have; the names are not used to map fields to table columns (AWS does not document
that they are), ``insertQuery`` on the SQL data node does that.
"""

from __future__ import annotations

import codecs
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bridge.errors import InvalidTask, TaskFailure
from bridge.taskmodel import PipelineObject

#: Characters of text the writer gathers before yielding one encoded chunk.
CHUNK_CHARS = 1024 * 1024
#: A record (one line, escapes included) may not grow beyond this many characters: a file without record
#: separators must fail, not fill the worker's memory.
MAX_RECORD_CHARS = 32 * 1024 * 1024
#: Spellings of special characters a definition may use for a separator or escape character.
_NAMED_CHARS = {"\\t": "\t", "\\n": "\n", "\\r": "\r", "\\\\": "\\"}
_SUPPORTED = "CSV, TSV and Custom"


class DataFormatError(TaskFailure):
    """The data does not follow its data format (wrong number of fields, dangling escape, not UTF-8)."""

    error_id = "BridgeDataFormatError"


class UnsupportedDataFormat(TaskFailure):
    """A data format type this worker cannot read or write."""

    error_id = "BridgeUnsupportedDataFormat"


@dataclass(frozen=True)
class Column:
    """One declared column: ``"Name STRING"`` is ``Column("Name", "STRING")``."""

    name: str
    type: str = ""


@dataclass(frozen=True)
class DataFormat:
    """A delimited text layout: one character each to end a field and a record, and an escape character.

    Raises:
        InvalidTask: a separator or escape that is not one character, or two roles sharing one character.
    """

    kind: str = "CSV"
    column_separator: str = ","
    record_separator: str = "\n"
    escape_char: str = "\\"
    columns: tuple[Column, ...] = ()
    object_id: str = ""

    def __post_init__(self) -> None:
        roles = {
            "column separator": self.column_separator,
            "record separator": self.record_separator,
            "escape character": self.escape_char,
        }
        where = f"{self.kind} data format {self.object_id!r}" if self.object_id else f"{self.kind} data format"
        for role, char in roles.items():
            if len(char) != 1:
                raise InvalidTask(f"{where}: the {role} must be one character, not {char!r}")
            if char in ("N", "\r"):
                raise InvalidTask(f"{where}: {char!r} cannot be the {role} (it is reserved for NULL or CRLF)")
        if len(set(roles.values())) != len(roles):
            raise InvalidTask(f"{where}: the column separator, record separator and escape character must differ")

    @property
    def null(self) -> str:
        """How NULL is written: ``\\N`` with the default escape character."""
        return self.escape_char + "N"

    @property
    def width(self) -> int | None:
        """How many fields each record has, if ``column`` declares it."""
        return len(self.columns) or None

    @property
    def extension(self) -> str:
        """The file name extension of this format's files (``csv``, ``tsv``, ``txt``)."""
        return {"CSV": "csv", "TSV": "tsv"}.get(self.kind, "txt")

    def same_layout(self, other: DataFormat) -> bool:
        """Whether bytes in this format are, unchanged, bytes in ``other`` (same separators and escape)."""
        return (self.column_separator, self.record_separator, self.escape_char) == (
            other.column_separator,
            other.record_separator,
            other.escape_char,
        )


#: What a data node without ``dataFormat`` holds.
DEFAULT_FORMAT = DataFormat()


def data_format(obj: PipelineObject | None) -> DataFormat:
    """The data format an S3DataNode's ``dataFormat`` object describes (``None``: CSV with AWS's defaults).

    Raises:
        UnsupportedDataFormat: a type other than CSV, TSV or Custom.
        InvalidTask: fields that break the format's rules.
    """
    if obj is None:
        return DEFAULT_FORMAT
    kind = {"CSV": "CSV", "TSV": "TSV", "CUSTOM": "Custom"}.get((obj.type or "").strip().upper(), obj.type or "")
    columns = parse_columns(obj.get_all("column"))
    escape = _char(obj, "escapeChar") or "\\"
    if kind == "CSV":
        separator = _char(obj, "columnSeparator")
        if separator not in (None, ","):
            raise InvalidTask(
                f"CSV data format {obj.id!r}: AWS's CSV separator is always ',' (not {separator!r}); use TSV or "
                "Custom for another separator"
            )
        return DataFormat("CSV", ",", "\n", escape, columns, obj.id)
    if kind == "TSV":
        column_separator = _char(obj, "columnSeparator") or "\t"
        record_separator = _char(obj, "recordSeparator") or "\n"
        return DataFormat("TSV", column_separator, record_separator, escape, columns, obj.id)
    if kind == "Custom":
        custom_separator = _char(obj, "columnSeparator")
        if custom_separator is None:
            raise InvalidTask(f"Custom data format {obj.id!r} needs 'columnSeparator'")
        record_separator = _char(obj, "recordSeparator") or "\n"
        return DataFormat("Custom", custom_separator, record_separator, escape, columns, obj.id)
    raise UnsupportedDataFormat(
        f"data format {obj.id!r} is a {kind or 'untyped object'}: CopyActivity reads and writes {_SUPPORTED} "
        "(AWS supports only CSV and TSV on an S3DataNode that CopyActivity reads)"
    )


def parse_columns(values: Sequence[str]) -> tuple[Column, ...]:
    """``column`` values (``"Name STRING"``; several per value when separated by commas) as columns."""
    columns: list[Column] = []
    for value in values:
        for part in value.split(","):
            words = part.split()
            if words:
                columns.append(Column(words[0], " ".join(words[1:])))
    return tuple(columns)


def _char(obj: PipelineObject, key: str) -> str | None:
    value = obj.get(key)
    if not value:
        return None
    return _NAMED_CHARS.get(value, value)


# -- values -----------------------------------------------------------------------------------------------


def to_text(value: Any) -> str:
    """A database value as the text of one field (``None`` is the caller's: it becomes NULL).

    Booleans are ``1`` / ``0`` (what PostgreSQL, MySQL and SQLite all read back); datetimes use a space, as SQL
    does; decimals never use exponents; bytes are hexadecimal.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


# -- writing ----------------------------------------------------------------------------------------------


class RowWriter:
    """Encodes rows in a data format, as chunks of UTF-8 bytes of about :data:`CHUNK_CHARS` characters.

    Args:
        fmt: The data format.
        target: Where the rows go (for error messages).
        chunk_chars: Characters per chunk.
    """

    def __init__(self, fmt: DataFormat, target: str = "", chunk_chars: int = CHUNK_CHARS) -> None:
        self.fmt = fmt
        self.target = target
        self.chunk_chars = chunk_chars
        self.rows = 0
        esc = fmt.escape_char
        specials = {fmt.column_separator, fmt.record_separator, esc, "\r"}
        self._escapes = str.maketrans({char: esc + char for char in specials})
        self._specials = re.compile("[" + "".join(re.escape(c) for c in sorted(specials)) + "]")

    def field(self, value: Any) -> str:
        """One value as a field: NULL as ``\\N``, special characters escaped."""
        if value is None:
            return self.fmt.null
        text = to_text(value)
        return text.translate(self._escapes) if self._specials.search(text) else text

    def encode(self, rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
        """The encoded rows, chunk by chunk (each record ends with the record separator).

        Raises:
            DataFormatError: a row whose number of values is not the format's declared ``column`` count.
        """
        width = self.fmt.width
        separator, end = self.fmt.column_separator, self.fmt.record_separator
        field = self.field
        parts: list[str] = []
        size = 0
        for row in rows:
            if width is not None and len(row) != width:
                raise DataFormatError(
                    f"{self.target or 'output'}: row {self.rows + 1} has {len(row)} values, but data format "
                    f"{self.fmt.object_id!r} declares {width} columns"
                )
            record = separator.join([field(value) for value in row]) + end
            parts.append(record)
            size += len(record)
            self.rows += 1
            if size >= self.chunk_chars:
                yield "".join(parts).encode("utf-8")
                parts, size = [], 0
        if parts:
            yield "".join(parts).encode("utf-8")


# -- reading ----------------------------------------------------------------------------------------------

Row = tuple[str | None, ...]


class RowReader:
    """Decodes bytes in a data format into rows of text (``None`` for NULL), streaming.

    One reader may read several objects in turn (a directory); they must all have the same number of fields per
    record: the format's declared ``column`` count, else the first record's.

    Args:
        fmt: The data format.
        width: Fields per record (``None``: the format's declared count, else the first record's).
    """

    def __init__(self, fmt: DataFormat, width: int | None = None) -> None:
        self.fmt = fmt
        self.width = width if width is not None else fmt.width
        self.rows = 0
        self._unescape = re.compile(f"{re.escape(fmt.escape_char)}(.)", re.DOTALL)

    def read(self, chunks: Iterable[bytes], source: str) -> Iterator[Row]:
        """The rows of one object, given as byte chunks of any size (split anywhere, even inside a character).

        Raises:
            DataFormatError: a record with the wrong number of fields, a dangling escape character, a CRLF line
                end, a record longer than :data:`MAX_RECORD_CHARS`, or text that is not UTF-8.
        """
        decoder = codecs.getincrementaldecoder("utf-8")()
        esc, end = self.fmt.escape_char, self.fmt.record_separator
        position = _Position(source)
        carry = ""
        for chunk in chunks:
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise DataFormatError(_not_utf8(position, carry, exc)) from exc
            if not text:
                continue
            buffer = carry + text if carry else text
            *records, carry = buffer.split(end)
            if esc + end in buffer:  # some record separators may be escaped: join their records again
                records, carry = _rejoin(records, carry, end, esc)
            for record in records:
                yield self._row(self._split(record, position), record, position)
            if len(carry) > MAX_RECORD_CHARS:
                raise DataFormatError(
                    f"{position}: a record longer than {MAX_RECORD_CHARS} characters (no record separator "
                    f"{end!r}; is the data compressed without 'compression: gzip' on its node?)"
                )
        try:
            carry += decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise DataFormatError(_not_utf8(position, carry, exc)) from exc
        if carry:  # the last record may lack its record separator
            yield self._row(self._split(carry, position), carry, position)

    def _split(self, record: str, position: _Position) -> list[str]:
        """The raw fields of one record (escapes still in them)."""
        separator, esc = self.fmt.column_separator, self.fmt.escape_char
        fields = record.split(separator)
        if esc not in record:
            return fields
        fields, rest = _rejoin(fields[:-1], fields[-1], separator, esc)
        if _escaped_last(rest + separator, esc):  # what escapes the separator after the last field is missing
            raise DataFormatError(f"{position}: the record ends with a dangling escape character")
        fields.append(rest)
        return fields

    def _row(self, raw: list[str], record: str, position: _Position) -> Row:
        if (
            self.fmt.record_separator == "\n"
            and raw[-1].endswith("\r")
            and not _escaped_last(raw[-1], self.fmt.escape_char)
        ):
            raise DataFormatError(
                f"{position}: the line ends with a carriage return (CRLF, Windows line ends): CopyActivity reads "
                "only Unix line ends; convert the data first"
            )
        if self.width is None:
            self.width = len(raw)
        elif len(raw) != self.width:
            raise DataFormatError(f"{position}: {_fields(len(raw))} where {_fields(self.width)} were expected")
        position.advance(record, self.fmt.record_separator)
        self.rows += 1
        null, esc = self.fmt.null, self.fmt.escape_char
        unescape = self._unescape.sub
        return tuple(None if field == null else unescape(r"\1", field) if esc in field else field for field in raw)


class _Position:
    """Where a reader is in one object, for error messages: the current record's number and first line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.record = 1
        self.line = 1

    def advance(self, record: str, end: str) -> None:
        """Move past ``record`` (its text without the record separator ``end``)."""
        self.record += 1
        self.line += record.count("\n") + (end == "\n")

    def __str__(self) -> str:
        return f"{self.source}: line {self.line}" + (f" (record {self.record})" if self.record != self.line else "")


def _fields(count: int) -> str:
    return f"{count} field" + ("" if count == 1 else "s")


def _escaped_last(text: str, esc: str) -> bool:
    """Whether the last character of raw ``text`` is escaped (an odd run of escape characters before it)."""
    body = text[:-1]
    return (len(body) - len(body.rstrip(esc))) % 2 == 1


def _rejoin(pieces: list[str], rest: str, separator: str, esc: str) -> tuple[list[str], str]:
    """``pieces`` of a split on ``separator`` joined again where the separator was escaped.

    ``rest`` is the piece after the last separator; a piece whose separator was escaped joins the next one, so
    the result is the real pieces and the real rest.
    """
    joined: list[str] = []
    pending: str | None = None
    for piece in pieces:
        if pending is not None:
            piece, pending = pending + separator + piece, None
        if _escaped_last(piece + separator, esc):
            pending = piece
        else:
            joined.append(piece)
    return joined, rest if pending is None else pending + separator + rest


def _not_utf8(position: _Position, carry: str, exc: UnicodeDecodeError) -> str:
    line = position.line + carry.count("\n") + bytes(exc.object[: exc.start]).count(b"\n")
    return (
        f"{position.source}: line {line}: the data is not UTF-8 text ({exc.reason}); if it is compressed, set "
        "'compression: gzip' on its data node"
    )
