"""A running task's own heartbeat: ReportTaskProgress every interval, relaying cancellation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge.api import TaskApi
from bridge.errors import BrokerError, RemoteError, TaskGone

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats one task until stopped; sets ``cancel`` when Data Pipeline says canceled or the task is gone.

    Args:
        api: The Data Pipeline client.
        task_id: The opaque task id.
        task_key: For log lines.
        interval_s: Seconds between beats.
        cancel: Set on ``canceled: true`` or TaskNotFound / PipelineNotFound / PipelineDeleted.
        on_beat: Called after each successful beat (records it on the lease, emits a Flower event).
    """

    def __init__(
        self,
        api: TaskApi,
        task_id: str,
        task_key: str,
        interval_s: float,
        cancel: threading.Event,
        on_beat: Callable[[float], None] | None = None,
    ) -> None:
        self.api = api
        self.task_id = task_id
        self.task_key = task_key
        self.interval_s = interval_s
        self.cancel = cancel
        self.on_beat = on_beat
        self.reason = ""
        self.beats = 0
        self.last_beat = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{task_key[-12:]}", daemon=True)

    def beat(self) -> None:
        """One ReportTaskProgress; failures other than cancellation are logged and retried next time."""
        try:
            canceled = self.api.report_task_progress(self.task_id)
        except TaskGone as exc:
            self._cancel(f"lost: {exc.code}")
            return
        except RemoteError as exc:
            log.warning("heartbeat failed task_key=%s: %s", self.task_key, exc)
            return
        if canceled:
            self._cancel("canceled by Data Pipeline")
            return
        self.beats += 1
        self.last_beat = time.time()
        if self.on_beat is not None:
            try:
                self.on_beat(self.last_beat)
            except BrokerError as exc:
                log.warning("could not record heartbeat task_key=%s: %s", self.task_key, exc)

    def _cancel(self, reason: str) -> None:
        if not self.cancel.is_set():
            log.info("canceled task_key=%s: %s", self.task_key, reason)
            self.reason = reason
            self.cancel.set()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.cancel.is_set():
                return
            self.beat()

    def stop(self) -> None:
        """Stop beating (idempotent); the thread ends within one interval at most."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.interval_s + 1)
