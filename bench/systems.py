"""The compared systems, started on a :class:`~bench.stack.BenchStack`, and one timed batch of tasks through them.

- the bridge: one ``bridge start`` (every reliability step: leases, admission by live slots, the keeper, fencing,
  heartbeats; the API budget unless ``--no-rate-limit``) and one threads-pool Celery worker;
- the Task Runner model (``bench/taskrunner.py``): polls, runs and reports in N threads of one process;
- the floors: plain boto3 round trips (the model with ``--raw``), and Celery publish -> run alone.

A batch is timed by the service: from just before its pipelines are activated to the moment the service logged
the last SetTaskStatus.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BenchError, Sampler, Usage
from bench.stack import BenchStack
from bench.tasks import FLOOR
from tests.support import ManagedProcess

#: A batch that has not ended after this many seconds per task (plus a minute) is a failure, not a figure.
TIMEOUT_PER_TASK_S = 2.0


@dataclass
class Batch:
    """One timed batch: how long it took and what each process used meanwhile."""

    system: str
    tasks: int
    wall_s: float
    usage: dict[str, Usage] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.wall_s if self.wall_s > 0 else 0.0

    def cpu_ms_per_task(self, *names: str) -> float:
        return 1000 * sum(self.usage[n].cpu_s for n in names if n in self.usage) / self.tasks


@dataclass
class System:
    """A started system: its processes by role (``poller``, ``worker``, ``model``...)."""

    name: str
    pids: dict[str, int]
    group: str
    ours: tuple[str, ...]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)


def pids_with_service(stack: BenchStack, system: System) -> dict[str, int]:
    return {**system.pids, "service": stack.emulator_pid}


@contextlib.contextmanager
def bridge(
    stack: BenchStack,
    slots: int,
    *extra: str,
    name: str = "bridge",
    profile_dir: Path | None = None,
    warmup: int = 0,
    **env: str,
) -> Iterator[System]:
    """One ``bridge start`` and one ``slots``-thread worker for a fresh group, warmed up; stopped on exit.

    ``--max-in-flight`` is ``slots`` (its default of 8 would bind before the slots do). ``warmup`` no-op tasks go
    through first, untimed: the first tasks build clients and connections in every worker thread.
    """
    group = f"g{uuid.uuid4().hex[:8]}"
    worker = stack.worker(f"dp.{group}", slots, profile=profile_dir / "worker.txt" if profile_dir else None, **env)
    try:
        poller = stack.bridge(
            group,
            "--max-in-flight",
            str(slots),
            *extra,
            profile=profile_dir / "poller.txt" if profile_dir else None,
            **env,
        )
        try:
            system = System(
                name,
                {"poller": poller.pid, "worker": worker.pid, "redis": stack.redis_pid},
                group,
                ("poller", "worker", "redis"),
                {"poller": poller, "worker": worker},
            )
            if warmup:
                batch(stack, system, warmup)
            yield system
        finally:
            stack.stop_process(poller)
    finally:
        stack.stop_process(worker)


@contextlib.contextmanager
def model(
    stack: BenchStack,
    threads: int,
    count: int,
    *,
    raw: bool = False,
    name: str = "",
    profile: Path | None = None,
    warmup: int = 0,
) -> Iterator[System]:
    """The Task Runner model with ``threads`` poll threads for a fresh group, for one batch of ``count`` tasks.

    ``warmup`` no-op tasks go through first, untimed.
    """
    group = f"m{uuid.uuid4().hex[:8]}"
    proc = stack.model(group, threads, count + warmup, raw=raw, profile=profile)
    try:
        label = name or f"Task Runner model, {threads} threads"
        system = System(label, {"model": proc.pid}, group, ("model",), {"model": proc})
        if warmup:
            batch(stack, system, warmup)
        yield system
    finally:
        stack.stop_process(proc)


def batch(stack: BenchStack, system: System, count: int, seconds: float = 0.0) -> Batch:
    """Put ``count`` tasks of ``seconds`` each through ``system``; timed by the service's log.

    Raises:
        BenchError: a task did not end FINISHED, or the batch did not end in time.
    """
    pipelines = stack.steps(system.group, count, seconds)
    since = stack.log.mark()
    timeout_s = 60 + count * max(seconds, 0.05) * TIMEOUT_PER_TASK_S
    with Sampler(pids_with_service(stack, system)) as sampler:
        started = time.time()
        stack.activate(pipelines)
        ended = stack.log.wait_ended(count, since, timeout_s, what=f"tasks of {system.name}")
    failed = [e for e in ended if e.status != "FINISHED"]
    if failed:
        raise BenchError(f"{len(failed)} tasks of {system.name} ended {failed[0].status}, not FINISHED")
    wall_s = max(e.at for e in ended) - started
    return Batch(system.name, count, wall_s, sampler.usage, started)


# -- the Celery floor -----------------------------------------------------------------------------------


class CeleryFloor:
    """Publish -> run of a bare Celery task (``bench.floor``) on a worker configured like the bridge's."""

    QUEUE = "bench.floor"

    def __init__(self, stack: BenchStack, slots: int) -> None:
        from celery import Celery

        self.stack = stack
        self.slots = slots
        self.app = Celery("bench-floor", broker=stack.redis.url)
        self.app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
        self.worker: Any = None

    def __enter__(self) -> CeleryFloor:
        self.worker = self.stack.worker(self.QUEUE, self.slots)
        self.batch(2 * self.slots)  # untimed: connections, the pool's threads
        return self

    def __exit__(self, *_: object) -> None:
        if self.worker is not None:
            self.stack.stop_process(self.worker)
        self.app.close()

    @property
    def pids(self) -> dict[str, int]:
        return {"worker": self.worker.pid, "redis": self.stack.redis_pid}

    def publish(self, key: str) -> None:
        self.app.send_task("bench.floor", args=[key], queue=self.QUEUE)

    def batch(self, count: int) -> tuple[Batch, float]:
        """``count`` messages published back to back; returns the batch and the publisher's CPU seconds."""
        run = uuid.uuid4().hex[:8]
        with Sampler(self.pids) as sampler:
            cpu0 = time.process_time()
            started = time.time()
            for n in range(count):
                self.publish(f"floor-{run}-{n}")
            published_cpu = time.process_time() - cpu0
            stamps = self.stack.wait_events(FLOOR, count, 60 + count, since=started)
        mine = [s for s in stamps if s.key.startswith(f"floor-{run}-")]
        if len(mine) < count:
            raise BenchError(f"only {len(mine)} of {count} floor tasks ran")
        return Batch("Celery floor", count, max(s.at for s in mine) - started, sampler.usage, started), published_cpu

    def latency(self, key: str, timeout_s: float = 10.0) -> float:
        """Publish one message and wait for it to run; returns publish -> start in seconds."""
        seen = len(self.stack.events())
        published = time.time()
        self.publish(key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stamps = self.stack.events()
            for stamp in stamps[seen:]:
                if stamp.kind == FLOOR and stamp.key == key:
                    return stamp.at - published
            seen = len(stamps)
            time.sleep(0.002)
        raise BenchError(f"floor task {key} did not run within {timeout_s:g} s")
