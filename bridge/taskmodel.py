"""The task object Data Pipeline hands out, parsed into typed values (shared by poller and workers)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from bridge.errors import InvalidTask

# ASCII only: Unicode case folding would match "second" with a long s (U+017F), which is no key of _UNIT_S.
_PERIOD_RE = re.compile(r"\s*([0-9]{1,9})\s+(second|minute|hour|day|week)s?\s*", re.IGNORECASE | re.ASCII)
_UNIT_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def task_key(pipeline_id: str, attempt_id: str, task_id: str) -> str:
    """The short, readable identity of one hand-out (logs, Celery ids, lease keys)."""
    return f"{pipeline_id}:{attempt_id}:{hashlib.sha1(task_id.encode()).hexdigest()[:12]}"


def period_s(value: str | None) -> float | None:
    """A Period such as ``"20 minutes"`` or ``"20 seconds"`` in seconds; ``None`` if absent or unreadable."""
    if not value:
        return None
    match = _PERIOD_RE.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2).lower()]


@dataclass(frozen=True)
class Field:
    key: str
    value: str
    is_ref: bool = False


@dataclass(frozen=True)
class PipelineObject:
    """One pipeline object (attempt, data node, database...) with its fields in order."""

    id: str
    name: str
    fields: tuple[Field, ...]

    def get(self, key: str) -> str | None:
        """The first string value of ``key``."""
        return next((f.value for f in self.fields if f.key == key and not f.is_ref), None)

    def get_all(self, key: str) -> list[str]:
        """Every string value of a repeated field (e.g. ``scriptArgument``), in order."""
        return [f.value for f in self.fields if f.key == key and not f.is_ref]

    def ref(self, key: str) -> str | None:
        """The first object id ``key`` refers to."""
        return next((f.value for f in self.fields if f.key == key and f.is_ref), None)

    def refs(self, key: str) -> list[str]:
        """Every object id ``key`` refers to, in order."""
        return [f.value for f in self.fields if f.key == key and f.is_ref]

    @property
    def type(self) -> str | None:
        return self.get("type")


@dataclass(frozen=True)
class TaskObject:
    """A hand-out: the opaque ``task_id``, the attempt, and the objects that came with it."""

    task_id: str
    pipeline_id: str
    attempt_id: str
    objects: Mapping[str, PipelineObject]
    #: Values of every ``*`` field (e.g. ``*password``): masked wherever they could be printed.
    secrets: frozenset[str]

    @cached_property
    def key(self) -> str:
        """The lease's key (hashes the whole task id: computed once per task object)."""
        return task_key(self.pipeline_id, self.attempt_id, self.task_id)

    @property
    def attempt(self) -> PipelineObject:
        return self.objects[self.attempt_id]

    @property
    def object_type(self) -> str:
        return self.attempt.type or "Unknown"

    @property
    def component_id(self) -> str:
        return self.attempt.ref("@componentParent") or self.attempt.ref("parent") or self.attempt_id

    @property
    def instance_id(self) -> str:
        """The unit of exclusion: two attempts of one instance never run at once."""
        return self.attempt.ref("@instanceParent") or self.attempt_id

    @property
    def progress_deadline_s(self) -> float | None:
        return period_s(self.attempt.get("reportProgressTimeout"))

    @property
    def attempt_timeout_s(self) -> float | None:
        return period_s(self.attempt.get("attemptTimeout"))


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidTask(f"{what} is missing or not a string")
    if len(value) > limit:
        raise InvalidTask(f"{what} is longer than {limit} characters")
    return _unicode(value, what)


def _unicode(value: str, what: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape: Redis and log files refuse it
        raise InvalidTask(f"{what} is not valid Unicode") from exc
    return value


def parse_object(object_id: str, raw: Any) -> PipelineObject:
    """Parse one API-shape object (``{"id", "name", "fields"}``).

    Raises:
        InvalidTask: a malformed object or field.
    """
    if not isinstance(raw, Mapping):
        raise InvalidTask(f"object {object_id!r} is not a JSON object")
    raw_fields = raw.get("fields", [])
    if not isinstance(raw_fields, list):
        raise InvalidTask(f"object {object_id!r}: 'fields' is not a list")
    fields = []
    for entry in raw_fields:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str) or not entry["key"]:
            raise InvalidTask(f"object {object_id!r} has a field without a key")
        has_ref, has_str = "refValue" in entry, "stringValue" in entry
        if has_ref == has_str:
            raise InvalidTask(f"object {object_id!r}: field {entry['key']!r} needs exactly one of stringValue/refValue")
        value = entry["refValue"] if has_ref else entry["stringValue"]
        if not isinstance(value, str):
            raise InvalidTask(f"object {object_id!r}: field {entry['key']!r} is not a string")
        what = f"object {object_id!r}: field {entry['key']!r}"
        fields.append(Field(_unicode(entry["key"], what), _unicode(value, what), has_ref))
    name = raw.get("name", object_id)
    return PipelineObject(object_id, name if isinstance(name, str) else object_id, tuple(fields))


def parse_task_object(raw: Any) -> TaskObject:
    """Parse PollForTask's ``taskObject``.

    Raises:
        InvalidTask: anything malformed, with a message that says what.
    """
    if not isinstance(raw, Mapping):
        raise InvalidTask("the task object is not a JSON object")
    task_id = _text(raw.get("taskId"), "taskId", 2048)
    pipeline_id = _text(raw.get("pipelineId"), "pipelineId", 1024)
    attempt_id = _text(raw.get("attemptId"), "attemptId", 1024)
    raw_objects = raw.get("objects")
    if not isinstance(raw_objects, Mapping):
        raise InvalidTask("the task object has no 'objects' map")
    objects = {}
    for object_id, obj in raw_objects.items():
        if not isinstance(object_id, str):
            raise InvalidTask("an object id is not a string")
        _unicode(object_id, "an object id")
        objects[object_id] = parse_object(object_id, obj)
    if attempt_id not in objects:
        raise InvalidTask(f"the attempt object {attempt_id!r} is missing from 'objects'")
    secrets = frozenset(
        f.value for obj in objects.values() for f in obj.fields if f.key.startswith("*") and f.value and not f.is_ref
    )
    return TaskObject(task_id, pipeline_id, attempt_id, objects, secrets)
