"""Connections to a database: engines, connecting, database errors as task failures, canceling a statement."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from bridge.errors import Canceled, TaskFailure
from bridge.masking import SECRETS
from bridge.taskmodel import PipelineObject
from workers.context import TaskContext
from workers.sql.errors import DatabaseUnavailable, SqlError
from workers.sql.urls import CONNECT_TIMEOUT_S, database_url

#: How often a running statement's guard looks at the cancel signal and the deadline.
GUARD_POLL_S = 0.2


def engine(ctx: TaskContext, database: PipelineObject) -> Engine:
    """An engine for ``database``: a small pool, pre-ping, a connect timeout. ``dispose()`` it when done.

    Raises:
        UnsupportedDatabase, DatabaseUnavailable, InvalidTask: see :func:`database_url`.
    """
    return create_engine(database_url(ctx, database))


def create_engine(url: URL) -> Engine:
    """An engine for ``url`` as :func:`engine` builds them (SQLite with transactional DDL)."""
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_size=2, max_overflow=1, pool_pre_ping=True, pool_recycle=1800)
    eng = sa.create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_S})

    # sqlite3 would commit DDL outside the transaction: let SQLAlchemy's BEGIN be the only one (its documented
    # recipe), so a failing script on SQLite leaves nothing behind either.
    @sa.event.listens_for(eng, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(eng, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return eng


def connect(eng: Engine) -> Connection:
    """A connection from ``eng``.

    Raises:
        DatabaseUnavailable: refused, timed out, authentication failed... with the driver's message.
    """
    try:
        return eng.connect()
    except sa.exc.DBAPIError as exc:
        where = eng.url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(_masked(f"cannot connect to {where}: {driver_message(exc)}", eng.url)) from exc


def driver_message(exc: BaseException) -> str:
    """The database's (driver's) own message for ``exc``, without SQLAlchemy's statement and parameter dump."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):  # PyMySQL: (errno, message)
        return f"{args[1]} (error {args[0]})"
    return str(orig).strip() or type(orig).__name__


def sql_failure(exc: sa.exc.DBAPIError, url: URL, context: str = "") -> TaskFailure:
    """A database error as a task failure: BridgeDatabaseUnavailable if the connection broke, else BridgeSqlError."""
    where = url.render_as_string(hide_password=True)
    message = driver_message(exc)
    if exc.connection_invalidated:
        return DatabaseUnavailable(_masked(f"lost the connection to {where}{context}: {message}", url))
    return SqlError(_masked(f"{where}{context}: {message}", url))


def _masked(text: str, url: URL) -> str:
    if url.password:
        text = text.replace(str(url.password), "****")
    return SECRETS.mask(text)


class StatementGuard:
    """Cancels the statement running on ``conn`` when the task is canceled or ``deadline`` passes (best effort).

    PostgreSQL: psycopg's cancel request; MySQL / MariaDB: ``KILL QUERY`` from a second connection; SQLite:
    ``interrupt()``. After a statement fails, :meth:`check` turns the failure into what really happened.
    """

    def __init__(self, ctx: TaskContext, eng: Engine, conn: Connection, deadline: float | None = None) -> None:
        self.ctx = ctx
        self.engine = eng
        self.deadline = deadline
        self.fired = ""
        self._dbapi: Any = conn.connection.dbapi_connection
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sql-guard", daemon=True)

    def __enter__(self) -> StatementGuard:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def check(self) -> None:
        """Raise if the guard fired (or the task was canceled meanwhile).

        Raises:
            Canceled: the task was canceled.
            TaskFailure: ``BridgeAttemptTimeout``, the deadline passed.
        """
        if self.fired == "canceled" or self.ctx.cancel.is_set():
            raise Canceled(self.ctx.cancel_reason or getattr(self.ctx.cancel, "reason", "") or "canceled")
        if self.fired == "timeout" or (self.deadline is not None and time.monotonic() >= self.deadline):
            timeout = self.ctx.task.attempt_timeout_s or 0
            raise TaskFailure(
                f"the SQL ran longer than attemptTimeout ({timeout:g} s) and was canceled", "BridgeAttemptTimeout"
            )

    def _watch(self) -> None:
        while not self._done.wait(GUARD_POLL_S):
            if self.ctx.cancel.is_set():
                self.fired = "canceled"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.fired = "timeout"
            else:
                continue
            self.ctx.log.info("canceling the running SQL statement (%s)", self.fired)
            self._interrupt()
            return

    def _interrupt(self) -> None:
        name = self.engine.dialect.name
        try:
            if name == "postgresql":
                cancel = getattr(self._dbapi, "cancel_safe", None) or self._dbapi.cancel
                cancel()
            elif name == "mysql":
                thread_id = int(self._dbapi.thread_id())
                with self.engine.connect() as killer:
                    killer.exec_driver_sql(f"KILL QUERY {thread_id}")
            elif name == "sqlite":
                self._dbapi.interrupt()
        except Exception as exc:  # best effort: the check between statements still stops the script
            self.ctx.log.warning("could not cancel the running SQL statement: %s", _masked(str(exc), self.engine.url))
