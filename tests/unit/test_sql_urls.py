"""workers.sql without a database: JDBC and RDS objects as SQLAlchemy URLs, refusals, secrets, and the splitter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import InvalidTask
from bridge.masking import MASK, SECRETS
from bridge.settings import Settings, parse_rds_endpoints
from bridge.taskmodel import PipelineObject
from tests.databases import task_context
from workers.context import TaskContext
from workers.sql import (
    DatabaseUnavailable,
    SqlError,
    Statement,
    UnsupportedDatabase,
    bind_arguments,
    database_url,
    jdbc_url,
    node_database,
    qualified_table,
    split_script,
    sql_failure,
    to_format_style,
)


def make_ctx(*objects: Mapping[str, Any], settings: Settings | None = None) -> TaskContext:
    return task_context(*objects, settings=settings)


def obj(ctx: TaskContext, object_id: str) -> PipelineObject:
    return ctx.resolve(object_id)


def rendered(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


# -- JDBC connection strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connection_string", "expected"),
    [
        (
            "jdbc:postgresql://db.example.com:5433/sales",
            "postgresql+psycopg://u:Unit-Pw-0001@db.example.com:5433/sales?connect_timeout=10",
        ),
        (
            "jdbc:postgresql://db.example.com/sales",
            "postgresql+psycopg://u:Unit-Pw-0001@db.example.com:5432/sales?connect_timeout=10",
        ),
        ("jdbc:postgresql:sales", "postgresql+psycopg://u:Unit-Pw-0001@localhost:5432/sales?connect_timeout=10"),
        (
            "jdbc:postgresql://[::1]:5432/sales",
            "postgresql+psycopg://u:Unit-Pw-0001@[::1]:5432/sales?connect_timeout=10",
        ),
        (
            "jdbc:postgresql://h/sales?sslmode=require&ApplicationName=etl&currentSchema=stage&connectTimeout=3",
            "postgresql+psycopg://u:Unit-Pw-0001@h:5432/sales?application_name=etl&connect_timeout=3"
            "&options=-c+search_path%3Dstage&sslmode=require",
        ),
        (
            "jdbc:postgresql://h/sales?ssl=true",
            "postgresql+psycopg://u:Unit-Pw-0001@h:5432/sales?connect_timeout=10&sslmode=verify-full",
        ),
        (
            "jdbc:postgresql://h/sales?prepareThreshold=0",
            "postgresql+psycopg://u:Unit-Pw-0001@h:5432/sales?connect_timeout=10",
        ),
        (
            "jdbc:mysql://rds.example.com:3306/songs",
            "mysql+pymysql://u:Unit-Pw-0001@rds.example.com:3306/songs?charset=utf8mb4&connect_timeout=10",
        ),
        (
            "jdbc:mysql://rds.example.com/songs",
            "mysql+pymysql://u:Unit-Pw-0001@rds.example.com:3306/songs?charset=utf8mb4&connect_timeout=10",
        ),
        (
            "jdbc:mariadb://maria:3307/songs",
            "mysql+pymysql://u:Unit-Pw-0001@maria:3307/songs?charset=utf8mb4&connect_timeout=10",
        ),
        (
            "jdbc:mysql://h/songs?useSSL=true&characterEncoding=UTF-8&connectTimeout=5000&zeroDateTimeBehavior=round",
            "mysql+pymysql://u:Unit-Pw-0001@h:3306/songs?charset=utf8mb4&connect_timeout=5&ssl_check_hostname=false",
        ),
        (
            "jdbc:mysql://h/songs?useSSL=false",
            "mysql+pymysql://u:Unit-Pw-0001@h:3306/songs?charset=utf8mb4&connect_timeout=10",
        ),
        (
            "jdbc:mysql://h/songs?sslMode=REQUIRED",
            "mysql+pymysql://u:Unit-Pw-0001@h:3306/songs?charset=utf8mb4&connect_timeout=10&ssl_check_hostname=false",
        ),
        ("jdbc:sqlite:/var/data/app.db", "sqlite:////var/data/app.db"),
        ("jdbc:sqlite:relative/app.db", "sqlite:///relative/app.db"),
        ("jdbc:sqlite:file:/var/data/app.db?cache=shared", "sqlite:////var/data/app.db"),
        ("jdbc:sqlite::memory:", "sqlite://"),
        ("jdbc:sqlite:", "sqlite://"),
    ],
)
def test_a_jdbc_connection_string_becomes_a_sqlalchemy_url(connection_string: str, expected: str) -> None:
    # when a supported connection string is translated with the object's credentials
    url = jdbc_url(connection_string, username="u", password="Unit-Pw-0001")

    # then it names the Python driver, the host, port and database, and the translated properties
    assert rendered(url) == expected


def test_mysql_verify_modes_check_the_server_certificate() -> None:
    # when a MySQL connection string asks for a verified certificate
    identity = jdbc_url("jdbc:mysql://h/db?sslMode=VERIFY_IDENTITY", username="u")
    ca_only = jdbc_url("jdbc:mariadb://h/db?sslMode=verify-ca", username="u")

    # then a CA is given and the host name is checked only for VERIFY_IDENTITY
    assert {"ssl_ca", "ssl_capath"} & set(identity.query)
    assert identity.query["ssl_check_hostname"] == "true"
    assert ca_only.query["ssl_check_hostname"] == "false"


def test_credentials_in_the_string_are_used_when_the_object_has_none() -> None:
    # given credentials in the string's user info, and in its properties
    in_userinfo = jdbc_url("jdbc:mysql://loader:Unit%40Pw%3A0006@h/db")
    in_query = jdbc_url("jdbc:postgresql://h/db?user=loader&password=Unit-Pw-0002")

    # then they are decoded and taken, and the password is not left in the query
    assert (in_userinfo.username, in_userinfo.password) == ("loader", "Unit@Pw:0006")
    assert (in_query.username, in_query.password) == ("loader", "Unit-Pw-0002")
    assert "password" not in in_query.query and "user" not in in_query.query


def test_the_objects_username_and_password_win_over_the_strings() -> None:
    url = jdbc_url(
        "jdbc:postgresql://old:Unit-Pw-0003@h/db?user=q&password=Unit-Pw-0004",
        username="loader",
        password="Unit-Pw-0005",
    )
    assert (url.username, url.password) == ("loader", "Unit-Pw-0005")


def test_the_strings_properties_win_over_jdbc_properties_and_database_name_fills_a_gap() -> None:
    # given a JdbcDatabase with jdbcProperties (one value with two pairs) and a databaseName
    ctx = make_ctx(
        {
            "id": "Db",
            "type": "JdbcDatabase",
            "connectionString": "jdbc:postgresql://h:5432/?sslmode=disable",
            "jdbcDriverClass": "org.postgresql.Driver",
            "username": "loader",
            "*password": "Unit-Pw-0007",
            "databaseName": "warehouse",
            "jdbcProperties": ["sslmode=require;ApplicationName=dp", "currentSchema=etl"],
        }
    )

    # when its URL is built
    url = database_url(ctx, obj(ctx, "Db"))

    # then the string's sslmode won, the other properties applied, and databaseName named the database
    assert url.database == "warehouse"
    assert url.query["sslmode"] == "disable"
    assert url.query["application_name"] == "dp"
    assert url.query["options"] == "-c search_path=etl"


def test_a_data_node_with_its_own_connection_string_is_its_own_database() -> None:
    # given the devguide's SqlDataNode shape (connectionString on the node) and a node with a database ref
    node = {
        "id": "Node",
        "type": "SqlDataNode",
        "table": "songs",
        "connectionString": "jdbc:mysql://h:3306/music",
        "username": "u",
        "*password": "Unit-Pw-0008",
    }
    db = {"id": "Db", "type": "JdbcDatabase", "connectionString": "jdbc:postgresql://h/x", "username": "u"}
    by_ref = {"id": "ByRef", "type": "SqlDataNode", "table": "t", "database": {"ref": "Db"}}
    bare = {"id": "Bare", "type": "SqlDataNode", "table": "t"}
    ctx = make_ctx(node, db, by_ref, bare)

    # then each resolves to the object holding its connection, and a node with neither is refused
    assert node_database(ctx, obj(ctx, "Node")).id == "Node"
    assert rendered(database_url(ctx, obj(ctx, "Node"))).startswith("mysql+pymysql://u:Unit-Pw-0008@h:3306/music")
    assert node_database(ctx, obj(ctx, "ByRef")).id == "Db"
    with pytest.raises(InvalidTask, match="needs a 'database' ref or a 'connectionString'"):
        node_database(ctx, obj(ctx, "Bare"))


def test_a_table_is_qualified_with_its_schema_name() -> None:
    ctx = make_ctx(
        {"id": "A", "type": "SqlDataNode", "table": "songs", "schemaName": "music"},
        {"id": "B", "type": "SqlDataNode", "table": "other.songs", "schemaName": "music"},
        {"id": "C", "type": "SqlDataNode"},
    )
    assert qualified_table(obj(ctx, "A")) == "music.songs"
    assert qualified_table(obj(ctx, "B")) == "other.songs"
    with pytest.raises(InvalidTask, match="has no 'table'"):
        qualified_table(obj(ctx, "C"))


# -- refusals ---------------------------------------------------------------------------------------------------

SECRET = "Hunter2-Zx9"


@pytest.mark.parametrize(
    ("connection_string", "named"),
    [
        (f"jdbc:oracle:thin:scott/{SECRET}@//db:1521/ORCL", "jdbc:oracle"),
        (f"jdbc:sqlserver://db:1433;databaseName=x;password={SECRET}", "jdbc:sqlserver"),
        (f"jdbc:redshift://cluster:5439/dev?password={SECRET}", "jdbc:redshift"),
        (f"jdbc:db2://db:50000/x:password={SECRET};", "jdbc:db2"),
        (f"jdbc:h2:mem:test;PASSWORD={SECRET}", "jdbc:h2"),
        (f"jdbc:mysql:loadbalance://a:3306,b:3306/db?password={SECRET}", "jdbc:mysql:loadbalance"),
        (f"jdbc:postgresql://a:5432,b:5432/db?password={SECRET}", "multi-host 'jdbc:postgresql'"),
        (f"postgresql://u:{SECRET}@db/x", "not a JDBC connection string (scheme 'postgresql')"),
        ("mysql-server:3306", "not a JDBC connection string"),
        (f"jdbc:weird@{SECRET}", "'jdbc:weird'"),
        (f"jdbc:mysql:{SECRET}//h/db", "'jdbc:mysql:****'"),
    ],
)
def test_an_unsupported_connection_string_names_its_scheme_but_never_the_password(
    connection_string: str, named: str
) -> None:
    # given a JdbcDatabase with a connection string no Python driver here handles
    ctx = make_ctx(
        {
            "id": "Db",
            "type": "JdbcDatabase",
            "connectionString": connection_string,
            "username": "scott",
            "*password": SECRET,
        }
    )

    # when its URL is asked for, then it is refused as BridgeUnsupportedDatabase, naming the scheme only
    with pytest.raises(UnsupportedDatabase) as raised:
        database_url(ctx, obj(ctx, "Db"))
    assert raised.value.error_id == "BridgeUnsupportedDatabase"
    assert named in str(raised.value)
    assert "'Db'" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_redshift_database_is_unsupported() -> None:
    ctx = make_ctx(
        {"id": "Rs", "type": "RedshiftDatabase", "clusterId": "c", "username": "u", "*password": "Unit-Pw-0009"}
    )
    with pytest.raises(UnsupportedDatabase, match="Redshift is not supported"):
        database_url(ctx, obj(ctx, "Rs"))


def test_a_connection_string_with_a_bad_port_is_an_invalid_task() -> None:
    with pytest.raises(InvalidTask, match="port is not a number") as raised:
        jdbc_url(f"jdbc:postgresql://u:{SECRET}@h:port/db")
    assert SECRET not in str(raised.value)


def test_a_database_without_a_connection_string_is_an_invalid_task() -> None:
    ctx = make_ctx({"id": "Db", "type": "JdbcDatabase", "username": "u"})
    with pytest.raises(InvalidTask, match="has no connectionString"):
        database_url(ctx, obj(ctx, "Db"))


def test_every_password_found_is_masked_from_then_on() -> None:
    # given passwords in a string's query, its user info, and an object's *password
    jdbc_url("jdbc:postgresql://h/db?password=Query-Pw-4411")
    jdbc_url("jdbc:mysql://u:Userinfo-Pw-4412@h/db")
    jdbc_url("jdbc:mysql://h/db", password="Field-Pw-4413")

    # then each is masked in any text
    text = "Query-Pw-4411 / Userinfo-Pw-4412 / Field-Pw-4413"
    assert SECRETS.mask(text) == f"{MASK} / {MASK} / {MASK}"


def test_a_database_error_message_keeps_the_databases_words_and_drops_the_password() -> None:
    # given a driver error whose text contains the password, on a URL with that password
    url = sa.URL.create("postgresql+psycopg", "loader", "Err-Pw-5521", "db.internal", 5432, "dw")
    error = sa.exc.ProgrammingError("INSERT ...", {"x": 1}, Exception('relation "nope" does not exist (Err-Pw-5521)'))

    # when it becomes a task failure
    failure = sql_failure(error, url, ": statement 2 of 3 failed")

    # then it is a BridgeSqlError naming the database without the password, with the database's message
    assert isinstance(failure, SqlError) and failure.error_id == "BridgeSqlError"
    message = str(failure)
    assert message.startswith("postgresql+psycopg://loader:***@db.internal:5432/dw: statement 2 of 3 failed: ")
    assert 'relation "nope" does not exist' in message
    assert "Err-Pw-5521" not in message
    assert "INSERT" not in message  # SQLAlchemy's statement and parameter dump is left out


def test_a_broken_connection_is_unavailable_not_a_sql_error() -> None:
    url = sa.URL.create("mysql+pymysql", "u", "Unit-Pw-0010", "h", 3306, "db")
    error = sa.exc.OperationalError("SELECT 1", None, Exception(2013, "Lost connection to server during query"))
    error.connection_invalidated = True
    failure = sql_failure(error, url)
    assert isinstance(failure, DatabaseUnavailable) and failure.error_id == "BridgeDatabaseUnavailable"
    assert "Lost connection to server during query (error 2013)" in str(failure)


# -- RdsDatabase with BRIDGE_RDS_ENDPOINTS ------------------------------------------------------------------


def rds(object_id: str = "Rds", **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "RdsDatabase", "username": "dpl", "*password": "Rds-Pw-7710", **fields}


@pytest.mark.parametrize(
    ("endpoints", "fields", "expected"),
    [
        ("pg=10.0.0.5:5432", {}, "postgresql+psycopg://dpl:Rds-Pw-7710@10.0.0.5:5432?connect_timeout=10"),
        (
            "pg=10.0.0.5:5432",
            {"databaseName": "songs"},
            "postgresql+psycopg://dpl:Rds-Pw-7710@10.0.0.5:5432/songs?connect_timeout=10",
        ),
        ("pg=db:3306", {}, "mysql+pymysql://dpl:Rds-Pw-7710@db:3306?charset=utf8mb4&connect_timeout=10"),
        ("pg=mariadb://db:3310", {}, "mysql+pymysql://dpl:Rds-Pw-7710@db:3310?charset=utf8mb4&connect_timeout=10"),
        ("pg=postgresql://db:6543", {}, "postgresql+psycopg://dpl:Rds-Pw-7710@db:6543?connect_timeout=10"),
        (
            "pg=db:6000",
            {"jdbcDriverClass": "com.mysql.jdbc.Driver", "jdbcProperties": "useSSL=true"},
            "mysql+pymysql://dpl:Rds-Pw-7710@db:6000?charset=utf8mb4&connect_timeout=10&ssl_check_hostname=false",
        ),
        (
            "pg=db:6000",
            {"jdbcDriverClass": "org.postgresql.Driver"},
            "postgresql+psycopg://dpl:Rds-Pw-7710@db:6000?connect_timeout=10",
        ),
    ],
)
def test_an_rds_instance_mapped_by_bridge_rds_endpoints_needs_no_rds_call(
    endpoints: str, fields: dict[str, Any], expected: str
) -> None:
    # given BRIDGE_RDS_ENDPOINTS as the settings parse it, and an RdsDatabase for the mapped instance
    settings = Settings(rds_endpoints=parse_rds_endpoints(endpoints))
    ctx = make_ctx(rds(rdsInstanceId="pg", **fields), settings=settings)

    # when its URL is built (no AWS call: the offline API and no RDS endpoint would fail the test)
    url = database_url(ctx, obj(ctx, "Rds"))

    # then the engine follows the documented rule: engine://, else jdbcDriverClass, else the port
    assert rendered(url) == expected


def test_an_rds_endpoint_on_an_unknown_port_without_an_engine_is_refused_with_the_fix() -> None:
    settings = Settings(rds_endpoints=parse_rds_endpoints("pg=db:6000"))
    ctx = make_ctx(rds(rdsInstanceId="pg"), settings=settings)
    with pytest.raises(UnsupportedDatabase, match=r"write it as pg=postgresql://db:6000 or pg=mysql://db:6000"):
        database_url(ctx, obj(ctx, "Rds"))


def test_an_rds_endpoint_with_an_unsupported_engine_is_refused() -> None:
    settings = Settings(rds_endpoints=parse_rds_endpoints("pg=oracle://db:1521"))
    ctx = make_ctx(rds(rdsInstanceId="pg"), settings=settings)
    with pytest.raises(UnsupportedDatabase, match="unsupported engine 'oracle'"):
        database_url(ctx, obj(ctx, "Rds"))


def test_an_rds_database_without_an_instance_id_is_an_invalid_task() -> None:
    ctx = make_ctx(rds())
    with pytest.raises(InvalidTask, match="has no rdsInstanceId"):
        database_url(ctx, obj(ctx, "Rds"))


# -- splitting scripts --------------------------------------------------------------------------------------------


def texts(script: str, dialect: str) -> list[str]:
    return [s.text for s in split_script(script, dialect)]


def test_postgresql_quotes_comments_and_dollar_quoting_do_not_split() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (a text DEFAULT 'x;y', "odd;name" int); /* block; /* nested; */ still; */
    INSERT INTO t VALUES ('it''s; fine', 1);
    CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;
    DO $$ BEGIN PERFORM 1; END $$;
    SELECT E'a\\';b', U&'x;y', a$b FROM t;
    -- only a comment here;
    """
    assert texts(script, "postgresql") == [
        "-- a comment; with a semicolon\n    CREATE TABLE t (a text DEFAULT 'x;y', \"odd;name\" int)",
        "/* block; /* nested; */ still; */\n    INSERT INTO t VALUES ('it''s; fine', 1)",
        "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT E'a\\';b', U&'x;y', a$b FROM t",
    ]


def test_mysql_delimiter_lines_hash_comments_and_backslash_escapes() -> None:
    script = """DELIMITER //
CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END//
delimiter ;
SELECT 'a\\';b', "x;y", `c;d` FROM t; # a comment; here
SELECT 5--3;
-- a real comment;
/*!40101 SET NAMES utf8mb4 */;
"""
    assert texts(script, "mysql") == [
        "CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END",
        "SELECT 'a\\';b', \"x;y\", `c;d` FROM t",
        "# a comment; here\nSELECT 5--3",
        "-- a real comment;\n/*!40101 SET NAMES utf8mb4 */",
    ]


def test_sqlite_trigger_bodies_and_bracket_names_do_not_split() -> None:
    script = (
        "CREATE TABLE a (x); CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); "
        "UPDATE b SET y = ';'; END; SELECT [odd;name] FROM a"
    )
    assert texts(script, "sqlite") == [
        "CREATE TABLE a (x)",
        "CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); UPDATE b SET y = ';'; END",
        "SELECT [odd;name] FROM a",
    ]


def test_a_script_of_only_comments_and_delimiters_has_no_statements() -> None:
    assert split_script("-- nothing\n;;  /* here */ ;\n", "postgresql") == []


def test_placeholders_outside_quotes_and_comments_are_found() -> None:
    [statement] = split_script("  SELECT '?', \"?\", ? /* ? */ FROM t WHERE a = ? -- ?\n", "postgresql")
    assert [statement.text[i] for i in statement.placeholders] == ["?", "?"]
    assert statement.placeholders == (statement.text.index("? /*"), statement.text.index("= ?") + 2)


def test_arguments_bind_in_order_across_statements() -> None:
    # given two statements with one and two placeholders, and a literal percent sign
    statements = split_script("INSERT INTO t VALUES (?, '100%'); UPDATE t SET a = ? WHERE b = ?", "postgresql")

    # when three arguments are bound for a format-style driver and for sqlite3
    formatted = bind_arguments(statements, ["1", "2", "3"], "pyformat")
    qmark = bind_arguments(statements, ["1", "2", "3"], "qmark")

    # then each statement gets its share, '?' becomes %s and '%' doubles (qmark: the text is untouched)
    assert formatted == [
        ("INSERT INTO t VALUES (%s, '100%%')", ("1",)),
        ("UPDATE t SET a = %s WHERE b = %s", ("2", "3")),
    ]
    assert qmark == [(statements[0].text, ("1",)), (statements[1].text, ("2", "3"))]


def test_without_arguments_the_script_runs_as_written() -> None:
    statements = split_script("SELECT data ? 'key', '5%' FROM t", "postgresql")
    assert bind_arguments(statements, [], "pyformat") == [("SELECT data ? 'key', '5%' FROM t", None)]


@pytest.mark.parametrize(("script", "args"), [("SELECT ?", ["1", "2"]), ("SELECT ?, ?", ["1"]), ("SELECT 1", ["1"])])
def test_placeholders_and_arguments_must_match(script: str, args: list[str]) -> None:
    with pytest.raises(InvalidTask, match="placeholder"):
        bind_arguments(split_script(script, "mysql"), args, "pyformat")


def test_format_style_doubles_every_percent_sign() -> None:
    assert to_format_style(Statement("SELECT '%s%', ?", (14,))) == "SELECT '%%s%%', %s"


PIECES = st.sampled_from(
    ["SELECT 1", "a", " ", "'x;y'", "'it''s'", '"q;q"', "$$ a; b $$", "$t$;$t$", "/* c; */", "x = ?", "E'\\';'"]
)


@given(st.lists(st.lists(PIECES, min_size=1, max_size=6).map(" ".join), min_size=1, max_size=6))
def test_statements_joined_with_semicolons_split_back_into_themselves(bodies: Sequence[str]) -> None:
    # given statements made of quoted runs, comments and code (each with some code), joined with ';'
    statements = [f"SELECT {body}" for body in bodies]

    # when the script is split
    found = split_script(";\n".join(statements) + ";", "postgresql")

    # then the same statements come back, with every unquoted '?' found
    assert [s.text for s in found] == [s.strip() for s in statements]
    assert [len(s.placeholders) for s in found] == [s.count("x = ?") for s in statements]
