"""How records look through the API: DescribeObjects fields, task objects, QueryObjects matching."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from emulator.clock import stamp
from emulator.config import TaskObjects
from emulator.definition import effective_fields
from emulator.errors import InvalidRequestException
from emulator.expressions import ExpressionError
from emulator.lifecycle import TASK_REFS
from emulator.model import Attempt, Field, Instance, Pipeline, PipelineState, Status
from emulator.state import State


class Evaluator(Protocol):
    """Evaluates the ``#{...}`` expressions of field values in the context of one object."""

    def expand(self, text: str) -> list[str]:
        """One field value evaluated: one value, or one per element of an array it uses.

        Raises:
            ExpressionError: an expression cannot be evaluated.
        """
        ...


#: Fields that are never evaluated: ``scriptUri`` takes no parameters (AWS: the script at that
#: URI is the runner's to evaluate, through EvaluateExpression), and what a runner reported is text.
NOT_EVALUATED = frozenset(
    {"scriptUri", "hostname", "reportProgressTime", "attemptStatus", "errorId", "errorMessage", "errorStackTrace"}
)

TIME_FIELDS = ("@scheduledStartTime", "@scheduledEndTime", "@actualStartTime", "@actualEndTime")
QUERYABLE = frozenset({"name", "@sphere", "parent", "@componentParent", "@instanceParent", "@status", *TIME_FIELDS})


def api_fields(fields: list[Field]) -> list[dict[str, str]]:
    """Fields in the API's ``[{"key", "stringValue" | "refValue"}]`` shape."""
    return [{"key": k, "refValue" if ref else "stringValue": v} for k, v, ref in fields]


def _time(value: float | None) -> str | None:
    return stamp(value) if value is not None else None


def _runtime(pairs: list[tuple[str, str | None, bool]]) -> list[Field]:
    return [Field(k, v, ref) for k, v, ref in pairs if v is not None]


def _user_fields(fields: list[Field]) -> list[Field]:
    return [f for f in fields if f[0] != "parent" and not f[0].startswith("@")]


def component_fields(pipeline: Pipeline, objects_by_id: dict[str, dict[str, Any]], object_id: str) -> list[Field]:
    """A component as DescribeObjects shows it: its own fields, ``parent`` (Default if unset), runtime fields."""
    own: list[Field] = [
        Field(f["key"], f.get("refValue", f.get("stringValue", "")), "refValue" in f)
        for f in objects_by_id[object_id].get("fields", [])
    ]
    if object_id != "Default" and not any(k == "parent" for k, _, _ in own) and "Default" in objects_by_id:
        own.append(Field("parent", "Default", True))
    status = "SCHEDULED" if pipeline.state == PipelineState.SCHEDULED else "PENDING"
    return own + _runtime(
        [
            ("@sphere", "COMPONENT", False),
            ("@version", str(pipeline.version), False),
            ("@status", status, False),
            ("@pipelineId", pipeline.pipeline_id, False),
        ]
    )


def instance_fields(state: State, instance: Instance) -> list[Field]:
    """An instance with its runtime fields (as the AWS CLI's ``list-runs`` reads them)."""
    waiting_on = [
        d
        for d in instance.depends_on
        if (dep := state.instances.get((instance.pipeline_id, d))) is not None and dep.status != Status.FINISHED
    ]
    max_retries = instance.first("maximumRetries")
    tries = int(max_retries) + 1 if max_retries and max_retries.isdigit() else state.config.default_maximum_retries + 1
    runtime = _runtime(
        [
            ("parent", instance.component_id, True),
            ("@componentParent", instance.component_id, True),
            ("@sphere", "INSTANCE", False),
            ("@status", str(instance.status), False),
            ("@scheduledStartTime", _time(instance.scheduled_start), False),
            ("@scheduledEndTime", _time(instance.scheduled_end), False),
            ("@actualStartTime", _time(instance.actual_start), False),
            ("@actualEndTime", _time(instance.actual_end), False),
            ("@attemptCount", str(instance.attempt_count), False),
            ("@triesLeft", str(max(0, tries - instance.failures)), False),
            ("@headAttempt", instance.head_attempt, True),
            ("@cascadeFailedOn", instance.cascade_failed_on, True),
            ("@version", "1", False),
            ("@pipelineId", instance.pipeline_id, False),
            ("errorId", instance.error_id, False),
            ("errorMessage", instance.error_message, False),
            ("errorStackTrace", instance.error_stack_trace, False),
        ]
    )
    return _user_fields(instance.fields) + runtime + [Field("@waitingOn", d, True) for d in waiting_on]


def attempt_fields(instance: Instance, attempt: Attempt) -> list[Field]:
    """An attempt: the instance's flattened fields plus the attempt's runtime fields."""
    return _user_fields(instance.fields) + _runtime(
        [
            ("parent", instance.component_id, True),
            ("@componentParent", instance.component_id, True),
            ("@instanceParent", instance.instance_id, True),
            ("@sphere", "ATTEMPT", False),
            ("@status", str(attempt.status), False),
            ("@version", "1", False),
            ("@scheduledStartTime", _time(instance.scheduled_start), False),
            ("@scheduledEndTime", _time(instance.scheduled_end), False),
            ("@actualStartTime", _time(attempt.actual_start), False),
            ("@actualEndTime", _time(attempt.actual_end), False),
            ("@attemptCount", str(attempt.number), False),
            ("@pipelineId", instance.pipeline_id, False),
            ("hostname", attempt.hostname, False),
            ("reportProgressTime", _time(attempt.report_progress_time), False),
            ("attemptStatus", attempt.attempt_status, False),
            ("errorId", attempt.error_id, False),
            ("errorMessage", attempt.error_message, False),
            ("errorStackTrace", attempt.error_stack_trace, False),
        ]
    )


def evaluated(
    fields: list[Field], evaluator: Evaluator | None, *, object_id: str = "", lenient: bool = False
) -> list[Field]:
    """Fields with their expressions evaluated; each value of a multi-valued field on its own.

    Refs, ``@`` fields and :data:`NOT_EVALUATED` fields are kept as they are. With ``lenient``, a
    value that cannot be evaluated is kept as written.

    Raises:
        ExpressionError: (unless ``lenient``) a value cannot be evaluated; the message names the
            field and ``object_id`` (and hides the details for an encrypted ``*`` field).
    """
    if evaluator is None:
        return fields
    out: list[Field] = []
    for key, value, is_ref in fields:
        if is_ref or key.startswith("@") or key in NOT_EVALUATED or "#{" not in value:
            out.append(Field(key, value, is_ref))
            continue
        try:
            out.extend(Field(key, text, False) for text in evaluator.expand(value))
        except ExpressionError as exc:
            if lenient:
                out.append(Field(key, value, is_ref))
                continue
            detail = "(details hidden: encrypted field)" if key.startswith("*") else str(exc)
            raise ExpressionError(f"cannot evaluate '{key}' of {object_id}: {detail}") from None
    return out


def task_object(
    state: State,
    pipeline: Pipeline,
    instance: Instance,
    attempt: Attempt,
    skeleton: dict[str, Any],
    evaluator_for: Callable[[str], Evaluator | None],
) -> dict[str, Any]:
    """The ``taskObject`` of a hand-out: the attempt, plus (unless attempt-only) every object it refers to.

    Raises:
        ExpressionError: a field value cannot be evaluated.
    """
    own = evaluated(attempt_fields(instance, attempt), evaluator_for(attempt.attempt_id), object_id=attempt.attempt_id)
    attempt_obj = {"id": attempt.attempt_id, "name": attempt.attempt_id, "fields": api_fields(own)}
    objects = {attempt.attempt_id: attempt_obj}
    if state.config.task_objects == TaskObjects.FULL:
        by_id = {obj["id"]: obj for obj in pipeline.active_objects or []}
        frontier = [v for k, v, ref in instance.fields if ref and k in TASK_REFS]
        for _depth in range(3):
            nxt: list[str] = []
            for ref_id in frontier:
                if ref_id in objects or ref_id not in by_id:
                    continue
                fields = effective_fields(by_id, ref_id)
                fields = [
                    *_user_fields(fields),
                    Field("@sphere", "COMPONENT", False),
                    Field("@pipelineId", pipeline.pipeline_id, False),
                ]
                fields = evaluated(fields, evaluator_for(ref_id), object_id=ref_id)
                objects[ref_id] = {
                    "id": ref_id,
                    "name": by_id[ref_id].get("name", ref_id),
                    "fields": api_fields(fields),
                }
                nxt += [v for k, v, ref in fields if ref and k in TASK_REFS]
            frontier = nxt
    return {**skeleton, "objects": objects}


# -- QueryObjects -------------------------------------------------------------------------------


def _values(fields: list[Field], name: str) -> list[str]:
    return [v for k, v, _ in fields if k == name]


def check_selectors(selectors: list[dict[str, Any]]) -> None:
    """Reject selectors AWS would not accept (unknown field or operator, wrong value count).

    Raises:
        InvalidRequestException: on a bad selector.
    """
    if len(selectors) > 10:
        raise InvalidRequestException("A query may have at most 10 selectors.")
    for sel in selectors:
        name = sel.get("fieldName")
        op = (sel.get("operator") or {}).get("type")
        values = (sel.get("operator") or {}).get("values") or []
        if name not in QUERYABLE:
            raise InvalidRequestException(
                f"Field {name!r} cannot be queried; queryable: {', '.join(sorted(QUERYABLE))}."
            )
        if op in ("LE", "GE", "BETWEEN") and name not in TIME_FIELDS:
            raise InvalidRequestException(f"Operator {op} applies only to time fields, not {name!r}.")
        if op not in ("EQ", "REF_EQ", "LE", "GE", "BETWEEN"):
            raise InvalidRequestException(f"Unknown operator type {op!r}.")
        if op == "BETWEEN" and len(values) != 2:
            raise InvalidRequestException("BETWEEN needs exactly two values.")
        if op in ("LE", "GE") and len(values) != 1:
            raise InvalidRequestException(f"{op} needs exactly one value.")
        if not values:
            raise InvalidRequestException(f"Selector on {name!r} has no values.")


def matches(fields: list[Field], object_name: str, selectors: list[dict[str, Any]]) -> bool:
    """Whether an object (rendered fields plus its name) satisfies every selector."""
    for sel in selectors:
        name = sel["fieldName"]
        op = sel["operator"]["type"]
        wanted = sel["operator"]["values"]
        have = [object_name] if name == "name" else _values(fields, name)
        if op in ("EQ", "REF_EQ"):
            ok = any(v in wanted for v in have)
        elif op == "LE":
            ok = any(v <= wanted[0] for v in have)
        elif op == "GE":
            ok = any(v >= wanted[0] for v in have)
        else:
            ok = any(wanted[0] <= v <= wanted[1] for v in have)
        if not ok:
            return False
    return True
