"""SQL databases for handlers: JDBC / RDS objects as SQLAlchemy URLs, scripts, and the rows of SQL data nodes.

What a pipeline author can rely on:

- **Connection strings** (``JdbcDatabase``, or ``SqlDataNode`` / ``MySqlDataNode`` carrying their own
  ``connectionString``): ``jdbc:postgresql://host[:port]/db`` (also ``jdbc:postgresql:db``) runs on psycopg,
  ``jdbc:mysql://`` and ``jdbc:mariadb://`` on PyMySQL, ``jdbc:sqlite:path`` on the standard library's sqlite3
  (a relative path is relative to the worker's working directory). ``username`` and ``*password`` win over a
  user and password in the string; the string's ``?key=value`` properties win over ``jdbcProperties`` (``A=B``
  values). Properties with a Python equivalent are translated (``sslmode``, ``ssl``, ``connectTimeout``,
  ``currentSchema``, ``ApplicationName``; MySQL's ``useSSL`` / ``sslMode``, ``characterEncoding``); the rest are
  Java-driver settings and are ignored (logged by name). ``databaseName`` is used when the string names no
  database. Oracle, SQL Server, Redshift, multi-host, load-balancing and every other form end FAILED
  ``BridgeUnsupportedDatabase``, naming the scheme and never the string (it may hold a password).
- **RdsDatabase**: ``rdsInstanceId`` is looked up with RDS DescribeDBInstances (boto3's default credentials,
  ``AWS_ENDPOINT_URL_RDS`` honoured, region from the object's ``region`` else the worker's), which gives the
  engine, host, port and the instance's ``DBName`` (``databaseName`` wins). ``BRIDGE_RDS_ENDPOINTS=id=host:port``
  skips the lookup; the engine is then, first match wins: an ``engine://`` prefix on the value
  (``id=postgresql://host:port``, ``mysql://``, ``mariadb://``), the object's ``jdbcDriverClass`` if it has one,
  else the port (5432: PostgreSQL, 3306: MySQL); any other port ends FAILED ``BridgeUnsupportedDatabase``.
- **Scripts** are split into statements here (quotes, comments, PostgreSQL dollar quoting, MySQL ``DELIMITER``
  lines and SQLite trigger bodies respected) and run in one transaction: on PostgreSQL and SQLite a failing
  statement leaves nothing of the script behind; on MySQL / MariaDB every DDL statement (``CREATE``, ``ALTER``,
  ``DROP``...) commits implicitly, so only the DML after the last DDL is rolled back. PostgreSQL statements that
  cannot run inside a transaction block (``VACUUM``, ``CREATE DATABASE``, ``CREATE INDEX CONCURRENTLY``) fail.
- **scriptArgument** values bind, in order, to the ``?`` placeholders of the script (outside quotes and
  comments), JDBC prepared-statement style, as text; the counts must match. Without scriptArgument the script
  runs exactly as written (a PostgreSQL ``?`` jsonb operator is then just an operator). AWS documents
  scriptArgument only as "a list of variables for the script"; the ``?`` binding is our reading of its JDBC runner.
- **Cancellation and attemptTimeout** cancel the running statement (PostgreSQL cancel request, MySQL
  ``KILL QUERY``, SQLite interrupt) and roll the transaction back.
- **Errors**: a database's own error ends FAILED ``BridgeSqlError`` with its message; a connection that cannot be
  made (refused, timed out, authentication) ``BridgeDatabaseUnavailable``. Messages name the database as a URL
  without its password and are masked with every secret of the task.

The package, by responsibility: :mod:`~workers.sql.urls` (where a database is: JDBC strings, RDS lookup),
:mod:`~workers.sql.engines` (engines, connecting, errors, canceling a statement), :mod:`~workers.sql.statements`
(splitting a script, binding arguments), :mod:`~workers.sql.scripts` (running one), :mod:`~workers.sql.tables`
(the tables of SQL data nodes) and :mod:`~workers.sql.errors`. Import from ``workers.sql``.
"""

from workers.sql.engines import (
    GUARD_POLL_S,
    StatementGuard,
    connect,
    create_engine,
    driver_message,
    engine,
    sql_failure,
)
from workers.sql.errors import DatabaseUnavailable, SqlError, UnsupportedDatabase
from workers.sql.scripts import ScriptResult, run_script
from workers.sql.statements import Statement, bind_arguments, split_script, to_format_style
from workers.sql.tables import (
    BATCH_ROWS,
    create_table_if_missing,
    export_rows,
    import_rows,
    qualified_table,
    table_exists,
)
from workers.sql.urls import (
    CONNECT_TIMEOUT_S,
    DEFAULT_PORTS,
    DRIVER_CLASSES,
    DRIVERS,
    JDBC_ENGINES,
    RDS_ENGINES,
    SUPPORTED,
    database_url,
    jdbc_properties,
    jdbc_url,
    node_database,
)

__all__ = [
    "BATCH_ROWS",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_PORTS",
    "DRIVERS",
    "DRIVER_CLASSES",
    "GUARD_POLL_S",
    "JDBC_ENGINES",
    "RDS_ENGINES",
    "SUPPORTED",
    "DatabaseUnavailable",
    "ScriptResult",
    "SqlError",
    "Statement",
    "StatementGuard",
    "UnsupportedDatabase",
    "bind_arguments",
    "connect",
    "create_engine",
    "create_table_if_missing",
    "database_url",
    "driver_message",
    "engine",
    "export_rows",
    "import_rows",
    "jdbc_properties",
    "jdbc_url",
    "node_database",
    "qualified_table",
    "run_script",
    "split_script",
    "sql_failure",
    "table_exists",
    "to_format_style",
]
