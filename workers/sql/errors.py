"""The task failures of SQL work, by their ``errorId``: unsupported database, unavailable database, SQL error."""

from __future__ import annotations

from bridge.errors import TaskFailure


class UnsupportedDatabase(TaskFailure):
    """The database's engine or connection-string form has no Python driver here."""

    error_id = "BridgeUnsupportedDatabase"


class DatabaseUnavailable(TaskFailure):
    """No connection could be made: refused, timed out, authentication failed, or the RDS lookup failed."""

    error_id = "BridgeDatabaseUnavailable"


class SqlError(TaskFailure):
    """The database refused a statement; the message is the database's own."""

    error_id = "BridgeSqlError"
