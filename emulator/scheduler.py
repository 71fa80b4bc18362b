"""Which instances exist when: on-demand runs, cron / timeseries schedules, backfill and the schedule timer.

A scheduled (``cron`` / ``timeseries``) pipeline's activities and data nodes each follow their
effective ``schedule``; the preconditions guarding them follow the object they guard. At
activation every interval whose run time has passed is created at once (backfill, oldest first);
then a ``schedule`` timer creates each later instance when the service clock reaches its run time,
until the schedule ends. Progress is kept per component in ``Pipeline.next_interval``, so
deactivation, reactivation and restarts never create an interval twice. A component of a
scheduled pipeline without a ``schedule`` runs once, at the first activation.

``dependsOn`` and ``input`` link an activity's instance to the dependency's instance of the same
scheduled start; when the dependency follows another schedule, to its instance whose interval
contains that start. The id is computed, so a dependency whose instance does not exist yet is
simply waited for.

Every method is called with ``state.lock`` held.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emulator.catalog import kind_of
from emulator.clock import stamp
from emulator.definition import DEFAULT_OBJECT_ID, EffectiveField, effective_fields
from emulator.errors import InvalidRequestException
from emulator.expressions import ExpressionError, Scope, Value, evaluate, parameter_value
from emulator.model import Instance, Pipeline, PipelineState
from emulator.periods import format_datetime
from emulator.schedules import Schedule, ScheduleType, to_datetime
from emulator.state import Key

#: Fields the service enforces itself, so their expressions are evaluated when an instance is made.
ENFORCED_FIELDS = frozenset(
    {
        "maximumRetries",
        "maxActiveInstances",
        "retryDelay",
        "attemptTimeout",
        "reportProgressTimeout",
        "preconditionTimeout",
        "lateAfterTimeout",
    }
)

if TYPE_CHECKING:
    from emulator.lifecycle import Lifecycle

log = logging.getLogger(__name__)

#: Kinds of component that get instances of their own (preconditions follow what they guard).
SCHEDULED_KINDS = ("activity", "datanode")
PRECONDITION_KINDS = ("runner_precondition", "system_precondition")
#: The timer kind that creates a scheduled pipeline's next instances.
TIMER = "schedule"

ObjectsById = Mapping[str, Mapping[str, Any]]
DependencyOf = Callable[[str, float], str | None]
"""(dependency component id, dependent's scheduled start) -> the dependency's instance id, or ``None``."""


def instance_id(component_id: str, scheduled_start: float) -> str:
    """AWS's instance id: ``@<componentId>_<scheduledStartTime>``."""
    return f"@{component_id}_{stamp(scheduled_start)}"


def component_kind(by_id: ObjectsById, object_id: str) -> str | None:
    """The kind (``activity``, ``datanode``, ...) of an object's effective ``type``, or ``None``."""
    fields = effective_fields(by_id, object_id) if object_id in by_id else []
    type_name = next((v for k, v, _ in fields if k == "type"), None)
    kind = kind_of(type_name) if type_name else None
    return str(kind) if kind is not None else None


def worker_group_of(by_id: ObjectsById, object_id: str) -> str | None:
    """``runsOn`` wins over ``workerGroup``; a resource maps to a worker group named after its id."""
    fields = effective_fields(by_id, object_id) if object_id in by_id else []
    runs_on = next((v for k, v, _ in fields if k == "runsOn"), None)
    if runs_on:
        return runs_on
    return next((v for k, v, _ in fields if k == "workerGroup"), None)


def epoch_seconds(value: object) -> float | None:
    """ActivatePipeline's ``startTimestamp`` (epoch seconds, or ISO 8601 text as validated) in epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    parsed = datetime.fromisoformat(str(value))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def is_ondemand(objects: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``Default`` says ``scheduleType: ondemand`` (any case): one run per activation."""
    by_id = {obj["id"]: obj for obj in objects}
    if DEFAULT_OBJECT_ID not in by_id:
        return False
    fields = effective_fields(by_id, DEFAULT_OBJECT_ID)
    value = next((v for k, v, ref in fields if k == "scheduleType" and not ref), None)
    return ScheduleType.of(value) == ScheduleType.ONDEMAND


@dataclass(frozen=True)
class Run:
    """One instance to create: a component and its interval (service-clock seconds)."""

    component_id: str
    scheduled_start: float
    scheduled_end: float


@dataclass(frozen=True)
class Plan:
    """How one component of a scheduled pipeline is scheduled; ``schedule`` ``None``: once, at first activation."""

    component_id: str
    schedule: Schedule | None
    schedule_type: ScheduleType

    def due(self, first: datetime, now: datetime, index: int) -> list[tuple[int, datetime, datetime]]:
        """Intervals from ``index`` on whose run time is at or before ``now``: (index, start, end)."""
        if self.schedule is None:
            return [(0, first, first)] if index == 0 else []
        return self.schedule.due(first, now, index, self.schedule_type)

    def next_run(self, first: datetime, index: int) -> datetime | None:
        """When interval ``index`` becomes due, or ``None`` when there is none."""
        if self.schedule is None:
            return first if index == 0 else None
        return self.schedule.next_run_time(first, index, self.schedule_type)

    def start_containing(self, first: datetime, moment: datetime) -> datetime:
        """The start of this component's interval that contains ``moment`` (clamped to the schedule)."""
        if self.schedule is None:
            return first
        return self.schedule.interval(first, self.schedule.index_at(first, moment))[0]


class Scheduler:
    """Creates instances: one run per activation (on-demand), or along each component's schedule."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.state = lifecycle.state
        #: Per pipeline, the clock time its schedule timer is armed for (so ticks never pile timers up).
        self._armed: dict[str, float] = {}

    # -- creating instances -----------------------------------------------------------------------

    def run_once(self, pipeline: Pipeline, scheduled_start: float, scheduled_end: float) -> list[Instance]:
        """Create one run of every activity and data node (an on-demand activation) and start what is ready."""
        runs = [Run(obj["id"], scheduled_start, scheduled_end) for obj in pipeline.active_objects or []]
        made = self.create_instances(pipeline, runs, instance_id)
        for instance in made:
            self.lifecycle.advance(instance)
        return made

    def create_instances(self, pipeline: Pipeline, runs: Sequence[Run], dependency: DependencyOf) -> list[Instance]:
        """Create the instances of ``runs`` (activities and data nodes; others are skipped), their guards, their links.

        Existing instances are left alone, so creating a run twice is harmless. Nothing is advanced.
        """
        by_id = {obj["id"]: obj for obj in pipeline.active_objects or []}
        made: list[Instance] = []
        # A backfill makes many instances of few components: read each component once.
        kinds: dict[str, str | None] = {}
        groups: dict[str, str | None] = {}
        fields_of: dict[str, list[EffectiveField]] = {}

        def kind(object_id: str) -> str | None:
            if object_id not in kinds:
                kinds[object_id] = component_kind(by_id, object_id)
            return kinds[object_id]

        def group(object_id: str) -> str | None:
            if object_id not in groups:
                groups[object_id] = worker_group_of(by_id, object_id)
            return groups[object_id]

        def make(component_id: str, kind: str, worker_group: str | None, start: float, end: float) -> Instance:
            key = (pipeline.pipeline_id, instance_id(component_id, start))
            existing = self.state.instances.get(key)
            if existing is not None:
                return existing
            if component_id not in fields_of:
                fields_of[component_id] = self.lifecycle.scaled_fields(effective_fields(by_id, component_id))
            fields = list(fields_of[component_id])
            instance = Instance(
                pipeline_id=pipeline.pipeline_id,
                instance_id=key[1],
                component_id=component_id,
                kind=kind,
                type=next((v for k, v, _ in fields if k == "type"), ""),
                scheduled_start=start,
                scheduled_end=end,
                fields=fields,
                worker_group=worker_group,
            )
            self.state.add_instance(instance)
            self._evaluate_enforced(pipeline, instance)
            made.append(instance)
            self.state.touch(instance)
            return instance

        # Activities and data nodes first, then the runner-side preconditions that guard them.
        guarded: list[Instance] = []
        for run in runs:
            run_kind = kind(run.component_id)
            if run_kind is None or run_kind not in SCHEDULED_KINDS:
                continue
            count = len(made)
            instance = make(run.component_id, run_kind, group(run.component_id), run.scheduled_start, run.scheduled_end)
            if len(made) > count:
                guarded.append(instance)
        for instance in guarded:
            for pre_id in instance.all("precondition"):
                pre_kind = kind(pre_id)
                if pre_kind is None or pre_kind not in PRECONDITION_KINDS:
                    continue
                pre_group = group(pre_id) or instance.worker_group
                guard = make(pre_id, pre_kind, pre_group, instance.scheduled_start, instance.scheduled_end)
                guard.guards.append(instance.instance_id)
                self.state.add_dependency(instance, guard.instance_id)
                self.state.touch(guard)
            if instance.kind == "activity":
                for dep in instance.all("dependsOn") + instance.all("input"):
                    if kind(dep) not in SCHEDULED_KINDS:
                        continue
                    dep_id = dependency(dep, instance.scheduled_start)
                    if dep_id is not None and dep_id != instance.instance_id:
                        self.state.add_dependency(instance, dep_id)
        return made

    def _evaluate_enforced(self, pipeline: Pipeline, instance: Instance) -> None:
        """Evaluate expressions in the fields the service itself enforces (``#{myRetries}``), then time-scale.

        Runners get every field evaluated at hand-out; the service's own deadlines and retries need the
        values when the instance is made. A field that does not evaluate stays as written (treated as unset).
        """
        from emulator.lifecycle import scaled_value
        from emulator.scope import resolver_for

        if not any(k in ENFORCED_FIELDS and "#{" in v for k, v, ref in instance.fields if not ref):
            return
        resolver = resolver_for(self.state, pipeline, instance.instance_id)
        fields = []
        for key, value, is_ref in instance.fields:
            if key in ENFORCED_FIELDS and not is_ref and "#{" in value:
                try:
                    value = scaled_value(key, resolver.evaluate(value), self.lifecycle.config.time_scale)
                except (ExpressionError, LookupError) as exc:
                    log.warning("%s of %s does not evaluate (%s); treated as unset", key, instance.instance_id, exc)
            fields.append(EffectiveField(key, value, is_ref))
        instance.fields = fields

    # -- scheduled pipelines ----------------------------------------------------------------------

    def check_start(
        self,
        pipeline: Pipeline,
        objects: Sequence[Mapping[str, Any]],
        parameters: Mapping[str, Value],
        start_timestamp: float | None,
    ) -> None:
        """Refuse an activation whose schedules cannot be read, or start more than a day ago (AWS's backfill rule).

        Only components with no instances created yet are checked: a reactivation resumes.

        Raises:
            InvalidRequestException: a schedule field does not parse, or a first start is too old.
        """
        plans = self.plans(objects, parameters)
        now = to_datetime(self.state.clock.now())
        first = to_datetime(self._first_activation(pipeline, start_timestamp))
        if self.state.config.allow_old_start:
            return
        for plan in plans:
            if plan.schedule is None or plan.component_id in pipeline.next_interval:
                continue
            if plan.schedule.too_old(first, now):
                start = format_datetime(plan.schedule.first_start(first))
                source = "its startDateTime" if plan.schedule.start else "FIRST_ACTIVATION_DATE_TIME (startTimestamp)"
                raise InvalidRequestException(
                    f"Schedule {plan.schedule.schedule_id} of {plan.component_id} starts at {start} ({source}), more"
                    f" than 1 day before now ({format_datetime(now)}): activation is blocked to prevent an accidental"
                    " backfill. Start the schedule within the last day (or run the service with --allow-old-start)."
                )

    def activate(self, pipeline: Pipeline, start_timestamp: float | None) -> int:
        """Start or resume a scheduled pipeline's schedules (after ``check_start``); returns instances created."""
        if pipeline.first_activated_at is None:
            pipeline.first_activated_at = self._first_activation(pipeline, start_timestamp)
            self.state.touch(pipeline)
        return self.tick(pipeline)

    def tick(self, pipeline: Pipeline) -> int:
        """Create every instance of ``pipeline`` due by now, start what may start, arm the timer for the next."""
        if pipeline.deleted or pipeline.state != PipelineState.SCHEDULED or pipeline.first_activated_at is None:
            return 0
        objects = pipeline.active_objects or []
        if is_ondemand(objects):
            return 0
        plans = self.plans(objects, self.parameters(pipeline))
        first = to_datetime(pipeline.first_activated_at)
        now = to_datetime(self.state.clock.now())
        runs: list[Run] = []
        upcoming: list[datetime] = []
        for plan in plans:
            index = pipeline.next_interval.get(plan.component_id, 0)
            for number, start, end in plan.due(first, now, index):
                runs.append(Run(plan.component_id, start.timestamp(), end.timestamp()))
                index = number + 1
            pipeline.next_interval[plan.component_id] = index
            later = plan.next_run(first, index)
            if later is not None:
                upcoming.append(later)
        if runs:
            self.state.touch(pipeline)
            by_component = {plan.component_id: plan for plan in plans}

            def dependency(component_id: str, scheduled_start: float) -> str | None:
                plan = by_component.get(component_id)
                if plan is None:
                    return None
                start = plan.start_containing(first, to_datetime(scheduled_start))
                return instance_id(component_id, start.timestamp())

            made = self.create_instances(pipeline, runs, dependency)
            log.info("pipeline %s: %d instances due by %s", pipeline.pipeline_id, len(runs), format_datetime(now))
            # Oldest first, so maxActiveInstances starts them in scheduled order.
            for instance in sorted(made, key=lambda i: i.scheduled_start):
                self.lifecycle.advance(instance)
        if upcoming:
            self._arm(pipeline.pipeline_id, min(upcoming).timestamp())
        return len(runs)

    def tick_all(self) -> int:
        """Tick every scheduled pipeline (after a restart or a clock advance); returns instances created."""
        created = 0
        for pipeline in list(self.state.pipelines.values()):
            try:
                created += self.tick(pipeline)
            except InvalidRequestException as exc:
                log.error("pipeline %s: cannot schedule: %s", pipeline.pipeline_id, exc)
        return created

    def on_timer(self, key: Key) -> None:
        """The ``schedule`` timer: create what became due (stale timers are harmless)."""
        pipeline_id, due = key
        if self._armed.get(pipeline_id) == float(due):
            del self._armed[pipeline_id]
        pipeline = self.state.pipelines.get(pipeline_id)
        if pipeline is None:
            return
        try:
            self.tick(pipeline)
        except InvalidRequestException as exc:
            log.error("pipeline %s: cannot schedule: %s", pipeline_id, exc)

    def recover(self) -> None:
        """After loading stored state: create what became due while the service was down, re-arm timers."""
        self._armed.clear()
        created = self.tick_all()
        if created:
            log.info("created %d scheduled instances due while the service was down", created)

    def _arm(self, pipeline_id: str, clock_due: float) -> None:
        if self._armed.get(pipeline_id) == clock_due:
            return
        self._armed[pipeline_id] = clock_due
        self.state.add_clock_timer(clock_due, TIMER, (pipeline_id, repr(clock_due)))

    def _first_activation(self, pipeline: Pipeline, start_timestamp: float | None) -> float:
        if pipeline.first_activated_at is not None:
            return pipeline.first_activated_at
        # Whole seconds: instance ids and @scheduledStartTime show seconds, so intervals must start on one.
        return float(math.floor(start_timestamp if start_timestamp is not None else self.state.clock.now()))

    # -- reading the definition -------------------------------------------------------------------

    def plans(self, objects: Sequence[Mapping[str, Any]], parameters: Mapping[str, Value]) -> list[Plan]:
        """How each activity and data node of a scheduled definition is scheduled.

        Raises:
            InvalidRequestException: a schedule's fields do not parse.
        """
        by_id = {obj["id"]: obj for obj in objects}
        schedules: dict[str, Schedule] = {}
        plans = []
        for obj in objects:
            component_id = obj["id"]
            if component_kind(by_id, component_id) not in SCHEDULED_KINDS:
                continue
            fields = effective_fields(by_id, component_id)
            schedule_type = ScheduleType.of(next((v for k, v, r in fields if k == "scheduleType" and not r), None))
            ref = next((v for k, v, r in fields if k == "schedule" and r), None)
            schedule = None
            if ref is not None and ref in by_id:
                if ref not in schedules:
                    schedules[ref] = self._schedule(by_id, ref, parameters)
                schedule = schedules[ref]
            plans.append(Plan(component_id, schedule, schedule_type))
        return plans

    @staticmethod
    def _schedule(by_id: ObjectsById, schedule_id: str, parameters: Mapping[str, Value]) -> Schedule:
        scope = Scope.of(parameters)
        fields = []
        try:
            for key, value, is_ref in effective_fields(by_id, schedule_id):
                fields.append(EffectiveField(key, value if is_ref else evaluate(value, scope), is_ref))
            return Schedule.from_fields(schedule_id, fields)
        except (ValueError, ExpressionError) as exc:
            raise InvalidRequestException(f"Schedule {schedule_id} cannot be read: {exc}") from exc

    @staticmethod
    def parameters(pipeline: Pipeline) -> dict[str, Value]:
        """The active parameters' values (else defaults), for expressions in schedule fields."""
        declared = pipeline.active_parameter_objects
        return parameter_values(
            pipeline.parameter_objects if declared is None else declared, pipeline.active_parameter_values
        )


def parameter_values(
    parameter_objects: Sequence[Mapping[str, Any]], values: Sequence[Mapping[str, Any]]
) -> dict[str, Value]:
    """Each declared parameter's value: the first given value, else its ``default`` (typed as declared)."""
    given: dict[str, str] = {}
    for value in values:
        given.setdefault(str(value.get("id")), str(value.get("stringValue", "")))
    out: dict[str, Value] = {}
    for parameter in parameter_objects:
        attributes = {a.get("key"): a.get("stringValue") for a in parameter.get("attributes", [])}
        name = str(parameter.get("id"))
        text = given.get(name, attributes.get("default"))
        if text is not None:
            out[name] = parameter_value(str(text), str(attributes.get("type") or "String"))
    return out
