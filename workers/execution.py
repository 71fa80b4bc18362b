"""Running one Data Pipeline task inside a Celery worker: take the lease, beat, run, report."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from bridge.api import TaskApi
from bridge.errors import (
    BrokerError,
    Canceled,
    InvalidTask,
    RemoteError,
    TaskFailure,
    TaskGone,
    Unavailable,
    UnsupportedActivity,
)
from bridge.fencing import Fence, RunningLock, TakeStatus, lock_token
from bridge.keeper import POLLER, Budget
from bridge.leases import LeaseState, LeaseStore, TransitionResult
from bridge.masking import SECRETS
from bridge.messages import TaskMessage
from bridge.retry import backoff_s, retry_call
from bridge.settings import Settings
from bridge.taskmodel import TaskObject, parse_task_object
from workers.context import Outcome, TaskContext, safe_name
from workers.handlers import Handler, handler_for
from workers.heartbeat import CancelSignal, Heartbeat, LeaseGuard, fenced
from workers.logship import attempt_log
from workers.progress import ProgressReporter, progress_reporter

log = logging.getLogger(__name__)

#: The heartbeat owner the bridge keeper takes over (``bridge.keeper.POLLER``): a handed-off outcome names it.
KEEPER_OWNER = POLLER
MESSAGE_LIMIT = 10240
STACK_LIMIT = 1024
#: How often a worker whose instance is held by another attempt looks again.
BLOCKED_POLL_S = 0.5
#: How long a take is retried through a Redis blip before the message goes back to the queue.
TAKE_RETRY_S = 3.0
#: Set once this worker process begins a warm shutdown (Celery's ``worker_shutting_down``): process-wide, so a
#: task still reporting hands its outcome to the bridge keeper instead of retrying on. Best effort: prefork pool
#: children do not see the parent's signal.
SHUTTING_DOWN = threading.Event()


@dataclass
class Runtime:
    """Per-process clients (built after fork in prefork children).

    Attributes:
        fence: Running locks and cancel relays; ``None``: on the lease store's own Redis client.
    """

    settings: Settings
    api: TaskApi
    leases: LeaseStore
    worker_id: str
    fence: Fence | None = None
    #: Budget pressure for stretching heartbeats (``None``: never stretch).
    budget: Budget | None = None
    #: ``api`` for heartbeats that could still wait (``RateLimitedApi.early``; ``None``: ``api``).
    early_api: TaskApi | None = None


@dataclass(frozen=True)
class Taken:
    """A lease this execution won.

    Attributes:
        lock: The instance's running lock, now held.
        taken_at: ``time.monotonic()`` when the winning take was sent.
        last_beat: When Data Pipeline last accepted a beat of the hand-out, as the lease recorded it (0.0: unknown).
    """

    lock: RunningLock
    taken_at: float
    last_beat: float


def newer_hand_out(result: TransitionResult, epoch: int) -> bool:
    """Whether a failed lease update proves a newer hand-out owns the task (fence this copy out).

    A record that vanished (Redis lost its data) or that the bridge wrote off as lost with this epoch proves
    nothing: Data Pipeline, which this task keeps heartbeating, is the judge, and its answer is what is reported.
    """
    return not result.ok and not result.missing and result.epoch != epoch


def _masked(text: str | None, limit: int | None = None) -> str | None:
    if text is None:
        return None
    masked = SECRETS.mask(text)
    return masked[-limit:] if limit and len(masked) > limit else masked


class LeaseStoreDown(BrokerError):
    """The lease could not be taken because Redis is unreachable: the message must go back, not be acked."""


class Delivery(Enum):
    """How a SetTaskStatus delivery ended."""

    DELIVERED = "delivered"
    GONE = "gone"
    REFUSED = "refused"
    HAND_OFF = "hand off"
    FENCED = "fenced"


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
        #: A SetTaskStatus of this execution failed in transport: it may have landed.
        self.may_have_landed = False
        self.handlers = handlers
        self.fence = runtime.fence if runtime.fence is not None else Fence(runtime.leases.redis)

    def run(self) -> str:
        """Execute; returns what happened (``finished``, ``failed``, ``canceled``, ``fenced``, ``dropped``...).

        Raises:
            LeaseStoreDown: Redis is unreachable, so the lease cannot be taken; the message must be requeued.
        """
        try:
            message = TaskMessage.from_body(self.body)
        except InvalidTask as exc:
            return self._reject_raw(exc)
        try:
            task = parse_task_object(message.task_object)
        except InvalidTask as exc:
            log.error("invalid task worker_group=%s task_key=%s: %s", message.worker_group, message.task_key, exc)
            return self._fail_leased(
                message.task_key, message.epoch, message.worker_group, message.task_object.get("taskId"), exc
            )
        SECRETS.add(task.secrets)
        taken = self._take(message)
        if taken is None:
            return "dropped"
        return self._execute(message, task, taken)

    # -- taking the lease -------------------------------------------------------------------------

    def _take(self, message: TaskMessage) -> Taken | None:
        """Win ``queued -> running`` with the message's epoch and the instance's running lock.

        Returns what was won, or ``None`` when the message must be dropped: a stale or duplicate copy, or an
        instance another attempt still runs.
        """
        ttl_s = self.rt.settings.running_ttl_s
        give_up_at: float | None = None
        # One token for every try: a take that ran but whose reply was lost is recognised as ours when retried.
        token = lock_token(message.task_key, message.epoch)
        unreachable_since: float | None = None
        while True:
            attempt_at = time.monotonic()
            try:
                result = self.fence.take_running(message.task_key, message.epoch, self.rt.worker_id, ttl_s, token=token)
            except BrokerError as exc:
                unreachable_since = unreachable_since or attempt_at
                if attempt_at - unreachable_since < TAKE_RETRY_S:
                    time.sleep(0.5)
                    continue
                log.warning(
                    "cannot take lease worker_group=%s task_key=%s: %s; returning the message",
                    message.worker_group,
                    message.task_key,
                    exc,
                )
                raise LeaseStoreDown(str(exc)) from exc
            if result.ok and result.lock is not None:
                return Taken(result.lock, attempt_at, result.last_beat)
            if result.status == TakeStatus.STALE:
                log.info(
                    "dropped worker_group=%s task_key=%s epoch=%d: lease is %s (epoch %d)",
                    message.worker_group,
                    message.task_key,
                    message.epoch,
                    result.state or "missing",
                    result.epoch,
                )
                return None
            now = time.monotonic()
            if give_up_at is None:
                # A dead worker's lock expires within its TTL; a live one keeps renewing it.
                give_up_at = now + ttl_s + 1
                log.info(
                    "waiting worker_group=%s task_key=%s epoch=%d: another attempt of its instance is running (%s, "
                    "lock expires in %.1f s unless renewed)",
                    message.worker_group,
                    message.task_key,
                    message.epoch,
                    result.holder,
                    result.holder_ttl_s,
                )
            if now >= give_up_at or SHUTTING_DOWN.wait(BLOCKED_POLL_S):
                log.warning(
                    "dropped worker_group=%s task_key=%s epoch=%d: another attempt of its instance (%s) is still "
                    "running%s; the lease stays queued and the bridge's not-started rule re-publishes it later",
                    message.worker_group,
                    message.task_key,
                    message.epoch,
                    result.holder,
                    " and this worker is shutting down" if SHUTTING_DOWN.is_set() else "",
                )
                return None

    def _release(self, lock: RunningLock, worker_group: str) -> None:
        try:
            self.fence.release(lock)
        except BrokerError as exc:  # it expires within one TTL anyway
            log.warning(
                "could not release the running lock worker_group=%s task_key=%s: %s", worker_group, lock.task_key, exc
            )

    # -- running ----------------------------------------------------------------------------------

    def _execute(self, message: TaskMessage, task: TaskObject, taken: Taken) -> str:
        cancel = CancelSignal()
        lock, taken_at = taken.lock, taken.taken_at
        guard = LeaseGuard(
            self.fence,
            lock,
            self.rt.settings.running_ttl_s,
            cancel,
            renewed_at=taken_at,
            kill_grace_s=self.rt.settings.kill_grace_s,
            deadline_s=message.progress_deadline_s,
            worker_group=message.worker_group,
        )
        heartbeat = Heartbeat(
            self.rt.api,
            task.task_id,
            task.key,
            message.heartbeat_interval_s,
            cancel,
            self._beat_recorder(message, guard),
            deadline_s=message.progress_deadline_s,
            budget=self.rt.budget,
            worker_group=message.worker_group,
            early_api=self.rt.early_api,
        )
        # The bridge beat the task until this take (it stops once the lease is running). If its last beat is recent,
        # our first one is due an interval after it (a task shorter than that sends none); if older, the loop sends
        # it at once (stretched under budget pressure, like any beat); only when the lease does not say is it sent
        # before the handler starts. A known last beat is also where self-fencing counts from
        # (``LeaseGuard.accepted_at``): Data Pipeline's deadline runs from it.
        beat_now = not heartbeat.continue_from(taken.last_beat)
        guard.accepted_at = heartbeat.accepted_at
        guard.worker_id = self.rt.worker_id
        # Flower's view of the run (inside a Celery task only).
        progress = progress_reporter(
            task.key,
            message.worker_group,
            task.attempt,
            self._work_path(task, message),
            taken_at,
            lambda: heartbeat.last_beat,
        )
        # Shutdown order, whatever happens: stop telling Flower (no progress event may follow the task's own end
        # event), stop beating, stop guarding, then free the instance for other attempts.
        guard.start()
        try:
            return self._run(message, task, cancel, guard, heartbeat, progress, beat_now)
        finally:
            if progress is not None:
                progress.stop()
            heartbeat.stop()
            guard.stop()
            self._release(lock, message.worker_group)

    def _run(
        self,
        message: TaskMessage,
        task: TaskObject,
        cancel: CancelSignal,
        guard: LeaseGuard,
        heartbeat: Heartbeat,
        progress: ProgressReporter | None,
        beat_now: bool = True,
    ) -> str:
        if beat_now:
            heartbeat.beat()  # the bridge's last beat is unknown: take over heartbeating at once
        heartbeat.start()
        if progress is not None:
            progress.start()
        started = time.monotonic()
        # Handler lines carry both as record fields (the JSON log format shows them), whatever their wording.
        tlog = logging.LoggerAdapter(log, {"task_key": task.key, "worker_group": message.worker_group})
        log.info("started worker_group=%s task_key=%s type=%s", message.worker_group, task.key, task.object_type)
        outcome: Outcome | None = None
        try:
            if cancel.is_set():
                raise Canceled(cancel.reason)
            ctx = TaskContext(task, self.rt.settings, self.rt.api, self._work_dir(task, message), cancel, tlog)
            handler = handler_for(task, self.handlers)
            if handler is None:
                raise UnsupportedActivity(f"no handler for {task.object_type} on this worker")
            # The attempt's handler log (masked) and command output go under pipelineLogUri, as AWS lays it out.
            with attempt_log(ctx) as captured:
                try:
                    outcome = handler(ctx)
                finally:
                    if not (cancel.is_set() and fenced(cancel.reason)):
                        captured.ship(ctx)
        except Canceled:
            pass  # handled below, like any other way of ending after a cancel
        except TaskFailure as exc:
            outcome = Outcome.failed(exc.error_id, str(exc), traceback.format_exc())
        except Exception as exc:  # a handler bug still ends the task FAILED, with its traceback
            log.error("handler error worker_group=%s task_key=%s", message.worker_group, task.key, exc_info=True)
            outcome = Outcome.failed("BridgeHandlerError", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        guard.command_ended()
        if progress is not None:
            progress.state = "REPORTING"
        if cancel.is_set() or outcome is None:
            # Canceled, lost or fenced: whatever the handler returned or raised, no SetTaskStatus is sent.
            heartbeat.stop()
            return self._stopped(message, task, cancel.reason)
        return self._report(message, task, outcome, guard, time.monotonic() - started)

    def _stopped(self, message: TaskMessage, task: TaskObject, reason: str) -> str:
        if fenced(reason):
            # Only if the lease is still this hand-out's (epoch checked); otherwise it is left to whoever holds it.
            self._end(message, [LeaseState.RUNNING], LeaseState.LOST)
            log.warning(
                "fenced worker_group=%s task_key=%s epoch=%d: %s; its command was stopped and no status was sent",
                message.worker_group,
                task.key,
                message.epoch,
                reason,
            )
            return "fenced"
        state = LeaseState.LOST if reason.startswith("lost") else LeaseState.CANCELED
        self._end(message, [LeaseState.RUNNING], state)
        log.info("canceled worker_group=%s task_key=%s: %s", message.worker_group, task.key, reason or "canceled")
        return "canceled"

    def _beat_recorder(self, message: TaskMessage, guard: LeaseGuard) -> Callable[[float], None]:
        def record(at: float) -> None:
            result = self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.RUNNING, LeaseState.REPORTING],
                None,
                epoch=message.epoch,
                fields={"last_beat": at},
            )
            if newer_hand_out(result, message.epoch):
                guard.supersede(f"lease {result.state} (epoch {result.epoch}) when recording a beat")

        return record

    def _work_path(self, task: TaskObject, message: TaskMessage) -> Path:
        return (
            Path(self.rt.settings.work_dir)
            / safe_name(task.pipeline_id)
            / f"{safe_name(task.attempt_id)}-e{message.epoch}"
        )

    def _work_dir(self, task: TaskObject, message: TaskMessage) -> Path:
        path = self._work_path(task, message)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reporting --------------------------------------------------------------------------------

    def _report(
        self, message: TaskMessage, task: TaskObject, outcome: Outcome, guard: LeaseGuard, elapsed: float
    ) -> str:
        """Write the outcome to the lease, then SetTaskStatus (retried while the heartbeat goes on)."""
        error_message = _masked(outcome.error_message, MESSAGE_LIMIT)
        stack = _masked(outcome.error_stack_trace, STACK_LIMIT)
        record = {
            "status": str(outcome.status),
            "error_id": outcome.error_id,
            "error_message": error_message,
            "error_stack_trace": stack,
        }
        try:
            written = self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.RUNNING],
                LeaseState.REPORTING,
                epoch=message.epoch,
                fields={"outcome": record},
            )
            if newer_hand_out(written, message.epoch):
                guard.supersede(f"lease {written.state} (epoch {written.epoch}) when recording the outcome")
        except BrokerError as exc:  # SetTaskStatus never waits on Redis: the outcome matters more than the record
            log.warning(
                "could not record the outcome worker_group=%s task_key=%s: %s; reporting it anyway",
                message.worker_group,
                task.key,
                exc,
            )
        delivery = self._deliver(message.worker_group, task, outcome, error_message, stack, guard)
        if delivery == Delivery.FENCED:
            log.warning(
                "fenced worker_group=%s task_key=%s epoch=%d: the lease belongs to another hand-out; its %s outcome "
                "is not reported",
                message.worker_group,
                task.key,
                message.epoch,
                outcome.status,
            )
            return "fenced"
        if delivery == Delivery.HAND_OFF:
            return self._hand_off(message, task, record)
        if delivery in (Delivery.GONE, Delivery.REFUSED):
            self._end(message, [LeaseState.RUNNING, LeaseState.REPORTING], LeaseState.LOST)
            return "lost" if delivery == Delivery.GONE else "unreported"
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

    def _deliver(
        self,
        worker_group: str,
        task: TaskObject,
        outcome: Outcome,
        error_message: str | None,
        stack: str | None,
        guard: LeaseGuard,
    ) -> Delivery:
        """SetTaskStatus, retried for up to ``report_timeout_s`` unless the worker shuts down or is fenced out.

        A TaskNotFound after a transport error means an earlier call may have landed (and ended the task): it
        counts as delivered. On the first call it means the task was lost before its outcome arrived.
        """
        deadline = time.monotonic() + self.rt.settings.report_timeout_s
        self.may_have_landed = False
        attempt = 0
        while True:
            if guard.superseded:
                return Delivery.FENCED
            try:
                self.rt.api.set_task_status(task.task_id, str(outcome.status), outcome.error_id, error_message, stack)
                return Delivery.DELIVERED
            except TaskGone as exc:
                if self.may_have_landed:
                    log.info(
                        "SetTaskStatus task_key=%s worker_group=%s: %s after a transport error; the earlier call "
                        "landed, counted as delivered",
                        task.key,
                        worker_group,
                        exc.code or exc,
                    )
                    return Delivery.DELIVERED
                log.warning(
                    "lost worker_group=%s task_key=%s before its outcome was delivered: %s", worker_group, task.key, exc
                )
                return Delivery.GONE
            except RemoteError as exc:
                if not exc.retryable:
                    log.error("could not report worker_group=%s task_key=%s: %s", worker_group, task.key, exc)
                    return Delivery.REFUSED
                self.may_have_landed = self.may_have_landed or isinstance(exc, Unavailable)
                wait = backoff_s(attempt)
                attempt += 1
                if SHUTTING_DOWN.is_set() or time.monotonic() + wait > deadline:
                    log.warning(
                        "SetTaskStatus task_key=%s worker_group=%s failed (%s); giving up here",
                        task.key,
                        worker_group,
                        exc.code or exc,
                    )
                    return Delivery.HAND_OFF
                log.warning(
                    "SetTaskStatus task_key=%s worker_group=%s failed (%s); retrying in %.1f s",
                    task.key,
                    worker_group,
                    exc.code or exc,
                    wait,
                )
                if SHUTTING_DOWN.wait(wait):
                    return Delivery.HAND_OFF

    def _hand_off(self, message: TaskMessage, task: TaskObject, record: Mapping[str, Any]) -> str:
        """Leave the outcome on the lease (``reporting``, same epoch) for the bridge keeper to deliver and beat."""
        now = time.time()
        why = "this worker is shutting down" if SHUTTING_DOWN.is_set() else "SetTaskStatus kept failing"
        try:
            handed = self.rt.leases.transition(
                message.task_key,
                message.worker_group,
                [LeaseState.RUNNING, LeaseState.REPORTING],
                LeaseState.REPORTING,
                epoch=message.epoch,
                fields={
                    # An earlier SetTaskStatus may have landed: the keeper then counts TaskNotFound as delivered.
                    "outcome": {**record, "maybe_delivered": self.may_have_landed},
                    "heartbeat_owner": KEEPER_OWNER,
                    "handed_off_at": now,
                    "next_beat": now,
                },
            )
        except BrokerError as exc:
            log.error(
                "could not hand outcome of worker_group=%s task_key=%s to the bridge keeper (%s): %s; it is not "
                "reported, and Data Pipeline will hand the task out again",
                message.worker_group,
                task.key,
                why,
                exc,
            )
            return "unreported"
        if not handed.ok:
            log.warning(
                "fenced worker_group=%s task_key=%s epoch=%d: lease is %s (epoch %d); its outcome is not handed off",
                message.worker_group,
                task.key,
                message.epoch,
                handed.state or "missing",
                handed.epoch,
            )
            return "fenced"
        log.warning(
            "handed outcome of task_key=%s to the bridge keeper worker_group=%s status=%s: %s",
            task.key,
            message.worker_group,
            record["status"],
            why,
        )
        return "handed off"

    def _end(self, message: TaskMessage, allowed: list[LeaseState], state: LeaseState) -> None:
        self._end_lease(message.task_key, message.worker_group, message.epoch, allowed, state)

    def _end_lease(
        self, task_key: str, worker_group: str, epoch: int, allowed: list[LeaseState], state: LeaseState
    ) -> None:
        try:
            self.rt.leases.transition(task_key, worker_group, allowed, state, epoch=epoch)
        except BrokerError as exc:
            log.warning("could not record %s worker_group=%s task_key=%s: %s", state, worker_group, task_key, exc)

    # -- malformed input ------------------------------------------------------------------------

    def _reject_raw(self, exc: InvalidTask) -> str:
        """An unreadable message: fail its task, after winning its lease when the body names one."""
        body: Mapping[str, Any] = self.body if isinstance(self.body, Mapping) else {}
        task_object = body.get("task_object")
        task_id = task_object.get("taskId") if isinstance(task_object, Mapping) else None
        task_key, epoch = body.get("task_key"), _epoch(body.get("epoch"))
        if isinstance(task_key, str) and task_key and epoch is not None:
            group = body.get("worker_group")
            group = group if isinstance(group, str) else ""
            log.error("invalid message worker_group=%s task_key=%s epoch=%d: %s", group, task_key, epoch, exc)
            return self._fail_leased(task_key, epoch, group, task_id, exc)
        if isinstance(task_id, str) and task_id:
            log.error(
                "invalid message naming no lease (no task_key/epoch): %s; failing its task WITHOUT fencing, so another "
                "copy of it may still run",
                exc,
            )
            self._set_failed(task_id, exc)
        else:
            log.error("invalid message naming neither a lease nor a task, dropped: %s", exc)
        return "invalid"

    def _fail_leased(self, task_key: str, epoch: int, worker_group: str, task_id: object, exc: TaskFailure) -> str:
        """Fail a task that cannot run, only after winning ``queued -> reporting`` with the message's epoch.

        Raises:
            LeaseStoreDown: Redis is unreachable; the message must go back.
        """
        try:
            lease = self.rt.leases.get(task_key)
            group = (lease.worker_group if lease is not None else "") or worker_group
            won = self.rt.leases.transition(
                task_key,
                group,
                [LeaseState.QUEUED],
                LeaseState.REPORTING,
                epoch=epoch,
                fields={
                    "heartbeat_owner": self.rt.worker_id,
                    "outcome": {"status": "FAILED", "error_id": exc.error_id, "error_message": _masked(str(exc))},
                },
            )
        except BrokerError as err:
            log.warning(
                "cannot take lease worker_group=%s task_key=%s: %s; returning the message", worker_group, task_key, err
            )
            raise LeaseStoreDown(str(err)) from err
        if not won.ok:
            log.info(
                "dropped invalid worker_group=%s task_key=%s epoch=%d: lease is %s (epoch %d)",
                group,
                task_key,
                epoch,
                won.state or "missing",
                won.epoch,
            )
            return "dropped"
        target = (lease.task_id if lease is not None else "") or (task_id if isinstance(task_id, str) else "")
        delivered = bool(target) and self._set_failed(target, exc)
        if not target:
            log.error(
                "cannot fail invalid worker_group=%s task_key=%s: neither its lease nor its message has a task id",
                group,
                task_key,
            )
        self._end_lease(
            task_key, group, epoch, [LeaseState.REPORTING], LeaseState.DONE if delivered else LeaseState.LOST
        )
        return "invalid"

    def _set_failed(self, task_id: str, exc: TaskFailure) -> bool:
        try:
            retry_call(
                lambda: self.rt.api.set_task_status(task_id, "FAILED", exc.error_id, _masked(str(exc), MESSAGE_LIMIT)),
                what="failing an invalid task",
                deadline_s=60,
            )
        except RemoteError as err:
            log.error("could not fail an invalid task: %s", err)
            return False
        return True


def _epoch(value: object) -> int | None:
    """A message's epoch if it is a whole number (an int, or a string of digits), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
