"""What a Celery-native pipeline step gets as its ``context`` keyword argument.

A ShellCommandActivity carrying ``myCeleryTask: "pkg.module.task_name"`` runs that registered Celery task's body in
the worker slot that took the attempt (``workers/handlers/celery_task.py``). The body is an ordinary Celery task::

    from workers.native import StepContext

    @app.task(name="etl.load_rows")
    def load_rows(*, myTable: str, myRows: list[str] | str, context: StepContext) -> None:
        for n, row in enumerate(rows_of(myRows)):
            if context.cancelled:  # canceled in Data Pipeline, lost, or past attemptTimeout: stop now
                return
            insert(myTable, row)
            context.progress(f"{n} rows")

The attempt's Data Pipeline heartbeat runs on its own thread whatever the body does, so a long body needs no
heartbeat calls; ``progress`` is for people watching (the worker's log and Flower), and ``cancelled`` is the only
way a body learns it must stop: a Python function cannot be killed from outside, so a body that never looks keeps
its slot until it returns (its outcome is then discarded when the task was canceled).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.masking import SECRETS

#: Progress reports closer together than this are counted and remembered but neither logged nor sent as events.
PROGRESS_EVERY_S = 1.0
#: Progress messages longer than this are cut (logs and events are no place for bulk data).
PROGRESS_LIMIT = 500

#: Sends one progress event (Flower shows the task as PROGRESS with these fields); may raise.
EventSender = Callable[[Mapping[str, Any]], None]


class StepContext:
    """One running Celery-native step, as its task body sees it.

    Attributes:
        pipeline_id: The pipeline.
        object_id: The activity (component) the attempt belongs to.
        attempt_id: The attempt being run.
        task_key: The short identity of this hand-out, as the worker's log lines show it.
        work_dir: A directory of this attempt's own (removed with the worker's work directory, not by the bridge).
        log: A logger whose lines carry the task key; values of ``*`` fields are masked in every line.
        progress_count: How many times ``progress`` was called.
        last_progress: The last progress message (masked), or ``None``.
    """

    def __init__(
        self,
        *,
        pipeline_id: str,
        object_id: str,
        attempt_id: str,
        task_key: str,
        work_dir: Path,
        log: logging.LoggerAdapter[logging.Logger],
        cancel: threading.Event,
        timeout_s: float | None = None,
        send_event: EventSender | None = None,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.object_id = object_id
        self.attempt_id = attempt_id
        self.task_key = task_key
        self.work_dir = work_dir
        self.log = log
        self.progress_count = 0
        self.last_progress: str | None = None
        self._cancel = cancel
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        self._send_event = send_event
        self._last_sent = float("-inf")
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        """Whether the body must stop now: canceled in Data Pipeline, lost or fenced, or past ``attemptTimeout``."""
        return self._cancel.is_set() or self.timed_out

    @property
    def timed_out(self) -> bool:
        """Whether the attempt ran past its ``attemptTimeout`` (a body that returns after that ends FAILED)."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def time_left_s(self) -> float | None:
        """Seconds until ``attemptTimeout`` (never negative), or ``None`` when the attempt has none."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def wait_cancelled(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` seconds, waking at once on a cancel; returns ``cancelled``."""
        left = self.time_left_s
        self._cancel.wait(timeout_s if left is None else min(timeout_s, left))
        return self.cancelled

    def progress(self, message: str | None = None) -> None:
        """Report progress: a log line and a ``task-progress`` Celery event (Flower), at most one per second.

        Never raises: a report that cannot be sent is logged and forgotten. Data Pipeline's heartbeat does not
        depend on it (it runs on its own thread), so calling it is optional.
        """
        text = SECRETS.mask(message)[:PROGRESS_LIMIT] if message else None
        with self._lock:
            self.progress_count += 1
            self.last_progress = text
            count = self.progress_count
            now = time.monotonic()
            if now - self._last_sent < PROGRESS_EVERY_S:
                return
            self._last_sent = now
        self.log.info("progress task_key=%s #%d: %s", self.task_key, count, text or "-")
        if self._send_event is None:
            return
        try:
            self._send_event({"progress": text or "", "progress_count": count, "dp_object": self.object_id})
        except Exception as exc:  # progress is best effort: the broker may be away, the work goes on
            self.log.warning("could not send a progress event task_key=%s: %s", self.task_key, exc)
