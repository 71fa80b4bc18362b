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
"""

from __future__ import annotations

import logging
import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from bridge.errors import Canceled, InvalidTask, TaskFailure
from bridge.masking import SECRETS
from bridge.taskmodel import PipelineObject
from workers.context import TaskContext

log = logging.getLogger(__name__)

#: Seconds to wait for a connection (and for RDS DescribeDBInstances to connect).
CONNECT_TIMEOUT_S = 10
#: Rows per executemany batch and per fetch of a streamed export.
BATCH_ROWS = 1000
#: How often a running statement's guard looks at the cancel signal and the deadline.
GUARD_POLL_S = 0.2
SUPPORTED = "jdbc:postgresql, jdbc:mysql, jdbc:mariadb and jdbc:sqlite"
#: Engine -> SQLAlchemy driver name.
DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
#: JDBC sub-protocol -> engine.
JDBC_ENGINES = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
#: RDS DescribeDBInstances ``Engine`` -> engine.
RDS_ENGINES = {
    "postgres": "postgresql",
    "aurora-postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "aurora-mysql": "mysql",
    "aurora": "mysql",
}
#: Driver classes (``jdbcDriverClass``) -> engine, for RDS endpoints mapped without an engine.
DRIVER_CLASSES = {
    "org.postgresql.Driver": "postgresql",
    "com.mysql.jdbc.Driver": "mysql",
    "com.mysql.cj.jdbc.Driver": "mysql",
    "org.mariadb.jdbc.Driver": "mysql",
}
_OVERRIDE = re.compile(r"(?:(?P<engine>[A-Za-z]+)://)?(?P<host>.+):(?P<port>[0-9]+)")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_DELIMITER_LINE = re.compile(r"[ \t]*delimiter[ \t]+(\S+)[^\n]*(?:\n|$)", re.IGNORECASE)
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]")
#: Errors meaning "no such table" when probing one: PostgreSQL SQLSTATEs, MySQL error numbers, SQLite's text.
_NO_TABLE_STATES = frozenset({"42P01", "3F000"})
_NO_TABLE_MYSQL = frozenset({1146, 1049})


class UnsupportedDatabase(TaskFailure):
    """The database's engine or connection-string form has no Python driver here."""

    error_id = "BridgeUnsupportedDatabase"


class DatabaseUnavailable(TaskFailure):
    """No connection could be made: refused, timed out, authentication failed, or the RDS lookup failed."""

    error_id = "BridgeDatabaseUnavailable"


class SqlError(TaskFailure):
    """The database refused a statement; the message is the database's own."""

    error_id = "BridgeSqlError"


# -- URLs -----------------------------------------------------------------------------------------------


def database_url(ctx: TaskContext, database: PipelineObject) -> URL:
    """The SQLAlchemy URL of a JdbcDatabase, an RdsDatabase, or a data node with its own ``connectionString``.

    Every password found is registered with the process's secret masking.

    Raises:
        UnsupportedDatabase: an engine or connection-string form this worker cannot drive.
        DatabaseUnavailable: the RDS lookup failed.
        InvalidTask: the object lacks what its type needs.
    """
    kind = database.type or "object"
    if kind == "RdsDatabase":
        return _rds_url(ctx, database)
    if kind == "RedshiftDatabase":
        raise UnsupportedDatabase(f"RedshiftDatabase {database.id!r}: Redshift is not supported ({SUPPORTED} are)")
    connection_string = database.get("connectionString")
    if not connection_string:
        raise InvalidTask(f"{kind} {database.id!r} has no connectionString")
    return jdbc_url(
        connection_string,
        username=database.get("username"),
        password=database.get("*password"),
        properties=jdbc_properties(database),
        database_name=database.get("databaseName"),
        what=f"{kind} {database.id!r}",
    )


def jdbc_url(
    connection_string: str,
    *,
    username: str | None = None,
    password: str | None = None,
    properties: Mapping[str, str] | None = None,
    database_name: str | None = None,
    what: str = "connectionString",
) -> URL:
    """Translate a JDBC connection string (plus the object's credentials and ``jdbcProperties``) to a URL.

    Raises:
        UnsupportedDatabase: not one of the supported forms; the message names the scheme only.
        InvalidTask: a supported form that does not parse (a bad port).
    """
    if password:
        SECRETS.add([password])  # before any message could echo a part of the string
    if not connection_string.lower().startswith("jdbc:"):
        scheme = _scheme_word(connection_string) if ":" in connection_string else "(none)"
        raise _refused(f"{what}: not a JDBC connection string (scheme {scheme!r}); {SUPPORTED} are supported")
    rest = connection_string[5:]
    sub, _, tail = rest.partition(":")
    engine = JDBC_ENGINES.get(sub.lower())
    if engine is None:
        scheme = _scheme_word(sub)
        raise _refused(f"{what}: unsupported database URL scheme 'jdbc:{scheme}'; {SUPPORTED} are supported")
    if engine == "sqlite":
        path = tail.removeprefix("file:").partition("?")[0]
        return URL.create("sqlite", database=None if path in ("", ":memory:") else path)
    if tail.startswith("//"):
        host, port, database, user, secret, query = _split_authority(tail, sub, what)
    elif engine == "postgresql" and not re.match(r"[A-Za-z0-9+.-]+:", tail):
        host, port, user, secret = "localhost", None, None, None  # jdbc:postgresql:db / jdbc:postgresql:/
        database, _, raw_query = tail.lstrip("/").partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
    else:
        form = f"jdbc:{sub}:{_scheme_word(tail)}"
        raise _refused(f"{what}: unsupported connection string form {form!r}; {SUPPORTED} are supported")
    props = {**(properties or {}), **query}
    user = username or props.pop("user", None) or user
    secret = password or props.pop("password", None) or secret
    props.pop("user", None)
    props.pop("password", None)
    if secret:
        SECRETS.add([secret])
    translate = _postgresql_query if engine == "postgresql" else _mysql_query
    driver_query, ignored = translate(props)
    if ignored:
        log.info("ignored JDBC properties of %s (no Python equivalent): %s", what, ", ".join(sorted(ignored)))
    return URL.create(
        DRIVERS[engine],
        username=user or None,
        password=secret or None,
        host=host or "localhost",
        port=port or DEFAULT_PORTS[engine],
        database=database or database_name or None,
        query=driver_query,
    )


def _refused(message: str) -> UnsupportedDatabase:
    return UnsupportedDatabase(SECRETS.mask(message))


def _scheme_word(text: str) -> str:
    """The leading scheme-like word of ``text`` (at most 40 characters), so a message never echoes more of it."""
    word = re.match(r"[A-Za-z0-9+.-]{0,40}", text)
    return word[0] if word else ""


def jdbc_properties(obj: PipelineObject) -> dict[str, str]:
    """``jdbcProperties`` values (``A=B``, one or more per value, separated by ``;`` or ``&``) as a mapping."""
    found: dict[str, str] = {}
    for value in obj.get_all("jdbcProperties"):
        for pair in re.split(r"[;&]", value):
            key, sep, item = pair.partition("=")
            if sep and key.strip():
                found[key.strip()] = item.strip()
    return found


def _split_authority(
    tail: str, sub: str, what: str
) -> tuple[str | None, int | None, str, str | None, str | None, dict[str, str]]:
    parts = urlsplit(tail)
    if "," in parts.netloc:
        raise UnsupportedDatabase(f"{what}: multi-host 'jdbc:{sub}' connection strings are not supported")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidTask(f"{what}: the connection string's port is not a number") from exc
    user = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password else None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return parts.hostname, port, unquote(parts.path.lstrip("/")), user, secret, query


def _postgresql_query(props: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """pgjdbc properties as libpq parameters (psycopg passes them through)."""
    query = {"connect_timeout": str(CONNECT_TIMEOUT_S)}
    ignored = []
    for key, value in props.items():
        if key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options"):
            query[key] = value
        elif key == "ssl":
            if value.lower() in ("true", "1", ""):
                query.setdefault("sslmode", "verify-full")  # pgjdbc's meaning of ssl=true
        elif key == "connectTimeout":
            query["connect_timeout"] = value
        elif key == "ApplicationName":
            query["application_name"] = value
        elif key == "currentSchema":
            query["options"] = f"-c search_path={value}"
        else:
            ignored.append(key)
    return query, ignored


def _mysql_query(props: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """MySQL / MariaDB Connector/J properties as PyMySQL parameters (SQLAlchemy's ``ssl_*`` keys)."""
    query = {"charset": "utf8mb4", "connect_timeout": str(CONNECT_TIMEOUT_S)}
    ignored = []
    for key, value in props.items():
        lowered = value.strip().lower().replace("_", "-")
        if key in ("useSSL", "useSsl", "requireSSL") and lowered in ("true", "1"):
            query.setdefault("ssl_check_hostname", "false")  # TLS without verification: Connector/J's REQUIRED
        elif key in ("useSSL", "useSsl", "requireSSL", "verifyServerCertificate"):
            pass
        elif key == "sslMode":
            if lowered in ("required", "trust"):
                query["ssl_check_hostname"] = "false"
            elif lowered in ("verify-ca", "verify-identity", "verify-full"):
                paths = ssl.get_default_verify_paths()
                if paths.cafile:
                    query["ssl_ca"] = paths.cafile
                elif paths.capath:
                    query["ssl_capath"] = paths.capath
                query["ssl_check_hostname"] = "false" if lowered == "verify-ca" else "true"
        elif key == "characterEncoding":
            query["charset"] = "utf8mb4" if lowered in ("utf-8", "utf8", "utf8mb4") else value
        elif key == "connectTimeout" and value.isdigit():
            query["connect_timeout"] = str(max(1, int(value) // 1000))  # milliseconds in Connector/J
        else:
            ignored.append(key)
    return query, ignored


def _rds_url(ctx: TaskContext, database: PipelineObject) -> URL:
    instance_id = database.get("rdsInstanceId")
    if not instance_id:
        raise InvalidTask(f"RdsDatabase {database.id!r} has no rdsInstanceId")
    override = ctx.settings.rds_endpoints.get(instance_id)
    if override is not None:
        engine, host, port = _override_endpoint(instance_id, override, database)
        db_name = database.get("databaseName")
    else:
        engine, host, port, db_name = _describe_instance(instance_id, database.get("region") or ctx.settings.region)
        db_name = database.get("databaseName") or db_name
    password = database.get("*password")
    if password:
        SECRETS.add([password])
    translate = _postgresql_query if engine == "postgresql" else _mysql_query
    query, ignored = translate(jdbc_properties(database))
    if ignored:
        log.info("ignored JDBC properties of RdsDatabase %r: %s", database.id, ", ".join(sorted(ignored)))
    return URL.create(
        DRIVERS[engine],
        username=database.get("username") or None,
        password=password or None,
        host=host,
        port=port,
        database=db_name or None,
        query=query,
    )


def _override_endpoint(instance_id: str, value: str, database: PipelineObject) -> tuple[str, str, int]:
    match = _OVERRIDE.fullmatch(value.strip())
    if match is None:
        raise UnsupportedDatabase(f"BRIDGE_RDS_ENDPOINTS entry of {instance_id!r} is not [engine://]host:port")
    host, port = match["host"], int(match["port"])
    named = (match["engine"] or "").lower()
    if named:
        engine = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}.get(named)
        if engine is None:
            raise UnsupportedDatabase(f"BRIDGE_RDS_ENDPOINTS entry of {instance_id!r}: unsupported engine {named!r}")
        return engine, host, port
    driver = DRIVER_CLASSES.get(database.get("jdbcDriverClass") or "")
    by_port = {5432: "postgresql", 3306: "mysql"}.get(port)
    engine = driver or by_port or ""
    if not engine:
        raise UnsupportedDatabase(
            f"cannot tell the engine of RDS instance {instance_id!r} mapped to port {port} by BRIDGE_RDS_ENDPOINTS: "
            f"write it as {instance_id}=postgresql://{host}:{port} or {instance_id}=mysql://{host}:{port}"
        )
    return engine, host, port


def _describe_instance(instance_id: str, region: str) -> tuple[str, str, int, str | None]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=30, retries={"mode": "standard", "max_attempts": 3})
    try:
        client = boto3.session.Session().client("rds", region_name=region, config=config)
        found = client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, detail = error.get("Code"), error.get("Message")
        raise DatabaseUnavailable(
            f"RDS DescribeDBInstances of {instance_id!r} in {region} failed: {code}: {detail}"
        ) from exc
    except NoCredentialsError as exc:
        raise DatabaseUnavailable(f"no AWS credentials (boto3's default chain) to look up RDS {instance_id!r}") from exc
    except BotoCoreError as exc:
        raise DatabaseUnavailable(f"RDS DescribeDBInstances of {instance_id!r} in {region} failed: {exc}") from exc
    if not found:
        raise DatabaseUnavailable(f"RDS instance {instance_id!r} not found in {region}")
    instance = found[0]
    rds_engine = str(instance.get("Engine", ""))
    engine = RDS_ENGINES.get(rds_engine.lower())
    if engine is None:
        raise UnsupportedDatabase(f"RDS instance {instance_id!r} runs {rds_engine!r}; {SUPPORTED} are supported")
    endpoint = instance.get("Endpoint") or {}
    if not endpoint.get("Address"):
        status = instance.get("DBInstanceStatus", "unknown")
        raise DatabaseUnavailable(f"RDS instance {instance_id!r} has no endpoint yet (status {status})")
    port = int(endpoint.get("Port") or DEFAULT_PORTS[engine])
    return engine, str(endpoint["Address"]), port, instance.get("DBName")


def node_database(ctx: TaskContext, node: PipelineObject) -> PipelineObject:
    """The object holding a data node's connection: its ``database`` ref, else the node itself.

    Raises:
        InvalidTask: neither a ``database`` nor a ``connectionString``, or the ref cannot be resolved.
    """
    ref = node.ref("database")
    if ref is not None:
        return ctx.resolve(ref)
    if node.get("connectionString"):
        return node
    raise InvalidTask(f"{node.type or 'data node'} {node.id!r} needs a 'database' ref or a 'connectionString'")


# -- engines and errors -------------------------------------------------------------------------------------


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


# -- scripts --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ScriptResult:
    """What a script did: the rows each statement affected (``-1``: the driver does not say)."""

    rowcounts: tuple[int, ...]

    @property
    def statements(self) -> int:
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


# -- SQL data nodes ------------------------------------------------------------------------------------------


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
