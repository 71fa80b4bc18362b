"""SqlActivity and workers.sql against real PostgreSQL, MariaDB and SQLite.

Two parts. First, ``workers.sql`` called directly (as the CopyActivity and Exists handlers call it): scripts and
their transactions, cancellation and timeouts of a running statement, rows in and out of SQL data nodes, RDS
DescribeDBInstances on moto's server. Then pipelines end to end: one stack for the module of moto's server (for
``scriptUri``), the local service (periods scaled 60x, a 5 s progress timeout), a private Redis, a threads-pool
worker at DEBUG on ``dp.sqlwg`` and ``bridge start -g sqlwg``, with ``BRIDGE_RDS_ENDPOINTS`` mapping three RDS
instance ids to the local servers. Outcomes are read the way a user reads them: DescribeObjects, the rows in the
database, the worker's log.

Each module gets its own PostgreSQL and MariaDB database and user (``tests/databases.py``); a server that is not
running skips these tests loudly, or fails them under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.errors import Canceled, TaskFailure
from bridge.leases import PREFIX
from bridge.settings import Settings
from tests.databases import TestDatabase, mariadb_db, postgres_db, resolve, sqlite_db, task_context
from tests.integration.bridge_stack import Stack, attempts, instance, logged, run_pipeline, wait_final
from tests.moto_server import CREDENTIALS, MotoServer
from tests.samples_adapt import load_sample, to_worker_group, with_fields, with_values
from tests.support import free_port, put_definition, wait_for
from workers.context import TaskContext
from workers.sql import (
    DatabaseUnavailable,
    SqlError,
    UnsupportedDatabase,
    create_table_if_missing,
    database_url,
    engine,
    export_rows,
    import_rows,
    run_script,
    table_exists,
)

#: The database fixtures, imported so pytest finds them here.
DATABASE_FIXTURES = (postgres_db, mariadb_db, sqlite_db)
GROUP = "sqlwg"
FIXTURES = {"postgresql": "postgres_db", "mariadb": "mariadb_db", "sqlite": "sqlite_db"}
#: A statement that runs until it is canceled (SQLite: an endless recursive count), per engine.
ENDLESS = {
    "postgresql": "SELECT pg_sleep(120) /* {marker} */",
    "mariadb": "SELECT SLEEP(120) /* {marker} */",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) /* {marker} */ FROM c",
}


def data_node(object_id: str, table: str, **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "SqlDataNode", "database": {"ref": "Db"}, "table": table, **fields}


def new_table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=sorted(FIXTURES))
def db(request: pytest.FixtureRequest) -> TestDatabase:
    """Each test on PostgreSQL, MariaDB and SQLite."""
    found: TestDatabase = request.getfixturevalue(FIXTURES[request.param])
    return found


def context_for(db: TestDatabase, tmp_path: Path | None = None, **attempt: Any) -> tuple[TaskContext, Any]:
    """A task context with ``db`` as JdbcDatabase ``Db``, and an engine for it."""
    ctx = task_context(db.jdbc_database("Db"), work_dir=tmp_path, **attempt)
    return ctx, engine(ctx, resolve(ctx, "Db"))


def running(db: TestDatabase, marker: str) -> bool:
    """Whether a statement containing ``marker`` is running on ``db``'s server (never true for SQLite)."""
    if db.kind == "postgresql":
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    elif db.kind == "mariadb":
        sql = (
            "SELECT count(*) FROM information_schema.processlist"
            f" WHERE info LIKE '%{marker}%' AND id <> CONNECTION_ID()"
        )
    else:
        return False
    return bool(db.query(sql)[0][0])


# -- workers.sql directly ----------------------------------------------------------------------------------


def test_a_script_runs_every_statement_with_its_arguments(db: TestDatabase) -> None:
    # given a script with quoted semicolons, a literal percent sign and three '?' placeholders over two statements
    ctx, eng = context_for(db)
    table = new_table()
    script = f"""
        CREATE TABLE {table} (id INTEGER, label VARCHAR(40), note VARCHAR(40));  -- a comment; with a semicolon
        INSERT INTO {table} VALUES (?, 'semi;colon', '100%');
        INSERT INTO {table} VALUES (?, ?, NULL);
    """

    # when it runs
    try:
        result = run_script(ctx, eng, script, ["1", "2", "it's ?"])
    finally:
        eng.dispose()

    # then every statement ran and the rows hold the arguments as given
    assert result.statements == 3
    assert sorted(db.query(f"SELECT id, label, note FROM {table}")) == [(1, "semi;colon", "100%"), (2, "it's ?", None)]


def test_a_failing_statement_rolls_the_whole_script_back_where_the_database_allows(db: TestDatabase) -> None:
    # given a script whose third statement refers to a table that does not exist
    ctx, eng = context_for(db)
    table, missing = new_table(), new_table()
    script = f"CREATE TABLE {table} (id INTEGER); INSERT INTO {table} VALUES (1); INSERT INTO {missing} VALUES (2)"

    # when it runs, it fails with the database's own message and the statement's number
    try:
        with pytest.raises(SqlError) as failed:
            run_script(ctx, eng, script)
    finally:
        eng.dispose()
    assert failed.value.error_id == "BridgeSqlError"
    assert "statement 3 of 3 failed" in str(failed.value)
    assert missing in str(failed.value)

    # then PostgreSQL and SQLite keep nothing of it; MariaDB kept the table (DDL commits implicitly) but no row
    if db.kind == "mariadb":
        assert db.query(f"SELECT count(*) FROM {table}") == [(0,)]
    else:
        assert table not in db.table_names()


def test_canceling_the_task_cancels_the_running_statement(db: TestDatabase) -> None:
    # given a script whose second statement runs until it is canceled
    ctx, eng = context_for(db)
    marker = f"endless-{uuid.uuid4().hex[:8]}"
    script = f"SELECT 1; {ENDLESS[db.kind].format(marker=marker)}; SELECT 2"
    raised: list[BaseException] = []

    def run() -> None:
        try:
            run_script(ctx, eng, script)
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        if db.kind == "sqlite":
            time.sleep(1)
        else:
            wait_for(lambda: running(db, marker), timeout=20, what="the statement to run")

        # when the task is canceled
        ctx.cancel.set()
        runner.join(timeout=20)

        # then the script stops promptly as Canceled, and the server no longer runs the statement
        assert not runner.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], Canceled), raised
        wait_for(lambda: not running(db, marker), timeout=10, what="the statement to end on the server")
    finally:
        ctx.cancel.set()
        runner.join(timeout=30)
        eng.dispose()


def test_a_statement_running_past_attempt_timeout_is_canceled(db: TestDatabase) -> None:
    # given an attempt with a 2 second attemptTimeout and a statement that would run for two minutes
    ctx, eng = context_for(db, attemptTimeout="2 seconds")
    marker = f"slow-{uuid.uuid4().hex[:8]}"

    # when it runs
    started = time.monotonic()
    try:
        with pytest.raises(TaskFailure) as failed:
            run_script(ctx, eng, ENDLESS[db.kind].format(marker=marker))
    finally:
        eng.dispose()

    # then it ends FAILED BridgeAttemptTimeout soon after the deadline, and the statement is gone
    assert failed.value.error_id == "BridgeAttemptTimeout"
    assert time.monotonic() - started >= 2  # (not before the deadline; the run's own timeout bounds the rest)
    wait_for(lambda: not running(db, marker), timeout=10, what="the statement to end on the server")


def test_rows_go_into_a_data_node_and_stream_back_out(db: TestDatabase) -> None:
    # given a SqlDataNode whose table does not exist yet, with createTableSql, and one with an insertQuery
    table = new_table()
    node = {
        "id": "Node",
        "type": "SqlDataNode",
        "database": {"ref": "Db"},
        "table": table,
        "createTableSql": f"CREATE TABLE {table} (id INTEGER, name VARCHAR(20), score VARCHAR(10))",
    }
    by_query = {
        "id": "ByQuery",
        "type": "SqlDataNode",
        "database": {"ref": "Db"},
        "table": table,
        "insertQuery": f"INSERT INTO {table} (score, id, name) VALUES (?, ?, ?)",
        "selectQuery": f"SELECT id, name FROM {table} WHERE score = 'q'",
    }
    ctx = task_context(db.jdbc_database("Db"), node, by_query)
    rows = [(n, f"name {n}", None if n % 7 == 0 else str(n % 10)) for n in range(2500)]

    # when its table is created, 2500 rows are imported (three batches), and more through the insertQuery
    assert not table_exists(ctx, resolve(ctx, "Node"))
    assert create_table_if_missing(ctx, resolve(ctx, "Node")) is True
    assert create_table_if_missing(ctx, resolve(ctx, "Node")) is False
    imported = import_rows(ctx, resolve(ctx, "Node"), ["id", "name", "score"], iter(rows))
    by_insert_query = import_rows(ctx, resolve(ctx, "ByQuery"), None, [("q", "9001", "from query")])

    # then the table exists and every row streams back out, by the default query and by the selectQuery
    assert table_exists(ctx, resolve(ctx, "Node"))
    assert (imported, by_insert_query) == (2500, 1)
    exported = sorted(export_rows(ctx, resolve(ctx, "Node")))
    assert exported[:2500] == [(n, name, score) for n, name, score in rows]
    assert exported[2500] == (9001, "from query", "q")
    assert list(export_rows(ctx, resolve(ctx, "ByQuery"))) == [(9001, "from query")]


def test_a_plain_insert_without_columns_takes_the_tables_order(db: TestDatabase) -> None:
    table = new_table()
    db.execute(f"CREATE TABLE {table} (a INTEGER, b VARCHAR(5))")
    ctx = task_context(
        db.jdbc_database("Db"), {"id": "N", "type": "SqlDataNode", "database": {"ref": "Db"}, "table": table}
    )
    assert import_rows(ctx, resolve(ctx, "N"), None, [(1, "x"), (2, None)]) == 2
    assert sorted(db.query(f"SELECT a, b FROM {table}"), key=lambda r: r[0]) == [(1, "x"), (2, None)]


def test_an_import_that_fails_keeps_none_of_its_rows(db: TestDatabase) -> None:
    # given a table with a NOT NULL column and rows whose last one breaks it
    table = new_table()
    db.execute(f"CREATE TABLE {table} (a INTEGER NOT NULL)")
    ctx = task_context(
        db.jdbc_database("Db"), {"id": "N", "type": "SqlDataNode", "database": {"ref": "Db"}, "table": table}
    )

    # when they are imported, the database's refusal is a BridgeSqlError, and nothing was kept
    with pytest.raises(SqlError):
        import_rows(ctx, resolve(ctx, "N"), ["a"], [(n,) for n in range(1500)] + [(None,)])
    assert db.query(f"SELECT count(*) FROM {table}") == [(0,)]


def test_a_missing_select_table_is_a_sql_error_naming_the_database(postgres_db: TestDatabase) -> None:
    ctx = task_context(
        postgres_db.jdbc_database("Db"), {"id": "N", "type": "SqlDataNode", "database": {"ref": "Db"}, "table": "nope"}
    )
    with pytest.raises(SqlError, match=r'relation "nope" does not exist') as failed:
        list(export_rows(ctx, resolve(ctx, "N")))
    assert postgres_db.password not in str(failed.value)
    assert f"postgresql+psycopg://{postgres_db.user}:***@" in str(failed.value)


def test_a_wrong_password_or_a_closed_port_is_unavailable_with_a_clear_message(mariadb_db: TestDatabase) -> None:
    # given a MariaDB user with the wrong password, and a port where nothing listens
    wrong = "Wrong-Pw-3391"
    bad_password = task_context(mariadb_db.jdbc_database("Db", **{"*password": wrong}))
    closed = task_context(
        {**mariadb_db.jdbc_database("Db"), "connectionString": f"jdbc:postgresql://127.0.0.1:{free_port()}/x"}
    )

    # when scripts run there, both end BridgeDatabaseUnavailable, saying why, without the password
    for ctx, why in ((bad_password, "Access denied"), (closed, "Connection refused")):
        eng = engine(ctx, resolve(ctx, "Db"))
        try:
            with pytest.raises(DatabaseUnavailable, match=why) as failed:
                run_script(ctx, eng, "SELECT 1")
        finally:
            eng.dispose()
        assert failed.value.error_id == "BridgeDatabaseUnavailable"
        assert wrong not in str(failed.value) and mariadb_db.password not in str(failed.value)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


def test_an_rds_instance_is_resolved_with_describe_db_instances(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given RDS instances on moto's server (a PostgreSQL one with a database name, an Oracle one), reached
    # through boto3's standard AWS_ENDPOINT_URL_RDS
    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL_RDS": moto.url, "AWS_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    import boto3

    rds = boto3.client("rds", endpoint_url=moto.url, region_name="us-east-1")
    suffix = uuid.uuid4().hex[:8]
    for instance_id, rds_engine in ((f"pg-{suffix}", "postgres"), (f"ora-{suffix}", "oracle-ee")):
        rds.create_db_instance(
            DBInstanceIdentifier=instance_id,
            Engine=rds_engine,
            DBInstanceClass="db.t3.micro",
            DBName="songs",
            MasterUsername="admin",
            MasterUserPassword="Moto-Pw-12345",
            AllocatedStorage=20,
        )
    endpoint = rds.describe_db_instances(DBInstanceIdentifier=f"pg-{suffix}")["DBInstances"][0]["Endpoint"]

    def url_of(instance_id: str, **fields: Any) -> Any:
        database = {"id": "Rds", "type": "RdsDatabase", "rdsInstanceId": instance_id, "username": "dpl", **fields}
        ctx = task_context({**database, "*password": "Rds-Pw-2024"}, settings=Settings(region="us-east-1"))
        return database_url(ctx, resolve(ctx, "Rds"))

    # when their URLs are built, then the engine, endpoint and database name come from RDS (databaseName wins)
    url = url_of(f"pg-{suffix}")
    assert (url.drivername, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        endpoint["Address"],
        endpoint["Port"],
        "songs",
    )
    assert url_of(f"pg-{suffix}", databaseName="other").database == "other"
    # and an Oracle instance is unsupported, an unknown one unavailable, both saying which
    with pytest.raises(UnsupportedDatabase, match="runs 'oracle-ee'"):
        url_of(f"ora-{suffix}")
    with pytest.raises(DatabaseUnavailable, match=rf"'nope-{suffix}' in us-east-1 failed: DBInstanceNotFound"):
        url_of(f"nope-{suffix}")


# -- pipelines end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(postgres_db: TestDatabase, mariadb_db: TestDatabase, moto: MotoServer) -> Iterator[Stack]:
    endpoints = ",".join(
        [
            f"rds-pg={postgres_db.host}:{postgres_db.port}",
            f"rds-maria=mariadb://{mariadb_db.host}:{mariadb_db.port}",
            f"sample-rds={mariadb_db.host}:{mariadb_db.port}",
        ]
    )
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "5"],
        BRIDGE_PROGRESS_DEADLINE_S="5",
        BRIDGE_RDS_ENDPOINTS=endpoints,
        **moto.env,
    )
    try:
        stack.start()
        stack.worker(f"dp.{GROUP}", pool="threads", concurrency=2, loglevel="DEBUG")
        stack.bridge(GROUP)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def dp(stack: Stack) -> Any:
    return stack.dp


def sql_activity(database: str, script: str | None = None, **fields: Any) -> dict[str, Any]:
    activity = {"id": "Sql", "type": "SqlActivity", "database": {"ref": database}, **fields}
    if script is not None:
        activity["script"] = script
    return activity


def rds_database(object_id: str, instance_id: str, db: TestDatabase, **fields: Any) -> dict[str, Any]:
    return {
        "id": object_id,
        "type": "RdsDatabase",
        "rdsInstanceId": instance_id,
        "username": db.user,
        "*password": db.password,
        **fields,
    }


def lease_outcomes(stack: Stack, pipeline_id: str) -> list[str]:
    """The outcome records of every lease of ``pipeline_id``, as stored in Redis."""
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        keys = list(client.scan_iter(f"{PREFIX}:lease:{pipeline_id}:*"))
        return [str(client.hget(key, "outcome") or "") for key in keys]
    finally:
        client.close()


def assert_never_shown(stack: Stack, pipeline_id: str, component_id: str, *secrets: str) -> None:
    """None of ``secrets`` in the instance's or attempts' errors, the leases' outcomes or the worker's log."""
    shown = [instance(stack.dp, pipeline_id, component_id), *attempts(stack.dp, pipeline_id, component_id)]
    texts = [json.dumps(fields) for fields in shown] + lease_outcomes(stack, pipeline_id) + [stack.workers[0].text()]
    for secret in secrets:
        assert all(secret not in text for text in texts), f"a secret leaked: {secret[:3]}..."


def test_a_postgresql_script_with_arguments_finishes_and_its_rows_land(
    stack: Stack, dp: Any, postgres_db: TestDatabase
) -> None:
    # given a JdbcDatabase on PostgreSQL and a script with dollar quoting, a literal '?' and two arguments
    table = new_table()
    script = f"""
        CREATE TABLE {table} (id int PRIMARY KEY, note text, made text);
        CREATE FUNCTION {table}_label(n int) RETURNS text AS $$ BEGIN RETURN 'row;' || n; END; $$ LANGUAGE plpgsql;
        INSERT INTO {table} VALUES (?, {table}_label(1), 'why?'), (?, 'x', '100%');
    """
    pipeline = run_pipeline(
        dp, GROUP, postgres_db.jdbc_database("Pg"), sql_activity("Pg", script, scriptArgument=["1", "2"])
    )

    # when it runs
    ended = wait_final(dp, pipeline, "Sql")

    # then it finished and the rows are in the database
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert postgres_db.query(f"SELECT id, note, made FROM {table} ORDER BY id") == [
        (1, "row;1", "why?"),
        (2, "x", "100%"),
    ]


def test_a_failing_third_statement_on_postgresql_leaves_nothing_and_names_the_error(
    stack: Stack, dp: Any, postgres_db: TestDatabase
) -> None:
    # given three statements in one script, the third on a table that does not exist
    table, missing = new_table(), new_table()
    script = f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1); INSERT INTO {missing} VALUES (2);"
    pipeline = run_pipeline(dp, GROUP, postgres_db.jdbc_database("Pg"), sql_activity("Pg", script))

    # when it runs
    ended = wait_final(dp, pipeline, "Sql")

    # then it FAILED BridgeSqlError with PostgreSQL's message, and the first two statements left nothing behind
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeSqlError"
    assert f'relation "{missing}" does not exist' in ended["errorMessage"]
    assert "statement 3 of 3 failed" in ended["errorMessage"]
    assert table not in postgres_db.table_names()
    # and the password shows nowhere: not in what Data Pipeline was told, the lease, or the worker's log
    logged(stack.workers[0], "failed worker_group=sqlwg", pipeline)
    assert_never_shown(stack, pipeline, "Sql", postgres_db.password)


@pytest.mark.parametrize("scheme", ["jdbc:mysql", "jdbc:mariadb"])
def test_a_mariadb_script_finishes_and_its_rows_land(
    stack: Stack, dp: Any, mariadb_db: TestDatabase, scheme: str
) -> None:
    # given a JdbcDatabase on MariaDB (as jdbc:mysql and as jdbc:mariadb) and a script with MySQL's quoting
    table = new_table()
    database = mariadb_db.jdbc_database("Maria", connectionString=mariadb_db.jdbc.replace("jdbc:mysql", scheme))
    script = f"""
        CREATE TABLE {table} (id INT, note VARCHAR(40)); # MySQL comment; with a semicolon
        INSERT INTO {table} VALUES (?, 'it\\'s;quoted'), (?, "double;quoted");
        UPDATE {table} SET note = CONCAT(note, ?) WHERE id = 2;
    """
    pipeline = run_pipeline(dp, GROUP, database, sql_activity("Maria", script, scriptArgument=["1", "2", "!"]))

    # when it runs
    ended = wait_final(dp, pipeline, "Sql")

    # then it finished and the rows are in the database
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert mariadb_db.query(f"SELECT id, note FROM {table} ORDER BY id") == [(1, "it's;quoted"), (2, "double;quoted!")]
    assert_never_shown(stack, pipeline, "Sql", mariadb_db.password)


def test_a_mariadb_sql_error_fails_with_its_message_and_no_password(
    stack: Stack, dp: Any, mariadb_db: TestDatabase
) -> None:
    missing = new_table()
    pipeline = run_pipeline(
        dp, GROUP, mariadb_db.jdbc_database("Maria"), sql_activity("Maria", f"SELECT * FROM {missing}")
    )
    ended = wait_final(dp, pipeline, "Sql")
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeSqlError"
    assert f"Table '{mariadb_db.name}.{missing}' doesn't exist (error 1146)" in ended["errorMessage"]
    logged(stack.workers[0], "failed worker_group=sqlwg", pipeline)
    assert_never_shown(stack, pipeline, "Sql", mariadb_db.password)


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_an_rds_database_mapped_by_bridge_rds_endpoints_runs_there(
    stack: Stack, dp: Any, postgres_db: TestDatabase, mariadb_db: TestDatabase, kind: str
) -> None:
    # given RdsDatabase objects whose instance ids BRIDGE_RDS_ENDPOINTS maps to the local servers
    db, instance_id = (postgres_db, "rds-pg") if kind == "postgresql" else (mariadb_db, "rds-maria")
    table = new_table()
    database = rds_database("Rds", instance_id, db, databaseName=db.name)
    script = f"CREATE TABLE {table} (id INT); INSERT INTO {table} VALUES (?), (?)"
    pipeline = run_pipeline(dp, GROUP, database, sql_activity("Rds", script, scriptArgument=["7", "8"]))

    # when it runs, then it finished on that server
    ended = wait_final(dp, pipeline, "Sql")
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert db.query(f"SELECT id FROM {table} ORDER BY id") == [(7,), (8,)]


def test_a_sqlite_script_finishes_and_a_failing_one_leaves_nothing(
    stack: Stack, dp: Any, sqlite_db: TestDatabase
) -> None:
    # given two scripts on one SQLite file: one that works, one whose last statement fails
    good, bad = new_table(), new_table()
    database = sqlite_db.jdbc_database("Lite")
    pipeline = run_pipeline(
        dp,
        GROUP,
        database,
        sql_activity(
            "Lite",
            f"CREATE TABLE {good} (id INTEGER, t TEXT); INSERT INTO {good} VALUES (?, '[;]')",
            scriptArgument="5",
        ),
    )
    failing = run_pipeline(
        dp,
        GROUP,
        database,
        sql_activity(
            "Lite", f"CREATE TABLE {bad} (id INTEGER); INSERT INTO {bad} VALUES (1); INSERT INTO nope VALUES (1)"
        ),
    )

    # when they run, then the first finished with its rows, the second failed and left no table behind
    assert wait_final(dp, pipeline, "Sql")["@status"] == "FINISHED"
    assert sqlite_db.query(f"SELECT id, t FROM {good}") == [(5, "[;]")]
    ended = wait_final(dp, failing, "Sql")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeSqlError")
    assert "no such table: nope" in ended["errorMessage"]
    assert bad not in sqlite_db.table_names()


@pytest.mark.parametrize(
    ("connection_string", "error_id", "says"),
    [
        ("jdbc:oracle:thin:@//db.example.com:1521/ORCL", "BridgeUnsupportedDatabase", "'jdbc:oracle'"),
        ("jdbc:sqlserver://db.example.com:1433;databaseName=x", "BridgeUnsupportedDatabase", "'jdbc:sqlserver'"),
        ("jdbc:postgresql://127.0.0.1:{port}/x", "BridgeDatabaseUnavailable", "Connection refused"),
    ],
)
def test_a_bad_connection_string_fails_with_a_clear_error_id(
    stack: Stack, dp: Any, connection_string: str, error_id: str, says: str
) -> None:
    secret = f"Bad-Conn-Pw-{uuid.uuid4().hex[:6]}"
    database = {
        "id": "Db",
        "type": "JdbcDatabase",
        "connectionString": connection_string.format(port=free_port()),
        "jdbcDriverClass": "x.Driver",
        "username": "u",
        "*password": secret,
    }
    pipeline = run_pipeline(dp, GROUP, database, sql_activity("Db", "SELECT 1"))
    ended = wait_final(dp, pipeline, "Sql")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", error_id)
    assert says in ended["errorMessage"]
    assert_never_shown(stack, pipeline, "Sql", secret)


def test_a_wrong_mariadb_password_fails_unavailable(stack: Stack, dp: Any, mariadb_db: TestDatabase) -> None:
    wrong = f"Wrong-Pw-{uuid.uuid4().hex[:6]}"
    pipeline = run_pipeline(
        dp, GROUP, mariadb_db.jdbc_database("Maria", **{"*password": wrong}), sql_activity("Maria", "SELECT 1")
    )
    ended = wait_final(dp, pipeline, "Sql")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeDatabaseUnavailable")
    assert f"Access denied for user '{mariadb_db.user}'" in ended["errorMessage"]
    assert_never_shown(stack, pipeline, "Sql", wrong, mariadb_db.password)


def test_a_script_from_s3_is_evaluated_then_run(
    stack: Stack, dp: Any, moto: MotoServer, postgres_db: TestDatabase
) -> None:
    # given a script in S3 using an expression on the activity's own field, and a scriptArgument
    table = new_table()
    bucket = moto.bucket()
    script = "CREATE TABLE #{myTable} (id int, tag text);\nINSERT INTO #{myTable} VALUES (?, '#{myTag}');\n"
    moto.client().put_object(Bucket=bucket, Key="sql/script.sql", Body=script.encode())
    pipeline = run_pipeline(
        dp,
        GROUP,
        postgres_db.jdbc_database("Pg"),
        sql_activity("Pg", scriptUri=f"s3://{bucket}/sql/script.sql", scriptArgument="42", myTable=table, myTag="t1"),
    )

    # when it runs, then the script was evaluated (EvaluateExpression) and run
    ended = wait_final(dp, pipeline, "Sql")
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert postgres_db.query(f"SELECT id, tag FROM {table}") == [(42, "t1")]
    assert stack.counters("EvaluateExpression") >= 1


def test_a_missing_s3_script_fails_not_found(
    stack: Stack, dp: Any, moto: MotoServer, postgres_db: TestDatabase
) -> None:
    bucket = moto.bucket()
    pipeline = run_pipeline(
        dp, GROUP, postgres_db.jdbc_database("Pg"), sql_activity("Pg", scriptUri=f"s3://{bucket}/no/such.sql")
    )
    ended = wait_final(dp, pipeline, "Sql")
    assert (ended["@status"], ended["errorId"]) == ("FAILED", "BridgeS3NotFound")


def test_canceling_a_running_sql_activity_cancels_its_query_and_reports_nothing(
    stack: Stack, dp: Any, postgres_db: TestDatabase
) -> None:
    # given a SqlActivity whose query runs for minutes
    marker = f"long-{uuid.uuid4().hex[:8]}"
    before = stack.counters("SetTaskStatus")
    pipeline = run_pipeline(
        dp, GROUP, postgres_db.jdbc_database("Pg"), sql_activity("Pg", ENDLESS["postgresql"].format(marker=marker))
    )
    wait_for(lambda: running(postgres_db, marker), timeout=60, what="the query to run")

    # when the instance is canceled
    dp.set_status(pipelineId=pipeline, objectIds=[instance(dp, pipeline, "Sql")["@id"]], status="TRY_CANCEL")

    # then the query is gone from the server, the worker says canceled, and no SetTaskStatus was sent
    wait_for(lambda: not running(postgres_db, marker), timeout=30, what="the query to be canceled")
    logged(stack.workers[0], "canceled worker_group=sqlwg", pipeline)
    assert instance(dp, pipeline, "Sql")["@status"] == "CANCELED"
    assert stack.counters("SetTaskStatus") == before


def test_the_sql_activity_with_timeout_sample_runs_on_mariadb(stack: Stack, dp: Any, mariadb_db: TestDatabase) -> None:
    # given sql-activity-with-timeout.json adapted as the samples README says: → worker group, its RdsDatabase
    # mapped to the local MariaDB by BRIDGE_RDS_ENDPOINTS (sample-rds), script instead of scriptUri
    table = f"{mariadb_db.name}.songs"
    script = (
        f"CREATE TABLE {table} (track_id VARCHAR(18), title VARCHAR(100), year INT);\n"
        f"INSERT INTO {table} VALUES ('TRMMMYQ128F932D901', 'Silent Night', 2003),"
        " ('TRMMMKD128F425225D', 'Tanssi vaan', 1995);\n"
        f"DELETE FROM {table} WHERE year < 2000;\n"
    )
    doc = to_worker_group(load_sample("sql-activity-with-timeout.json"), GROUP)
    doc = with_fields(doc, "ActivityId_wRpKi", scriptUri=None, script=script)
    doc = with_values(
        doc,
        myRDSId="sample-rds",
        myRDSUsername=mariadb_db.user,
        myRDSPassword=mariadb_db.password,
        myS3LogsPath="s3://local-logs/sql-sample",
    )
    pipeline_id = dp.create_pipeline(name="sql_activity_pipeline", uniqueId=str(uuid.uuid4()))["pipelineId"]
    result = put_definition(dp, pipeline_id, doc)
    assert not result["errored"], result["validationErrors"]

    # when it is activated
    dp.activate_pipeline(pipelineId=pipeline_id)
    ended = wait_final(dp, pipeline_id, "ActivityId_wRpKi", timeout=90)

    # then the activity finished on the local MariaDB, and its password never showed
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert mariadb_db.query(f"SELECT track_id, title, year FROM {table}") == [
        ("TRMMMYQ128F932D901", "Silent Night", 2003)
    ]
    assert_never_shown(stack, pipeline_id, "ActivityId_wRpKi", mariadb_db.password)
    dp.deactivate_pipeline(pipelineId=pipeline_id)
