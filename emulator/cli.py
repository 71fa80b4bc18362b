"""``bridge emulator``: run the local Data Pipeline service, or talk to its admin API."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from types import FrameType
from typing import Any

import click

from emulator.config import LIMIT_DEFAULTS, Rehandout, ServiceConfig, TaskObjects, parse_limits
from emulator.faults import FaultConfig, Faults, PerOperation
from emulator.server import serve
from emulator.service import Service
from emulator.sigv4 import Credentials
from emulator.throttle import Rate, Throttle, parse_rates

log = logging.getLogger(__name__)

DEFAULT_PORT = 8999
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def _rates(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, Rate]:
    try:
        return parse_rates(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _limits(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, int]:
    try:
        return parse_limits(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _per_operation(fraction: bool) -> Any:
    def parse(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> PerOperation:
        try:
            return PerOperation.parse(value, fraction=fraction)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc

    return parse


@click.group(invoke_without_command=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="BRIDGE_EMULATOR_HOST",
    help="Address to bind. Keep 127.0.0.1 unless others must reach it.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=int,
    envvar="BRIDGE_EMULATOR_PORT",
    help="Port to bind; 0 picks a free one (printed at start).",
)
@click.option(
    "--poll-wait",
    default=90.0,
    show_default=True,
    type=float,
    envvar="BRIDGE_EMULATOR_POLL_WAIT",
    help="Seconds a PollForTask is held when no task is ready (AWS: 90).",
)
@click.option(
    "--ack-timeout",
    default=120.0,
    show_default=True,
    type=float,
    envvar="BRIDGE_EMULATOR_ACK_TIMEOUT",
    help="Seconds a runner has to acknowledge a task with ReportTaskProgress (AWS: 2 minutes).",
)
@click.option(
    "--progress-timeout",
    default=900.0,
    show_default=True,
    type=float,
    envvar="BRIDGE_EMULATOR_PROGRESS_TIMEOUT",
    help="Seconds between progress reports when the object has no reportProgressTimeout (AWS: 15 min).",
)
@click.option(
    "--rehandout",
    type=click.Choice([m.value for m in Rehandout]),
    default=Rehandout.NEW_ATTEMPT.value,
    show_default=True,
    envvar="BRIDGE_EMULATOR_REHANDOUT",
    help="What a missed deadline does: a new attempt (the old one TIMEDOUT) or the same task again.",
)
@click.option(
    "--task-objects",
    type=click.Choice([m.value for m in TaskObjects]),
    default=TaskObjects.FULL.value,
    show_default=True,
    envvar="BRIDGE_EMULATOR_TASK_OBJECTS",
    help="'full': the attempt plus every object it refers to; 'attempt-only': as AWS's only example.",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=float,
    envvar="BRIDGE_EMULATOR_TIME_SCALE",
    help="Divide every Period in definitions (retryDelay, attemptTimeout, ...) by this, after validation.",
)
@click.option(
    "--clock-speed",
    default=1.0,
    show_default=True,
    type=float,
    envvar="BRIDGE_EMULATOR_CLOCK_SPEED",
    help="Run the service clock (schedules, shown times) this many times faster than real time; deadlines stay real.",
)
@click.option(
    "--allow-old-start/--no-allow-old-start",
    default=False,
    envvar="BRIDGE_EMULATOR_ALLOW_OLD_START",
    help="Activate schedules that start more than a day in the past (AWS blocks them to prevent a backfill).",
)
@click.option(
    "--state",
    "state_path",
    default=None,
    envvar="BRIDGE_EMULATOR_STATE",
    type=click.Path(dir_okay=False),
    help="SQLite file that keeps state across restarts (default: memory only).",
)
@click.option(
    "--require-auth/--no-require-auth",
    default=False,
    envvar="BRIDGE_EMULATOR_REQUIRE_AUTH",
    help="Verify SigV4 signatures against --credentials.",
)
@click.option(
    "--credentials",
    default="",
    envvar="BRIDGE_EMULATOR_CREDENTIALS",
    show_envvar=True,
    help="Access keys accepted with --require-auth, as KEYID:SECRET[,KEYID:SECRET...].",
)
@click.option(
    "--default-maximum-retries",
    default=2,
    show_default=True,
    type=int,
    help="maximumRetries when a definition sets none (AWS's default is unconfirmed).",
)
@click.option(
    "--default-retry-delay",
    default=600.0,
    show_default=True,
    type=float,
    help="retryDelay in seconds when a definition sets none (scaled by --time-scale).",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    callback=_limits,
    envvar="BRIDGE_EMULATOR_LIMITS",
    metavar="NAME=N",
    help=f"Change one of AWS's limits, e.g. pipelines=3. Repeatable. NAME: {', '.join(LIMIT_DEFAULTS)}.",
)
@click.option(
    "--s3-endpoint-url",
    default=None,
    envvar="BRIDGE_EMULATOR_S3_ENDPOINT_URL",
    help="S3 endpoint the service checks S3KeyExists / S3PrefixNotEmpty against (default: AWS's, as boto3 finds it).",
)
@click.option(
    "--no-throttle/--throttle",
    "no_throttle",
    default=False,
    envvar="BRIDGE_EMULATOR_NO_THROTTLE",
    help="Turn off AWS's per-operation call limits (on by default).",
)
@click.option(
    "--rate",
    multiple=True,
    callback=_rates,
    envvar="BRIDGE_EMULATOR_RATES",
    metavar="OP=RATE/BURST",
    help="Override one operation's limit, e.g. PollForTask=5/10 (calls/s, burst). Repeatable.",
)
@click.option(
    "--fault-rate",
    multiple=True,
    callback=_per_operation(fraction=True),
    envvar="BRIDGE_EMULATOR_FAULT_RATE",
    metavar="[OP=]P",
    help="Answer this fraction of calls 500 InternalServiceError without running them. Repeatable.",
)
@click.option(
    "--latency-ms",
    multiple=True,
    callback=_per_operation(fraction=False),
    envvar="BRIDGE_EMULATOR_LATENCY_MS",
    metavar="[OP=]MS",
    help="Wait this long before running each call. Repeatable.",
)
@click.option(
    "--drop-rate",
    multiple=True,
    callback=_per_operation(fraction=True),
    envvar="BRIDGE_EMULATOR_DROP_RATE",
    metavar="[OP=]P",
    help="Run this fraction of calls, then close the connection without a reply. Repeatable.",
)
@click.option(
    "--fault-seed",
    type=int,
    default=None,
    envvar="BRIDGE_EMULATOR_FAULT_SEED",
    help="Seed for the fault draws, for reproducible runs.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="BRIDGE_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def emulator(ctx: click.Context, /, **opts: Any) -> None:
    """Run the local AWS Data Pipeline service (boto3 and the AWS CLI work against it unchanged).

    Point clients at it with --endpoint-url (or AWS_ENDPOINT_URL). Any credentials are accepted
    unless --require-auth is set.
    """
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=opts["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    credentials = None
    if opts["require_auth"]:
        try:
            credentials = Credentials.parse(opts["credentials"])
        except ValueError as exc:
            click.echo(f"error: --credentials: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    try:
        config = ServiceConfig(
            poll_wait_s=opts["poll_wait"],
            ack_timeout_s=opts["ack_timeout"],
            progress_timeout_s=opts["progress_timeout"],
            rehandout=Rehandout(opts["rehandout"]),
            task_objects=TaskObjects(opts["task_objects"]),
            time_scale=opts["time_scale"],
            clock_speed=opts["clock_speed"],
            allow_old_start=opts["allow_old_start"],
            state_path=opts["state_path"],
            require_auth=opts["require_auth"],
            default_maximum_retries=opts["default_maximum_retries"],
            default_retry_delay_s=opts["default_retry_delay"],
            limits=opts["limits"],
            s3_endpoint_url=opts["s3_endpoint_url"],
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    throttle = None if opts["no_throttle"] else Throttle.aws(opts["rate"])
    faults = Faults(FaultConfig(opts["fault_rate"], opts["latency_ms"], opts["drop_rate"], opts["fault_seed"]))
    if throttle is None:
        log.info("throttling is off")
    if faults.config.active:
        log.warning("injecting faults: %s", json.dumps(faults.describe(), sort_keys=True))
    run_server(config, opts["host"], opts["port"], credentials, throttle, faults)


def run_server(
    config: ServiceConfig,
    host: str,
    port: int,
    credentials: Credentials | None,
    throttle: Throttle | None = None,
    faults: Faults | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT."""
    service = Service(config)
    try:
        server = serve(service, host, port, credentials, throttle, faults)
    except OSError as exc:
        click.echo(f"error: cannot bind {host}:{port}: {exc.strerror}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    service.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            os._exit(1)
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"Local Data Pipeline service listening on {server.url}", nl=True)
    sys.stdout.flush()
    # Shutdown order: stop accepting, stop timers (flushing state), close the socket.
    server.serve_forever(poll_interval=0.2)
    service.stop()
    server.server_close()
    click.echo("Local Data Pipeline service stopped.")


# -- admin --------------------------------------------------------------------------------------


def admin_call(endpoint_url: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST one admin action and return the JSON reply.

    Raises:
        click.ClickException: when the service answers an error or cannot be reached.
    """
    request = urllib.request.Request(
        endpoint_url.rstrip("/") + "/_admin/" + action,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            result: dict[str, Any] = json.loads(reply.read() or b"{}")
            return result
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}")
        raise click.ClickException(f"{action}: {detail.get('message', exc.reason)}") from exc
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {endpoint_url}: {exc.reason}") from exc


@emulator.group()
@click.option(
    "--endpoint-url",
    envvar=["BRIDGE_ENDPOINT_URL", "AWS_ENDPOINT_URL"],
    show_envvar=True,
    default=f"http://127.0.0.1:{DEFAULT_PORT}",
    show_default=True,
    help="The local service's URL.",
)
@click.pass_context
def admin(ctx: click.Context, endpoint_url: str) -> None:
    """Talk to a running local service's admin API (POST /_admin/<action>)."""
    ctx.obj = endpoint_url


def _print(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result, indent=2, sort_keys=True))


@admin.command("terminate-runner")
@click.argument("taskrunner_id")
@click.pass_obj
def terminate_runner(endpoint_url: str, taskrunner_id: str) -> None:
    """Make TASKRUNNER_ID's next heartbeat answer terminate: true."""
    _print(admin_call(endpoint_url, "terminate-runner", {"taskrunnerId": taskrunner_id}))


@admin.command()
@click.pass_obj
def counters(endpoint_url: str) -> None:
    """Calls per operation, with how many were throttled, faulted, dropped or errors."""
    _print(admin_call(endpoint_url, "counters"))


@admin.command("throttle")
@click.pass_obj
def throttle_buckets(endpoint_url: str) -> None:
    """Per throttled operation: tokens in its bucket now, rate (calls/s) and burst."""
    _print(admin_call(endpoint_url, "throttle"))


@admin.command("faults")
@click.option("--fault-rate", multiple=True, metavar="[OP=]P", help="Replace the error rates (as at start).")
@click.option("--latency-ms", multiple=True, metavar="[OP=]MS", help="Replace the latencies.")
@click.option("--drop-rate", multiple=True, metavar="[OP=]P", help="Replace the drop rates.")
@click.option("--off", is_flag=True, help="Inject nothing from now on (other options given still apply).")
@click.pass_obj
def fault_settings(
    endpoint_url: str, fault_rate: tuple[str, ...], latency_ms: tuple[str, ...], drop_rate: tuple[str, ...], off: bool
) -> None:
    """Show the fault injection in force, or change it: each option given replaces that kind for every operation."""
    body: dict[str, Any] = {"faultRate": [], "latencyMs": [], "dropRate": []} if off else {}
    for key, values in (("faultRate", fault_rate), ("latencyMs", latency_ms), ("dropRate", drop_rate)):
        if values:
            body[key] = list(values)
    _print(admin_call(endpoint_url, "faults", body))


@admin.command("actions")
@click.option("--pipeline-id", default=None, help="Only this pipeline's actions.")
@click.pass_obj
def fired_actions(endpoint_url: str, pipeline_id: str | None) -> None:
    """Actions fired (onFail, onSuccess, onLateAction), in order, with alarms' evaluated subject and message."""
    _print(admin_call(endpoint_url, "actions", {"pipelineId": pipeline_id} if pipeline_id else {}))


@admin.command()
@click.pass_obj
def runners(endpoint_url: str) -> None:
    """Task runners that sent ReportTaskRunnerHeartbeat."""
    _print(admin_call(endpoint_url, "runners"))


@admin.command()
@click.pass_obj
def clock(endpoint_url: str) -> None:
    """The service clock: now, in epoch seconds, and its speed."""
    _print(admin_call(endpoint_url, "clock"))


@admin.command("advance-clock")
@click.argument("seconds", type=click.FloatRange(min=0))
@click.pass_obj
def advance_clock(endpoint_url: str, seconds: float) -> None:
    """Move the service clock SECONDS forward; scheduled instances due by then appear at once."""
    _print(admin_call(endpoint_url, "advance-clock", {"seconds": seconds}))


@admin.command()
@click.pass_obj
def stats(endpoint_url: str) -> None:
    """Sizes of the service's state (pipelines, instances, queued tasks per worker group)."""
    _print(admin_call(endpoint_url, "stats"))
