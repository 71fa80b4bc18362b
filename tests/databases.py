"""Real databases for SQL tests: a uniquely named database (and user) per test module, dropped afterwards.

PostgreSQL and MariaDB are the machine's own servers (PostgreSQL on 127.0.0.1:5432 with user ``postgres``,
MariaDB on 127.0.0.1:3306 with ``root`` and no password; ``TEST_POSTGRES_ADMIN_URL`` / ``TEST_MARIADB_ADMIN_URL``
override). When one is not running its tests skip, loudly naming the Debian package; under ``CI=true`` they
fail instead, because CI must start them. SQLite needs nothing but a file.

Each database gets its own user with a password (PostgreSQL's local trust authentication ignores it, MariaDB
checks it), so tests can prove the password never leaks.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from bridge.settings import Settings
from bridge.taskmodel import PipelineObject, parse_task_object
from workers.context import TaskContext

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("TEST_MARIADB_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
#: How to get each server, for the skip (or CI failure) message.
HOW_TO_START = {
    "postgresql": "install Debian's 'postgresql' package and start it: pg_ctlcluster 15 main start",
    "mariadb": (
        "install Debian's 'mariadb-server' package and start it: service mariadb start (this image lacks the"
        " init script's /etc/mysql/debian.cnf; there: setsid /usr/sbin/mariadbd </dev/null >/dev/null 2>&1 &)"
    ),
}


@dataclass(frozen=True)
class TestDatabase:
    """One database a test module owns.

    Attributes:
        kind: ``postgresql``, ``mariadb`` or ``sqlite``.
        name: The database's name (SQLite: the file's path).
        url: A SQLAlchemy URL with the module user's credentials.
        jdbc: The JDBC connection string (``jdbc:postgresql://...``; no credentials in it).
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    kind: str
    name: str
    url: URL
    jdbc: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, run in a fresh connection."""
        eng = sa.create_engine(self.url, poolclass=NullPool, execution_options={"no_parameters": True})
        try:
            with eng.connect() as conn:
                return [tuple(row) for row in conn.exec_driver_sql(sql)]
        finally:
            eng.dispose()

    def execute(self, *statements: str) -> None:
        """Run ``statements`` in one transaction, in a fresh connection."""
        eng = sa.create_engine(self.url, poolclass=NullPool, execution_options={"no_parameters": True})
        try:
            with eng.begin() as conn:
                for sql in statements:
                    conn.exec_driver_sql(sql)
        finally:
            eng.dispose()

    def table_names(self) -> set[str]:
        eng = sa.create_engine(self.url, poolclass=NullPool)
        try:
            return set(sa.inspect(eng).get_table_names())
        finally:
            eng.dispose()

    def jdbc_database(self, object_id: str, **fields: Any) -> dict[str, Any]:
        """A JdbcDatabase definition object for this database."""
        driver = {"postgresql": "org.postgresql.Driver", "mariadb": "org.mariadb.jdbc.Driver"}.get(self.kind)
        return {
            "id": object_id,
            "type": "JdbcDatabase",
            "connectionString": self.jdbc,
            "jdbcDriverClass": driver or "org.sqlite.JDBC",
            "username": self.user or "nobody",
            "*password": self.password or "unused",
            **fields,
        }


def unique_name(request: pytest.FixtureRequest) -> str:
    """``dpb_<module>_<random>``: lower case, at most 40 characters, safe unquoted on every server."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    slug = "".join(c if c.isalnum() else "_" for c in module.lower())[:20]
    return f"dpb_{slug}_{uuid.uuid4().hex[:10]}"


def server_missing(kind: str, exc: Exception) -> None:
    """Skip (fail under ``CI=true``) because the ``kind`` server cannot be reached."""
    message = (
        f"!!! {kind} is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
        f"SQL tests on {kind} need it: {HOW_TO_START[kind]}"
    )
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _admin(url: str, kind: str) -> sa.Engine:
    eng = sa.create_engine(
        url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
        execution_options={"no_parameters": True},  # SQL as written: '%' is no placeholder
    )
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        eng.dispose()
        server_missing(kind, exc)
    return eng


@pytest.fixture(scope="module")
def postgres_db(request: pytest.FixtureRequest) -> Iterator[TestDatabase]:
    """A fresh PostgreSQL database owned by a fresh login role with a password; both dropped afterwards."""
    admin = _admin(POSTGRES_ADMIN_URL, "postgresql")
    name, password = unique_name(request), f"Pg-{secrets.token_hex(8)}"
    server = make_url(POSTGRES_ADMIN_URL)
    host, port = server.host or "127.0.0.1", server.port or 5432
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {name}")
        url = URL.create("postgresql+psycopg", name, password, host, port, name)
        yield TestDatabase(
            "postgresql", name, url, f"jdbc:postgresql://{host}:{port}/{name}", name, password, host, port
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(scope="module")
def mariadb_db(request: pytest.FixtureRequest) -> Iterator[TestDatabase]:
    """A fresh MariaDB database and a user with a password and every privilege on it; both dropped afterwards."""
    admin = _admin(MARIADB_ADMIN_URL, "mariadb")
    name, password = unique_name(request), f"Ma-{secrets.token_hex(8)}"
    server = make_url(MARIADB_ADMIN_URL)
    host, port = server.host or "127.0.0.1", server.port or 3306
    # Every host form a TCP connection from this machine can match, so no anonymous user shadows this one.
    accounts = [f"'{name}'@'{where}'" for where in ("%", "127.0.0.1", "localhost")]
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
            for account in accounts:
                conn.exec_driver_sql(f"CREATE USER {account} IDENTIFIED BY '{password}'")
                conn.exec_driver_sql(f"GRANT ALL PRIVILEGES ON {name}.* TO {account}")
        url = URL.create("mysql+pymysql", name, password, host, port, name)
        yield TestDatabase("mariadb", name, url, f"jdbc:mysql://{host}:{port}/{name}", name, password, host, port)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            for account in accounts:
                conn.exec_driver_sql(f"DROP USER IF EXISTS {account}")
        admin.dispose()


@pytest.fixture(scope="module")
def sqlite_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabase]:
    """A SQLite file in a temporary directory, removed afterwards."""
    path: Path = tmp_path_factory.mktemp("sqlite") / f"{unique_name(request)}.db"
    yield TestDatabase("sqlite", str(path), URL.create("sqlite", database=str(path)), f"jdbc:sqlite:{path}")
    path.unlink(missing_ok=True)


# -- task contexts for calling workers.sql directly ---------------------------------------------------------

ATTEMPT = "@Run_2024-01-01T00:00:00_Attempt=1"


class OfflineApi:
    """A TaskApi for tests that must not reach Data Pipeline: every call fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Data Pipeline call {name}")


def api_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A definition-style object (``{"id", "key": value | {"ref": id} | [values]}``) in the API's shape."""
    fields = []
    for key, value in obj.items():
        if key == "id":
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                fields.append({"key": key, "refValue": item["ref"]})
            else:
                fields.append({"key": key, "stringValue": item})
    return {"id": obj["id"], "name": obj["id"], "fields": fields}


def task_context(
    *objects: Mapping[str, Any], settings: Settings | None = None, work_dir: Path | None = None, **attempt: Any
) -> TaskContext:
    """A context whose task holds an SqlActivity attempt (``attempt`` fields) and ``objects``, offline."""
    run = {"id": ATTEMPT, "type": "SqlActivity", "@sphere": "ATTEMPT", **attempt}
    raw = {
        "taskId": "task-1",
        "pipelineId": "df-SQLTEST",
        "attemptId": ATTEMPT,
        "objects": {o["id"]: api_object(o) for o in (run, *objects)},
    }
    return TaskContext(
        parse_task_object(raw),
        settings or Settings(),
        OfflineApi(),
        work_dir or Path("/nonexistent"),
        threading.Event(),
        logging.LoggerAdapter(logging.getLogger("tests.sql"), {}),
    )


def resolve(ctx: TaskContext, object_id: str) -> PipelineObject:
    """An object of ``ctx``'s task."""
    return ctx.resolve(object_id)
