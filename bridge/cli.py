"""The ``bridge`` command line. Commands parse options, configure logging, build, then run."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

import click

from bridge import logs
from bridge.errors import BrokerError, ConfigError
from bridge.settings import DEFAULT_REDIS_URL, Settings, parse_routes
from emulator.cli import emulator

log = logging.getLogger(__name__)

# Exit codes, for supervisors and container health checks.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="dp-celery-bridge")
def main() -> None:
    """Run AWS Data Pipeline task-runner work on a Celery fleet.

    `bridge start` claims tasks and enqueues them; `celery -A workers worker` runs them;
    `bridge emulator` is a local Data Pipeline service; `bridge dev` runs all of it on one machine.
    """


main.add_command(emulator)


def _common_options(fn: Any) -> Any:
    options = [
        click.option(
            "--endpoint-url",
            envvar=["BRIDGE_ENDPOINT_URL", "AWS_ENDPOINT_URL_DATA_PIPELINE", "AWS_ENDPOINT_URL"],
            show_envvar=True,
            help="Data Pipeline endpoint (the local service's URL); default: AWS for --region.",
        ),
        click.option(
            "--region",
            envvar=["BRIDGE_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
            default="us-east-1",
            show_default=True,
            show_envvar=True,
            help="AWS region (worker groups are per region).",
        ),
        click.option(
            "--broker-url",
            envvar=["BRIDGE_BROKER_URL", "CELERY_BROKER_URL"],
            default=DEFAULT_REDIS_URL,
            show_default=True,
            show_envvar=True,
            help="Celery broker (Redis or RabbitMQ).",
        ),
        click.option(
            "--redis-url",
            envvar="BRIDGE_REDIS_URL",
            default=None,
            show_envvar=True,
            help="Redis for leases [default: the broker URL if it is Redis, else redis://127.0.0.1:6379/0].",
        ),
        click.option(
            "--log-level",
            envvar="BRIDGE_LOG_LEVEL",
            default="INFO",
            show_default=True,
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        ),
        click.option(
            "--log-format",
            envvar="BRIDGE_LOG_FORMAT",
            default="text",
            show_default=True,
            type=click.Choice(["text", "json"]),
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.option(
    "--worker-group",
    "-g",
    "worker_groups",
    multiple=True,
    required=True,
    envvar="BRIDGE_WORKER_GROUPS",
    show_envvar=True,
    help="Worker group to poll (exact, case-sensitive); repeat for several. Env: comma-separated.",
)
@_common_options
@click.option(
    "--hostname",
    envvar="BRIDGE_HOSTNAME",
    default=None,
    show_envvar=True,
    help="Host name reported to Data Pipeline [default: this host's name].",
)
@click.option(
    "--taskrunner-id",
    envvar="BRIDGE_TASKRUNNER_ID",
    default=None,
    show_envvar=True,
    help="Task runner id for heartbeats [default: stable, from host and groups].",
)
@click.option(
    "--max-in-flight",
    envvar="BRIDGE_MAX_IN_FLIGHT",
    default=8,
    show_default=True,
    type=int,
    show_envvar=True,
    help="Claim only while fewer leases than this are in flight per group.",
)
@click.option(
    "--heartbeat-interval-s",
    envvar="BRIDGE_HEARTBEAT_INTERVAL_S",
    default=60.0,
    show_default=True,
    type=float,
    show_envvar=True,
    help="ReportTaskProgress interval (clamped to deadline / 3).",
)
@click.option(
    "--progress-deadline-s",
    envvar="BRIDGE_PROGRESS_DEADLINE_S",
    default=300.0,
    show_default=True,
    type=float,
    show_envvar=True,
    help="Progress deadline when the object has no reportProgressTimeout.",
)
@click.option(
    "--runner-heartbeat-interval-s",
    envvar="BRIDGE_RUNNER_HEARTBEAT_INTERVAL_S",
    default=300.0,
    show_default=True,
    type=float,
    show_envvar=True,
    help="ReportTaskRunnerHeartbeat interval (<= 900).",
)
@click.option(
    "--drain-timeout-s",
    envvar="BRIDGE_DRAIN_TIMEOUT_S",
    default=300.0,
    show_default=True,
    type=float,
    show_envvar=True,
    help="On SIGTERM, how long to keep heartbeating queued tasks for workers to start.",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    envvar="BRIDGE_ROUTES",
    show_envvar=True,
    help="Send an activity type to a queue: TYPE=QUEUE (repeatable) [default queue: dp.<group>].",
)
@click.option(
    "--queue-allowance",
    type=click.IntRange(min=0),
    envvar="BRIDGE_QUEUE_ALLOWANCE",
    show_envvar=True,
    help="Claims allowed beyond the live worker slots (tasks that wait in the queue).  [default: 0]",
)
@click.option(
    "--max-queue-wait-s",
    type=float,
    envvar="BRIDGE_MAX_QUEUE_WAIT_S",
    show_envvar=True,
    help="A task no worker started this long after enqueueing is re-published once, then failed "
    "BridgeNotStarted after a second period.  [default: 600]",
)
@click.option(
    "--report-timeout-s",
    type=float,
    envvar="BRIDGE_REPORT_TIMEOUT_S",
    show_envvar=True,
    help="How long a worker retries SetTaskStatus before this process delivers the outcome.  [default: 300]",
)
@click.option(
    "--leader-ttl-s",
    type=float,
    envvar="BRIDGE_LEADER_TTL_S",
    show_envvar=True,
    help="TTL of the per-group poller lock: a standby takes over within this.  [default: 10]",
)
@click.option(
    "--liveness-ttl-s",
    type=float,
    envvar="BRIDGE_LIVENESS_TTL_S",
    show_envvar=True,
    help="TTL of this process's liveness key; a dead process's leases are adopted after it.  [default: 15]",
)
@click.option(
    "--account-id",
    envvar="BRIDGE_ACCOUNT_ID",
    show_envvar=True,
    help="AWS account the API budget is shared in [default: from STS; 'local' with --endpoint-url].",
)
@click.option(
    "--api-budget-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True),
    envvar="BRIDGE_API_BUDGET_FRACTION",
    show_envvar=True,
    help="Share of AWS's per-account call rates the fleet may use.  [default: 0.9]",
)
@click.option(
    "--rate-limit/--no-rate-limit",
    default=None,
    envvar="BRIDGE_RATE_LIMIT",
    show_envvar=True,
    help="Budget task-runner calls fleet-wide in Redis (turn off only to prove the point).  [default: on]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar="BRIDGE_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus metrics on this port (e.g. 9464); 0 serves none.  [default: 0]",
)
@click.option(
    "--metrics-host",
    envvar="BRIDGE_METRICS_HOST",
    show_envvar=True,
    help="Address the metrics endpoint binds to (0.0.0.0 or :: to expose it).  [default: 127.0.0.1]",
)
def start(worker_groups: tuple[str, ...], routes: tuple[str, ...], **opts: Any) -> None:
    """Poll Data Pipeline for WORKER_GROUP tasks and enqueue them as Celery jobs.

    First SIGTERM/SIGINT: stop polling, enqueue what an in-flight poll returns, keep heartbeating
    queued tasks until workers start them (or the drain timeout), exit 0. A second signal exits at once.
    """
    logs.configure(opts.pop("log_level"), opts.pop("log_format"))
    groups = tuple(g.strip() for item in worker_groups for g in item.split(",") if g.strip())
    try:
        settings = Settings(
            worker_groups=groups,
            routes=parse_routes(",".join(routes)),
            redis_url=opts.pop("redis_url")
            or (opts["broker_url"] if opts["broker_url"].startswith("redis") else DEFAULT_REDIS_URL),
            **{k: v for k, v in opts.items() if v is not None},
        ).validate(need_groups=True)
    except (ConfigError, TypeError) as exc:
        _fail(EXIT_CONFIG, f"configuration error: {exc}")
    from bridge.process import BridgeProcess

    try:
        process = BridgeProcess(settings)
        process.check()
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    except BrokerError as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    _install_signals(process.request_stop)
    process.start()
    process.wait()
    sys.exit(EXIT_OK)


def _install_signals(graceful: Any) -> None:
    """First signal: graceful stop. Second: exit at once."""
    received: list[int] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            log.warning("second signal: exiting now")
            os._exit(EXIT_INTERRUPTED)
        log.info("received %s: stopping gracefully (send again to exit at once)", signal.Signals(signum).name)
        graceful()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"bridge: {message}", err=True)
    sys.exit(code)


from bridge.dev import dev  # noqa: E402

main.add_command(dev)
from bridge.opscli import check, pause, resume, status  # noqa: E402

for _command in (status, check, pause, resume):
    main.add_command(_command)
