"""The Data Pipeline API operations, dispatched by name, on top of the state and the lifecycle."""

from __future__ import annotations

import logging
import math
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from emulator.clock import Clock, stamp
from emulator.config import ServiceConfig
from emulator.definition import effective_fields
from emulator.errors import (
    InvalidRequestException,
    PipelineDeletedException,
    PipelineNotFoundException,
    UnknownOperationException,
)
from emulator.expressions import ExpressionError
from emulator.lifecycle import Lifecycle, scaled_value
from emulator.model import FINAL, Field, Instance, Pipeline, PipelineState, Runner, Status
from emulator.scheduler import epoch_seconds, is_ondemand, parameter_values
from emulator.scope import Resolver, UnknownObject, resolver_for
from emulator.shapes import validate_input
from emulator.state import State
from emulator.store import MemoryStore, SqliteStore, Store
from emulator.validation import Limits, validate_definition
from emulator.views import (
    attempt_fields,
    check_selectors,
    component_fields,
    evaluated,
    instance_fields,
    matches,
    task_object,
)

log = logging.getLogger(__name__)

Params = dict[str, Any]
GoneCheck = Callable[[], bool]


def new_pipeline_id() -> str:
    """``df-`` plus 19 upper-case alphanumerics, like AWS's ids."""
    alphabet = string.ascii_uppercase + string.digits
    return "df-" + "".join(secrets.choice(alphabet) for _ in range(19))


class Service:
    """The local Data Pipeline service, independent of HTTP.

    Args:
        config: Settings.
        store: Where state survives restarts (default: from ``config.state_path``).
        clock: The service clock (default: real time at ``config.clock_speed``).
    """

    def __init__(self, config: ServiceConfig, store: Store | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock(config.clock_speed)
        if store is None:
            store = SqliteStore(config.state_path) if config.state_path else MemoryStore()
        self.state = State(config, self.clock, store)
        self.lifecycle = Lifecycle(self.state)
        self.limits = Limits(
            objects_per_pipeline=config.limit("objects-per-pipeline"),
            fields_per_object=config.limit("fields-per-object"),
            bytes_per_field=config.limit("bytes-per-field"),
            bytes_per_object=config.limit("bytes-per-object"),
            bytes_per_name=config.limit("bytes-per-name"),
            max_retries=config.limit("retries"),
            parameters=config.limit("parameters"),
        )
        self._stop = threading.Event()
        self._timer_thread: threading.Thread | None = None
        self._ops: dict[str, Callable[[Params], Params]] = {
            name: getattr(self, "op_" + name) for name in OPERATIONS if name != "PollForTask"
        }

    # -- lifecycle of the service itself ----------------------------------------------------------

    def start(self) -> None:
        """Load stored state, re-arm deadlines and start the timer thread."""
        with self.state.lock:
            self.state.load()
            self.lifecycle.recover()
            self.state.flush()
        self._timer_thread = threading.Thread(
            target=self.state.run_timers, args=(self.lifecycle.timer_handlers(), self._stop), name="timers", daemon=True
        )
        self._timer_thread.start()

    def stop(self) -> None:
        """Stop the timers and close the store. Idempotent."""
        # Order: stop the timers, stop the S3 checks (their results are then dropped), flush, close.
        first_stop = not self._stop.is_set()
        self._stop.set()
        self.state.wake_timers()
        if self._timer_thread is not None:
            self._timer_thread.join(timeout=5)
        self.lifecycle.checks.stop()
        with self.state.lock:
            self.state.flush(clock=first_stop)  # a second stop finds the store closed
            self.state.store.close()

    # -- dispatch ---------------------------------------------------------------------------------

    def call(self, operation: str, params: object, gone: GoneCheck | None = None) -> Params:
        """Run one API operation.

        Raises:
            ServiceError: any error the API defines, in AWS's shape.
        """
        if operation not in OPERATIONS:
            raise UnknownOperationException(f"Operation {operation} is not supported.")
        checked = validate_input(operation, params)
        if operation == "PollForTask":
            return self.poll_for_task(checked, gone or (lambda: False))
        with self.state.lock:
            try:
                return self._ops[operation](checked)
            finally:
                self.state.flush()

    # -- helpers ----------------------------------------------------------------------------------

    def _pipeline(self, pipeline_id: str, *, allow_deleted: bool = False) -> Pipeline:
        pipeline = self.state.pipelines.get(pipeline_id)
        if pipeline is None:
            raise PipelineNotFoundException(
                f"Pipeline {pipeline_id} not found. Check the user and account identifiers."
            )
        if pipeline.deleted and not allow_deleted:
            raise PipelineDeletedException(f"Pipeline {pipeline_id} has been deleted.")
        return pipeline

    def _instances(self, pipeline_id: str) -> list[Instance]:
        return [i for (pid, _), i in self.state.instances.items() if pid == pipeline_id]

    @staticmethod
    def _page(items: list[Any], marker: str | None, size: int) -> tuple[list[Any], str | None]:
        try:
            start = int(marker) if marker else 0
        except ValueError as exc:
            raise InvalidRequestException(f"Invalid marker {str(marker)[:100]!r}.") from exc
        if start < 0:
            raise InvalidRequestException(f"Invalid marker {marker!r}.")
        page = items[start : start + size]
        more = start + size < len(items)
        return page, (str(start + size) if more else None)

    # -- pipelines --------------------------------------------------------------------------------

    def op_CreatePipeline(self, p: Params) -> Params:
        for pipeline in self.state.pipelines.values():
            if not pipeline.deleted and pipeline.name == p["name"] and pipeline.unique_id == p["uniqueId"]:
                return {"pipelineId": pipeline.pipeline_id}
        tags = {t["key"]: t["value"] for t in p.get("tags", [])}
        if len(tags) > 10:
            raise InvalidRequestException("A pipeline can have at most 10 tags.")
        limit = self.config.limit("pipelines")
        if sum(1 for x in self.state.pipelines.values() if not x.deleted) >= limit:
            raise InvalidRequestException(
                f"Limit exceeded: this account already has {limit} pipelines, its limit."
                " Delete a pipeline, or start the service with a higher --limit pipelines=N."
            )
        pipeline = Pipeline(
            pipeline_id=new_pipeline_id(),
            name=p["name"],
            unique_id=p["uniqueId"],
            description=p.get("description", ""),
            created_at=self.clock.now(),
            tags=tags,
        )
        self.state.pipelines[pipeline.pipeline_id] = pipeline
        self.state.touch(pipeline)
        log.info("created pipeline %s (%s)", pipeline.pipeline_id, pipeline.name)
        return {"pipelineId": pipeline.pipeline_id}

    def op_DeletePipeline(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"], allow_deleted=True)
        if pipeline.deleted:
            raise PipelineNotFoundException(f"Pipeline {pipeline.pipeline_id} not found.")
        for instance in self._instances(pipeline.pipeline_id):
            self.lifecycle.cancel(instance, "The pipeline was deleted.")
        pipeline.deleted = True
        self.state.touch(pipeline)
        log.info("deleted pipeline %s", pipeline.pipeline_id)
        return {}

    def op_ListPipelines(self, p: Params) -> Params:
        live = sorted((x for x in self.state.pipelines.values() if not x.deleted), key=lambda x: x.created_at)
        page, marker = self._page(live, p.get("marker"), self.config.list_page_size)
        out: Params = {"pipelineIdList": [{"id": x.pipeline_id, "name": x.name} for x in page]}
        out["hasMoreResults"] = marker is not None
        if marker:
            out["marker"] = marker
        return out

    def op_DescribePipelines(self, p: Params) -> Params:
        ids = p["pipelineIds"]
        if len(ids) > 25:
            raise InvalidRequestException("DescribePipelines accepts at most 25 pipeline ids.")
        out = []
        for pipeline_id in ids:
            x = self._pipeline(pipeline_id)
            fields = [
                ("@pipelineState", str(x.state)),
                ("description", x.description),
                ("name", x.name),
                ("@creationTime", stamp(x.created_at)),
                ("@id", x.pipeline_id),
                ("@sphere", "PIPELINE"),
                ("@version", str(x.version)),
                ("@userId", self.config.account_id),
                ("@accountId", self.config.account_id),
                ("uniqueId", x.unique_id),
                ("@latestRunTime", stamp(x.activated_at) if x.activated_at else None),
            ]
            out.append(
                {
                    "pipelineId": x.pipeline_id,
                    "name": x.name,
                    "description": x.description,
                    "fields": [{"key": k, "stringValue": v} for k, v in fields if v is not None],
                    "tags": [{"key": k, "value": v} for k, v in x.tags.items()],
                }
            )
        return {"pipelineDescriptionList": out}

    def _validate(self, p: Params) -> Params:
        result = validate_definition(
            p["pipelineObjects"], p.get("parameterObjects", []), p.get("parameterValues", []), self.limits
        )
        return {
            "validationErrors": result.errors,
            "validationWarnings": result.warnings,
            "errored": bool(result.errors),
        }

    def op_ValidatePipelineDefinition(self, p: Params) -> Params:
        self._pipeline(p["pipelineId"])
        return self._validate(p)

    def op_PutPipelineDefinition(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        out = self._validate(p)
        pipeline.objects = p["pipelineObjects"]
        pipeline.parameter_objects = p.get("parameterObjects", [])
        pipeline.parameter_values = p.get("parameterValues", [])
        pipeline.errored = out["errored"]
        pipeline.version += 1
        self.state.touch(pipeline)
        return out

    def op_GetPipelineDefinition(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        version = p.get("version", "latest")
        if version not in ("latest", "active"):
            raise InvalidRequestException("version must be 'latest' or 'active'.")
        if version == "active":
            if pipeline.active_objects is None:
                raise InvalidRequestException(f"Pipeline {pipeline.pipeline_id} has never been activated.")
            active_parameters = pipeline.active_parameter_objects
            return {
                "pipelineObjects": pipeline.active_objects,
                "parameterObjects": pipeline.parameter_objects if active_parameters is None else active_parameters,
                "parameterValues": pipeline.active_parameter_values,
            }
        return {
            "pipelineObjects": pipeline.objects,
            "parameterObjects": pipeline.parameter_objects,
            "parameterValues": pipeline.parameter_values,
        }

    def op_ActivatePipeline(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        if not pipeline.objects:
            raise InvalidRequestException(f"Pipeline {pipeline.pipeline_id} has no pipeline definition.")
        values = p.get("parameterValues") or pipeline.parameter_values
        if p.get("parameterValues"):
            check = validate_definition(pipeline.objects, pipeline.parameter_objects, values, self.limits)
            if check.errors:
                raise InvalidRequestException(f"Pipeline definition has errors: {_first_error(check.errors)}")
        elif pipeline.errored:
            raise InvalidRequestException(
                "Pipeline definition has errors: fix them and call PutPipelineDefinition again."
            )
        scheduler = self.lifecycle.scheduler
        ondemand = is_ondemand(pipeline.objects)
        start_timestamp = epoch_seconds(p.get("startTimestamp"))
        if not ondemand:
            parameters = parameter_values(pipeline.parameter_objects, values)
            scheduler.check_start(pipeline, pipeline.objects, parameters, start_timestamp)
        pipeline.active_objects = pipeline.objects
        pipeline.active_parameter_values = values
        pipeline.active_parameter_objects = pipeline.parameter_objects
        pipeline.state = PipelineState.SCHEDULED
        pipeline.activated_at = self.clock.now()
        self.state.touch(pipeline)
        instances = self._instances(pipeline.pipeline_id)
        if not ondemand:
            self._resume(pipeline, instances)
            created = scheduler.activate(pipeline, start_timestamp)
            log.info("activated scheduled pipeline %s (%d instances due now)", pipeline.pipeline_id, created)
            return {}
        if instances and not all(i.status in FINAL for i in instances):
            self._resume(pipeline, instances)
        else:
            self._start_runs(pipeline)
        log.info("activated pipeline %s", pipeline.pipeline_id)
        return {}

    def _start_runs(self, pipeline: Pipeline) -> None:
        """Start an on-demand pipeline's run: one now."""
        now = self.clock.now()
        pipeline.runs += 1
        self.lifecycle.scheduler.run_once(pipeline, now, now)

    def _resume(self, pipeline: Pipeline, instances: list[Instance]) -> None:
        """Re-offer the open attempts of a reactivated pipeline."""
        for instance in instances:
            attempt = self.state.attempts.get((pipeline.pipeline_id, instance.head_attempt or ""))
            if attempt is not None and attempt.open and attempt.handed_out_at is None:
                self.lifecycle.offer(attempt, instance)

    def op_DeactivatePipeline(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        pipeline.state = PipelineState.INACTIVE
        self.state.touch(pipeline)
        if p.get("cancelActive", True):
            for instance in self._instances(pipeline.pipeline_id):
                if instance.status == Status.RUNNING or self._handed_out(instance):
                    self.lifecycle.cancel(instance, "The pipeline was deactivated.")
        return {}

    def _handed_out(self, instance: Instance) -> bool:
        attempt = self.state.attempts.get((instance.pipeline_id, instance.head_attempt or ""))
        return attempt is not None and attempt.open and attempt.handed_out_at is not None

    def op_AddTags(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        tags = dict(pipeline.tags)
        tags.update({t["key"]: t["value"] for t in p["tags"]})
        if len(tags) > 10:
            raise InvalidRequestException("A pipeline can have at most 10 tags.")
        pipeline.tags = tags
        self.state.touch(pipeline)
        return {}

    def op_RemoveTags(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        for key in p["tagKeys"]:
            pipeline.tags.pop(key, None)
        self.state.touch(pipeline)
        return {}

    def op_SetStatus(self, p: Params) -> Params:
        """PAUSE or RESUME components (all unfinished instances) or instances; TRY_CANCEL, RERUN, MARK_FINISHED.

        Every object is checked before anything changes, so a refused call changes nothing.
        """
        pipeline = self._pipeline(p["pipelineId"])
        if pipeline.state == PipelineState.FINISHED:
            raise InvalidRequestException(f"Pipeline {pipeline.pipeline_id} has finished; its status cannot be set.")
        status = p["status"]
        if status not in INSTANCE_STATUSES:
            raise InvalidRequestException(
                f"Invalid status {status[:50]!r}: use PAUSE or RESUME for components,"
                " TRY_CANCEL, RERUN, MARK_FINISHED, PAUSE or RESUME for instances."
            )
        components = {obj["id"] for obj in [*pipeline.objects, *(pipeline.active_objects or [])]}
        targets: list[Instance] = []
        for object_id in p["objectIds"]:
            instance = self.state.instances.get((pipeline.pipeline_id, object_id))
            if instance is not None:
                self._check_settable(instance, status)
                targets.append(instance)
            elif object_id in components:
                if status not in COMPONENT_STATUSES:
                    raise InvalidRequestException(
                        f"{object_id!r} is a component: use PAUSE or RESUME ({status} applies to instances)."
                    )
                targets += [i for i in self._instances(pipeline.pipeline_id) if i.component_id == object_id]
            else:
                raise InvalidRequestException(
                    f"Object {object_id[:256]!r} is not a component or instance of pipeline {pipeline.pipeline_id}."
                )
        for instance in targets:
            if status == "TRY_CANCEL":
                self.lifecycle.cancel(instance, "Canceled by SetStatus.")
            elif status == "MARK_FINISHED":
                self.lifecycle.mark_finished(instance, "Marked finished by SetStatus.")
            elif status == "RERUN":
                self._rerun(instance)
            elif status == "PAUSE":
                self.lifecycle.pause(instance)  # a component's running or finished instances carry on
            else:
                self.lifecycle.resume(instance)
        return {}

    def _check_settable(self, instance: Instance, status: str) -> None:
        """Refuse what cannot apply to ``instance`` (before any object changes)."""
        if status == "RERUN" and instance.status not in FINAL:
            raise InvalidRequestException(f"Instance {instance.instance_id} is still {instance.status}.")
        if status == "PAUSE" and instance.status != Status.PAUSED and not self.lifecycle.can_pause(instance):
            raise InvalidRequestException(
                f"Instance {instance.instance_id} is {instance.status}: only a waiting instance can be paused"
                " (TRY_CANCEL stops one a runner holds)."
            )

    def _rerun(self, instance: Instance) -> None:
        if instance.status not in FINAL:
            raise InvalidRequestException(f"Instance {instance.instance_id} is still {instance.status}.")
        instance.status = Status.WAITING_ON_DEPENDENCIES
        instance.failures = 0
        instance.error_id = instance.error_message = instance.error_stack_trace = None
        instance.cascade_failed_on = None
        instance.actual_end = None
        self.state.touch(instance)
        self.lifecycle.advance(instance)

    # -- objects ----------------------------------------------------------------------------------

    def _render(self, pipeline: Pipeline, object_id: str) -> tuple[str, list[Field]] | None:
        """(name, fields) of a component, instance or attempt, or ``None``."""
        instance = self.state.instances.get((pipeline.pipeline_id, object_id))
        if instance is not None:
            return object_id, instance_fields(self.state, instance)
        attempt = self.state.attempts.get((pipeline.pipeline_id, object_id))
        if attempt is not None:
            owner = self.state.instances[(pipeline.pipeline_id, attempt.instance_id)]
            return object_id, attempt_fields(owner, attempt)
        by_id = {obj["id"]: obj for obj in pipeline.objects}
        if object_id in by_id:
            return by_id[object_id].get("name", object_id), component_fields(pipeline, by_id, object_id)
        return None

    def op_DescribeObjects(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        out = []
        for object_id in p["objectIds"]:
            rendered = self._render(pipeline, object_id)
            if rendered is None:
                continue
            name, fields = rendered
            if p.get("evaluateExpressions"):
                # Friendlier than AWS (which is said to fail for components): a value that cannot be
                # evaluated in this object's context is shown as written.
                fields = evaluated(fields, self._resolver(pipeline, object_id), object_id=object_id, lenient=True)
            out.append(
                {
                    "id": object_id,
                    "name": name,
                    "fields": [{"key": k, "refValue" if ref else "stringValue": v} for k, v, ref in fields],
                }
            )
        return {"pipelineObjects": out, "hasMoreResults": False}

    def op_QueryObjects(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        selectors = (p.get("query") or {}).get("selectors") or []
        check_selectors(selectors)
        sphere = p["sphere"]
        if sphere == "COMPONENT":
            ids = [obj["id"] for obj in pipeline.objects]
        elif sphere == "INSTANCE":
            ids = [i.instance_id for i in self._instances(pipeline.pipeline_id)]
        else:
            ids = [a.attempt_id for (pid, _), a in self.state.attempts.items() if pid == pipeline.pipeline_id]
        hits = []
        for object_id in ids:
            rendered = self._render(pipeline, object_id)
            if rendered is not None and matches(rendered[1], rendered[0], selectors):
                hits.append(object_id)
        limit = p.get("limit", 100)
        if limit < 1:
            raise InvalidRequestException(f"limit must be at least 1, got {limit}.")
        page, marker = self._page(hits, p.get("marker"), limit)
        out: Params = {"ids": page, "hasMoreResults": marker is not None}
        if marker:
            out["marker"] = marker
        return out

    def _resolver(self, pipeline: Pipeline, object_id: str) -> Resolver | None:
        try:
            return resolver_for(self.state, pipeline, object_id)
        except UnknownObject:
            return None

    def op_EvaluateExpression(self, p: Params) -> Params:
        pipeline = self._pipeline(p["pipelineId"])
        resolver = self._resolver(pipeline, p["objectId"])
        if resolver is None:
            raise InvalidRequestException(
                f"Object {p['objectId']!r} is not a component, instance or attempt of pipeline {pipeline.pipeline_id}."
            )
        try:
            return {"evaluatedExpression": resolver.evaluate(p["expression"])}
        except ExpressionError as exc:
            raise InvalidRequestException(f"Cannot evaluate the expression: {exc}") from exc

    # -- the task-runner API ----------------------------------------------------------------------

    def poll_for_task(self, p: Params, gone: GoneCheck) -> Params:
        """Hold up to ``poll_wait_s`` for a task of exactly this worker group."""
        group = p["workerGroup"]
        deadline = time.monotonic() + self.config.poll_wait_s
        with self.state.lock:
            cond = self.state.condition(group)
            while True:
                skeleton = self.lifecycle.take(group, p.get("hostname"))
                if skeleton is not None:
                    task = self._task_object(skeleton)
                    self.state.flush()
                    if task is None:
                        continue  # Its expressions failed it; look for the next task.
                    return {"taskObject": task}
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or gone():
                    return {}
                cond.wait(min(remaining, 0.5))

    def _task_object(self, skeleton: Params) -> Params | None:
        """The task object of a hand-out, with its expressions evaluated.

        ``None`` when a field cannot be evaluated: the attempt then ends ``FAILED`` with errorId
        ``ExpressionError``, as if its runner had reported it, so it counts against ``maximumRetries``.
        """
        key = (skeleton["pipelineId"], skeleton["attemptId"])
        attempt = self.state.attempts[key]
        instance = self.state.instances[(attempt.pipeline_id, attempt.instance_id)]
        pipeline = self.state.pipelines[attempt.pipeline_id]

        def evaluator_for(object_id: str) -> Resolver:
            within = None if object_id == attempt.attempt_id else attempt.attempt_id
            return resolver_for(self.state, pipeline, object_id, within=within)

        try:
            task = task_object(self.state, pipeline, instance, attempt, skeleton, evaluator_for)
        except ExpressionError as exc:
            log.warning("task %s of %s failed at hand-out: %s", attempt.attempt_id, pipeline.pipeline_id, exc)
            self.lifecycle.set_task_status(skeleton["taskId"], "FAILED", "ExpressionError", str(exc), None)
            return None
        # The attempt's Periods were scaled when its instance was made; referenced objects are
        # rendered from the definition, so scale theirs here (--time-scale divides every Period).
        for object_id, obj in task["objects"].items():
            if object_id == attempt.attempt_id:
                continue
            for field in obj["fields"]:
                if "stringValue" in field:
                    field["stringValue"] = scaled_value(field["key"], field["stringValue"], self.config.time_scale)
        return task

    def requeue(self, task_id: str) -> None:
        """The reply carrying ``task_id`` was never delivered: offer the task again."""
        with self.state.lock:
            self.lifecycle.requeue(task_id)
            self.state.flush()

    def op_ReportTaskProgress(self, p: Params) -> Params:
        return {"canceled": self.lifecycle.report_progress(p["taskId"])}

    def op_SetTaskStatus(self, p: Params) -> Params:
        self.lifecycle.set_task_status(
            p["taskId"], p["taskStatus"], p.get("errorId"), p.get("errorMessage"), p.get("errorStackTrace")
        )
        return {}

    def op_ReportTaskRunnerHeartbeat(self, p: Params) -> Params:
        runner = self.state.runners.get(p["taskrunnerId"])
        now = self.clock.now()
        if runner is None:
            runner = Runner(p["taskrunnerId"], p.get("workerGroup"), p.get("hostname"), now)
            self.state.runners[runner.taskrunner_id] = runner
        runner.worker_group = p.get("workerGroup", runner.worker_group)
        runner.hostname = p.get("hostname", runner.hostname)
        runner.last_heartbeat = now
        runner.heartbeats += 1
        self.state.touch(runner)
        return {"terminate": runner.terminate}

    # -- admin ------------------------------------------------------------------------------------

    def clock_info(self) -> dict[str, Any]:
        """The service clock: now (as the API shows times and in epoch seconds) and its speed."""
        now = self.clock.now()
        return {"now": stamp(now), "epochSeconds": now, "speed": self.clock.speed}

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the service clock forward and create the scheduled instances that became due at once.

        Deadlines run in real time and do not move.

        Raises:
            InvalidRequestException: ``seconds`` is negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequestException(f"advance-clock needs a non-negative number of seconds, got {seconds!r}.")
        with self.state.lock:
            self.clock.advance(seconds)
            created = self.lifecycle.scheduler.tick_all()
            self.state.flush(clock=True)
        self.state.wake_timers()
        log.info("service clock advanced by %g s (%d scheduled instances created)", seconds, created)
        return {**self.clock_info(), "advancedSeconds": seconds, "instancesCreated": created}

    def terminate_runner(self, taskrunner_id: str) -> None:
        """Make the runner's next heartbeat answer ``terminate: true``."""
        with self.state.lock:
            runner = self.state.runners.get(taskrunner_id)
            if runner is None:
                runner = Runner(taskrunner_id, None, None, 0.0, heartbeats=0)
                self.state.runners[taskrunner_id] = runner
            runner.terminate = True
            self.state.touch(runner)
            self.state.flush()

    def runners(self) -> list[dict[str, Any]]:
        """Every runner that has sent a heartbeat (or was asked to terminate)."""
        with self.state.lock:
            return [
                {
                    "taskrunnerId": r.taskrunner_id,
                    "workerGroup": r.worker_group,
                    "hostname": r.hostname,
                    "lastHeartbeat": stamp(r.last_heartbeat) if r.heartbeats else None,
                    "heartbeats": r.heartbeats,
                    "terminate": r.terminate,
                }
                for r in self.state.runners.values()
            ]

    def fired_actions(self, pipeline_id: str | None = None) -> list[dict[str, Any]]:
        """Actions fired so far, in order (optionally one pipeline's), for the admin API."""
        with self.state.lock:
            return self.lifecycle.actions.listing(pipeline_id)

    def effective(self, pipeline_id: str, object_id: str) -> list[Field]:
        """An object's effective fields (for tests and the admin API)."""
        with self.state.lock:
            pipeline = self._pipeline(pipeline_id)
            return effective_fields({o["id"]: o for o in pipeline.objects}, object_id)


def _first_error(errors: Sequence[Mapping[str, Any]]) -> str:
    first = errors[0]
    return f"{first['id']}: {first['errors'][0]}"


#: SetStatus values AWS documents: components take PAUSE / RESUME; instances the rest (and, here, PAUSE / RESUME).
COMPONENT_STATUSES = ("PAUSE", "RESUME")
INSTANCE_STATUSES = ("TRY_CANCEL", "RERUN", "MARK_FINISHED", *COMPONENT_STATUSES)

OPERATIONS = (
    "ActivatePipeline",
    "AddTags",
    "CreatePipeline",
    "DeactivatePipeline",
    "DeletePipeline",
    "DescribeObjects",
    "DescribePipelines",
    "EvaluateExpression",
    "GetPipelineDefinition",
    "ListPipelines",
    "PollForTask",
    "PutPipelineDefinition",
    "QueryObjects",
    "RemoveTags",
    "ReportTaskProgress",
    "ReportTaskRunnerHeartbeat",
    "SetStatus",
    "SetTaskStatus",
    "ValidatePipelineDefinition",
)
