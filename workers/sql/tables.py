"""The tables of SQL data nodes: probing and creating them, exporting and importing their rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bridge.errors import InvalidTask
from bridge.taskmodel import PipelineObject
from workers.context import TaskContext
from workers.sql.engines import StatementGuard, connect, engine, sql_failure
from workers.sql.scripts import _execute, run_script
from workers.sql.statements import split_script, to_format_style
from workers.sql.urls import node_database

#: Rows per executemany batch and per fetch of a streamed export.
BATCH_ROWS = 1000
#: Errors meaning "no such table" when probing one: PostgreSQL SQLSTATEs, MySQL error numbers, SQLite's text.
_NO_TABLE_STATES = frozenset({"42P01", "3F000"})
_NO_TABLE_MYSQL = frozenset({1146, 1049})


def qualified_table(node: PipelineObject) -> str:
    """The node's ``table``, prefixed with ``schemaName`` when it has one, as written (the database folds case).

    Raises:
        InvalidTask: the node has no ``table``.
    """
    table = node.get("table")
    if not table:
        raise InvalidTask(f"{node.type or 'data node'} {node.id!r} has no 'table'")
    schema = node.get("schemaName")
    return f"{schema}.{table}" if schema and "." not in table else table


def table_exists(ctx: TaskContext, node: PipelineObject) -> bool:
    """Whether the SQL data node's table exists (probed with a query, so names resolve as the database does).

    Raises:
        DatabaseUnavailable, SqlError, UnsupportedDatabase, InvalidTask.
    """
    table = qualified_table(node)
    eng = engine(ctx, node_database(ctx, node))
    try:
        with connect(eng) as conn:
            try:
                _execute(conn, f"SELECT 1 FROM {table} WHERE 1 = 0", None)
            except sa.exc.DBAPIError as exc:
                if _no_such_table(exc):
                    return False
                raise sql_failure(exc, eng.url, f": probing table {table}") from exc
            return True
    finally:
        eng.dispose()


def _no_such_table(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _NO_TABLE_STATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _NO_TABLE_MYSQL:
        return True
    return isinstance(orig, sqlite3.OperationalError) and str(orig).startswith("no such table")


def create_table_if_missing(ctx: TaskContext, node: PipelineObject) -> bool:
    """Run the node's ``createTableSql`` when its table does not exist; returns whether it ran.

    Raises:
        DatabaseUnavailable, SqlError, UnsupportedDatabase, InvalidTask.
    """
    create_sql = node.get("createTableSql")
    if not create_sql or table_exists(ctx, node):
        return False
    eng = engine(ctx, node_database(ctx, node))
    try:
        run_script(ctx, eng, create_sql)
    finally:
        eng.dispose()
    return True


def export_rows(ctx: TaskContext, node: PipelineObject) -> Iterator[tuple[Any, ...]]:
    """Stream the rows of the node's ``selectQuery`` (else ``SELECT * FROM table``) with a server-side cursor.

    Values are the driver's (``None``, ``str``, ``int``, ``Decimal``, ``datetime``...). Canceling the task stops it.

    Raises:
        Canceled, DatabaseUnavailable, SqlError, UnsupportedDatabase, InvalidTask.
    """
    query = node.get("selectQuery") or f"SELECT * FROM {qualified_table(node)}"
    eng = engine(ctx, node_database(ctx, node))
    try:
        with connect(eng) as conn, StatementGuard(ctx, eng, conn) as guard:
            streaming = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS, no_parameters=True)
            try:
                result = streaming.exec_driver_sql(query)
                for row in result:
                    yield tuple(row)
                    guard.check()
            except sa.exc.DBAPIError as exc:
                guard.check()
                raise sql_failure(exc, eng.url, f": exporting {node.id!r}") from exc
    finally:
        eng.dispose()


def import_rows(
    ctx: TaskContext, node: PipelineObject, columns: Sequence[str] | None, rows: Iterable[Sequence[Any]]
) -> int:
    """Insert ``rows`` with the node's ``insertQuery`` (``?`` placeholders), else a plain ``INSERT INTO table``.

    Rows go in batches of :data:`BATCH_ROWS` (``executemany``), all in one transaction; returns the number of
    rows. ``columns`` names the plain INSERT's columns (``None``: the table's, in order).

    Raises:
        Canceled, DatabaseUnavailable, SqlError, UnsupportedDatabase, InvalidTask (a row whose width does not
        match the placeholders).
    """
    eng = engine(ctx, node_database(ctx, node))
    try:
        text, width = _insert_statement(eng, node, columns, rows_width=None)
        total = 0
        iterator = iter(rows)
        with connect(eng) as conn, StatementGuard(ctx, eng, conn) as guard:
            try:
                with conn.begin():
                    while batch := [tuple(row) for row in islice(iterator, BATCH_ROWS)]:
                        guard.check()
                        if width is None:
                            text, width = _insert_statement(eng, node, columns, rows_width=len(batch[0]))
                        bad = next((r for r in batch if len(r) != width), None)
                        if bad is not None:
                            raise InvalidTask(f"a row of {len(bad)} values for {width} placeholders of {node.id!r}")
                        conn.exec_driver_sql(text, batch)
                        total += len(batch)
                    guard.check()
            except sa.exc.DBAPIError as exc:
                guard.check()
                raise sql_failure(exc, eng.url, f": importing into {node.id!r} after {total} rows") from exc
        return total
    finally:
        eng.dispose()


def _insert_statement(
    eng: Engine, node: PipelineObject, columns: Sequence[str] | None, rows_width: int | None
) -> tuple[str, int | None]:
    """The INSERT for the driver and how many values each row needs (``None``: not known until the first row)."""
    style = eng.dialect.paramstyle
    insert_query = node.get("insertQuery")
    if insert_query:
        statements = split_script(insert_query, eng.dialect.name)
        if len(statements) != 1:
            raise InvalidTask(f"insertQuery of {node.id!r} must be one statement, not {len(statements)}")
        statement = statements[0]
        text = statement.text if style == "qmark" else to_format_style(statement)
        return text, len(statement.placeholders)
    width = len(columns) if columns else rows_width
    if width is None:
        return "", None
    mark = "?" if style == "qmark" else "%s"
    column_list = f" ({', '.join(columns)})" if columns else ""
    values = ", ".join([mark] * width)
    return f"INSERT INTO {qualified_table(node)}{column_list} VALUES ({values})", width
