"""The work the benchmarks run, and the timestamps it leaves behind.

Two sides import this module:

- Celery workers (``celery -A workers worker -I bench.tasks``): ``bench.step`` is the body of every benchmark
  task. Pipelines name it with ``myCeleryTask: bench.step``, so the bridge runs it through its Celery-native step
  handler (no command process), with every reliability step of a real task around it. ``bench.floor`` is a bare
  Celery task for the publish -> run floor. The ``task_prerun`` / ``task_postrun`` hooks stamp the ``dp.*`` Celery
  task around the handler, for the worker's time outside it.
- The Task Runner model (``bench/taskrunner.py``) calls :func:`run_body` directly: both systems run the same body.

Every stamp is one line appended to the file named by ``BENCH_EVENTS_FILE`` (``O_APPEND`` writes of one short line
do not interleave): ``<kind> <key> <time.time()> <time.thread_time()>``. The key is ``<pipelineId>/<attemptId>``.
Without the variable nothing is written.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import shared_task, signals

EVENTS_ENV = "BENCH_EVENTS_FILE"
#: Event kinds, in the order one task writes them.
PRERUN, START, END, POSTRUN, FLOOR = "prerun", "start", "end", "postrun", "floor"
#: How often a body waiting for its release file looks for it.
RELEASE_POLL_S = 0.25
#: A body waiting for a release file never waits longer than this (a benchmark that died must not leave tasks).
RELEASE_LIMIT_S = 900.0


def record(kind: str, key: str) -> None:
    """Append one stamp to the events file (when ``BENCH_EVENTS_FILE`` is set)."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    line = f"{kind} {key} {time.time():.6f} {time.thread_time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def task_key(pipeline_id: str, attempt_id: str) -> str:
    """The key the stamps of one attempt carry."""
    return f"{pipeline_id}/{attempt_id}"


def run_body(key: str, seconds: float = 0.0, release: str = "", wait: Callable[[float], bool] | None = None) -> None:
    """The benchmark body: stamp ``start``, sleep ``seconds`` or wait for the file ``release``, stamp ``end``.

    Args:
        key: The attempt's stamp key.
        seconds: How long to take (0: a no-op).
        release: A path; when set the body returns once it exists (or after ``RELEASE_LIMIT_S``).
        wait: Sleeps up to its argument and returns whether the attempt was canceled (the step context's
            ``wait_cancelled``); by default a plain sleep.
    """
    record(START, key)
    sleep = wait or threading.Event().wait
    if release:
        limit = time.monotonic() + RELEASE_LIMIT_S
        while not Path(release).exists() and time.monotonic() < limit and not sleep(RELEASE_POLL_S):
            pass
    elif seconds > 0:
        sleep(seconds)
    record(END, key)


@shared_task(name="bench.step", ignore_result=True)
def step(context: Any, mySeconds: str = "0", myRelease: str = "") -> None:
    """The Celery-native step every benchmark pipeline names (``myCeleryTask: bench.step``)."""
    run_body(task_key(context.pipeline_id, context.attempt_id), float(mySeconds), myRelease, context.wait_cancelled)


@shared_task(name="bench.floor", ignore_result=True)
def floor(key: str) -> None:
    """A bare Celery task: the publish -> run floor."""
    record(FLOOR, key)


def _dp_key(args: Any) -> str | None:
    """The stamp key of a ``dp.<Type>`` message body (``None`` for anything else)."""
    body = args[0] if isinstance(args, list | tuple) and args else None
    task_object = body.get("task_object") if isinstance(body, dict) else None
    if not isinstance(task_object, dict):
        return None
    return task_key(str(task_object.get("pipelineId")), str(task_object.get("attemptId")))


@signals.task_prerun.connect
def _prerun(sender: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "").startswith("dp.") and (key := _dp_key(args)):
        record(PRERUN, key)


@signals.task_postrun.connect
def _postrun(sender: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "").startswith("dp.") and (key := _dp_key(args)):
        record(POSTRUN, key)


@dataclass(frozen=True)
class Stamp:
    """One line of the events file."""

    kind: str
    key: str
    at: float
    thread_cpu_s: float


def parse_stamp(line: str) -> Stamp | None:
    parts = line.split()
    if len(parts) != 4:
        return None
    return Stamp(parts[0], parts[1], float(parts[2]), float(parts[3]))


class EventsTail:
    """The stamps of an events file, read incrementally (only what was appended since the last look)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamps: list[Stamp] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[Stamp]:
        """Every stamp so far (a line still being written waits for the next look)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return self.stamps
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            stamp = parse_stamp(line.decode())
            if stamp is not None:
                self.stamps.append(stamp)
        return self.stamps


def by_key(stamps: list[Stamp], kind: str) -> dict[str, Stamp]:
    """The first stamp of ``kind`` per key."""
    found: dict[str, Stamp] = {}
    for stamp in stamps:
        if stamp.kind == kind:
            found.setdefault(stamp.key, stamp)
    return found
