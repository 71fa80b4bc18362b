"""Pipeline definition validation: what PutPipelineDefinition and ValidatePipelineDefinition report.

Objects arrive in the API shape (``{"id", "name", "fields": [{"key", "stringValue" | "refValue"}]}``)
and the result comes back in the API shape too (``validationErrors`` / ``validationWarnings``).
Every message starts with an upper-case code, in the style of the real service::

    DUPLICATE_OBJECT_ID  MISSING_REQUIRED_FIELD  INVALID_FIELD_NAME  INVALID_FIELD_VALUE
    INVALID_OBJECT_REFERENCE  CONFLICTING_FIELDS  FORBIDDEN_FIELD  LIMIT_EXCEEDED
    INVALID_PARAMETER  INVALID_PARAMETER_VALUE  MISSING_PARAMETER_VALUE  UNDECLARED_PARAMETER
    (warnings only) UNKNOWN_OBJECT_TYPE  UNKNOWN_FIELD  IGNORED_FIELD

Expressions (``#{...}``) in string fields are checked without evaluating them: syntax, unknown
functions and argument types (``INVALID_FIELD_VALUE``), a ``#{myName}`` that is neither a
declared parameter nor a field of the object (``UNDECLARED_PARAMETER``), and ``node`` outside
actions and preconditions. References and ``scriptUri`` (which takes no parameters) are not
expressions.

Field values are only quoted back when the field is not encrypted (``*password``) and the
parameter is not masked (``*myPassword``), so secrets never reach a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypedDict

from emulator.catalog import (
    KNOWN_FIELDS,
    PERIOD_FIELDS,
    REF_FIELDS,
    REF_TARGET_KINDS,
    RUNNER_FIELDS,
    RUNNER_KINDS,
    SINGLE_VALUED_FIELDS,
    Kind,
    kind_of,
    spec_of,
)
from emulator.definition import (
    DEFAULT_OBJECT_ID,
    EffectiveField,
    ParsedObjects,
    as_text,
    effective_of,
    own_fields,
    parent_of,
    type_of,
)
from emulator.expressions import check as check_expression
from emulator.expressions import names
from emulator.periods import Period, PeriodUnit, parse_datetime, parse_period

PARAMETER_TYPES = ("String", "Integer", "Double", "AWS::S3::ObjectKey")

_MIN_SCHEDULE_PERIOD = Period(15, PeriodUnit.MINUTES)
_MAX_SCHEDULE_PERIOD = Period(3, PeriodUnit.YEARS)
_MIN_RETRY_DELAY = Period(2, PeriodUnit.MINUTES)
_ENUMS = {
    "scheduleType": ("cron", "timeseries", "ondemand"),
    "failureAndRerunMode": ("none", "cascade"),
    "startAt": ("first_activation_date_time",),
}
# Fields the service reads as plain strings, so a refValue there is a mistake.
_STRING_FIELDS = SINGLE_VALUED_FIELDS - REF_FIELDS
_USER_FIELD_RE = re.compile(r"my[A-Z_]")
#: String fields whose ``#{...}`` is not an expression (AWS: "scriptUri" takes no parameters).
NOT_EXPRESSIONS = frozenset({"scriptUri"})
#: Kinds of object in which ``#{node...}`` means something.
_NODE_KINDS = frozenset({Kind.ACTION, Kind.RUNNER_PRECONDITION, Kind.SYSTEM_PRECONDITION})
_INTEGER_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DOUBLE_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


@dataclass(frozen=True)
class Limits:
    """The service limits a definition is held to (Developer Guide, "AWS Data Pipeline Limits")."""

    objects_per_pipeline: int = 100
    fields_per_object: int = 50
    bytes_per_field: int = 10240
    bytes_per_object: int = 15360
    bytes_per_name: int = 256
    max_retries: int = 5
    parameters: int = 50


class ObjectErrors(TypedDict):
    """One entry of ``validationErrors``."""

    id: str
    errors: list[str]


class ObjectWarnings(TypedDict):
    """One entry of ``validationWarnings``."""

    id: str
    warnings: list[str]


@dataclass(frozen=True)
class ValidationResult:
    """Errors and warnings per object id, in the API's output shape."""

    errors: list[ObjectErrors]
    warnings: list[ObjectWarnings]

    @property
    def errored(self) -> bool:
        """Whether the definition has errors (the API's ``errored`` flag)."""
        return bool(self.errors)


# --- Validation -------------------------------------------------------------------------------


class _Report:
    """Collects messages per id, first-seen order, without duplicates."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}
        self.warnings: dict[str, list[str]] = {}

    def error(self, object_id: str, message: str) -> None:
        messages = self.errors.setdefault(object_id, [])
        if message not in messages:
            messages.append(message)

    def warn(self, object_id: str, message: str) -> None:
        messages = self.warnings.setdefault(object_id, [])
        if message not in messages:
            messages.append(message)

    def result(self) -> ValidationResult:
        return ValidationResult(
            errors=[ObjectErrors(id=i, errors=m) for i, m in self.errors.items()],
            warnings=[ObjectWarnings(id=i, warnings=m) for i, m in self.warnings.items()],
        )


@dataclass(frozen=True)
class _Definition:
    own: ParsedObjects  # first object per id
    parent_targets: frozenset[str]
    ondemand: bool  # Default's scheduleType is ondemand
    limits: Limits
    types: dict[str, str | None]  # memo of type_of
    parameters: frozenset[str]  # declared parameter ids, without their '*'
    keys: dict[str, frozenset[str]]  # memo of field_keys

    def field_keys(self, object_id: str) -> frozenset[str]:
        """Keys of the object's own and inherited fields."""
        if object_id not in self.keys:
            self.keys[object_id] = frozenset(f.key for f in effective_of(self.own, object_id))
        return self.keys[object_id]

    def type_of(self, object_id: str) -> str | None:
        if object_id not in self.types:
            self.types[object_id] = type_of(self.own, object_id)
        return self.types[object_id]

    def kind(self, object_id: str) -> Kind | None:
        type_name = self.type_of(object_id)
        return kind_of(type_name) if type_name is not None else None


def validate_definition(
    objects: Sequence[Mapping[str, Any]],
    parameter_objects: Sequence[Mapping[str, Any]],
    parameter_values: Sequence[Mapping[str, Any]],
    limits: Limits | None = None,
) -> ValidationResult:
    """Validate a pipeline definition as the service does; never raises on malformed content.

    Args:
        objects: Pipeline objects in the API shape; keys may repeat for multi-valued fields.
        parameter_objects: ``[{"id", "attributes": [{"key", "stringValue"}]}]``.
        parameter_values: ``[{"id", "stringValue"}]``; an ``isArray`` parameter may repeat its id.
        limits: The limits to enforce; the AWS defaults when omitted.
    """
    limits = limits if limits is not None else Limits()
    report = _Report()
    objects = [o for o in objects if isinstance(o, Mapping)]
    by_id: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        by_id.setdefault(as_text(obj.get("id")), obj)
    own = ParsedObjects(by_id)
    defn = _Definition(
        own=own,
        parent_targets=frozenset(f.value for o in objects for f in own_fields(o) if f.key == "parent" and f.is_ref),
        ondemand=any(f.key == "scheduleType" and f.value.lower() == "ondemand" for f in own.get(DEFAULT_OBJECT_ID, [])),
        limits=limits,
        types={},
        parameters=frozenset(
            as_text(p.get("id")).removeprefix("*") for p in parameter_objects if isinstance(p, Mapping)
        ),
        keys={},
    )
    if len(objects) > limits.objects_per_pipeline:
        message = (
            f"LIMIT_EXCEEDED: the pipeline has {len(objects)} objects; the limit is {limits.objects_per_pipeline}."
        )
        report.error(as_text(objects[limits.objects_per_pipeline].get("id")), message)
    counts: dict[str, int] = {}
    for obj in objects:
        object_id = as_text(obj.get("id"))
        counts[object_id] = counts.get(object_id, 0) + 1
        fields = own_fields(obj)
        _check_sizes(object_id, fields, limits, report)
        for field in fields:
            _check_field(object_id, field, defn, report)
        for key in dict.fromkeys(f.key for f in fields if f.key.lstrip("*") in SINGLE_VALUED_FIELDS):
            if sum(f.key == key for f in fields) > 1:
                report.error(object_id, f"INVALID_FIELD_VALUE: '{key}' may have only one value.")
        _check_dates_in_order(object_id, fields, report)
    for object_id, count in counts.items():
        if count > 1:
            report.error(object_id, f"DUPLICATE_OBJECT_ID: {count} objects have the id '{object_id}'.")
    for object_id in by_id:
        _check_structure(object_id, defn, report)
    referenced = {
        name.removeprefix("*")
        for obj in objects
        for field in own_fields(obj)
        if not field.is_ref and field.key not in NOT_EXPRESSIONS
        for name in names(field.value)
    }
    _check_parameters(parameter_objects, parameter_values, referenced, limits, report)
    return report.result()


def _shown(key: str, value: str) -> str:
    return "(hidden)" if key.startswith("*") else repr(value)


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_sizes(object_id: str, fields: list[EffectiveField], limits: Limits, report: _Report) -> None:
    err = partial(report.error, object_id)
    if _size(object_id) > limits.bytes_per_name:
        err(f"LIMIT_EXCEEDED: the object id is over {limits.bytes_per_name} UTF-8 bytes.")
    if len(fields) > limits.fields_per_object:
        err(f"LIMIT_EXCEEDED: the object has {len(fields)} fields; the limit is {limits.fields_per_object}.")
    for field in fields:
        if _size(field.key) > limits.bytes_per_name:
            err(f"LIMIT_EXCEEDED: field name '{field.key[:40]}...' is over {limits.bytes_per_name} UTF-8 bytes.")
        value_limit = limits.bytes_per_name if field.is_ref else limits.bytes_per_field
        if _size(field.value) > value_limit:
            err(f"LIMIT_EXCEEDED: the value of '{field.key[:40]}' is over {value_limit} UTF-8 bytes.")
    total = sum(_size(field.key) + _size(field.value) for field in fields)
    if total > limits.bytes_per_object:
        err(f"LIMIT_EXCEEDED: the object is {total} UTF-8 bytes; the limit is {limits.bytes_per_object}.")


def _check_field(object_id: str, field: EffectiveField, defn: _Definition, report: _Report) -> None:
    key, value = field.key, field.value
    name = key[1:] if key.startswith("*") else key
    if not name:
        report.error(object_id, "INVALID_FIELD_NAME: field names must not be empty.")
        return
    if name not in KNOWN_FIELDS and not _USER_FIELD_RE.match(name):
        hint = " (user-defined fields start with 'my' and an upper-case letter or '_')" if name.startswith("my") else ""
        report.warn(object_id, f"UNKNOWN_FIELD: '{key}' is not a known field{hint}.")
    if field.is_ref:
        _check_reference(object_id, name, value, defn, report)
    elif name in REF_FIELDS:
        report.error(object_id, f"INVALID_FIELD_VALUE: '{key}' must be a reference to an object, not a string value.")
    elif "#{" in value:  # evaluated at run time; only what can be known now is checked
        _check_expressions(object_id, key, value, defn, report)
    else:
        _check_literal(object_id, key, name, value, defn, report)


def _check_reference(object_id: str, name: str, target: str, defn: _Definition, report: _Report) -> None:
    err = partial(report.error, object_id)
    if name in _STRING_FIELDS:
        err(f"INVALID_FIELD_VALUE: '{name}' must be a string value, not a reference.")
    elif target not in defn.own:
        note = " (references are not evaluated as expressions)" if "#{" in target else ""
        err(f"INVALID_OBJECT_REFERENCE: '{name}' refers to missing object '{target}'{note}.")
    elif name in REF_TARGET_KINDS:
        kind, allowed = defn.kind(target), REF_TARGET_KINDS[name]
        if kind is not None and kind not in allowed:
            expected = " or ".join(sorted(k.value for k in allowed))
            err(f"INVALID_OBJECT_REFERENCE: '{name}' refers to '{target}', a {kind.value}; expected a {expected}.")


def _check_expressions(object_id: str, key: str, value: str, defn: _Definition, report: _Report) -> None:
    if key in NOT_EXPRESSIONS:
        return
    problems = check_expression(value)
    for problem in problems:
        detail = "(details hidden: encrypted field)" if key.startswith("*") else problem
        report.error(object_id, f"INVALID_FIELD_VALUE: '{key}' has an invalid expression: {detail}.")
    if problems:
        return
    for name in names(value):
        shown = "a name" if key.startswith("*") else f"'{name}'"
        head = name.partition(".")[0]
        if head == "node":
            kind = defn.kind(object_id)
            if kind is not None and kind not in _NODE_KINDS:
                report.error(
                    object_id,
                    f"INVALID_FIELD_VALUE: '{key}' uses {shown}, but 'node' exists only in actions and preconditions.",
                )
            continue
        bare = name.removeprefix("*")
        if "." in name or name.startswith("@") or name == "name" or bare in defn.parameters:
            continue
        if name in defn.field_keys(object_id):
            continue
        if bare.startswith("my"):
            report.error(
                object_id,
                f"UNDECLARED_PARAMETER: '{key}' uses {shown}, which is neither a declared parameter"
                f" nor a field of '{object_id}'.",
            )
        else:
            report.warn(
                object_id,
                f"UNKNOWN_FIELD: '{key}' uses {shown}, which is neither a field of '{object_id}'"
                " nor a parameter; evaluating it will fail.",
            )


def _check_literal(object_id: str, key: str, name: str, value: str, defn: _Definition, report: _Report) -> None:
    err = partial(report.error, object_id)
    if name in PERIOD_FIELDS:
        try:
            seconds = parse_period(value).seconds()
        except ValueError as exc:
            detail = "" if key.startswith("*") else f": {exc}"
            err(f"INVALID_FIELD_VALUE: '{key}' value must be a period such as '15 minutes'{detail}.")
            return
        if name == "period" and not _MIN_SCHEDULE_PERIOD.seconds() <= seconds <= _MAX_SCHEDULE_PERIOD.seconds():
            err(f"INVALID_FIELD_VALUE: 'period' must be from 15 minutes to 3 years, got '{value.strip()}'.")
        if name == "retryDelay" and seconds < _MIN_RETRY_DELAY.seconds():
            err(f"INVALID_FIELD_VALUE: 'retryDelay' must be at least 2 minutes, got '{value.strip()}'.")
    elif name in ("startDateTime", "endDateTime"):
        try:
            parse_datetime(value)
        except ValueError:
            err(f"INVALID_FIELD_VALUE: '{key}' value must be a literal datetime value.")
    elif name == "maximumRetries":
        retries = _small_int(value)
        if retries is None or not 0 <= retries <= defn.limits.max_retries:
            err(f"INVALID_FIELD_VALUE: 'maximumRetries' must be an integer from 0 to {defn.limits.max_retries}.")
    elif name == "occurrences":
        occurrences = _small_int(value)
        if occurrences is None or occurrences < 1:
            err("INVALID_FIELD_VALUE: 'occurrences' must be a positive integer.")
    elif name in _ENUMS:
        allowed, lowered = _ENUMS[name], value.lower()
        if lowered not in allowed:
            choices = ", ".join(a.upper() if name == "startAt" else a for a in allowed)
            err(f"INVALID_FIELD_VALUE: '{key}' value {_shown(key, value)} must be one of: {choices}.")
        elif name == "scheduleType" and object_id != DEFAULT_OBJECT_ID and defn.ondemand != (lowered == "ondemand"):
            err("INVALID_FIELD_VALUE: 'scheduleType' ondemand is set on Default, and then on every object or none.")


def _small_int(value: str) -> int | None:
    # The length cap keeps int() clear of Python's limit on digits in a string.
    return int(value) if len(value) <= 18 and _INTEGER_RE.fullmatch(value) else None


def _check_dates_in_order(object_id: str, fields: list[EffectiveField], report: _Report) -> None:
    dates = {}
    for field in fields:
        if field.key in ("startDateTime", "endDateTime") and not field.is_ref:
            try:
                dates[field.key] = parse_datetime(field.value)
            except ValueError:
                return
    if len(dates) == 2 and dates["endDateTime"] <= dates["startDateTime"]:
        report.error(object_id, "INVALID_FIELD_VALUE: 'endDateTime' must be later than 'startDateTime'.")


def _check_structure(object_id: str, defn: _Definition, report: _Report) -> None:
    err, warn = partial(report.error, object_id), partial(report.warn, object_id)
    cycle = _parent_cycle(defn.own, object_id)
    if cycle:
        err(f"INVALID_OBJECT_REFERENCE: 'parent' chain is circular: {' -> '.join(cycle)}.")
    type_name = defn.type_of(object_id)
    if type_name is None:
        # An object that only serves as a parent may stay abstract (Developer Guide, schedule example).
        if object_id != DEFAULT_OBJECT_ID and object_id not in defn.parent_targets:
            err("MISSING_REQUIRED_FIELD: 'type' is required.")
        return
    spec = spec_of(type_name)
    if spec is None:
        warn(f"UNKNOWN_OBJECT_TYPE: '{type_name}' is not a known object type; its fields are not checked.")
        return
    present = {f.key.lstrip("*") for f in effective_of(defn.own, object_id)}
    own = {f.key for f in defn.own[object_id]}
    for name in spec.required:
        if name.lstrip("*") not in present:
            err(f"MISSING_REQUIRED_FIELD: '{name}' is required for {type_name}.")
    for group in spec.one_of:
        if not present.intersection(group):
            err(f"MISSING_REQUIRED_FIELD: one of {_names(group)} is required for {type_name}.")
    for group in spec.exclusive:
        if len(present.intersection(group)) > 1:
            err(f"CONFLICTING_FIELDS: only one of {_names(group)} may be set for {type_name}.")
    for name in spec.forbidden:
        if name in own:
            err(f"FORBIDDEN_FIELD: '{name}' is not allowed on {type_name}.")
    if spec.kind in RUNNER_KINDS:
        if not present.intersection(RUNNER_FIELDS):
            message = f"MISSING_REQUIRED_FIELD: one of {_names(RUNNER_FIELDS)} is required for {type_name}"
            if spec.kind is Kind.ACTIVITY:
                err(message + ".")
            else:
                warn(message + " unless the activity that uses it provides a worker group.")
        if own.issuperset(RUNNER_FIELDS):
            warn("IGNORED_FIELD: workerGroup is ignored when runsOn is set.")


def _names(group: Sequence[str]) -> str:
    return " or ".join(f"'{name}'" for name in group)


def _parent_cycle(own: Mapping[str, Sequence[EffectiveField]], object_id: str) -> list[str]:
    path = [object_id]
    current = parent_of(own[object_id])
    while current is not None and current in own and current not in path:
        path.append(current)
        current = parent_of(own[current])
    return [*path, object_id] if current == object_id else []


# --- Parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parameter:
    id: str
    type: str
    optional: bool
    is_array: bool
    defaults: tuple[str, ...]
    allowed: tuple[str, ...]


def _check_parameters(
    parameter_objects: Sequence[Mapping[str, Any]],
    parameter_values: Sequence[Mapping[str, Any]],
    referenced: set[str],
    limits: Limits,
    report: _Report,
) -> None:
    parameter_objects = [p for p in parameter_objects if isinstance(p, Mapping)]
    if len(parameter_objects) > limits.parameters:
        count = len(parameter_objects)
        message = f"LIMIT_EXCEEDED: the definition has {count} parameters; the limit is {limits.parameters}."
        report.error(as_text(parameter_objects[limits.parameters].get("id")), message)
    declared: dict[str, _Parameter] = {}
    for raw in parameter_objects:
        parameter = _declare_parameter(raw, limits, report)
        name = parameter.id.removeprefix("*")
        if name in declared:
            report.error(parameter.id, f"INVALID_PARAMETER: parameter '{parameter.id}' is declared more than once.")
            continue
        declared[name] = parameter
        for value in parameter.defaults:
            _check_parameter_value(parameter, value, "default", limits, report)
    given: dict[str, list[str]] = {}
    for raw in (v for v in parameter_values if isinstance(v, Mapping)):
        value_id = as_text(raw.get("id"))
        if value_id.removeprefix("*") not in declared:
            report.error(value_id, f"UNDECLARED_PARAMETER: '{value_id}' has a value but is not a declared parameter.")
            continue
        given.setdefault(value_id.removeprefix("*"), []).append(as_text(raw.get("stringValue")))
    for name, parameter in declared.items():
        err = partial(report.error, parameter.id)
        values = given.get(name, [])
        if len(values) > 1 and not parameter.is_array:
            err(
                f"INVALID_PARAMETER_VALUE: '{parameter.id}' takes one value, not {len(values)}, unless isArray is true."
            )
        for value in values:
            _check_parameter_value(parameter, value, "value", limits, report)
        has_value = any(v != "" for v in values) or any(v != "" for v in parameter.defaults)
        if name in referenced and not parameter.optional and not has_value:
            err(f"MISSING_PARAMETER_VALUE: '{parameter.id}' is used by the definition but has no value and no default.")


def _declare_parameter(raw: Mapping[str, Any], limits: Limits, report: _Report) -> _Parameter:
    parameter_id = as_text(raw.get("id"))
    err = partial(report.error, parameter_id)
    attributes: dict[str, list[str]] = {}
    entries = raw.get("attributes")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping):
            attributes.setdefault(as_text(entry.get("key")), []).append(as_text(entry.get("stringValue")))
    if not parameter_id.removeprefix("*").startswith("my"):
        err(f"INVALID_PARAMETER: parameter id '{parameter_id}' must start with 'my' (or '*my' when masked).")
    if _size(parameter_id) > limits.bytes_per_name:
        err(f"LIMIT_EXCEEDED: the parameter id is over {limits.bytes_per_name} UTF-8 bytes.")
    flags = {}
    for flag in ("type", "optional", "isArray"):
        if len(attributes.get(flag, [])) > 1:
            err(f"INVALID_PARAMETER: attribute '{flag}' may have only one value.")
        flags[flag] = attributes.get(flag, [""])[0]
    parameter_type = flags["type"] or "String"
    if parameter_type not in PARAMETER_TYPES:
        err(f"INVALID_PARAMETER: 'type' must be one of {', '.join(PARAMETER_TYPES)}.")
    for flag in ("optional", "isArray"):
        if flags[flag].lower() not in ("", "true", "false"):
            err(f"INVALID_PARAMETER: '{flag}' must be true or false.")
    parameter = _Parameter(
        id=parameter_id,
        type=parameter_type,
        optional=flags["optional"].lower() == "true",
        is_array=flags["isArray"].lower() == "true",
        defaults=tuple(attributes.get("default", [])),
        allowed=tuple(attributes.get("allowedValues", [])),
    )
    if len(parameter.defaults) > 1 and not parameter.is_array:
        err("INVALID_PARAMETER: only an isArray parameter may have several defaults.")
    return parameter


def _check_parameter_value(parameter: _Parameter, value: str, what: str, limits: Limits, report: _Report) -> None:
    err = partial(report.error, parameter.id)
    subject = f"the {what} {_shown(parameter.id, value)} of '{parameter.id}'"
    if _size(value) > limits.bytes_per_field:
        err(f"LIMIT_EXCEEDED: a {what} of '{parameter.id}' is over {limits.bytes_per_field} UTF-8 bytes.")
        return
    if value == "":
        return
    if parameter.type == "Integer" and not _INTEGER_RE.fullmatch(value):
        err(f"INVALID_PARAMETER_VALUE: {subject} is not an Integer.")
    elif parameter.type == "Double" and not (_DOUBLE_RE.fullmatch(value) and math.isfinite(float(value))):
        err(f"INVALID_PARAMETER_VALUE: {subject} is not a Double.")
    elif parameter.type == "AWS::S3::ObjectKey" and not value.startswith("s3://"):
        report.warn(parameter.id, f"INVALID_PARAMETER_VALUE: {subject} is not an s3:// URI.")
    if parameter.allowed and value not in parameter.allowed:
        err(f"INVALID_PARAMETER_VALUE: {subject} is not one of its allowedValues.")
    if not parameter.id.startswith("*"):  # a masked value is used as it is, never evaluated
        for problem in check_expression(value):
            err(f"INVALID_PARAMETER_VALUE: {subject} has an invalid expression: {problem}.")
