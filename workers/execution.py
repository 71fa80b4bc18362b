"""Running one Data Pipeline task inside a Celery worker: take the lease, beat, run, report."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.api import TaskApi
from bridge.errors import BrokerError, Canceled, InvalidTask, RemoteError, TaskFailure, TaskGone, UnsupportedActivity
from bridge.leases import LeaseState, LeaseStore
from bridge.masking import SECRETS
from bridge.messages import TaskMessage
from bridge.retry import retry_call
from bridge.settings import Settings
from bridge.taskmodel import TaskObject, parse_task_object
from workers.context import Outcome, TaskContext, safe_name
from workers.handlers import Handler
from workers.heartbeat import Heartbeat

log = logging.getLogger(__name__)

REPORT_WINDOW_S = 300.0
MESSAGE_LIMIT = 10240


@dataclass
class Runtime:
    """Per-process clients (built after fork in prefork children)."""

    settings: Settings
    api: TaskApi
    leases: LeaseStore
    worker_id: str


def _masked(text: str | None, limit: int | None = None) -> str | None:
    if text is None:
        return None
    masked = SECRETS.mask(text)
    return masked[-limit:] if limit and len(masked) > limit else masked


class LeaseStoreDown(BrokerError):
    """The lease could not be taken because Redis is unreachable: the message must go back, not be acked."""


class Execution:
    """One delivery of a ``dp.<Type>`` message.

    Args:
        runtime: Clients and settings of this worker process.
        body: The message body.
        handlers: Type -> handler registry.
    """

    def __init__(
        self,
        runtime: Runtime,
        body: object,
        handlers: dict[str, Handler],
    ) -> None:
        self.rt = runtime
        self.body = body
        self.handlers = handlers

    def run(self) -> str:
        """Execute; returns what happened (``finished``, ``failed``, ``canceled``, ``dropped``...)."""
        try:
            message = TaskMessage.from_body(self.body)
        except InvalidTask as exc:
            return self._reject_raw(exc)
        try:
            task = parse_task_object(message.task_object)
        except InvalidTask as exc:
            return self._fail_unparsed(message, exc)
        SECRETS.add(task.secrets)
        if not self._take(message, task):
            return "dropped"
        return self._execute(message, task)

    # -- taking the lease -------------------------------------------------------------------------

    def _take(self, message: TaskMessage, task: TaskObject) -> bool:
        """Win ``queued -> running`` with the message's epoch; anything else is a stale or duplicate copy."""
        try:
            result = self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.QUEUED],
                LeaseState.RUNNING,
                epoch=message.epoch,
                fields={"heartbeat_owner": self.rt.worker_id, "started_at": time.time()},
            )
        except BrokerError as exc:
            log.warning("cannot take lease task_key=%s: %s; returning the message", message.task_key, exc)
            raise LeaseStoreDown(str(exc)) from exc
        if result.ok:
            return True
        log.info(
            "dropped task_key=%s epoch=%d: lease is %s (epoch %d)",
            message.task_key,
            message.epoch,
            result.state or "missing",
            result.epoch,
        )
        return False

    # -- running ----------------------------------------------------------------------------------

    def _execute(self, message: TaskMessage, task: TaskObject) -> str:
        cancel = threading.Event()
        tlog = logging.LoggerAdapter(log, {"task_key": task.key})
        heartbeat = Heartbeat(
            self.rt.api, task.task_id, task.key, message.heartbeat_interval_s, cancel, self._beat_recorder(message)
        )
        heartbeat.beat()  # take over heartbeating at once
        heartbeat.start()
        started = time.monotonic()
        log.info("started worker_group=%s task_key=%s type=%s", message.worker_group, task.key, task.object_type)
        outcome: Outcome | None = None
        try:
            if cancel.is_set():
                raise Canceled(heartbeat.reason)
            ctx = TaskContext(task, self.rt.settings, self.rt.api, self._work_dir(task, message), cancel, tlog)
            handler = self.handlers.get(task.object_type)
            if handler is None:
                raise UnsupportedActivity(f"no handler for {task.object_type} on this worker")
            outcome = handler(ctx)
        except Canceled:
            pass  # handled below, like any other way of ending after a cancel
        except TaskFailure as exc:
            outcome = Outcome.failed(exc.error_id, str(exc), traceback.format_exc())
        except Exception as exc:  # a handler bug still ends the task FAILED, with its traceback
            log.error("handler error task_key=%s", task.key, exc_info=True)
            outcome = Outcome.failed("BridgeHandlerError", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if cancel.is_set() or outcome is None:
            # Canceled or lost: whatever the handler returned or raised, no SetTaskStatus is sent.
            heartbeat.stop()
            state = LeaseState.LOST if heartbeat.reason.startswith("lost") else LeaseState.CANCELED
            self._end(message, [LeaseState.RUNNING], state)
            log.info(
                "canceled worker_group=%s task_key=%s: %s",
                message.worker_group,
                task.key,
                heartbeat.reason or "canceled",
            )
            return "canceled"
        try:
            return self._report(message, task, outcome, heartbeat, time.monotonic() - started)
        finally:
            heartbeat.stop()

    def _beat_recorder(self, message: TaskMessage) -> Callable[[float], None]:
        def record(at: float) -> None:
            self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.RUNNING, LeaseState.REPORTING],
                None,
                epoch=message.epoch,
                fields={"last_beat": at},
            )

        return record

    def _work_dir(self, task: TaskObject, message: TaskMessage) -> Path:
        path = (
            Path(self.rt.settings.work_dir)
            / safe_name(task.pipeline_id)
            / f"{safe_name(task.attempt_id)}-e{message.epoch}"
        )
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reporting --------------------------------------------------------------------------------

    def _report(
        self, message: TaskMessage, task: TaskObject, outcome: Outcome, heartbeat: Heartbeat, elapsed: float
    ) -> str:
        """Write the outcome to the lease, then SetTaskStatus (retried while the heartbeat goes on)."""
        error_message = _masked(outcome.error_message, MESSAGE_LIMIT)
        stack = _masked(outcome.error_stack_trace, 1024)
        record = {"status": str(outcome.status), "error_id": outcome.error_id, "error_message": error_message}
        try:
            self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.RUNNING],
                LeaseState.REPORTING,
                epoch=message.epoch,
                fields={"outcome": record},
            )
        except BrokerError as exc:  # SetTaskStatus never waits on Redis: the outcome matters more than the record
            log.warning("could not record the outcome of task_key=%s: %s; reporting it anyway", task.key, exc)
        try:
            retry_call(
                lambda: self.rt.api.set_task_status(
                    task.task_id, str(outcome.status), outcome.error_id, error_message, stack
                ),
                what=f"SetTaskStatus {task.key}",
                deadline_s=REPORT_WINDOW_S,
            )
        except TaskGone as exc:
            log.warning("lost task_key=%s before its outcome was delivered: %s", task.key, exc)
            self._end(message, [LeaseState.RUNNING, LeaseState.REPORTING], LeaseState.LOST)
            return "lost"
        except RemoteError as exc:
            log.error("could not report task_key=%s: %s", task.key, exc)
            self._end(message, [LeaseState.RUNNING, LeaseState.REPORTING], LeaseState.LOST)
            return "unreported"
        self._end(message, [LeaseState.RUNNING, LeaseState.REPORTING], LeaseState.DONE)
        word = {"FINISHED": "finished", "FAILED": "failed", "FALSE": "false"}[str(outcome.status)]
        if outcome.status == "FAILED":
            log.info(
                "failed worker_group=%s task_key=%s error_id=%s in %.1f s: %s",
                message.worker_group,
                task.key,
                outcome.error_id,
                elapsed,
                (error_message or "")[:500],
            )
        else:
            log.info("%s worker_group=%s task_key=%s in %.1f s", word, message.worker_group, task.key, elapsed)
        return word

    def _end(self, message: TaskMessage, allowed: list[LeaseState], state: LeaseState) -> None:
        try:
            self.rt.leases.transition(message.task_key, message.worker_group, allowed, state, epoch=message.epoch)
        except BrokerError as exc:
            log.warning("could not record %s for task_key=%s: %s", state, message.task_key, exc)

    # -- malformed input ------------------------------------------------------------------------

    def _reject_raw(self, exc: InvalidTask) -> str:
        """An unreadable message: fail its task if the body still names one."""
        task_object = self.body.get("task_object") if isinstance(self.body, dict) else None
        task_id = task_object.get("taskId") if isinstance(task_object, dict) else None
        log.error("invalid message: %s", exc)
        if isinstance(task_id, str) and task_id:
            self._set_failed(task_id, exc)
        return "invalid"

    def _fail_unparsed(self, message: TaskMessage, exc: InvalidTask) -> str:
        task_id = message.task_object.get("taskId")
        log.error("invalid task task_key=%s: %s", message.task_key, exc)
        if isinstance(task_id, str) and task_id:
            self._set_failed(task_id, exc)
        self._end(message, [LeaseState.QUEUED, LeaseState.CLAIMED], LeaseState.DONE)
        return "invalid"

    def _set_failed(self, task_id: str, exc: TaskFailure) -> None:
        try:
            retry_call(
                lambda: self.rt.api.set_task_status(task_id, "FAILED", exc.error_id, _masked(str(exc), MESSAGE_LIMIT)),
                what="failing an invalid task",
                deadline_s=60,
            )
        except RemoteError as err:
            log.error("could not fail an invalid task: %s", err)
