"""Settings from the environment (names and fallbacks), routes, and validation."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.settings import DEFAULT_REDIS_URL, Settings, default_taskrunner_id, parse_routes

# -- Settings.from_env ---------------------------------------------------------------------------------


def test_nothing_set_gives_the_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.endpoint_url is None
    assert settings.region == "us-east-1"
    assert settings.broker_url == DEFAULT_REDIS_URL
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.worker_groups == ()
    assert settings.routes == {}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AWS_ENDPOINT_URL": "http://aws-wide:1"}, "http://aws-wide:1"),
        (
            {"AWS_ENDPOINT_URL": "http://aws-wide:1", "AWS_ENDPOINT_URL_DATA_PIPELINE": "http://dp-only:2"},
            "http://dp-only:2",
        ),
        (
            {
                "AWS_ENDPOINT_URL": "http://aws-wide:1",
                "AWS_ENDPOINT_URL_DATA_PIPELINE": "http://dp-only:2",
                "BRIDGE_ENDPOINT_URL": "http://bridge:3",
            },
            "http://bridge:3",
        ),
        ({"BRIDGE_ENDPOINT_URL": "", "AWS_ENDPOINT_URL": "http://aws-wide:1"}, "http://aws-wide:1"),
    ],
)
def test_endpoint_falls_back_from_bridge_to_service_to_aws_wide(environ: dict[str, str], expected: str) -> None:
    assert Settings.from_env(environ).endpoint_url == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "ap-south-1"}, "ap-south-1"),
        ({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "ap-south-1", "BRIDGE_REGION": "us-west-2"}, "us-west-2"),
    ],
)
def test_region_falls_back_to_aws_region_then_aws_default_region(environ: dict[str, str], expected: str) -> None:
    assert Settings.from_env(environ).region == expected


def test_celery_broker_url_is_the_fallback_broker_and_also_the_lease_redis() -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": "redis://celery:6379/2"})

    assert settings.broker_url == "redis://celery:6379/2"
    assert settings.redis_url == "redis://celery:6379/2"


def test_bridge_broker_url_wins_over_celery_broker_url() -> None:
    environ = {"CELERY_BROKER_URL": "redis://celery:6379/2", "BRIDGE_BROKER_URL": "redis://bridge:6379/3"}

    assert Settings.from_env(environ).broker_url == "redis://bridge:6379/3"


def test_a_rabbitmq_broker_keeps_leases_in_the_default_redis_unless_told() -> None:
    amqp = Settings.from_env({"BRIDGE_BROKER_URL": "amqp://guest@mq//"})
    told = Settings.from_env({"BRIDGE_BROKER_URL": "amqp://guest@mq//", "BRIDGE_REDIS_URL": "redis://leases:6379/1"})

    assert amqp.redis_url == DEFAULT_REDIS_URL
    assert told.redis_url == "redis://leases:6379/1"
    assert told.broker_url == "amqp://guest@mq//"


def test_bridge_variables_are_converted_to_their_types() -> None:
    settings = Settings.from_env(
        {
            "BRIDGE_WORKER_GROUPS": " etl, reports ,,",
            "BRIDGE_MAX_IN_FLIGHT": "12",
            "BRIDGE_HEARTBEAT_INTERVAL_S": "2.5",
            "BRIDGE_PROGRESS_DEADLINE_S": "5",
            "BRIDGE_ENV_ALLOWLIST": "JAVA_HOME,ORACLE_HOME",
            "BRIDGE_ROUTES": "SqlActivity=dp.sql;CopyActivity = dp.copy",
            "BRIDGE_WORK_DIR": "/var/tmp/dp",
            "BRIDGE_KILL_GRACE_S": "3",
        }
    )

    assert settings.worker_groups == ("etl", "reports")
    assert settings.max_in_flight == 12
    assert settings.heartbeat_interval_s == 2.5
    assert settings.progress_deadline_s == 5.0
    assert settings.env_allowlist == ("JAVA_HOME", "ORACLE_HOME")
    assert settings.routes == {"SqlActivity": "dp.sql", "CopyActivity": "dp.copy"}
    assert settings.work_dir == "/var/tmp/dp"
    assert settings.kill_grace_s == 3.0


def test_overrides_win_over_the_environment_but_none_does_not_override() -> None:
    settings = Settings.from_env({"BRIDGE_MAX_IN_FLIGHT": "12"}, max_in_flight=3, region=None)

    assert settings.max_in_flight == 3
    assert settings.region == "us-east-1"


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"BRIDGE_MAX_IN_FLIGHT": "many"}, "BRIDGE_MAX_IN_FLIGHT"),
        ({"BRIDGE_HEARTBEAT_INTERVAL_S": "1 minute"}, "BRIDGE_HEARTBEAT_INTERVAL_S"),
        ({"BRIDGE_ROUTES": "SqlActivity"}, "SqlActivity"),
    ],
)
def test_a_variable_that_does_not_parse_is_a_config_error_naming_it(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(environ)


def test_the_default_taskrunner_id_is_stable_per_host_and_groups() -> None:
    one = Settings.from_env({"BRIDGE_WORKER_GROUPS": "a,b", "BRIDGE_HOSTNAME": "host1"})
    same = Settings.from_env({"BRIDGE_WORKER_GROUPS": "a,b", "BRIDGE_HOSTNAME": "host1"})
    other = one.with_(worker_groups=("c",))

    assert one.taskrunner_id == same.taskrunner_id == default_taskrunner_id("host1", ("a", "b"))
    assert other.taskrunner_id == default_taskrunner_id("host1", ("c",))
    assert Settings.from_env({"BRIDGE_TASKRUNNER_ID": "mine"}).taskrunner_id == "mine"


# -- routes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "routes"),
    [
        (None, {}),
        ("", {}),
        (" , ; ", {}),
        ("SqlActivity=dp.sql", {"SqlActivity": "dp.sql"}),
        (" SqlActivity = dp.sql , CopyActivity=dp.copy ", {"SqlActivity": "dp.sql", "CopyActivity": "dp.copy"}),
        ("SqlActivity=dp.sql;CopyActivity=dp.copy", {"SqlActivity": "dp.sql", "CopyActivity": "dp.copy"}),
        ("SqlActivity=dp.a,SqlActivity=dp.b", {"SqlActivity": "dp.b"}),
        ({"SqlActivity": "dp.sql"}, {"SqlActivity": "dp.sql"}),
    ],
)
def test_parse_routes(text: str | None, routes: dict[str, str]) -> None:
    assert parse_routes(text) == routes


@pytest.mark.parametrize("text", ["SqlActivity", "=dp.sql", "SqlActivity=", " = "])
def test_a_route_without_both_sides_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="ActivityType=queue"):
        parse_routes(text)


def test_queue_for_uses_a_route_else_the_groups_queue() -> None:
    settings = Settings(routes={"SqlActivity": "dp.sql"})

    assert settings.queue_for("etl", "SqlActivity") == "dp.sql"
    assert settings.queue_for("etl", "ShellCommandActivity") == "dp.etl"


def test_heartbeats_come_at_least_three_times_per_deadline() -> None:
    settings = Settings(heartbeat_interval_s=60, progress_deadline_s=5)

    assert settings.beat_interval_for(None) == pytest.approx(5 / 3)
    assert settings.beat_interval_for(900) == 60


# -- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"worker_groups": ()}, "--worker-group"),
        ({"worker_groups": ("x" * 1025,)}, "worker group"),
        ({"max_in_flight": 0}, "--max-in-flight"),
        ({"heartbeat_interval_s": 0}, "heartbeat_interval_s"),
        ({"runner_heartbeat_interval_s": 901}, "15 minutes"),
        ({"drain_timeout_s": -1}, "drain"),
        ({"broker_url": "localhost:6379"}, "broker_url"),
        ({"redis_url": "amqp://mq//"}, "redis_url"),
        ({"log_format": "xml"}, "log format"),
    ],
)
def test_validate_names_the_bad_setting(changes: dict[str, object], says: str) -> None:
    settings = Settings(worker_groups=("wg",)).with_(**changes)

    with pytest.raises(ConfigError, match=says):
        settings.validate(need_groups=True)


def test_valid_settings_validate_to_themselves() -> None:
    settings = Settings(worker_groups=("wg",))

    assert settings.validate(need_groups=True) is settings
