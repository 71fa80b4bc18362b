"""Runs, instances, attempts and tasks: everything that moves after activation.

Every method here is called with ``state.lock`` held. Timers call back into ``on_timer``;
handlers always re-check the record, so a stale timer is harmless.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

from emulator.actions import Actions
from emulator.config import Rehandout
from emulator.errors import InvalidRequestException, PipelineDeletedException, TaskNotFoundException
from emulator.model import BLOCKING, FINAL, Attempt, Field, Instance, Pipeline, PipelineState, Status
from emulator.periods import format_seconds, period_seconds
from emulator.s3check import S3_FIELDS, Outcome, S3Checker, SystemChecks, probe_for
from emulator.scheduler import Scheduler
from emulator.state import Key, State

log = logging.getLogger(__name__)

#: Period-valued fields the service enforces, divided by ``--time-scale`` when an instance is made.
SCALED_FIELDS = ("retryDelay", "attemptTimeout", "reportProgressTimeout", "preconditionTimeout", "lateAfterTimeout")
#: Refs whose targets travel with a task, transitively (depth <= 3).
TASK_REFS = ("input", "output", "database", "precondition", "dataFormat", "runsOn")
RUNNABLE = ("activity", "runner_precondition")
#: Statuses that hold one of a component's ``maxActiveInstances`` slots.
ACTIVE = (Status.WAITING_FOR_RUNNER, Status.RUNNING)
#: ``maxActiveInstances`` when unset (AWS documents 1 for on-demand pipelines; used for every pipeline here).
DEFAULT_MAX_ACTIVE_INSTANCES = 1


def new_task_id(attempt_no: int) -> str:
    """An opaque task id shaped like AWS's (~1.1 KB of base64-like segments ending in ``:n``)."""
    body = base64.b64encode(os.urandom(800)).decode()
    tail = base64.b64encode(os.urandom(24)).decode()
    return f"{body}:{tail}:{attempt_no}"


def scaled_value(key: str, value: str, scale: float) -> str:
    """``value`` divided by ``scale`` when ``key`` is a Period the service enforces (else unchanged)."""
    if scale == 1 or key not in SCALED_FIELDS:
        return value
    seconds = period_seconds(value)
    return value if seconds is None else format_seconds(seconds / scale)


class Lifecycle:
    """The state machine of instances and attempts, and the task-runner side of the API."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.config = state.config
        self.actions = Actions(state, self.cancel)
        self.checks = SystemChecks(state, S3Checker(self.config.s3_endpoint_url), self.system_check_done)
        self.scheduler = Scheduler(self)

    # -- runs --------------------------------------------------------------------------------

    def scaled_fields(self, fields: list[Field]) -> list[Field]:
        """Fields with the Periods the service enforces divided by ``--time-scale``."""
        scale = self.config.time_scale
        return [
            Field(key, value if is_ref else scaled_value(key, value, scale), is_ref) for key, value, is_ref in fields
        ]

    # -- readiness and completion ---------------------------------------------------------------

    def dependents(self, instance: Instance) -> list[Instance]:
        """Instances that wait on ``instance``."""
        return self.state.dependents_of(instance.pipeline_id, instance.instance_id)

    def advance(self, instance: Instance) -> None:
        """Move a waiting instance on if its dependencies allow it."""
        if instance.late_at is None:
            self.actions.arm_late(instance)
        if instance.status != Status.WAITING_ON_DEPENDENCIES:
            return
        deps = [self.state.instances.get((instance.pipeline_id, d)) for d in instance.depends_on]
        blocked = next((d for d in deps if d is not None and d.status in BLOCKING), None)
        if blocked is not None:
            if (instance.first("failureAndRerunMode") or "none").lower() == "cascade":
                instance.cascade_failed_on = blocked.instance_id
                self._finish(instance, Status.CASCADE_FAILED)
            return
        if not all(d is not None and d.status == Status.FINISHED for d in deps):
            return
        now = self.state.clock.now()
        if instance.kind == "datanode":
            instance.actual_start = instance.actual_start or now
            self._finish(instance, Status.FINISHED)
        elif instance.kind in RUNNABLE:
            if not self._slot_free(instance):
                return  # maxActiveInstances: it starts when an earlier instance of its component ends
            instance.status = Status.WAITING_FOR_RUNNER
            instance.checking_since = self.state.real_now() if instance.kind == "runner_precondition" else None
            self.state.touch(instance)
            self.new_attempt(instance)
        else:
            self._start_system_check(instance, now)

    def _finish(self, instance: Instance, status: Status, *, fire: bool = True) -> None:
        instance.status = status
        instance.ready_at = None
        instance.paused_from = None
        instance.actual_end = self.state.clock.now()
        self.state.touch(instance)
        log.info("instance %s of %s is %s", instance.instance_id, instance.pipeline_id, status)
        if fire:
            self.actions.on_final(instance, status)
        for dependent in self.dependents(instance):
            self.advance(dependent)
        self._start_waiting_siblings(instance)

    def _slot_free(self, instance: Instance) -> bool:
        """Whether fewer than ``maxActiveInstances`` other instances of the component are active."""
        limit = max(1, self._int(instance.first("maxActiveInstances"), DEFAULT_MAX_ACTIVE_INSTANCES))
        siblings = self.state.instances_of(instance.pipeline_id, instance.component_id)
        return sum(other.status in ACTIVE for other in siblings if other is not instance) < limit

    def _start_waiting_siblings(self, instance: Instance) -> None:
        """An instance ended: start the component's next waiting instances, oldest first, as slots allow."""
        if instance.kind not in RUNNABLE:
            return
        siblings = self.state.instances_of(instance.pipeline_id, instance.component_id)
        waiting = sorted(
            (other for other in siblings if other.status == Status.WAITING_ON_DEPENDENCIES),
            key=lambda other: other.scheduled_start,
        )
        for other in waiting:
            if not self._slot_free(other):
                return
            self.advance(other)

    def new_attempt(self, instance: Instance, delay_s: float = 0.0) -> None:
        """Open the next attempt now, or after ``delay_s`` (a retry or a precondition re-check)."""
        if delay_s > 0:
            instance.ready_at = self.state.real_now() + delay_s
            self.state.touch(instance)
            self.state.add_timer(instance.ready_at, "retry", (instance.pipeline_id, instance.instance_id))
            return
        instance.ready_at = None
        instance.attempt_count += 1
        attempt = Attempt(
            pipeline_id=instance.pipeline_id,
            attempt_id=f"{instance.instance_id}_Attempt={instance.attempt_count}",
            instance_id=instance.instance_id,
            number=instance.attempt_count,
        )
        instance.head_attempt = attempt.attempt_id
        self.state.attempts[(attempt.pipeline_id, attempt.attempt_id)] = attempt
        self.state.touch(instance, attempt)
        self.offer(attempt, instance)

    def offer(self, attempt: Attempt, instance: Instance, *, front: bool = False) -> None:
        """Put an open attempt on its worker group's queue if its pipeline is running."""
        pipeline = self.state.pipelines.get(attempt.pipeline_id)
        if pipeline is None or pipeline.deleted or pipeline.state != PipelineState.SCHEDULED:
            return
        if instance.kind == "system_precondition":
            self._dispatch_check(attempt, instance, pipeline)
            return
        if instance.worker_group is None:
            return  # Like AWS: it waits for a runner forever (no workerGroup / runsOn).
        self.state.enqueue(instance.worker_group, (attempt.pipeline_id, attempt.attempt_id), front=front)

    # -- the task-runner API -------------------------------------------------------------------

    def take(self, worker_group: str, hostname: str | None) -> dict[str, Any] | None:
        """Hand out the next ready attempt of ``worker_group`` as a task object, or ``None``."""
        queue = self.state.queues.get(worker_group)
        while queue:
            key = queue.popleft()
            attempt = self.state.attempts.get(key)
            pipeline = self.state.pipelines.get(key[0])
            if attempt is None or pipeline is None or pipeline.deleted or pipeline.state != PipelineState.SCHEDULED:
                continue
            if attempt.status != Status.WAITING_FOR_RUNNER or attempt.cancel_requested or attempt.acked:
                continue
            if attempt.handed_out_at is not None and attempt.ack_deadline is not None:
                continue  # Already with a runner (a duplicate queue entry).
            if self.state.instances[(attempt.pipeline_id, attempt.instance_id)].status == Status.PAUSED:
                continue  # RESUME offers it again.
            return self._hand_out(attempt, hostname)
        return None

    def _hand_out(self, attempt: Attempt, hostname: str | None) -> dict[str, Any]:
        instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
        now = self.state.clock.now()
        deadline_base = self.state.real_now()
        if attempt.task_id is None or self.config.rehandout == Rehandout.NEW_ATTEMPT:
            attempt.task_id = attempt.task_id or new_task_id(attempt.number)
            self.state.tasks[attempt.task_id] = (attempt.pipeline_id, attempt.attempt_id)
        attempt.hostname = hostname
        attempt.handed_out_at = now
        attempt.actual_start = attempt.actual_start or now
        attempt.ack_deadline = deadline_base + self.config.ack_timeout_s
        self.state.add_timer(attempt.ack_deadline, "ack", (attempt.pipeline_id, attempt.attempt_id))
        timeout = period_seconds(instance.first("attemptTimeout"))
        if timeout is not None and attempt.attempt_deadline is None:
            attempt.attempt_deadline = deadline_base + timeout
            self.state.add_timer(attempt.attempt_deadline, "attempt_timeout", (attempt.pipeline_id, attempt.attempt_id))
        instance.actual_start = instance.actual_start or now
        self.state.touch(attempt, instance)
        log.info("handed out %s of %s to %s", attempt.attempt_id, attempt.pipeline_id, hostname or "?")
        return {"taskId": attempt.task_id, "pipelineId": attempt.pipeline_id, "attemptId": attempt.attempt_id}

    def requeue(self, task_id: str) -> None:
        """Offer a task again at once: its PollForTask reply never reached the runner."""
        key = self.state.tasks.get(task_id)
        attempt = self.state.attempts.get(key) if key else None
        if attempt is None or attempt.acked or attempt.status != Status.WAITING_FOR_RUNNER:
            return
        instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
        attempt.handed_out_at = None
        attempt.ack_deadline = None
        self.state.touch(attempt)
        log.info("reply for %s was not delivered; offering it again", attempt.attempt_id)
        self.offer(attempt, instance, front=True)

    def _task(self, task_id: str) -> tuple[Attempt, Instance, Pipeline]:
        key = self.state.tasks.get(task_id)
        attempt = self.state.attempts.get(key) if key else None
        if attempt is None:
            raise TaskNotFoundException("The specified task was not found.")
        instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
        return attempt, instance, self.state.pipelines[attempt.pipeline_id]

    def report_progress(self, task_id: str) -> bool:
        """Acknowledge or heartbeat a task; returns ``canceled``."""
        attempt, instance, pipeline = self._task(task_id)
        if pipeline.deleted or attempt.cancel_requested:
            return True
        if attempt.status not in (Status.WAITING_FOR_RUNNER, Status.RUNNING) or attempt.task_id != task_id:
            raise TaskNotFoundException(f"Task {attempt.attempt_id} has already ended ({attempt.status}).")
        now = self.state.clock.now()
        if not attempt.acked:
            attempt.acked = True
            attempt.ack_deadline = None
            attempt.status = Status.RUNNING
            instance.status = Status.RUNNING
            log.info("task %s acknowledged", attempt.attempt_id)
        attempt.report_progress_time = now
        timeout = period_seconds(instance.first("reportProgressTimeout")) or self.config.progress_timeout_s
        attempt.progress_deadline = self.state.real_now() + timeout
        self.state.add_timer(attempt.progress_deadline, "progress", (attempt.pipeline_id, attempt.attempt_id))
        self.state.touch(attempt, instance)
        return False

    def set_task_status(
        self, task_id: str, status: str, error_id: str | None, message: str | None, stack: str | None
    ) -> None:
        """End a task FINISHED, FAILED or FALSE."""
        attempt, instance, pipeline = self._task(task_id)
        if error_id and error_id.startswith("Service_"):
            raise InvalidRequestException("errorId must not start with 'Service_': that prefix is reserved.")
        if pipeline.deleted:
            raise PipelineDeletedException(f"Pipeline {pipeline.pipeline_id} has been deleted.")
        if attempt.cancel_requested:
            return  # Canceled: the runner need not report, and what it reports changes nothing.
        if attempt.status not in (Status.WAITING_FOR_RUNNER, Status.RUNNING) or attempt.task_id != task_id:
            raise TaskNotFoundException(f"Task {attempt.attempt_id} has already ended ({attempt.status}).")
        now = self.state.clock.now()
        attempt.actual_end = now
        attempt.ack_deadline = attempt.progress_deadline = attempt.attempt_deadline = None
        attempt.error_id, attempt.error_message, attempt.error_stack_trace = error_id, message, stack
        attempt.attempt_status = status
        self.state.touch(attempt)
        log.info("task %s ended %s", attempt.attempt_id, status)
        if status == "FINISHED":
            attempt.status = Status.FINISHED
            self._finish(instance, Status.FINISHED)
        elif status == "FALSE" and instance.kind == "runner_precondition":
            attempt.status = Status.FAILED
            attempt.error_message = message or "The precondition is not met."
            self._precondition_false(instance)
        else:
            attempt.status = Status.FAILED
            self._failed(instance, attempt, consumed=True)

    def _failed(self, instance: Instance, attempt: Attempt, *, consumed: bool) -> None:
        """An attempt failed: retry after ``retryDelay`` while retries last, else fail the instance."""
        if consumed:
            instance.failures += 1
        max_retries = self._int(instance.first("maximumRetries"), self.config.default_maximum_retries)
        if instance.failures <= max_retries:
            instance.status = Status.WAITING_FOR_RUNNER
            self.new_attempt(instance, self._retry_delay(instance))
            return
        instance.error_id, instance.error_message = attempt.error_id, attempt.error_message
        instance.error_stack_trace = attempt.error_stack_trace
        self._finish(instance, Status.FAILED)

    def _precondition_false(self, instance: Instance) -> None:
        now = self.state.real_now()
        timeout = period_seconds(instance.first("preconditionTimeout"))
        since = instance.checking_since or now
        delay = self._retry_delay(instance)
        if timeout is not None and now + delay - since > timeout:
            instance.error_id = "PreconditionTimeout"
            instance.error_message = f"The precondition was not met within preconditionTimeout ({timeout:g} s)."
            self._finish(instance, Status.FAILED)
            return
        # A system precondition stays RUNNING while the service re-checks it; no runner is involved.
        system = instance.kind == "system_precondition"
        instance.status = Status.RUNNING if system else Status.WAITING_FOR_RUNNER
        self.new_attempt(instance, delay)

    def _retry_delay(self, instance: Instance) -> float:
        delay = period_seconds(instance.first("retryDelay"))
        return delay if delay is not None else self.config.default_retry_delay_s / self.config.time_scale

    @staticmethod
    def _int(value: str | None, default: int) -> int:
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    # -- system-managed preconditions (checked by the service itself; see s3check) ------------------

    def _start_system_check(self, instance: Instance, now: float) -> None:
        if instance.type not in S3_FIELDS:
            instance.error_id = "UnsupportedPrecondition"
            instance.error_message = (
                f"{instance.type} is not supported by the local service (it checks {' and '.join(S3_FIELDS)})."
            )
            self._finish(instance, Status.FAILED)
            return
        instance.status = Status.RUNNING
        instance.checking_since = self.state.real_now()
        instance.actual_start = instance.actual_start or now
        self.state.touch(instance)
        self.new_attempt(instance)

    def _dispatch_check(self, attempt: Attempt, instance: Instance, pipeline: Pipeline) -> None:
        """Start one check (one attempt) on a worker thread; ``system_check_done`` gets its outcome."""
        key = (attempt.pipeline_id, attempt.attempt_id)
        if not attempt.open or instance.status != Status.RUNNING:
            return
        attempt.status = Status.RUNNING
        attempt.actual_start = attempt.actual_start or self.state.clock.now()
        self.state.touch(attempt)
        from emulator.scope import UnknownObject, evaluate_for  # here: scope imports views, which imports us

        location = instance.first(S3_FIELDS[instance.type]) or ""
        try:
            if "#{" in location:
                location = evaluate_for(self.state, pipeline, instance.instance_id, location)
            probe = probe_for(instance.type, location)
        except (ValueError, UnknownObject) as exc:  # ExpressionError is a ValueError
            self.system_check_done(key, Outcome(False, str(exc), "InvalidPrecondition"))
            return
        self.checks.submit(key, probe)

    def system_check_done(self, key: Key, outcome: Outcome) -> None:
        """Apply a check's outcome: FINISHED, or re-check after ``retryDelay`` until ``preconditionTimeout``."""
        attempt = self.state.attempts.get(key)
        if attempt is None or not attempt.open:
            return  # canceled, paused or superseded while S3 was asked
        instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
        if instance.status != Status.RUNNING:
            return
        attempt.actual_end = self.state.clock.now()
        attempt.attempt_status = "FINISHED" if outcome.met else "FALSE"
        attempt.status = Status.FINISHED if outcome.met else Status.FAILED
        attempt.error_id = outcome.error_id
        attempt.error_message = None if outcome.met else outcome.detail
        self.state.touch(attempt)
        if outcome.met:
            self._finish(instance, Status.FINISHED)
        elif outcome.error_id == "InvalidPrecondition":  # re-checking cannot help
            instance.error_id, instance.error_message = outcome.error_id, outcome.detail
            self._finish(instance, Status.FAILED)
        else:
            self._precondition_false(instance)

    # -- cancellation ----------------------------------------------------------------------------

    def cancel(self, instance: Instance, reason: str) -> None:
        """Cancel an unfinished instance; a runner holding its task sees ``canceled: true``."""
        if instance.status in FINAL:
            return
        self._cancel_head_attempt(instance, reason)
        instance.error_message = reason
        self._finish(instance, Status.CANCELED)

    def mark_finished(self, instance: Instance, reason: str) -> None:
        """Finish an instance by hand (SetStatus MARK_FINISHED) and release its dependents.

        A runner holding its task sees ``canceled: true``. Unlike cancel-then-finish, dependents
        never see the instance CANCELED, so ``cascade`` does not fail them.
        """
        if instance.status == Status.FINISHED:
            return
        self._cancel_head_attempt(instance, reason)
        self._finish(instance, Status.FINISHED, fire=False)  # finished by hand: no onSuccess

    def _cancel_head_attempt(self, instance: Instance, reason: str) -> None:
        attempt = self.state.attempts.get((instance.pipeline_id, instance.head_attempt or ""))
        if attempt is not None and attempt.status in (Status.WAITING_FOR_RUNNER, Status.RUNNING):
            attempt.cancel_requested = True
            attempt.status = Status.CANCELED
            attempt.actual_end = self.state.clock.now()
            attempt.error_message = reason
            self.state.touch(attempt)

    # -- pause and resume (SetStatus PAUSE / RESUME) -----------------------------------------------

    def can_pause(self, instance: Instance) -> bool:
        """Whether ``instance`` is waiting (not with a runner, not finished), so PAUSE can hold it."""
        if instance.status == Status.WAITING_ON_DEPENDENCIES:
            return True
        if instance.kind == "system_precondition":
            return instance.status == Status.RUNNING  # the service's own check: safe to stop
        attempt = self.state.attempts.get((instance.pipeline_id, instance.head_attempt or ""))
        held = attempt is not None and attempt.open and attempt.handed_out_at is not None
        return instance.status == Status.WAITING_FOR_RUNNER and not held

    def pause(self, instance: Instance) -> None:
        """Hold a waiting instance: nothing of it is handed out, checked or retried until ``resume``."""
        if instance.status == Status.PAUSED or not self.can_pause(instance):
            return
        if instance.kind == "system_precondition":
            self._cancel_head_attempt(instance, "Paused by SetStatus.")  # a check in flight no longer counts
        instance.paused_from = str(instance.status)
        instance.status = Status.PAUSED
        self.state.touch(instance)
        log.info("instance %s of %s paused", instance.instance_id, instance.pipeline_id)

    def resume(self, instance: Instance) -> None:
        """Return a paused instance to the waiting state it was paused in, and move it on."""
        if instance.status != Status.PAUSED:
            return
        instance.status = Status(instance.paused_from or Status.WAITING_ON_DEPENDENCIES)
        instance.paused_from = None
        self.state.touch(instance)
        log.info("instance %s of %s resumed (%s)", instance.instance_id, instance.pipeline_id, instance.status)
        if instance.status == Status.WAITING_ON_DEPENDENCIES:
            self.advance(instance)
            return
        if instance.ready_at is not None:  # a retry or re-check was due meanwhile, or still is
            due = max(instance.ready_at, self.state.real_now())
            self.state.add_timer(due, "retry", (instance.pipeline_id, instance.instance_id))
            return
        attempt = self.state.attempts.get((instance.pipeline_id, instance.head_attempt or ""))
        if attempt is not None and attempt.open:
            self.offer(attempt, instance)
        elif instance.kind == "system_precondition":
            self.new_attempt(instance)

    # -- timers ---------------------------------------------------------------------------------

    def timer_handlers(self) -> dict[str, Any]:
        """Handlers for ``State.run_timers``."""
        return {
            "ack": self._on_ack_deadline,
            "progress": self._on_progress_deadline,
            "attempt_timeout": self._on_attempt_timeout,
            "retry": self._on_retry,
            "late": self.actions.on_late,
            "schedule": self.scheduler.on_timer,
        }

    def _open_attempt(self, key: Key) -> tuple[Attempt, Instance] | None:
        attempt = self.state.attempts.get(key)
        if attempt is None or not attempt.open:
            return None
        return attempt, self.state.instances[(attempt.pipeline_id, attempt.instance_id)]

    def _on_ack_deadline(self, key: Key) -> None:
        found = self._open_attempt(key)
        if found is None:
            return
        attempt, instance = found
        if attempt.acked or attempt.ack_deadline is None or attempt.ack_deadline > self.state.real_now():
            return
        self._missed(attempt, instance, f"not acknowledged within {self.config.ack_timeout_s:g} s")

    def _on_progress_deadline(self, key: Key) -> None:
        found = self._open_attempt(key)
        if found is None:
            return
        attempt, instance = found
        if not attempt.acked or attempt.progress_deadline is None:
            return
        if attempt.progress_deadline > self.state.real_now():
            return
        self._missed(attempt, instance, "no progress reported within the progress timeout")

    def _missed(self, attempt: Attempt, instance: Instance, why: str) -> None:
        """A runner went quiet: hand the work out again; this never consumes ``maximumRetries``."""
        log.info(
            "task %s of %s %s; handing it out again (%s)",
            attempt.attempt_id,
            attempt.pipeline_id,
            why,
            self.config.rehandout,
        )
        if self.config.rehandout == Rehandout.SAME_TASK:
            attempt.status = Status.WAITING_FOR_RUNNER
            attempt.acked = False
            attempt.handed_out_at = attempt.ack_deadline = attempt.progress_deadline = None
            instance.status = Status.WAITING_FOR_RUNNER
            self.state.touch(attempt, instance)
            self.offer(attempt, instance, front=True)
            return
        attempt.status = Status.TIMEDOUT
        attempt.actual_end = self.state.clock.now()
        attempt.error_message = f"Task {why}."
        attempt.ack_deadline = attempt.progress_deadline = None
        instance.status = Status.WAITING_FOR_RUNNER
        self.state.touch(attempt, instance)
        self.new_attempt(instance)

    def _on_attempt_timeout(self, key: Key) -> None:
        found = self._open_attempt(key)
        if found is None:
            return
        attempt, instance = found
        if attempt.attempt_deadline is None or attempt.attempt_deadline > self.state.real_now():
            return
        attempt.status = Status.TIMEDOUT
        attempt.cancel_requested = True  # The runner's next report says canceled: true.
        attempt.actual_end = self.state.clock.now()
        attempt.error_id = "AttemptTimeout"
        attempt.error_message = "The attempt did not finish within attemptTimeout."
        self.state.touch(attempt)
        log.info("task %s of %s ran past attemptTimeout", attempt.attempt_id, attempt.pipeline_id)
        self._failed(instance, attempt, consumed=True)

    def _on_retry(self, key: Key) -> None:
        instance = self.state.instances.get(key)
        if instance is None or instance.status in FINAL or instance.ready_at is None:
            return
        if instance.ready_at > self.state.real_now() or instance.status == Status.PAUSED:
            return
        self.new_attempt(instance)

    # -- restart ---------------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-arm deadlines and queues after loading stored state.

        Progress deadlines of running attempts restart from now (the service was down, not the
        runners); acknowledgement deadlines that expired meanwhile fire at once. Scheduled instances
        that became due meanwhile are created.
        """
        now = self.state.real_now()
        for key, attempt in self.state.attempts.items():
            if not attempt.open:
                continue
            instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
            if attempt.acked:
                timeout = period_seconds(instance.first("reportProgressTimeout")) or self.config.progress_timeout_s
                attempt.progress_deadline = now + timeout
                self.state.add_timer(attempt.progress_deadline, "progress", key)
            elif attempt.ack_deadline is not None:
                self.state.add_timer(attempt.ack_deadline, "ack", key)
            else:
                self.offer(attempt, instance)
            if attempt.attempt_deadline is not None:
                self.state.add_timer(attempt.attempt_deadline, "attempt_timeout", key)
            self.state.touch(attempt)
        for key, instance in self.state.instances.items():
            if instance.ready_at is not None and instance.status not in FINAL:
                self.state.add_timer(instance.ready_at, "retry", key)
        self.actions.recover()
        self.scheduler.recover()
