"""The processes a scenario runs and the pipelines it feeds them.

:class:`BenchStack` starts the local service and a private redis-server, then, on demand, real
``celery -A workers worker -I bench.tasks`` processes, a real ``bridge start`` and the Task Runner model
(``bench/taskrunner.py``), each optionally under the profiler (``bench/profiled.py``). ``stop()`` leaves no process
behind. :class:`ServiceLog` reads the service's own log lines, whose millisecond timestamps say when it handed a
task out and when a SetTaskStatus reached it.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchError
from bench.tasks import EventsTail, Stamp
from tests.integration.bridge_stack import close_output, stop_process
from tests.support import (
    EmulatorProcess,
    ManagedProcess,
    RedisServer,
    bridge_env,
    bridge_start,
    celery_worker,
    dp_client,
    put_definition,
)

#: On-demand pipelines hold at most 100 objects: the Default object and 99 activities.
ACTIVITIES_PER_PIPELINE = 99
#: Service options every scenario uses: room for many pipelines, a short held poll (processes stop sooner).
BASE_EMULATOR_ARGS = ("--limit", "pipelines=10000", "--poll-wait", "5")
#: How long a stopping process may take (a bridge waits for its held poll) before a second SIGTERM stops it at once.
GRACEFUL_S = 6.0


# -- the service's log ----------------------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_HANDED_OUT = re.compile(r" handed out (\S+) of (\S+) to ")
_ENDED = re.compile(r" task (\S+) ended (\S+)$")
_ACTIVATED = re.compile(r" activated pipeline (\S+)$")
_MISSED = re.compile(r" task (\S+) of (\S+) (.+); handing it out again")


def log_time(line: str) -> float | None:
    """The epoch seconds of a service log line (``asctime``: local time, milliseconds)."""
    found = _STAMP.match(line)
    if not found:
        return None
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass(frozen=True)
class LogEvent:
    """One task event the service logged."""

    at: float
    attempt_id: str
    pipeline_id: str = ""
    status: str = ""


class ServiceLog:
    """The task events in the service's output (lines are kept in memory by its reader thread)."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.emulator = emulator

    @property
    def lines(self) -> list[str]:
        return self.emulator.output.lines if self.emulator.output is not None else []

    def mark(self) -> int:
        """Where the log is now: pass it as ``since`` to read only what comes after."""
        return len(self.lines)

    def _events(self, pattern: re.Pattern[str], since: int) -> list[tuple[float, re.Match[str]]]:
        found = []
        for line in self.lines[since:]:
            match = pattern.search(line)
            at = log_time(line) if match else None
            if match and at is not None:
                found.append((at, match))
        return found

    def handed_out(self, since: int = 0) -> list[LogEvent]:
        return [LogEvent(at, m.group(1), m.group(2)) for at, m in self._events(_HANDED_OUT, since)]

    def ended(self, since: int = 0) -> list[LogEvent]:
        return [LogEvent(at, m.group(1), status=m.group(2)) for at, m in self._events(_ENDED, since)]

    def activated(self, since: int = 0) -> list[LogEvent]:
        return [LogEvent(at, "", m.group(1)) for at, m in self._events(_ACTIVATED, since)]

    def missed(self, since: int = 0) -> list[LogEvent]:
        """Attempts whose runner missed the acknowledgement or progress deadline (handed out again)."""
        return [LogEvent(at, m.group(1), m.group(2), m.group(3)) for at, m in self._events(_MISSED, since)]

    def wait_ended(self, count: int, since: int, timeout_s: float, what: str = "tasks") -> list[LogEvent]:
        """Wait until ``count`` SetTaskStatus calls ended tasks after ``since``; returns them.

        Raises:
            BenchError: not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            ended = self.ended(since)
            if len(ended) >= count:
                return ended
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(ended)} of {count} {what} ended within {timeout_s:g} s")
            time.sleep(0.05)


# -- pipelines --------------------------------------------------------------------------------------------


def step_activity(object_id: str, seconds: float = 0.0, release: str = "", **fields: str) -> dict[str, Any]:
    """A ShellCommandActivity the worker runs as the ``bench.step`` Celery-native step (no command process)."""
    activity: dict[str, Any] = {
        "id": object_id,
        "type": "ShellCommandActivity",
        "command": "true",
        "myCeleryTask": "bench.step",
        "mySeconds": f"{seconds:g}",
        **fields,
    }
    if release:
        activity["myRelease"] = release
    return activity


# -- the stack --------------------------------------------------------------------------------------------


class BenchStack:
    """The service, Redis, and whichever runners a scenario starts; ``stop()`` leaves no process behind.

    Args:
        emulator_args: Extra options of ``bridge emulator`` (after ``BASE_EMULATOR_ARGS``).
        env: Extra environment of the bridge, the workers and the model (``BRIDGE_*``).
    """

    def __init__(self, emulator_args: Sequence[str] = (), **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-"))
        self.emulator = EmulatorProcess([*BASE_EMULATOR_ARGS, *emulator_args])
        self.redis = RedisServer()
        self.events_path = self.dir / "events.log"
        self._events = EventsTail(self.events_path)
        self.extra_env = {
            "BRIDGE_WORK_DIR": str(self.dir / "work"),
            "BRIDGE_DRAIN_TIMEOUT_S": "5",
            "BENCH_EVENTS_FILE": str(self.events_path),
            "PYTHONPATH": str(ROOT),  # the workers import bench.tasks
            **env,
        }
        self.processes: list[ManagedProcess] = []
        self.dp: Any = None
        self.log = ServiceLog(self.emulator)
        self._serial = itertools.count(1)

    def start(self) -> BenchStack:
        try:
            self.emulator.start()
            self.redis.start()
        except (AssertionError, RuntimeError) as exc:
            self.stop()
            raise BenchError(f"the stack did not start: {exc}") from exc
        self.dp = dp_client(self.emulator.url)
        return self

    def __enter__(self) -> BenchStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def env(self, **extra: str) -> dict[str, str]:
        return bridge_env(self.emulator.url, self.redis.url, **{**self.extra_env, **extra})

    # -- processes ----------------------------------------------------------------------------------------

    def _launch(self, proc: ManagedProcess, profile: Path | None, what: str, timeout_s: float = 90.0) -> ManagedProcess:
        if profile is not None:
            # python bench/profiled.py --out FILE -- -m celery ... / -m bridge ...
            program = proc.cmd[0]
            rest = proc.cmd[1:]
            module = "celery" if program.endswith("celery") else None
            head = ["-m", module] if module else []
            if not module and rest[:2] == ["-m", "bridge"]:
                head, rest = rest[:2], rest[2:]
            proc.cmd = [sys.executable, str(ROOT / "bench" / "profiled.py"), "--out", str(profile), "--", *head, *rest]
        self.processes.append(proc)
        try:
            return proc.start(timeout=timeout_s)
        except AssertionError as exc:
            raise BenchError(f"{what} did not start: {exc}\n{proc.text()[-3000:]}") from exc

    def worker(
        self,
        queues: str,
        concurrency: int,
        *,
        profile: Path | None = None,
        loglevel: str = "INFO",
        **env: str,
    ) -> ManagedProcess:
        """A threads-pool ``celery -A workers worker`` that also imports ``bench.tasks``; returned once ready."""
        proc = celery_worker(self.env(**env), queues, concurrency=concurrency, name=f"bench{uuid.uuid4().hex[:6]}")
        proc.cmd[proc.cmd.index("--loglevel") + 1] = loglevel
        proc.cmd += ["--include", "bench.tasks"]
        return self._launch(proc, profile, "the Celery worker")

    def bridge(self, group: str, *extra: str, profile: Path | None = None, **env: str) -> ManagedProcess:
        """``bridge start`` for ``group``; returned once its poller runs."""
        return self._launch(bridge_start(self.env(**env), group, extra=extra), profile, "bridge start")

    def model(
        self, group: str, threads: int, count: int, *, raw: bool = False, profile: Path | None = None
    ) -> ManagedProcess:
        """The Task Runner model (``bench/taskrunner.py``): ``threads`` pollers, exits after ``count`` tasks."""
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "taskrunner.py"),
            "--endpoint-url",
            self.emulator.url,
            "--worker-group",
            group,
            "--threads",
            str(threads),
            "--count",
            str(count),
            *(["--raw"] if raw else []),
        ]
        proc = ManagedProcess(cmd, self.env(), ready_text="polling with")
        return self._launch(proc, profile, "the Task Runner model")

    def stop_process(self, proc: ManagedProcess, patience_s: float = GRACEFUL_S) -> None:
        """SIGTERM; if still running after ``patience_s`` (a held poll), SIGTERM again: exit at once."""
        if proc.proc is not None and proc.proc.poll() is None:
            proc.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=patience_s)
        stop_process(proc)
        if proc in self.processes:
            self.processes.remove(proc)

    def stop(self) -> None:
        """Stop every process this stack started (the runners first, the service last)."""
        for proc in list(reversed(self.processes)):
            self.stop_process(proc)
        emulator, reader = self.emulator.proc, self.emulator.output
        self.emulator.stop()
        close_output(emulator, reader)
        self.redis.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the service ----------------------------------------------------------------------------------------

    @property
    def emulator_pid(self) -> int:
        return self.emulator.proc.pid if self.emulator.proc is not None else 0

    @property
    def redis_pid(self) -> int:
        return self.redis.proc.pid if self.redis.proc is not None else 0

    def counters(self) -> dict[str, dict[str, int]]:
        """Calls, throttled, errors... per operation, as the service counted them."""
        found: dict[str, dict[str, int]] = self.emulator.admin("counters")["counters"]
        return found

    def pipeline(self, group: str, activities: Sequence[dict[str, Any]], **default_fields: str) -> str:
        """Create and define (not activate) an on-demand pipeline of ``activities`` for ``group``.

        Raises:
            BenchError: the service found errors in the definition.
        """
        default = {
            "id": "Default",
            "scheduleType": "ondemand",
            "failureAndRerunMode": "cascade",
            "workerGroup": group,
            "maximumRetries": "0",
            **default_fields,
        }
        name = f"bench-{next(self._serial)}"
        pipeline_id: str = self.dp.create_pipeline(name=name, uniqueId=f"{name}-{uuid.uuid4().hex}")["pipelineId"]
        reply = put_definition(self.dp, pipeline_id, {"objects": [default, *activities]})
        if reply["errored"]:
            raise BenchError(f"the benchmark's definition has errors: {reply['validationErrors']}")
        return pipeline_id

    def steps(
        self, group: str, count: int, seconds: float = 0.0, release: str = "", **default_fields: str
    ) -> list[str]:
        """Pipelines holding ``count`` independent ``bench.step`` activities for ``group`` (not activated).

        Object ids are unique within the stack, so the service's log lines name each attempt once.
        """
        pipelines = []
        left = count
        while left > 0:
            size = min(left, ACTIVITIES_PER_PIPELINE)
            left -= size
            activities = [step_activity(f"B{next(self._serial):06d}", seconds, release) for _ in range(size)]
            pipelines.append(self.pipeline(group, activities, **default_fields))
        return pipelines

    def activate(self, pipeline_ids: Sequence[str]) -> None:
        for pipeline_id in pipeline_ids:
            self.dp.activate_pipeline(pipelineId=pipeline_id)

    def events(self) -> list[Stamp]:
        """Every stamp the bodies and workers wrote so far."""
        return self._events.read()

    def wait_events(self, kind: str, count: int, timeout_s: float, since: float = 0.0) -> list[Stamp]:
        """Wait until ``count`` stamps of ``kind`` made after ``since`` are in the events file; returns them.

        Raises:
            BenchError: not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = [s for s in self.events() if s.kind == kind and s.at >= since]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(found)} of {count} '{kind}' stamps within {timeout_s:g} s")
            time.sleep(0.05)


def scrape(port: int) -> dict[str, float]:
    """A Prometheus endpoint's samples as ``{'name{label="v",...}': value}`` (empty when it cannot be read)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
