"""A SQL script as statements: splitting by dialect, and binding ``scriptArgument`` values to ``?`` placeholders.

Pure text work, no database: see :func:`split_script` for what does not split and :func:`bind_arguments` for how
arguments bind.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import InvalidTask

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_DELIMITER_LINE = re.compile(r"[ \t]*delimiter[ \t]+(\S+)[^\n]*(?:\n|$)", re.IGNORECASE)
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text (no delimiter) and the offsets of its ``?`` placeholders."""

    text: str
    placeholders: tuple[int, ...] = ()


def split_script(script: str, dialect: str) -> list[Statement]:
    """Split ``script`` into statements for ``dialect`` (``postgresql``, ``mysql`` or ``sqlite``).

    Delimiters inside quotes (``'...'``, ``"..."``, MySQL/SQLite backticks, SQLite ``[...]``, PostgreSQL
    ``E'...'`` and ``$tag$...$tag$``) and comments (``--``, ``/* */`` nested on PostgreSQL, MySQL ``#``) do not
    split. MySQL ``DELIMITER xx`` lines change the delimiter, as in the mysql client; on SQLite a statement ends
    only where ``sqlite3.complete_statement`` agrees (trigger bodies). Statements of only comments are dropped.
    """
    statements: list[Statement] = []
    delimiter, n = ";", len(script)
    start = i = 0
    has_code = False
    marks: list[int] = []

    def flush(end: int) -> None:
        text = script[start:end]
        stripped = text.strip()
        if has_code and stripped:
            lead = len(text) - len(text.lstrip())
            statements.append(Statement(stripped, tuple(m - start - lead for m in marks)))

    while i < n:
        char = script[i]
        if dialect == "mysql" and not has_code and _line_start(script, i):
            match = _DELIMITER_LINE.match(script, i)
            if match is not None:
                flush(i)
                delimiter, i, start, has_code, marks = match[1], match.end(), match.end(), False, []
                continue
        if script.startswith(delimiter, i) and (
            dialect != "sqlite" or sqlite3.complete_statement(script[start : i + len(delimiter)])
        ):
            flush(i)
            i = start = i + len(delimiter)
            has_code, marks = False, []
            continue
        if char.isspace():
            i += 1
        elif _line_comment(script, i, dialect):
            i = _line_end(script, i)
        elif script.startswith("/*", i) and not (dialect == "mysql" and script.startswith(("/*!", "/*+"), i)):
            i = _comment_end(script, i, nested=dialect == "postgresql")
        else:
            has_code = True
            i = _skip_token(script, i, dialect, marks)
    flush(n)
    return statements


def _line_comment(script: str, i: int, dialect: str) -> bool:
    """Whether a line comment starts at ``i`` (MySQL: ``#``, or ``--`` followed by whitespace or the end)."""
    if dialect == "mysql":
        return script[i] == "#" or (script.startswith("--", i) and script[i + 2 : i + 3] in ("", " ", "\t", "\r", "\n"))
    return script.startswith("--", i)


def _line_start(script: str, i: int) -> bool:
    line_begins = script.rfind("\n", 0, i) + 1
    return not script[line_begins:i].strip()


def _line_end(script: str, i: int) -> int:
    end = script.find("\n", i)
    return len(script) if end < 0 else end + 1


def _comment_end(script: str, i: int, *, nested: bool) -> int:
    depth, j, n = 1, i + 2, len(script)
    while j < n:
        if script.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0 or not nested:
                return j
        elif nested and script.startswith("/*", j):
            depth += 1
            j += 2
        else:
            j += 1
    return n


def _quoted_end(script: str, i: int, quote: str, *, backslash: bool) -> int:
    j, n = i + 1, len(script)
    while j < n:
        char = script[j]
        if backslash and char == "\\":
            j += 2
        elif char == quote:
            if script.startswith(quote, j + 1):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return n


def _skip_token(script: str, i: int, dialect: str, marks: list[int]) -> int:
    """The index after the code token at ``i`` (a quoted run is one token); records ``?`` placeholders."""
    char = script[i]
    if char == "'":
        e_string = i > 0 and script[i - 1] in "eE" and (i < 2 or not _IDENT_CHAR.match(script[i - 2]))
        return _quoted_end(script, i, "'", backslash=dialect == "mysql" or (dialect == "postgresql" and e_string))
    if char == '"':
        return _quoted_end(script, i, '"', backslash=dialect == "mysql")
    if char == "`" and dialect in ("mysql", "sqlite"):
        return _quoted_end(script, i, "`", backslash=False)
    if char == "[" and dialect == "sqlite":
        end = script.find("]", i + 1)
        return len(script) if end < 0 else end + 1
    if char == "$" and dialect == "postgresql" and not (i > 0 and _IDENT_CHAR.match(script[i - 1])):
        match = _DOLLAR_TAG.match(script, i)
        if match is not None:
            close = script.find(match[0], match.end())
            return len(script) if close < 0 else close + len(match[0])
    if char == "?":
        marks.append(i)
    return i + 1


def bind_arguments(
    statements: Sequence[Statement], args: Sequence[str], paramstyle: str
) -> list[tuple[str, tuple[str, ...] | None]]:
    """Each statement's text for the driver and its share of ``args`` (``None``: run it as written).

    ``args`` bind in order to the ``?`` placeholders across the script. For ``format``/``pyformat`` drivers
    (psycopg, PyMySQL) ``?`` becomes ``%s`` and ``%`` doubles; ``qmark`` drivers (sqlite3) take the text as is.

    Raises:
        InvalidTask: the number of placeholders and of arguments differ.
    """
    if not args:
        return [(s.text, None) for s in statements]
    total = sum(len(s.placeholders) for s in statements)
    if total != len(args):
        raise InvalidTask(
            f"the SQL script has {total} '?' placeholder(s) but {len(args)} scriptArgument value(s) were given"
        )
    bound: list[tuple[str, tuple[str, ...] | None]] = []
    used = 0
    for statement in statements:
        count = len(statement.placeholders)
        text = statement.text if paramstyle == "qmark" else to_format_style(statement)
        bound.append((text, tuple(args[used : used + count])))
        used += count
    return bound


def to_format_style(statement: Statement) -> str:
    """``statement`` for a ``format`` paramstyle driver: ``?`` placeholders as ``%s``, every other ``%`` doubled."""
    out: list[str] = []
    last = 0
    for mark in statement.placeholders:
        out.append(statement.text[last:mark].replace("%", "%%"))
        out.append("%s")
        last = mark + 1
    out.append(statement.text[last:].replace("%", "%%"))
    return "".join(out)
