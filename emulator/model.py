"""The service's state: pipelines, instances, attempts and task hand-outs, as plain records.

Records are mutable dataclasses owned by the engine (always touched under its lock) and
serialised as JSON by the store. Field names follow the API's runtime fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from emulator.definition import EffectiveField


class PipelineState(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    INACTIVE = "INACTIVE"
    FINISHED = "FINISHED"


class Status(StrEnum):
    """Instance and attempt statuses (Developer Guide, "Interpreting Pipeline Status Details")."""

    WAITING_ON_DEPENDENCIES = "WAITING_ON_DEPENDENCIES"
    WAITING_FOR_RUNNER = "WAITING_FOR_RUNNER"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    CASCADE_FAILED = "CASCADE_FAILED"
    TIMEDOUT = "TIMEDOUT"
    PAUSED = "PAUSED"
    SKIPPED = "SKIPPED"


#: Statuses after which an instance never runs again (unless rerun).
FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELED, Status.CASCADE_FAILED, Status.SKIPPED})
#: Final statuses that block dependents.
BLOCKING = frozenset({Status.FAILED, Status.CANCELED, Status.CASCADE_FAILED})

Field = EffectiveField
"""One field: (key, value, is_ref). Keys may repeat for multi-valued fields."""


@dataclass
class Pipeline:
    pipeline_id: str
    name: str
    unique_id: str
    description: str
    created_at: float
    tags: dict[str, str] = field(default_factory=dict)
    state: PipelineState = PipelineState.PENDING
    deleted: bool = False
    version: int = 0
    #: The latest definition in API shape (PutPipelineDefinition).
    objects: list[dict[str, Any]] = field(default_factory=list)
    parameter_objects: list[dict[str, Any]] = field(default_factory=list)
    parameter_values: list[dict[str, Any]] = field(default_factory=list)
    errored: bool = False
    #: The definition in force since the last activation (GetPipelineDefinition version=active).
    active_objects: list[dict[str, Any]] | None = None
    active_parameter_values: list[dict[str, Any]] = field(default_factory=list)
    #: The parameter objects in force since the last activation (``None``: state from before they were kept).
    active_parameter_objects: list[dict[str, Any]] | None = None
    runs: int = 0
    activated_at: float | None = None
    #: Scheduled pipelines: ``FIRST_ACTIVATION_DATE_TIME`` (clock seconds; ActivatePipeline's startTimestamp if given).
    first_activated_at: float | None = None
    #: Scheduled pipelines: per component id, the index of the next schedule interval to create.
    next_interval: dict[str, int] = field(default_factory=dict)


@dataclass
class Instance:
    """One run of a component (activity, data node or precondition)."""

    pipeline_id: str
    instance_id: str
    component_id: str
    kind: str
    type: str
    scheduled_start: float
    scheduled_end: float
    #: The component's effective fields at creation (inherited, time-scaled).
    fields: list[Field]
    worker_group: str | None
    status: Status = Status.WAITING_ON_DEPENDENCIES
    depends_on: list[str] = field(default_factory=list)
    #: Instances this one guards (for precondition instances).
    guards: list[str] = field(default_factory=list)
    attempt_count: int = 0
    failures: int = 0
    head_attempt: str | None = None
    actual_start: float | None = None
    actual_end: float | None = None
    error_id: str | None = None
    error_message: str | None = None
    error_stack_trace: str | None = None
    cascade_failed_on: str | None = None
    #: When a pending retry / precondition re-check becomes due (real epoch seconds, like every deadline).
    ready_at: float | None = None
    #: For preconditions: when checking started (real epoch seconds), to apply preconditionTimeout.
    checking_since: float | None = None
    #: While ``PAUSED``: the status ``RESUME`` returns it to.
    paused_from: str | None = None
    #: When ``onLateAction`` is due (scheduled start + ``lateAfterTimeout``), once armed.
    late_at: float | None = None
    late_fired: bool = False

    def first(self, key: str) -> str | None:
        """The first value of ``key`` among the effective fields, or ``None``."""
        for k, v, _ in self.fields:
            if k == key:
                return v
        return None

    def all(self, key: str) -> list[str]:
        """Every value of a (possibly multi-valued) field, in order."""
        return [v for k, v, _ in self.fields if k == key]


@dataclass
class Attempt:
    pipeline_id: str
    attempt_id: str
    instance_id: str
    number: int
    status: Status = Status.WAITING_FOR_RUNNER
    task_id: str | None = None
    hostname: str | None = None
    handed_out_at: float | None = None
    acked: bool = False
    #: Deadlines are real epoch seconds (``State.real_now``); displayed times are service-clock seconds.
    ack_deadline: float | None = None
    progress_deadline: float | None = None
    attempt_deadline: float | None = None
    report_progress_time: float | None = None
    actual_start: float | None = None
    actual_end: float | None = None
    cancel_requested: bool = False
    error_id: str | None = None
    error_message: str | None = None
    error_stack_trace: str | None = None
    attempt_status: str | None = None

    @property
    def open(self) -> bool:
        """Whether this attempt may still be handed out or reported on."""
        return self.status in (Status.WAITING_FOR_RUNNER, Status.RUNNING) and not self.cancel_requested


@dataclass
class Runner:
    taskrunner_id: str
    worker_group: str | None
    hostname: str | None
    last_heartbeat: float
    heartbeats: int = 0
    terminate: bool = False


@dataclass
class FiredAction:
    """An action (``SnsAlarm``, ``Terminate``) the service ran for an instance; alarms are recorded, never sent."""

    seq: int
    time: float
    pipeline_id: str
    component_id: str
    instance_id: str
    #: ``onFail``, ``onSuccess`` or ``onLateAction``.
    event: str
    action_id: str
    action_type: str
    topic_arn: str | None = None
    subject: str | None = None
    message: str | None = None
    #: What it did (Terminate), or why its text could not be evaluated (SnsAlarm).
    outcome: str | None = None


def to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict."""
    return dataclasses.asdict(record)


def instance_from_json(data: dict[str, Any]) -> Instance:
    data = dict(data)
    data["status"] = Status(data["status"])
    data["fields"] = [EffectiveField(*f) for f in data["fields"]]
    return Instance(**data)


def attempt_from_json(data: dict[str, Any]) -> Attempt:
    data = dict(data)
    data["status"] = Status(data["status"])
    return Attempt(**data)


def pipeline_from_json(data: dict[str, Any]) -> Pipeline:
    data = dict(data)
    data["state"] = PipelineState(data["state"])
    return Pipeline(**data)


def runner_from_json(data: dict[str, Any]) -> Runner:
    return Runner(**data)


def fired_action_from_json(data: dict[str, Any]) -> FiredAction:
    return FiredAction(**data)
