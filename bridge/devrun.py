"""What ``bridge dev`` does with definitions: load them, run each as a pipeline, follow the instances."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError
from emulator.definition import definition_file_to_api

WAITING = "WAITING_ON_DEPENDENCIES"
BLOCKED = "BLOCKED"
#: Final statuses that keep dependents waiting for ever (with failureAndRerunMode none).
FAILED_FINAL = frozenset({"FAILED", "CASCADE_FAILED", "CANCELED"})
#: Statuses after which nothing more happens to an instance in this run.
OVER = frozenset({"FINISHED", "SKIPPED", BLOCKED, *FAILED_FINAL})
_DESCRIBE_BATCH = 25  # DescribeObjects takes at most 25 ids


class DefinitionError(ConfigError):
    """A definition file cannot be read, or the service refused it; the message lists every problem."""


@dataclass(frozen=True)
class Definition:
    """One definition file, in the AWS CLI's format, with the worker group it needs set.

    Attributes:
        name: The pipeline name shown in progress lines (the file name without ``.json``).
        doc: The definition document (``Default`` gains ``workerGroup`` if nothing named a group).
        worker_groups: The groups its objects run on (``workerGroup`` values and ``runsOn`` refs).
        object_ids: Its objects' ids, in file order (for the final table).
    """

    name: str
    path: Path
    doc: dict[str, Any]
    worker_groups: tuple[str, ...]
    object_ids: tuple[str, ...]


def load_definitions(paths: Sequence[Path], default_group: str) -> list[Definition]:
    """Read definition files; one that names no worker group (and no ``runsOn``) gets ``default_group``.

    Raises:
        DefinitionError: a file is unreadable, not JSON, or not a definition.
    """
    definitions: list[Definition] = []
    names: Counter[str] = Counter()
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            definition_file_to_api(doc)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise DefinitionError(f"{path}: not a pipeline definition: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
            raise DefinitionError(f'{path}: not a pipeline definition: expected {{"objects": [...]}}')
        groups = worker_groups_of(doc["objects"])
        if not groups:
            doc = with_default_group(doc, default_group)
            groups = [default_group]
        names[path.stem] += 1
        name = path.stem if names[path.stem] == 1 else f"{path.stem}-{names[path.stem]}"
        ids = tuple(str(obj["id"]) for obj in doc["objects"])
        definitions.append(Definition(name, path, doc, tuple(groups), ids))
    return definitions


def worker_groups_of(objects: Iterable[dict[str, Any]]) -> list[str]:
    """Worker groups named by ``workerGroup`` fields and ``runsOn`` refs (a resource's id is its group)."""
    groups: list[str] = []
    for obj in objects:
        for value in _as_list(obj.get("workerGroup")):
            if isinstance(value, str) and value and value not in groups:
                groups.append(value)
        for value in _as_list(obj.get("runsOn")):
            ref = value.get("ref") if isinstance(value, dict) else None
            if isinstance(ref, str) and ref and ref not in groups:
                groups.append(ref)
    return groups


def with_default_group(doc: dict[str, Any], group: str) -> dict[str, Any]:
    """A copy of ``doc`` whose ``Default`` object (added if missing) has ``workerGroup: group``."""
    objects = [dict(obj) for obj in doc["objects"]]
    default = next((obj for obj in objects if obj.get("id") == "Default"), None)
    if default is None:
        objects.insert(0, {"id": "Default", "name": "Default", "workerGroup": group})
    else:
        default["workerGroup"] = group
    return {**doc, "objects": objects}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


@dataclass(frozen=True)
class Run:
    """A definition put into a pipeline of its own."""

    definition: Definition
    pipeline_id: str


def create_pipelines(client: Any, definitions: Sequence[Definition], warn: Callable[[str], None]) -> list[Run]:
    """Create one pipeline per definition and put the definition (not activated yet).

    Raises:
        DefinitionError: the service found validation errors (all of them are listed).
    """
    runs: list[Run] = []
    problems: list[str] = []
    for definition in definitions:
        objects, parameters, values = definition_file_to_api(definition.doc)
        pipeline_id = client.create_pipeline(name=definition.name, uniqueId=f"bridge-dev-{uuid.uuid4()}")["pipelineId"]
        reply = client.put_pipeline_definition(
            pipelineId=pipeline_id, pipelineObjects=objects, parameterObjects=parameters, parameterValues=values
        )
        for entry in reply.get("validationWarnings") or []:
            for message in entry.get("warnings") or []:
                warn(f"{definition.path}: {entry.get('id')}: warning: {message}")
        if reply.get("errored"):
            problems.append(f"{definition.path}: the definition has errors:")
            for entry in reply.get("validationErrors") or []:
                problems.extend(f"  {entry.get('id')}: {message}" for message in entry.get("errors") or [])
        runs.append(Run(definition, pipeline_id))
    if problems:
        raise DefinitionError("\n".join(problems))
    return runs


@dataclass(frozen=True)
class Row:
    """One instance as ``bridge dev`` shows it."""

    pipeline: str
    object_id: str
    status: str
    attempts: str
    error: str
    order: tuple[int, int]


class Progress:
    """Follows the instances of every run through DescribeObjects and reports status changes.

    Args:
        client: A boto3 Data Pipeline client.
        runs: The runs to follow, in display order.
    """

    def __init__(self, client: Any, runs: Sequence[Run]) -> None:
        self.client = client
        self.runs = list(runs)
        self.rows: dict[tuple[str, str], Row] = {}
        self._instance_ids: dict[str, list[str]] = {}

    def refresh(self) -> list[Row]:
        """Read every instance once; returns the rows whose status changed (new ones included)."""
        changed = []
        for index, run in enumerate(self.runs):
            for instance_id, row in self._read(index, run).items():
                key = (run.pipeline_id, instance_id)
                previous = self.rows.get(key)
                self.rows[key] = row
                if previous is None or previous.status != row.status:
                    changed.append(row)
        return changed

    def over(self) -> bool:
        """Whether every run has instances and each of them is final or blocked."""
        return all(self._instance_ids.get(run.pipeline_id) for run in self.runs) and all(
            row.status in OVER for row in self.rows.values()
        )

    def all_finished(self) -> bool:
        return bool(self.rows) and self.over() and all(row.status == "FINISHED" for row in self.rows.values())

    def sorted_rows(self) -> list[Row]:
        return sorted(self.rows.values(), key=lambda row: row.order)

    def _read(self, index: int, run: Run) -> dict[str, Row]:
        ids = self._instance_ids.get(run.pipeline_id)
        if not ids:  # on-demand instances all exist once activation is done
            ids = []
            for page in self.client.get_paginator("query_objects").paginate(
                pipelineId=run.pipeline_id, sphere="INSTANCE"
            ):
                ids.extend(page.get("ids") or [])
            self._instance_ids[run.pipeline_id] = ids
        instances: dict[str, dict[str, list[str]]] = {}
        for start in range(0, len(ids), _DESCRIBE_BATCH):
            reply = self.client.describe_objects(
                pipelineId=run.pipeline_id, objectIds=ids[start : start + _DESCRIBE_BATCH]
            )
            for obj in reply.get("pipelineObjects") or []:
                instances[obj["id"]] = _fields(obj)
        statuses = display_statuses(instances)
        position = {object_id: i for i, object_id in enumerate(run.definition.object_ids)}
        rows = {}
        for instance_id, fields in instances.items():
            component = _first(fields, "@componentParent") or instance_id
            error = ": ".join(filter(None, (_first(fields, "errorId"), _gist(_first(fields, "errorMessage")))))
            rows[instance_id] = Row(
                pipeline=run.definition.name,
                object_id=component,
                status=statuses[instance_id],
                attempts=_first(fields, "@attemptCount"),
                error=error if statuses[instance_id] != "FINISHED" else "",
                order=(index, position.get(component, len(position))),
            )
        return rows


def display_statuses(instances: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """Each instance's ``@status``; one waiting on a failed dependency (even through others) is ``BLOCKED``."""
    memo: dict[str, bool] = {}

    def dead(instance_id: str, seen: frozenset[str]) -> bool:
        if instance_id in memo:
            return memo[instance_id]
        fields = instances.get(instance_id)
        if fields is None or instance_id in seen:
            return False
        status = _first(fields, "@status")
        result = status in FAILED_FINAL or (
            status == WAITING and any(dead(dep, seen | {instance_id}) for dep in fields.get("@waitingOn", []))
        )
        memo[instance_id] = result
        return result

    out = {}
    for instance_id, fields in instances.items():
        status = _first(fields, "@status")
        out[instance_id] = BLOCKED if status == WAITING and dead(instance_id, frozenset()) else status
    return out


def _gist(message: str) -> str:
    """A message's first line, and its last one when there are more (a command's last words on stderr)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)


def _fields(obj: dict[str, Any]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = defaultdict(list)
    for field in obj.get("fields") or []:
        fields[field["key"]].append(str(field.get("stringValue", field.get("refValue", ""))))
    return fields


def _first(fields: dict[str, list[str]], key: str) -> str:
    values = fields.get(key)
    return values[0] if values else ""


def table(rows: Sequence[Row]) -> list[str]:
    """The final table: pipeline, object, status, attempts, error."""
    header = ("PIPELINE", "OBJECT", "STATUS", "ATTEMPTS", "ERROR")
    cells = [header, *((r.pipeline, r.object_id, r.status, r.attempts, _clip(r.error, 80)) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in cells]


def summary(rows: Sequence[Row]) -> str:
    """``6 instances: 4 FINISHED, 1 FAILED, 1 BLOCKED``."""
    counts = Counter(row.status for row in rows)
    parts = ", ".join(f"{count} {status}" for status, count in counts.most_common())
    return f"{len(rows)} instance{'s' if len(rows) != 1 else ''}: {parts or 'none'}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
