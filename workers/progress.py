"""What Flower shows while a ``dp.<Type>`` task runs: its last heartbeat, elapsed time and output lines so far.

Flower builds its view from Celery events only: ``update_state`` would write to a result backend, and this app has
none. Celery's event state turns an unknown ``task-progress`` event into the state ``PROGRESS`` and merges the
event's fields into the task, but Flower's HTTP API and pages show only Celery's own task fields
(``celery.events.state.Task._fields``). So every progress event sets two of those as well:

- ``result``: a short JSON text, e.g. ``{"state": "RUNNING", "last_heartbeat": "2024-05-01T10:00:00Z",
  "elapsed_s": 42.0, "output_lines": 17}`` (the tasks page's Result column, the task page, ``/api/task/info``);
- ``runtime``: seconds since the worker took the task (the Runtime column).

The same values travel as plain event fields (``last_heartbeat``, ``elapsed_s``, ``output_lines``, ``dp_state``)
for other event consumers. When the task returns, Celery's own ``task-succeeded`` event replaces ``result`` with
the execution's outcome word: ``'finished'``, ``'failed'``, ``'false'``, ``'canceled'`` (also for a lost task),
``'fenced'``, ``'dropped'``... so a canceled run and a failed one differ in Flower's ``result``; the Celery state is
``SUCCESS`` for both, since the Celery task itself did its job. No event carries a field value of the task (only
counts and times), so nothing here can leak a ``*`` field.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery._state import get_current_task

from bridge.taskmodel import PipelineObject
from workers.heartbeat import LoopThread

log = logging.getLogger(__name__)

#: Seconds between two progress events of one task (each is one small publish on the broker).
PROGRESS_EVERY_S = 5.0
#: When the first progress event of a task is sent: a task that ends sooner needs none (Celery's own started and
#: succeeded events already tell Flower everything about it), and most tasks of a busy fleet are that short.
FIRST_PROGRESS_S = 1.0
#: The Celery event type: Flower shows the task as ``PROGRESS`` (also what Celery-native steps send).
PROGRESS_EVENT = "task-progress"
#: How much new output one count reads at most (a command writing faster is counted over later events).
READ_LIMIT = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
#: How long ``stop`` waits for a progress event being sent (a later one would overwrite the task's outcome).
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class TaskEvents:
    """Sends Celery events about one ``dp.<Type>`` task, from any thread.

    Attributes:
        app: The worker's Celery app.
        task_id: The Celery task id.
        hostname: The worker's node name (Flower files the events under it).
    """

    app: Any
    task_id: str
    hostname: str

    @classmethod
    def current(cls) -> TaskEvents | None:
        """The events of the Celery task running in this thread; ``None`` outside one or with events off."""
        task = get_current_task()
        request: Any = getattr(task, "request", None)
        task_id = getattr(request, "id", None)
        if task is None or not task_id or not task.app.conf.worker_send_task_events:
            return None
        return cls(task.app, str(task_id), str(request.hostname))

    def send(self, event_type: str, **fields: Any) -> None:
        """Publish one event now (no retries: a lost progress event is replaced by the next)."""
        with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
            dispatcher.send(event_type, uuid=self.task_id, retry=False, **fields)


def output_files(attempt: PipelineObject, work_dir: Path) -> list[Path]:
    """Where a ShellCommandActivity's ``stdout`` and ``stderr`` are written (workers/handlers/shell.py's layout).

    An S3 URI or no value: ``<work_dir>/<stream>.log``; a local path: as given, relative to ``work_dir``.
    """
    found: dict[Path, None] = {}
    for stream in ("stdout", "stderr"):
        value = (attempt.get(stream) or "").strip()
        if not value or "://" in value:
            found[work_dir / f"{stream}.log"] = None
        else:
            path = Path(value)
            found[path if path.is_absolute() else work_dir / path] = None
    return list(found)


class OutputLines:
    """Counts the lines appended to some files since it was made, reading only what is new at each count.

    What a file already holds is not counted (a ``stdout`` path a worker group shares keeps earlier runs' lines);
    lines other runs append to a shared file meanwhile are.

    Args:
        paths: The files (missing ones count as empty until they appear).
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self._offsets = {path: _size(path) for path in paths}
        self.count = 0

    def update(self) -> int:
        """Count what was appended since the last call; returns the total."""
        for path, offset in self._offsets.items():
            try:
                with path.open("rb") as file:
                    if os.fstat(file.fileno()).st_size < offset:  # rewritten from the start: count it again
                        offset = 0
                    file.seek(offset)
                    budget = READ_LIMIT
                    while budget > 0 and (chunk := file.read(min(_CHUNK, budget))):
                        self.count += chunk.count(b"\n")
                        offset += len(chunk)
                        budget -= len(chunk)
            except OSError:
                continue
            self._offsets[path] = offset
        return self.count


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def iso_time(at: float) -> str | None:
    """``2024-05-01T10:00:00Z`` for a wall-clock time, ``None`` for 0 (never)."""
    if not at:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ProgressReporter:
    """Sends a ``task-progress`` event for one running task ``first_s`` after it starts, then every ``interval_s``.

    Args:
        events: Where the events go.
        task_key: For log lines.
        worker_group: For log lines.
        started_at: ``time.monotonic()`` when the worker took the task.
        last_beat: When Data Pipeline last accepted a heartbeat of the task (wall clock; 0 before the first).
        output: The command's output files.
        interval_s: Seconds between events.
        first_s: Seconds from ``start`` to the first event.
    """

    def __init__(
        self,
        events: TaskEvents,
        task_key: str,
        worker_group: str,
        started_at: float,
        last_beat: Callable[[], float],
        output: OutputLines,
        interval_s: float = PROGRESS_EVERY_S,
        first_s: float = FIRST_PROGRESS_S,
    ) -> None:
        self.events = events
        self.task_key = task_key
        self.worker_group = worker_group
        self.started_at = started_at
        self.last_beat = last_beat
        self.output = output
        self.interval_s = interval_s
        self.first_s = first_s
        #: What the task is doing, as the lease names it: ``RUNNING``, then ``REPORTING`` once the command ended.
        self.state = "RUNNING"
        self.sent = 0
        self._failed = False
        self._stopped = False
        # Held while an event is sent: once ``stop`` holds it, no progress event can follow the task's end.
        self._sending = threading.Lock()
        self._stop = threading.Event()
        self._thread = LoopThread(self._run, f"progress-{task_key[-12:]}")

    def snapshot(self) -> dict[str, Any]:
        """The progress fields of the next event."""
        return {
            "state": self.state,
            "last_heartbeat": iso_time(self.last_beat()),
            "elapsed_s": round(time.monotonic() - self.started_at, 1),
            "output_lines": self.output.update(),
        }

    def send_once(self) -> None:
        """Send one progress event now (never raises: progress is best effort, the work goes on)."""
        with self._sending:
            if self._stopped:
                return
            progress = self.snapshot()
            try:
                self.events.send(
                    PROGRESS_EVENT,
                    result=json.dumps(progress),
                    runtime=progress["elapsed_s"],
                    dp_state=progress["state"],
                    last_heartbeat=progress["last_heartbeat"],
                    elapsed_s=progress["elapsed_s"],
                    output_lines=progress["output_lines"],
                )
                self.sent += 1
            except Exception as exc:  # the broker may be away: Flower just sees the next one
                if not self._failed:
                    log.warning(
                        "could not send a progress event worker_group=%s task_key=%s: %s",
                        self.worker_group,
                        self.task_key,
                        exc,
                    )
                self._failed = True

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.first_s):
            return
        while True:
            self.send_once()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        """Stop sending (idempotent); once it returns no progress event of this task is in flight or to come."""
        self._stop.set()
        held = self._sending.acquire(timeout=STOP_WAIT_S)
        self._stopped = True
        if held:
            self._sending.release()
        if self._thread.is_alive() and not self._thread.is_current():
            self._thread.join(timeout=STOP_WAIT_S)


def progress_reporter(
    task_key: str,
    worker_group: str,
    attempt: PipelineObject,
    work_dir: Path,
    started_at: float,
    last_beat: Callable[[], float],
) -> ProgressReporter | None:
    """A reporter for the Celery task running in this thread, or ``None`` outside one (or with events off)."""
    events = TaskEvents.current()
    if events is None:
        return None
    return ProgressReporter(
        events, task_key, worker_group, started_at, last_beat, OutputLines(output_files(attempt, work_dir))
    )
