"""Running a SQL script: its statements in one transaction, arguments bound, canceled with the task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bridge.errors import Canceled, InvalidTask
from workers.context import TaskContext
from workers.sql.engines import StatementGuard, connect, sql_failure
from workers.sql.statements import bind_arguments, split_script


@dataclass(frozen=True)
class ScriptResult:
    """What a script did: the rows each statement affected (``-1``: the driver does not say)."""

    rowcounts: tuple[int, ...]

    @property
    def statements(self) -> int:
        """How many statements ran."""
        return len(self.rowcounts)


def run_script(ctx: TaskContext, eng: Engine, sql_text: str, args: Sequence[str] = ()) -> ScriptResult:
    """Run every statement of ``sql_text`` in one transaction, binding ``args`` to its ``?`` placeholders.

    Canceling the task or passing its ``attemptTimeout`` cancels the running statement and rolls back.

    Raises:
        Canceled: the task was canceled.
        TaskFailure: ``BridgeAttemptTimeout``.
        SqlError: a statement failed (with the database's message and the statement's number).
        DatabaseUnavailable: no connection, or it broke.
        InvalidTask: an empty script, or placeholders and arguments that do not match.
    """
    dialect = eng.dialect.name
    statements = split_script(sql_text, dialect)
    if not statements:
        raise InvalidTask("the SQL script has no statements")
    bound = bind_arguments(statements, args, eng.dialect.paramstyle)
    timeout_s = ctx.task.attempt_timeout_s
    deadline = time.monotonic() + timeout_s if timeout_s else None
    if ctx.cancel.is_set():
        raise Canceled(ctx.cancel_reason or "canceled")
    rowcounts: list[int] = []
    with connect(eng) as conn, StatementGuard(ctx, eng, conn, deadline) as guard:
        number = 0
        try:
            with conn.begin():
                for number, (text, params) in enumerate(bound, 1):
                    guard.check()
                    rowcounts.append(_execute(conn, text, params))
                    ctx.log.debug("SQL statement %d of %d done (%d rows)", number, len(bound), rowcounts[-1])
                guard.check()
        except sa.exc.DBAPIError as exc:
            guard.check()
            raise sql_failure(exc, eng.url, f": statement {number} of {len(bound)} failed") from exc
    return ScriptResult(tuple(rowcounts))


def _execute(conn: Connection, text: str, params: tuple[str, ...] | None) -> int:
    if params is None:
        result = conn.execution_options(no_parameters=True).exec_driver_sql(text)
    else:
        result = conn.exec_driver_sql(text, params)
    try:
        return int(result.rowcount)
    finally:
        result.close()
