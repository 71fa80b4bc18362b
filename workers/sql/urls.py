"""Where a database is: JdbcDatabase, RdsDatabase and data-node connection strings as SQLAlchemy URLs.

JDBC connection strings are parsed and their properties translated for psycopg / PyMySQL / sqlite3; RDS instances
are looked up with DescribeDBInstances (or ``BRIDGE_RDS_ENDPOINTS``). Every password found is registered with the
process's secret masking, and refusals name the scheme, never the string. See :mod:`workers.sql` for the rules.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy.engine import URL

from bridge.errors import InvalidTask
from bridge.masking import SECRETS
from bridge.taskmodel import PipelineObject
from workers.context import TaskContext
from workers.sql.errors import DatabaseUnavailable, UnsupportedDatabase

log = logging.getLogger(__name__)

#: Seconds to wait for a connection (and for RDS DescribeDBInstances to connect).
CONNECT_TIMEOUT_S = 10
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
