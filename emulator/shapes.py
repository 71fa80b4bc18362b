"""Validate request bodies against botocore's copy of the Data Pipeline service model.

The real service checks every request against the operation's input shape before any
handler runs and answers ``InvalidRequestException`` listing each failure by member path.
This module does the same, so handlers only ever see well-formed input. Where the service
is known to differ from the model, ``LIMIT_OVERRIDES`` says so.
"""

from __future__ import annotations

import functools
import math
import re
import reprlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, cast

from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from emulator.errors import InvalidRequestException, SerializationException, UnknownOperationException

#: Constraints that replace the model's, keyed by (operation, member path without indexes).
LIMIT_OVERRIDES: Final[Mapping[tuple[str, str], Mapping[str, Any]]] = {
    # The model sets no max and its docs say 25, but the AWS CLI's `list-runs` sends 100 ids per call
    # (awscli.customizations.datapipeline.MAX_ITEMS_PER_DESCRIBE: "will only accept 100 objectIds at a time").
    ("DescribeObjects", "objectIds"): {"max": 100},
    # A plain string in the model; its documentation names the only values the service takes.
    ("QueryObjects", "sphere"): {"enum": ["COMPONENT", "INSTANCE", "ATTEMPT"]},
}

#: AWS truncates long validation messages; so do we, so a huge bad request stays cheap to answer.
MAX_MESSAGE_CHARS: Final = 2000
_PREVIEW_CHARS: Final = 50

# Every `pattern` in this model is the same XML-character class
# ([\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\r\n\t]*, in Java regex syntax), so rather than
# translate Java regexes we check its meaning: no C0 control character except tab, LF and CR, no lone
# surrogate (json.loads leaves only unpaired ones), and not U+FFFE/U+FFFF.
_FORBIDDEN_CHAR: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: Accepted Python types (after json.loads) and how a type failure reads, per model type.
_TYPES: Final[Mapping[str, tuple[tuple[type, ...], str]]] = {
    "structure": ((dict,), "an object"),
    "map": ((dict,), "an object"),
    "list": ((list,), "a list"),
    "string": ((str,), "a string"),
    "blob": ((str,), "a base64 string"),
    "boolean": ((bool,), "a boolean"),
    "integer": ((int,), "an integer"),
    "long": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "double": ((int, float), "a number"),
    "timestamp": ((int, float, str), "a timestamp (epoch seconds or ISO 8601)"),
}
_INT_BOUNDS: Final[Mapping[str, tuple[int, int]]] = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_INDEX: Final = re.compile(r"\.\d+\.member")  # 'a.3.member.b' -> 'a.member.b', the key into LIMIT_OVERRIDES.


@functools.cache
def _service_model() -> ServiceModel:
    return ServiceModel(Loader().load_service_model("datapipeline", "service-2"))


@functools.cache
def operation_names() -> frozenset[str]:
    """The Data Pipeline operations the model defines, e.g. ``PollForTask``."""
    return frozenset(_service_model().operation_names)


def validate_input(operation: str, params: object) -> dict[str, Any]:
    """Check a decoded request body against the operation's input shape.

    Members the model does not know are ignored, as the real service does.

    Args:
        operation: The operation name from ``X-Amz-Target``, without the ``DataPipeline.`` prefix.
        params: The decoded JSON body.

    Returns:
        ``params``, unchanged.

    Raises:
        UnknownOperationException: The model has no such operation.
        SerializationException: The body is not a JSON object.
        InvalidRequestException: A member is missing, null, of the wrong type or out of its limits;
            the message lists every failure (up to ``MAX_MESSAGE_CHARS``) by member path.
    """
    if operation not in operation_names():
        raise UnknownOperationException(f"Operation {_escape(operation, 100)} is not supported.")
    if not isinstance(params, dict):
        raise SerializationException(f"Expected the request body to be a JSON object, got {_json_type(params)}.")
    shape = _service_model().operation_model(operation).input_shape
    if shape is not None:
        checker = _Checker(operation)
        checker.check_structure(shape, params, "")
        if checker.count:
            raise InvalidRequestException(checker.message())
    return params


class _Checker:
    """Walks one request against its input shape, collecting failures the way AWS words them."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.count = 0
        self._kept: list[str] = []
        self._kept_chars = 0

    def fail(self, value: object, path: str, constraint: str) -> None:
        self.count += 1
        # Keep counting past the cap (the message says how many) but stop formatting.
        if self._kept_chars < MAX_MESSAGE_CHARS:
            shown = "null" if value is None else f"'{_preview(value)}'"
            text = f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}"
            self._kept.append(text)
            self._kept_chars += len(text) + 2

    def message(self) -> str:
        noun = "error" if self.count == 1 else "errors"
        text = f"{self.count} validation {noun} detected: " + "; ".join(self._kept)
        return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."

    def check_structure(self, shape: StructureShape, value: dict[str, Any], path: str) -> None:
        required = set(shape.required_members)
        for name, member in shape.members.items():
            member_path = f"{path}.{name}" if path else name
            item = value.get(name)
            # AWS JSON services treat an explicit null like an absent member.
            if item is None:
                if name in required:
                    self.fail(None, member_path, "Member must not be null")
                continue
            self.check(member, item, member_path)

    def check_not_null(self, shape: Shape, value: object, path: str) -> None:
        if value is None:
            self.fail(None, path, "Member must not be null")
        else:
            self.check(shape, value, path)

    def check(self, shape: Shape, value: object, path: str) -> None:
        rule_path = _INDEX.sub(".member", path)
        rules: Mapping[str, Any] = {**shape.metadata, **LIMIT_OVERRIDES.get((self.operation, rule_path), {})}
        type_name = shape.type_name
        if not _has_type(type_name, value):
            self.fail(value, path, f"Member must be {_TYPES[type_name][1]}")
        elif isinstance(shape, StructureShape):
            self.check_structure(shape, cast(dict[str, Any], value), path)
        elif isinstance(shape, ListShape):
            items = cast(list[Any], value)
            self.check_length(items, len(items), rules, path)
            for index, item in enumerate(items, start=1):
                self.check_not_null(shape.member, item, f"{path}.{index}.member")
        elif isinstance(shape, MapShape):
            entries = cast(dict[str, Any], value)
            self.check_length(entries, len(entries), rules, path)
            for key, item in entries.items():
                entry_path = f"{path}.entry.{_escape(key, _PREVIEW_CHARS)}"
                self.check(shape.key, key, f"{entry_path}.key")
                self.check_not_null(shape.value, item, f"{entry_path}.value")
        elif isinstance(value, str) and type_name == "string":
            self.check_string(value, rules, path)
        elif isinstance(value, int) and type_name in _INT_BOUNDS:
            low, high = _INT_BOUNDS[type_name]
            low, high = max(low, rules.get("min", low)), min(high, rules.get("max", high))
            if value < low:
                self.fail(value, path, f"Member must have value greater than or equal to {low}")
            if value > high:
                self.fail(value, path, f"Member must have value less than or equal to {high}")

    def check_string(self, value: str, rules: Mapping[str, Any], path: str) -> None:
        self.check_length(value, len(value), rules, path)
        if "pattern" in rules and _FORBIDDEN_CHAR.search(value):
            self.fail(value, path, f"Member must satisfy regular expression pattern: {rules['pattern']}")
        enum = rules.get("enum")
        if enum and value not in enum:
            self.fail(value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]")

    def check_length(self, value: object, length: int, rules: Mapping[str, Any], path: str) -> None:
        if "min" in rules and length < rules["min"]:
            self.fail(value, path, f"Member must have length greater than or equal to {rules['min']}")
        if "max" in rules and length > rules["max"]:
            self.fail(value, path, f"Member must have length less than or equal to {rules['max']}")


def _has_type(type_name: str, value: object) -> bool:
    expected = _TYPES.get(type_name)
    if expected is None:
        return True  # No such type in this model's inputs; the handler decides.
    if not isinstance(value, expected[0]):
        return False
    if isinstance(value, bool):
        return type_name == "boolean"
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str) and type_name == "timestamp":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
    return True


def _preview(value: object) -> str:
    """A non-null value as the message shows it: its first 50 characters, unprintables escaped."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = reprlib.repr(value)  # Bounded, however large the list or object.
    return _escape(text, _PREVIEW_CHARS)


def _escape(text: str, limit: int) -> str:
    shown = _FORBIDDEN_CHAR.sub(lambda match: f"\\u{ord(match.group()):04x}", text[:limit])
    return shown + "..." if len(text) > limit else shown


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__
