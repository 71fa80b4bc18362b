"""Request validation against botocore's Data Pipeline model (emulator/shapes.py)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.errors import (
    InvalidRequestException,
    SerializationException,
    ServiceError,
    UnknownOperationException,
)
from emulator.shapes import MAX_MESSAGE_CHARS, operation_names, validate_input

MODEL = ServiceModel(Loader().load_service_model("datapipeline", "service-2"))


def _definition(*fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "pipelineId": "df-0123456789ABCDEFGHIJ",
        "pipelineObjects": [
            {"id": "Default", "name": "Default", "fields": [{"key": "scheduleType", "stringValue": "ondemand"}]},
            {"id": "Act", "name": "Act", "fields": [{"key": "type", "stringValue": "ShellCommandActivity"}, *fields]},
        ],
        "parameterObjects": [{"id": "myName", "attributes": [{"key": "type", "stringValue": "String"}]}],
        "parameterValues": [{"id": "myName", "stringValue": "value"}],
    }


def _rejection(operation: str, params: object, error: type[ServiceError] = InvalidRequestException) -> str:
    with pytest.raises(error) as raised:
        validate_input(operation, params)
    return raised.value.message


# --- valid requests pass unchanged ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("PollForTask", {"workerGroup": "wg-1", "hostname": "host.example", "instanceIdentity": {"document": "d"}}),
        ("PollForTask", {"workerGroup": "wg-1", "someFutureMember": [1, 2, 3]}),
        (
            "SetTaskStatus",
            {"taskId": "t" * 2048, "taskStatus": "FAILED", "errorId": "E1", "errorMessage": "x" * 50_000},
        ),
        ("PutPipelineDefinition", _definition({"key": "runsOn", "refValue": "Ec2"}, {"key": "s", "stringValue": ""})),
        ("DescribeObjects", {"pipelineId": "df-1", "objectIds": [f"@Act_{i}" for i in range(100)]}),
        ("QueryObjects", {"pipelineId": "df-1", "sphere": "INSTANCE", "limit": 100, "marker": None}),
        ("ActivatePipeline", {"pipelineId": "df-1", "startTimestamp": 1_700_000_000.5}),
        ("ActivatePipeline", {"pipelineId": "df-1", "startTimestamp": "2024-01-01T00:00:00Z"}),
        ("ReportTaskProgress", {"taskId": "t", "fields": [{"key": "k", "stringValue": "tab\tnewline\n\U0001f600"}]}),
        ("ListPipelines", {}),
    ],
)
def test_valid_request_is_returned_unchanged(operation: str, params: dict[str, Any]) -> None:
    assert validate_input(operation, params) is params


def test_operation_names_are_the_models() -> None:
    assert {"PollForTask", "SetTaskStatus", "DescribeObjects", "ReportTaskProgress"} <= operation_names()
    assert len(operation_names()) == len(MODEL.operation_names)


# --- invalid requests name the member that failed ------------------------------------------------


def test_missing_required_member() -> None:
    message = _rejection("SetTaskStatus", {"taskStatus": "FINISHED"})

    assert message == (
        "1 validation error detected: Value null at 'taskId' failed to satisfy constraint: Member must not be null"
    )


def test_null_required_member() -> None:
    message = _rejection("PollForTask", {"workerGroup": None})

    assert message == (
        "1 validation error detected: Value null at 'workerGroup' failed to satisfy constraint: Member must not be null"
    )


def test_missing_required_member_of_a_nested_list_member() -> None:
    message = _rejection("PutPipelineDefinition", _definition({"stringValue": "no key"}))

    assert "Value null at 'pipelineObjects.2.member.fields.2.member.key'" in message


@pytest.mark.parametrize(
    ("operation", "params", "path", "expected"),
    [
        ("PollForTask", {"workerGroup": True}, "workerGroup", "a string"),
        ("PollForTask", {"workerGroup": 7}, "workerGroup", "a string"),
        (
            "DescribeObjects",
            {"pipelineId": "p", "objectIds": ["a"], "evaluateExpressions": "true"},
            "evaluateExpressions",
            "a boolean",
        ),
        ("DeactivatePipeline", {"pipelineId": "p", "cancelActive": 1}, "cancelActive", "a boolean"),
        ("QueryObjects", {"pipelineId": "p", "sphere": "INSTANCE", "limit": True}, "limit", "an integer"),
        ("QueryObjects", {"pipelineId": "p", "sphere": "INSTANCE", "limit": 1.5}, "limit", "an integer"),
        ("PollForTask", {"workerGroup": "wg", "instanceIdentity": "doc"}, "instanceIdentity", "an object"),
        ("DescribeObjects", {"pipelineId": "p", "objectIds": "a"}, "objectIds", "a list"),
        ("DescribeObjects", {"pipelineId": "p", "objectIds": ["a", 2]}, "objectIds.2.member", "a string"),
        ("ActivatePipeline", {"pipelineId": "p", "startTimestamp": "tomorrow"}, "startTimestamp", "a timestamp"),
    ],
)
def test_wrong_type(operation: str, params: dict[str, Any], path: str, expected: str) -> None:
    message = _rejection(operation, params)

    assert f"at '{path}' failed to satisfy constraint: Member must be {expected}" in message


def test_null_list_member() -> None:
    message = _rejection("DescribeObjects", {"pipelineId": "p", "objectIds": ["a", None]})

    assert "Value null at 'objectIds.2.member' failed to satisfy constraint: Member must not be null" in message


def test_too_long_worker_group() -> None:
    message = _rejection("PollForTask", {"workerGroup": "w" * 2000})

    assert message == (
        f"1 validation error detected: Value '{'w' * 50}...' at 'workerGroup' failed to satisfy constraint: "
        "Member must have length less than or equal to 1024"
    )


def test_too_short_id() -> None:
    message = _rejection("DescribeObjects", {"pipelineId": "", "objectIds": ["a"]})

    assert (
        "Value '' at 'pipelineId' failed to satisfy constraint: Member must have length greater than or equal to 1"
        in (message)
    )


def test_too_long_field_string_value() -> None:
    message = _rejection("PutPipelineDefinition", _definition({"key": "command", "stringValue": "c" * 10241}))

    assert message == (
        f"1 validation error detected: Value '{'c' * 50}...' at 'pipelineObjects.2.member.fields.2.member.stringValue' "
        "failed to satisfy constraint: Member must have length less than or equal to 10240"
    )


def test_field_string_value_at_the_limit_passes() -> None:
    params = _definition({"key": "command", "stringValue": "c" * 10240})

    assert validate_input("PutPipelineDefinition", params) is params


def test_bad_task_status() -> None:
    message = _rejection("SetTaskStatus", {"taskId": "t", "taskStatus": "DONE"})

    assert message == (
        "1 validation error detected: Value 'DONE' at 'taskStatus' failed to satisfy constraint: "
        "Member must satisfy enum value set: [FINISHED, FAILED, FALSE]"
    )


def test_bad_query_sphere() -> None:
    message = _rejection("QueryObjects", {"pipelineId": "p", "sphere": "instance"})

    assert "Value 'instance' at 'sphere' failed to satisfy constraint: " in message
    assert "Member must satisfy enum value set: [COMPONENT, INSTANCE, ATTEMPT]" in message


def test_bad_nested_operator_type() -> None:
    query = {"selectors": [{"fieldName": "@status", "operator": {"type": "NE", "values": ["RUNNING"]}}]}

    message = _rejection("QueryObjects", {"pipelineId": "p", "sphere": "INSTANCE", "query": query})

    assert (
        "at 'query.selectors.1.member.operator.type' failed to satisfy constraint: Member must satisfy enum" in message
    )


@pytest.mark.parametrize("bad", ["\x00", "bell\x07", "esc\x1b[0m", "lone \ud800 surrogate", "\uffff"])
def test_forbidden_character(bad: str) -> None:
    message = _rejection("PollForTask", {"workerGroup": bad})

    assert "at 'workerGroup' failed to satisfy constraint: Member must satisfy regular expression pattern: " in message
    # The message stays printable: the offending character is shown escaped.
    assert bad not in message


def test_101_object_ids() -> None:
    message = _rejection("DescribeObjects", {"pipelineId": "p", "objectIds": [f"id{i}" for i in range(101)]})

    assert message.startswith("1 validation error detected: Value '[")
    assert message.endswith(
        "at 'objectIds' failed to satisfy constraint: Member must have length less than or equal to 100"
    )


def test_all_failures_are_reported() -> None:
    message = _rejection("SetTaskStatus", {"taskId": "", "taskStatus": "DONE", "errorId": 3})

    assert message.startswith("3 validation errors detected: ")
    assert message.count("; ") == 2
    for path in ("taskId", "taskStatus", "errorId"):
        assert f"at '{path}'" in message


def test_message_is_capped_but_counts_every_failure() -> None:
    message = _rejection("DescribeObjects", {"pipelineId": "p", "objectIds": [None] * 5000})

    assert message.startswith("5001 validation errors detected: ")
    assert len(message) <= MAX_MESSAGE_CHARS


def test_unknown_operation() -> None:
    message = _rejection("PollForTasks", {"workerGroup": "wg"}, UnknownOperationException)

    assert message == "Operation PollForTasks is not supported."


@pytest.mark.parametrize("body", [None, [], ["workerGroup"], "workerGroup", 3, True])
def test_body_that_is_not_an_object(body: object) -> None:
    _rejection("PollForTask", body, SerializationException)


# --- properties ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def _loosely(shape: Shape) -> st.SearchStrategy[Any]:
    """Values shaped like ``shape`` down to the leaves, any of which may be arbitrary JSON instead."""
    if isinstance(shape, StructureShape):
        members = {name: _loosely(member) | JSON for name, member in shape.members.items()}
        return st.fixed_dictionaries({}, optional=members)
    if isinstance(shape, ListShape):
        return st.lists(_loosely(shape.member) | JSON, max_size=3)
    if isinstance(shape, MapShape):
        return st.dictionaries(st.text(), _loosely(shape.value) | JSON, max_size=3)
    leaves = {"string": st.text(), "boolean": st.booleans(), "integer": st.integers(), "timestamp": st.floats()}
    return leaves.get(shape.type_name, JSON)


OPERATIONS = sorted(MODEL.operation_names)
SHAPED_REQUESTS = st.sampled_from(OPERATIONS).flatmap(
    lambda op: st.tuples(st.just(op), _loosely(MODEL.operation_model(op).input_shape))
)


@settings(max_examples=300, deadline=None)
@given(operation=st.sampled_from(OPERATIONS) | st.text(), params=JSON)
def test_arbitrary_json_raises_only_service_errors(operation: str, params: object) -> None:
    try:
        assert validate_input(operation, params) is params
    except ServiceError as error:
        assert error.message


@settings(max_examples=500, deadline=None)
@given(request=SHAPED_REQUESTS)
def test_nearly_valid_requests_raise_only_service_errors(request: tuple[str, dict[str, Any]]) -> None:
    operation, params = request
    try:
        assert validate_input(operation, params) is params
    except ServiceError as error:
        assert 0 < len(error.message) <= MAX_MESSAGE_CHARS


def test_every_string_pattern_in_the_model_is_the_one_shapes_checks() -> None:
    # shapes.py checks the meaning of this one pattern instead of compiling Java regexes.
    patterns = {
        shape["pattern"]
        for shape in Loader().load_service_model("datapipeline", "service-2")["shapes"].values()
        if "pattern" in shape
    }

    assert patterns == {"[\\u0020-\\uD7FF\\uE000-\\uFFFD\\uD800\\uDC00-\\uDBFF\\uDFFF\\r\\n\\t]*"}
