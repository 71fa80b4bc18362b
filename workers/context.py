"""What a handler gets: the task, its objects, a work directory, cancellation, and how to report."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bridge.api import TaskApi
from bridge.errors import InvalidTask, RemoteError
from bridge.settings import Settings
from bridge.taskmodel import PipelineObject, TaskObject, parse_object

_UNSAFE = re.compile(r"[^A-Za-z0-9._=@-]+")


class TaskStatus(StrEnum):
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    FALSE = "FALSE"


@dataclass(frozen=True)
class Outcome:
    """How a task ends; sent as SetTaskStatus."""

    status: TaskStatus
    error_id: str | None = None
    error_message: str | None = None
    error_stack_trace: str | None = None

    @classmethod
    def finished(cls) -> Outcome:
        return cls(TaskStatus.FINISHED)

    @classmethod
    def failed(cls, error_id: str, message: str, stack_trace: str | None = None) -> Outcome:
        return cls(TaskStatus.FAILED, error_id, message, stack_trace)


def safe_name(text: str) -> str:
    """A file-system-safe version of an id."""
    return _UNSAFE.sub("_", text)[:200] or "_"


@dataclass
class TaskContext:
    """One running attempt, as a handler sees it.

    Attributes:
        task: The parsed task object.
        settings: Worker settings.
        api: The Data Pipeline client (for DescribeObjects / EvaluateExpression).
        work_dir: A directory of this attempt's own.
        cancel: Set when Data Pipeline canceled the task or it was lost; stop promptly.
        log: A logger adapter whose lines carry the task key.
    """

    task: TaskObject
    settings: Settings
    api: TaskApi
    work_dir: Path
    cancel: threading.Event
    log: logging.LoggerAdapter[logging.Logger]
    cancel_reason: str = ""
    _resolved: dict[str, PipelineObject] = field(default_factory=dict)

    @property
    def attempt(self) -> PipelineObject:
        return self.task.attempt

    def resolve(self, object_id: str) -> PipelineObject:
        """A referenced object: from the task, else fetched once with DescribeObjects (evaluated).

        Raises:
            InvalidTask: the object does not exist or cannot be fetched.
        """
        found = self.task.objects.get(object_id) or self._resolved.get(object_id)
        if found is not None:
            return found
        try:
            objects = self.api.describe_objects(self.task.pipeline_id, [object_id], evaluate_expressions=True)
        except RemoteError as exc:
            raise InvalidTask(f"cannot fetch referenced object {object_id!r}: {exc}") from exc
        raw: Any = next((o for o in objects if o.get("id") == object_id), None)
        if raw is None:
            raise InvalidTask(f"referenced object {object_id!r} does not exist in pipeline {self.task.pipeline_id}")
        obj = parse_object(object_id, raw)
        self._resolved[object_id] = obj
        return obj

    def ref(self, key: str, *, required: bool = True) -> PipelineObject | None:
        """The object the attempt's ``key`` field refers to.

        Raises:
            InvalidTask: ``required`` and the field is missing or the object cannot be found.
        """
        object_id = self.attempt.ref(key)
        if object_id is None:
            if required:
                raise InvalidTask(f"{self.task.object_type} needs '{key}'")
            return None
        return self.resolve(object_id)
