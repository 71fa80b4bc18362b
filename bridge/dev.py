"""``bridge dev``: the whole stack on one machine, definitions run once, live progress, a final table."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from bridge.devrun import (
    BLOCKED,
    OVER,
    Definition,
    DefinitionError,
    Progress,
    create_pipelines,
    load_definitions,
    summary,
    table,
)
from bridge.devstack import FLOWER_USER, REGION, DevStack, Interrupted, StartupError, display_url
from bridge.errors import ConfigError

# Exit codes (the same values as bridge.cli's).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

DEFAULT_DEFINITION = Path(__file__).resolve().parent.parent / "examples" / "hello.json"
POLL_INTERVAL_S = 0.5


@click.command()
@click.argument("definitions", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--worker-group",
    default="dev",
    show_default=True,
    envvar="BRIDGE_DEV_WORKER_GROUP",
    show_envvar=True,
    help="Worker group for definitions that name none (no workerGroup, no runsOn): set on their Default.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    envvar="BRIDGE_DEV_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for every instance to end; then stop everything and exit 1.",
)
@click.option(
    "--flower/--no-flower",
    default=True,
    show_default=True,
    envvar="BRIDGE_DEV_FLOWER",
    show_envvar=True,
    help="Run Flower on a free 127.0.0.1 port, with basic auth (user 'dev', a random password).",
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    envvar="BRIDGE_DEV_CONCURRENCY",
    show_envvar=True,
    help="Threads of the Celery worker (tasks that run at once).",
)
@click.option(
    "--keep",
    is_flag=True,
    envvar="BRIDGE_DEV_KEEP",
    show_envvar=True,
    help="Keep the temporary directory (logs, Redis socket, work dirs) after exit.",
)
@click.option(
    "--redis-url",
    default=None,
    envvar="BRIDGE_REDIS_URL",
    show_envvar=True,
    help="Use this Redis (Celery broker and leases) instead of a private redis-server on a unix socket.",
)
def dev(
    definitions: tuple[Path, ...],
    worker_group: str,
    timeout_s: float,
    flower: bool,
    concurrency: int,
    keep: bool,
    redis_url: str | None,
) -> None:
    """Run the whole stack on this machine and each DEFINITION.json once (default: examples/hello.json).

    Starts the local Data Pipeline service, a private redis-server, one Celery worker and one poller serving
    every worker group the definitions name, and Flower; puts each definition into its own on-demand pipeline,
    activates it and prints one line per status change until every instance is over. Exits 0 if every
    instance FINISHED, 1 otherwise. Ctrl-C stops everything. Logs go to files in a temporary directory.
    """
    started = time.monotonic()
    try:
        loaded = load_definitions(definitions or (DEFAULT_DEFINITION,), worker_group)
    except DefinitionError as exc:
        _fail(EXIT_CONFIG, str(exc))
    groups = sorted({group for definition in loaded for group in definition.worker_groups})
    stop, urgent = threading.Event(), threading.Event()
    restore_signals = _install_signals(stop, urgent)
    stack = DevStack(groups, concurrency=concurrency, flower=flower, redis_url=redis_url, stop=stop, urgent=urgent)
    session = DevSession(stack, loaded, timeout_s=timeout_s, keep=keep, started=started, stop=stop)
    try:
        code = session.run()
    finally:
        # Shutdown order: the processes (DevStack.stop's sequence), then their directory, then the signals.
        # Nothing before stack.stop() may raise: an exception here must not leave the stack running.
        session.say("stopping the stack ...")
        stack.stop()
        stack.cleanup(keep=keep)
        restore_signals()
    if keep:
        session.say(f"kept {stack.root}")
    sys.exit(code)


class DevSession:
    """One ``bridge dev`` run: start the stack, run the pipelines, follow them, report.

    Output goes to the terminal through ``say``; if the terminal goes away (a closed pipe), the run stops
    as if interrupted, and the stack is still torn down.
    """

    def __init__(
        self,
        stack: DevStack,
        definitions: list[Definition],
        *,
        timeout_s: float,
        keep: bool,
        started: float,
        stop: threading.Event,
    ) -> None:
        self.stack = stack
        self.definitions = definitions
        self.timeout_s = timeout_s
        self.keep = keep
        self.started = started
        self.stop = stop
        self._muted = False

    def say(self, text: str, *, err: bool = False) -> None:
        """Print one line; a terminal that is gone stops the run instead of raising."""
        if self._muted:
            return
        try:
            click.echo(text, err=err)
        except OSError:
            self._muted = True
            self.stop.set()
            with contextlib.suppress(OSError):  # so the interpreter's last flush does not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), (sys.stderr if err else sys.stdout).fileno())

    def run(self) -> int:
        """Returns the exit code."""
        names = ", ".join(f"{d.name} ({d.path})" for d in self.definitions)
        groups = self.stack.worker_groups
        self.say(f"bridge dev: {names}; worker group{'s' if len(groups) > 1 else ''} {', '.join(groups)}")
        self.say(f"  logs      {self.stack.log_dir}")
        try:
            return self._run()
        except Interrupted:
            self.say("interrupted", err=True)
            return EXIT_INTERRUPTED
        except ConfigError as exc:
            self.say(f"bridge dev: {exc}", err=True)
            return EXIT_CONFIG
        except StartupError as exc:
            self.say(f"bridge dev: {exc}", err=True)
            return EXIT_UNAVAILABLE

    def _run(self) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        self.stack.start_services()
        client = _client(self.stack.endpoint_url)
        try:
            runs = create_pipelines(client, self.definitions, lambda line: self.say(line, err=True))
            self.stack.start_runners()
            self._describe_stack()
            for run in runs:
                if self.stop.is_set():
                    raise Interrupted("interrupted")
                client.activate_pipeline(pipelineId=run.pipeline_id)
            return self._follow(Progress(client, runs))
        except (BotoCoreError, ClientError) as exc:
            raise StartupError(f"the local Data Pipeline service failed a call: {exc}") from exc

    def _follow(self, progress: Progress) -> int:
        """Print status changes until every instance is over, the timeout, or a signal; then the table."""
        runs = progress.runs
        width_pipeline = max(len(run.definition.name) for run in runs)
        width_object = max(len(i) for run in runs for i in run.definition.object_ids)
        deadline = time.monotonic() + self.timeout_s
        outcome = ""
        while not progress.over():
            if self.stop.is_set():
                outcome = "interrupted"
                break
            if time.monotonic() > deadline:
                outcome = "timeout"
                break
            self.stack.check_alive()
            for row in sorted(progress.refresh(), key=lambda changed: changed.order):
                error = f"  {row.error}" if row.error and row.status != BLOCKED else ""
                stamp = f"[{time.monotonic() - self.started:.1f}s]"
                pipeline, object_id = row.pipeline.ljust(width_pipeline), row.object_id.ljust(width_object)
                self.say(f"{stamp:>7} {pipeline}  {object_id}  {row.status}{error}")
            if not progress.over():
                self.stop.wait(POLL_INTERVAL_S * len(runs))  # DescribeObjects: 2 calls/s per account
        rows = progress.sorted_rows()
        self.say("")
        for line in table(rows):
            self.say(line)
        self.say("")
        self.say(f"{summary(rows)} after {time.monotonic() - self.started:.1f}s")
        if self.stack.flower:
            flower = f"{self.stack.flower_url}  (user {FLOWER_USER}, password {self.stack.flower_password}"
            self.say(f"Flower:  {flower}; stops with the stack)")
        self.say(f"Logs:    {self.stack.log_dir}" + ("" if self.keep else "  (removed on exit; --keep keeps them)"))
        if outcome == "interrupted":
            raise Interrupted("interrupted")
        if outcome == "timeout":
            pending = ", ".join(f"{r.pipeline}/{r.object_id} {r.status}" for r in rows if r.status not in OVER)
            self.say(f"bridge dev: timed out after {self.timeout_s:g}s; not over: {pending}", err=True)
            return EXIT_FAILED
        return EXIT_OK if progress.all_finished() else EXIT_FAILED

    def _describe_stack(self) -> None:
        stack = self.stack
        self.say(f"  service   {stack.endpoint_url}")
        self.say(f"  redis     {display_url(stack.redis_url)}")
        if stack.flower:
            self.say(f"  flower    {stack.flower_url}  (user {FLOWER_USER}, password {stack.flower_password})")
        self.say("  pids      " + ", ".join(f"{name} {pid}" for name, pid in stack.pids().items()))
        self.say("  log files " + " ".join(sorted(p.name for p in stack.log_dir.iterdir())))


def _client(endpoint_url: str) -> Any:
    """A Data Pipeline client for the local service (retries on, so throttling is retried)."""
    import boto3
    from botocore.config import Config

    # This process talks only to its own local service: a profile, config file or endpoint meant for AWS
    # (AWS_PROFILE naming a profile this machine lacks, say) must not change or break that.
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true"
    )

    session = boto3.session.Session(
        aws_access_key_id="AKIDBRIDGEDEV", aws_secret_access_key="bridge-dev-not-a-secret", region_name=REGION
    )
    config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 8, "mode": "standard"})
    return session.client("datapipeline", endpoint_url=endpoint_url, config=config)


def _install_signals(stop: threading.Event, urgent: threading.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM/SIGHUP: stop the runs and the stack. Second: kill the stack without waiting."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        (urgent if stop.is_set() else stop).set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"bridge dev: {message}", err=True)
    sys.exit(code)
