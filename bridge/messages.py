"""The Celery message that carries one Data Pipeline task from the poller to a worker."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import InvalidTask
from bridge.taskmodel import TaskObject

SCHEMA_VERSION = 1
TASK_PREFIX = "dp."


def task_name(object_type: str) -> str:
    """The Celery task that runs an object type: ``dp.<ActivityType>``."""
    return TASK_PREFIX + object_type


def celery_id(task_key: str, epoch: int) -> str:
    """A readable Celery task id: the task key plus the lease epoch (older copies are fenced out)."""
    return f"{task_key}:e{epoch}"


def argsrepr(task: TaskObject) -> str:
    """What Flower shows as the task's arguments: ids only, never field values (no secrets)."""
    return f"pipeline={task.pipeline_id} object={task.component_id} attempt={task.attempt_id}"


@dataclass(frozen=True)
class TaskMessage:
    """Body (first positional argument) of a ``dp.<Type>`` Celery task."""

    schema: int
    task_key: str
    epoch: int
    worker_group: str
    queue: str
    object_type: str
    heartbeat_interval_s: float
    progress_deadline_s: float
    claimed_at: float
    #: The taskObject exactly as PollForTask returned it (the opaque taskId included).
    task_object: dict[str, Any]

    def to_body(self) -> dict[str, Any]:
        """The body to send, fields in declaration order (as ``dataclasses.asdict``, whose deep copy it skips).

        The task object is this message's own dict, not a copy: the body is for serialising, not for changing.
        """
        return {
            "schema": self.schema,
            "task_key": self.task_key,
            "epoch": self.epoch,
            "worker_group": self.worker_group,
            "queue": self.queue,
            "object_type": self.object_type,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "progress_deadline_s": self.progress_deadline_s,
            "claimed_at": self.claimed_at,
            "task_object": self.task_object,
        }

    @classmethod
    def from_body(cls, body: Any) -> TaskMessage:
        """Parse a message body.

        Raises:
            InvalidTask: an unknown schema version or a malformed body.
        """
        if not isinstance(body, Mapping):
            raise InvalidTask("the Celery message body is not an object")
        if body.get("schema") != SCHEMA_VERSION:
            raise InvalidTask(f"unsupported message schema {body.get('schema')!r} (this worker reads {SCHEMA_VERSION})")
        try:
            message = cls(
                schema=int(body["schema"]),
                task_key=str(body["task_key"]),
                epoch=int(body["epoch"]),
                worker_group=str(body["worker_group"]),
                queue=str(body["queue"]),
                object_type=str(body["object_type"]),
                heartbeat_interval_s=float(body["heartbeat_interval_s"]),
                progress_deadline_s=float(body["progress_deadline_s"]),
                claimed_at=float(body["claimed_at"]),
                task_object=dict(body["task_object"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # int(inf) overflows
            raise InvalidTask(f"malformed task message: {exc!r}") from exc
        if not (0 < message.heartbeat_interval_s < math.inf and 0 < message.progress_deadline_s < math.inf):
            raise InvalidTask("malformed task message: heartbeat interval and progress deadline must be positive")
        return message
