"""The local Data Pipeline service over HTTP with boto3 and raw requests: wire format, operations, bad input, serving.

Most tests share one service (module scope) and make their own pipelines; tests that count
things across the whole service (paging, counters) or need other options start their own.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.session import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.definition import definition_file_to_api
from tests.support import (
    TEST_ENV,
    EmulatorProcess,
    aws_cli,
    describe,
    dp_client,
    dp_clients,
    fields_of,
    instance_of,
    ondemand_definition,
    poll_task,
    put_definition,
    raw_post,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_task,
)

JSON_1_1 = "application/x-amz-json-1.1"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
FLEET_GROUP = "wg-api-fleet"


@pytest.fixture(scope="module")
def service() -> Iterator[EmulatorProcess]:
    """One local service for the tests below that do not count service-wide things."""
    proc = EmulatorProcess(["--poll-wait", "2", "--time-scale", "60"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(service: EmulatorProcess) -> Any:
    return dp_client(service.url)


def new_pipeline(api: Any, name: str = "api-test", **extra: Any) -> str:
    pipeline_id: str = api.create_pipeline(name=name, uniqueId=str(uuid.uuid4()), **extra)["pipelineId"]
    return pipeline_id


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    """The ``ClientError`` response ``call`` raises (the test fails if it does not raise)."""
    with pytest.raises(ClientError) as caught:
        call()
    response: dict[str, Any] = caught.value.response
    return response


def code_of(call: Callable[[], Any]) -> str:
    code: str = error_of(call)["Error"]["Code"]
    return code


def utc_stamp() -> str:
    """Now, as the API writes times (UTC, to the second)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def selector(field: str, op: str, *values: str) -> dict[str, Any]:
    return {"selectors": [{"fieldName": field, "operator": {"type": op, "values": list(values)}}]}


# -- a pipeline of 60 instances in known states, shared by the object tests ----------------------


class Fleet:
    """A pipeline of 60 activities: 10 finished, 10 failed, 10 running, 30 waiting for a runner."""

    def __init__(self, api: Any) -> None:
        steps = [shell_activity(f"Step{n:02d}", command=f"echo {n}") for n in range(60)]
        self.pipeline_id = start_pipeline(api, ondemand_definition(*steps, workerGroup=FLEET_GROUP, maximumRetries="0"))
        self.expected: dict[str, str] = {f"Step{n:02d}": "WAITING_FOR_RUNNER" for n in range(60)}
        for n in range(30):
            task = wait_for_task(api, FLEET_GROUP)
            component = fields_of(task["objects"][task["attemptId"]])["@componentParent"]
            api.report_task_progress(taskId=task["taskId"])
            if n < 10:
                api.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
                self.expected[component] = "FINISHED"
            elif n < 20:
                api.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="E1", errorMessage="boom")
                self.expected[component] = "FAILED"
            else:
                self.expected[component] = "RUNNING"
        self.instances: dict[str, str] = {}  # component id -> instance id
        ids = api.query_objects(pipelineId=self.pipeline_id, sphere="INSTANCE")["ids"]
        for instance_id in ids:
            self.instances[describe(api, self.pipeline_id, instance_id)["@componentParent"]] = instance_id
        self.run_stamp = describe(api, self.pipeline_id, ids[0])["@scheduledStartTime"]

    def with_status(self, status: str) -> set[str]:
        return {c for c, s in self.expected.items() if s == status}


@pytest.fixture(scope="module")
def fleet(api: Any) -> Fleet:
    return Fleet(api)


# -- 1. wire protocol ---------------------------------------------------------------------------


def test_a_reply_is_aws_json_1_1_with_a_request_id(service: EmulatorProcess) -> None:
    # when two calls are posted by hand
    first = raw_post(service.url, "DataPipeline.ListPipelines", {})
    second = raw_post(service.url, "DataPipeline.ListPipelines", {})

    # then each is a JSON 1.1 reply with its own request id
    assert first.status == 200
    assert first.headers["content-type"] == JSON_1_1
    assert "pipelineIdList" in first.json()
    assert first.headers["x-amzn-requestid"]
    assert first.headers["x-amzn-requestid"] != second.headers["x-amzn-requestid"]


def test_an_error_reply_has_the_aws_error_shape(service: EmulatorProcess) -> None:
    # when a call names a pipeline that does not exist
    reply = raw_post(service.url, "DataPipeline.DescribePipelines", {"pipelineIds": ["df-DOESNOTEXIST"]})

    # then it is a 400 whose body carries a namespaced __type and a message
    assert reply.status == 400
    assert reply.headers["content-type"] == JSON_1_1
    assert reply.headers["x-amzn-requestid"]
    body = reply.json()
    assert set(body) == {"__type", "message"}
    assert re.fullmatch(r"[\w.]+#PipelineNotFoundException", body["__type"])
    assert "df-DOESNOTEXIST" in body["message"]


def test_boto3_reads_each_error_code(api: Any) -> None:
    # given a pipeline that was deleted and one that has no definition
    deleted = new_pipeline(api)
    api.delete_pipeline(pipelineId=deleted)
    empty = new_pipeline(api)

    # then boto3 parses each modelled error code, with status 400 and the request id
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("PipelineNotFoundException", lambda: api.describe_pipelines(pipelineIds=["df-NOSUCHPIPELINE"])),
        ("PipelineDeletedException", lambda: api.describe_pipelines(pipelineIds=[deleted])),
        ("TaskNotFoundException", lambda: api.report_task_progress(taskId="no-such-task")),
        ("InvalidRequestException", lambda: api.activate_pipeline(pipelineId=empty)),
    ]
    for code, call in cases:
        response = error_of(call)
        assert response["Error"]["Code"] == code
        assert response["Error"]["Message"]
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert response["ResponseMetadata"]["RequestId"]


# -- 3. operations: pipelines -------------------------------------------------------------------


def test_create_pipeline_is_idempotent_on_name_and_unique_id(api: Any) -> None:
    # given a pipeline created with a (name, uniqueId) pair
    unique_id = str(uuid.uuid4())
    first = api.create_pipeline(name="orders", uniqueId=unique_id)["pipelineId"]

    # when the same pair is sent again, and then a different uniqueId or name
    again = api.create_pipeline(name="orders", uniqueId=unique_id)["pipelineId"]
    other_id = api.create_pipeline(name="orders", uniqueId=unique_id + "-2")["pipelineId"]
    other_name = api.create_pipeline(name="orders-2", uniqueId=unique_id)["pipelineId"]

    # then the repeat returns the first id, and the others are new pipelines
    assert again == first
    assert re.fullmatch(r"df-[A-Z0-9]{19}", first)
    assert len({first, other_id, other_name}) == 3

    # and once deleted, the pair makes a new pipeline
    api.delete_pipeline(pipelineId=first)
    assert api.create_pipeline(name="orders", uniqueId=unique_id)["pipelineId"] not in (first, other_id, other_name)


def test_list_pipelines_pages_of_25(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given a service holding 60 pipelines
    service = emulator_factory("--poll-wait", "2")
    api = dp_client(service.url)
    created = [new_pipeline(api, name=f"p{n}") for n in range(60)]

    # when the boto3 paginator walks ListPipelines
    pages = list(api.get_paginator("list_pipelines").paginate())

    # then it sees every pipeline once, 25 at a time
    assert [len(p["pipelineIdList"]) for p in pages] == [25, 25, 10]
    assert [p["id"] for page in pages for p in page["pipelineIdList"]] == created

    # and raw marker calls see the same pages, with hasMoreResults on all but the last
    seen: list[str] = []
    marker: str | None = None
    more_flags = []
    while True:
        page = api.list_pipelines(**({"marker": marker} if marker else {}))
        seen += [p["id"] for p in page["pipelineIdList"]]
        more_flags.append(page["hasMoreResults"])
        marker = page.get("marker")
        if not page["hasMoreResults"]:
            break
    assert seen == created
    assert more_flags == [True, True, False]

    # and a deleted pipeline drops out of the list
    api.delete_pipeline(pipelineId=created[0])
    listed = [p["id"] for page in api.get_paginator("list_pipelines").paginate() for p in page["pipelineIdList"]]
    assert listed == created[1:]

    # and a marker the service never gave out is refused
    for bad in ("not-a-marker", "-5"):
        assert code_of(functools.partial(api.list_pipelines, marker=bad)) == "InvalidRequestException"


def test_describe_pipelines_shows_state_times_and_tags(api: Any) -> None:
    # given a new pipeline with a description and tags
    earliest = utc_stamp()
    tags = [{"key": "team", "value": "data"}]
    created = api.create_pipeline(name="described", uniqueId="described-1", description="nightly", tags=tags)
    pipeline_id = created["pipelineId"]
    latest = utc_stamp()

    # when it is described before and after activation
    before = api.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"]
    put_definition(api, pipeline_id, ondemand_definition(shell_activity("Only"), workerGroup="wg-api-described"))
    api.activate_pipeline(pipelineId=pipeline_id)
    after = api.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"]

    # then it is PENDING, then SCHEDULED, with AWS's fields
    assert len(before) == 1
    description = before[0]
    fields = {f["key"]: f["stringValue"] for f in description["fields"]}
    assert (description["pipelineId"], description["name"]) == (pipeline_id, "described")
    assert description["tags"] == [{"key": "team", "value": "data"}]
    assert fields["@pipelineState"] == "PENDING"
    assert fields["uniqueId"] == "described-1"
    assert fields["@id"] == pipeline_id
    assert fields["@sphere"] == "PIPELINE"
    assert fields["description"] == "nightly"
    assert STAMP.fullmatch(fields["@creationTime"])
    assert earliest <= fields["@creationTime"] <= latest
    assert {f["key"]: f["stringValue"] for f in after[0]["fields"]}["@pipelineState"] == "SCHEDULED"


def test_describe_pipelines_refuses_missing_deleted_and_too_many(api: Any) -> None:
    # given a live pipeline and a deleted one
    live = new_pipeline(api)
    deleted = new_pipeline(api)
    api.delete_pipeline(pipelineId=deleted)

    # then describing a missing or deleted one fails the whole call, and so do 26 ids
    assert code_of(lambda: api.describe_pipelines(pipelineIds=[live, "df-MISSING"])) == "PipelineNotFoundException"
    assert code_of(lambda: api.describe_pipelines(pipelineIds=[live, deleted])) == "PipelineDeletedException"
    assert code_of(lambda: api.describe_pipelines(pipelineIds=[live] * 26)) == "InvalidRequestException"
    # and deleting twice is PipelineNotFound (deleted pipelines are gone for DeletePipeline)
    assert code_of(lambda: api.delete_pipeline(pipelineId=deleted)) == "PipelineNotFoundException"


# -- 3. definitions -----------------------------------------------------------------------------


def _default(**fields: Any) -> dict[str, Any]:
    return {"id": "Default", "scheduleType": "ondemand", "workerGroup": "wg-api-valid", **fields}


INVALID_DEFINITIONS: dict[str, tuple[list[dict[str, Any]], str, str]] = {
    # case: (objects, object id with the error, start of the message)
    "missing type": ([_default(), {"id": "Orphan", "command": "true"}], "Orphan", "MISSING_REQUIRED_FIELD: 'type'"),
    "unknown reference": (
        [_default(), shell_activity("Step", precondition={"ref": "Nowhere"})],
        "Step",
        "INVALID_OBJECT_REFERENCE",
    ),
    "command and scriptUri": (
        [_default(), shell_activity("Step", scriptUri="s3://bucket/run.sh")],
        "Step",
        "CONFLICTING_FIELDS",
    ),
    "neither workerGroup nor runsOn": (
        [{"id": "Default", "scheduleType": "ondemand"}, shell_activity("Step")],
        "Step",
        "MISSING_REQUIRED_FIELD: one of 'runsOn' or 'workerGroup'",
    ),
    "period not a period": ([_default(), shell_activity("Step", attemptTimeout="soon")], "Step", "INVALID_FIELD_VALUE"),
    "schedule period under 15 minutes": (
        [
            _default(),
            {"id": "Every5", "type": "Schedule", "period": "5 minutes", "startAt": "FIRST_ACTIVATION_DATE_TIME"},
        ],
        "Every5",
        "INVALID_FIELD_VALUE: 'period'",
    ),
    "field over 10240 UTF-8 bytes": (
        [_default(), shell_activity("Step", myNote="\u20ac" * 4000)],
        "Step",
        "LIMIT_EXCEEDED",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_DEFINITIONS))
def test_an_invalid_definition_reports_errors_in_aws_shape(api: Any, case: str) -> None:
    # given a definition with one kind of mistake
    objects, object_id, message = INVALID_DEFINITIONS[case]
    pipeline_id = new_pipeline(api)
    doc = {"objects": objects}

    # when it is validated, then put
    api_objects = definition_file_to_api(doc)[0]
    validated = api.validate_pipeline_definition(pipelineId=pipeline_id, pipelineObjects=api_objects)
    put = put_definition(api, pipeline_id, doc)

    # then both say errored, naming the object and the problem
    for result in (validated, put):
        assert result["errored"] is True
        errors = {e["id"]: e["errors"] for e in result["validationErrors"]}
        assert object_id in errors, result["validationErrors"]
        assert any(m.startswith(message) for m in errors[object_id]), errors[object_id]

    # and the errored definition is stored, but cannot be activated
    stored = api.get_pipeline_definition(pipelineId=pipeline_id)
    assert {o["id"] for o in stored["pipelineObjects"]} == {o["id"] for o in objects}
    assert code_of(lambda: api.activate_pipeline(pipelineId=pipeline_id)) == "InvalidRequestException"


def test_a_warning_does_not_stop_a_definition(api: Any) -> None:
    # given a definition whose only problem is an unknown field
    pipeline_id = new_pipeline(api)

    # when it is put
    result = put_definition(api, pipeline_id, {"objects": [_default(), shell_activity("Step", colour="blue")]})

    # then it is not errored and the warning comes in AWS's shape; activation works
    assert result["errored"] is False
    assert result["validationErrors"] == []
    assert len(result["validationWarnings"]) == 1
    warning = result["validationWarnings"][0]
    assert warning["id"] == "Step"
    assert any("colour" in w for w in warning["warnings"])
    api.activate_pipeline(pipelineId=pipeline_id)


def test_get_pipeline_definition_latest_and_active(api: Any) -> None:
    # given a pipeline with a definition put but never activated
    pipeline_id = new_pipeline(api)
    first = ondemand_definition(shell_activity("First"), workerGroup="wg-api-versions")
    put_definition(api, pipeline_id, first)
    assert code_of(lambda: api.get_pipeline_definition(pipelineId=pipeline_id, version="active")) == (
        "InvalidRequestException"
    )

    # when it is activated and then a second definition is put
    api.activate_pipeline(pipelineId=pipeline_id)
    second = ondemand_definition(shell_activity("Second"), workerGroup="wg-api-versions")
    put_definition(api, pipeline_id, second)

    # then "latest" (the default) is the second and "active" is still the first
    def ids(version: str | None) -> set[str]:
        kwargs = {"version": version} if version else {}
        objects = api.get_pipeline_definition(pipelineId=pipeline_id, **kwargs)["pipelineObjects"]
        return {o["id"] for o in objects}

    assert ids(None) == ids("latest") == {"Default", "Second"}
    assert ids("active") == {"Default", "First"}
    assert code_of(lambda: api.get_pipeline_definition(pipelineId=pipeline_id, version="v1")) == (
        "InvalidRequestException"
    )


def test_get_pipeline_definition_keeps_parameters(api: Any) -> None:
    # given a definition with a parameter and a value for it
    pipeline_id = new_pipeline(api)
    doc = {
        **ondemand_definition(shell_activity("Greet", command="echo #{myGreeting}"), workerGroup="wg-api-params"),
        "parameters": [{"id": "myGreeting", "type": "String", "description": "what to say"}],
    }
    result = put_definition(api, pipeline_id, doc, values={"myGreeting": "hello"})

    # when it is read back
    stored = api.get_pipeline_definition(pipelineId=pipeline_id)

    # then the parameter and its value come back as they were put
    assert result["errored"] is False
    assert stored["parameterObjects"] == [
        {
            "id": "myGreeting",
            "attributes": [
                {"key": "description", "stringValue": "what to say"},
                {"key": "type", "stringValue": "String"},
            ],
        }
    ]
    assert stored["parameterValues"] == [{"id": "myGreeting", "stringValue": "hello"}]


def test_a_missing_parameter_value_is_a_validation_error(api: Any) -> None:
    # given a definition that uses a parameter nobody gives a value for
    pipeline_id = new_pipeline(api)
    doc = {
        **ondemand_definition(shell_activity("Greet", command="echo #{myGreeting}"), workerGroup="wg-api-params"),
        "parameters": [{"id": "myGreeting", "type": "String"}],
    }

    # when it is put
    result = put_definition(api, pipeline_id, doc)

    # then the parameter is named in the errors
    assert result["errored"] is True
    assert [e["id"] for e in result["validationErrors"]] == ["myGreeting"]


def test_activate_pipeline_needs_a_valid_definition(api: Any) -> None:
    # given a pipeline with no definition, and one whose definition has errors
    empty = new_pipeline(api)
    broken = new_pipeline(api)
    put_definition(api, broken, {"objects": [_default(), {"id": "Orphan"}]})

    # then neither can be activated, and both stay PENDING
    for pipeline_id in (empty, broken):
        assert code_of(functools.partial(api.activate_pipeline, pipelineId=pipeline_id)) == "InvalidRequestException"
        fields = api.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"][0]["fields"]
        assert {"key": "@pipelineState", "stringValue": "PENDING"} in fields


# -- 3. objects -----------------------------------------------------------------------------------


def test_describe_objects_takes_100_ids(api: Any, fleet: Fleet) -> None:
    # given 60 instance ids and 40 component ids of one pipeline
    ids = list(fleet.instances.values()) + [f"Step{n:02d}" for n in range(40)]

    # when all 100 are described in one call
    objects = api.describe_objects(pipelineId=fleet.pipeline_id, objectIds=ids)["pipelineObjects"]

    # then every object comes back, each instance with its status
    assert [o["id"] for o in objects] == ids
    by_id = {o["id"]: fields_of(o) for o in objects}
    for component, instance_id in fleet.instances.items():
        assert by_id[instance_id]["@status"] == fleet.expected[component]
        assert by_id[instance_id]["@sphere"] == "INSTANCE"
    assert by_id["Step00"]["@sphere"] == "COMPONENT"
    assert by_id["Step00"]["command"] == "echo 0"

    # and 101 ids are refused
    too_many = [*ids, "Step41"]
    assert code_of(lambda: api.describe_objects(pipelineId=fleet.pipeline_id, objectIds=too_many)) == (
        "InvalidRequestException"
    )


def test_query_objects_on_instances(api: Any, fleet: Fleet) -> None:
    # given the fleet's 60 instances in four states
    def query(**kwargs: Any) -> set[str]:
        return set(api.query_objects(pipelineId=fleet.pipeline_id, sphere="INSTANCE", **kwargs)["ids"])

    def instances(components: set[str]) -> set[str]:
        return {fleet.instances[c] for c in components}

    # then no selector finds all 60; EQ on @status finds each status; several values mean "any of"
    assert query() == set(fleet.instances.values())
    for status in ("FINISHED", "FAILED", "RUNNING", "WAITING_FOR_RUNNER"):
        assert query(query=selector("@status", "EQ", status)) == instances(fleet.with_status(status))
    assert query(query=selector("@status", "EQ", "FINISHED", "FAILED")) == instances(
        fleet.with_status("FINISHED") | fleet.with_status("FAILED")
    )
    # BETWEEN on @scheduledStartTime is inclusive, and finds nothing outside the run
    assert query(query=selector("@scheduledStartTime", "BETWEEN", fleet.run_stamp, fleet.run_stamp)) == query()
    assert (
        query(query=selector("@scheduledStartTime", "BETWEEN", "2000-01-01T00:00:00", "2000-01-02T00:00:00")) == set()
    )
    # REF_EQ on @componentParent finds one component's instance
    assert query(query=selector("@componentParent", "REF_EQ", "Step07")) == {fleet.instances["Step07"]}
    # selectors combine with AND
    both = {
        "selectors": selector("@status", "EQ", "RUNNING")["selectors"] + selector("name", "EQ", "nope")["selectors"]
    }
    assert query(query=both) == set()


def test_query_objects_on_components_and_attempts(api: Any, fleet: Fleet) -> None:
    # given the fleet: 61 components, 60 instances with one attempt each
    def query(sphere: str, **kwargs: Any) -> set[str]:
        return set(api.query_objects(pipelineId=fleet.pipeline_id, sphere=sphere, **kwargs)["ids"])

    # then the component sphere holds the definition's objects
    assert query("COMPONENT") == {"Default", *fleet.expected}
    assert query("COMPONENT", query=selector("name", "EQ", "Step07")) == {"Step07"}
    assert query("COMPONENT", query=selector("parent", "REF_EQ", "Default")) == set(fleet.expected)
    # and the attempt sphere holds each instance's first attempt, in its instance's state
    assert query("ATTEMPT") == {f"{i}_Attempt=1" for i in fleet.instances.values()}
    for status in ("FINISHED", "FAILED", "RUNNING", "WAITING_FOR_RUNNER"):
        expected = {f"{fleet.instances[c]}_Attempt=1" for c in fleet.with_status(status)}
        assert query("ATTEMPT", query=selector("@status", "EQ", status)) == expected
    step = fleet.instances["Step07"]
    assert query("ATTEMPT", query=selector("@instanceParent", "REF_EQ", step)) == {f"{step}_Attempt=1"}


def test_query_objects_pages_with_limit_and_marker(api: Any, fleet: Fleet) -> None:
    # when the instances are read 7 at a time
    pages: list[list[str]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = api.query_objects(pipelineId=fleet.pipeline_id, sphere="INSTANCE", limit=7, **kwargs)
        pages.append(page["ids"])
        if not page["hasMoreResults"]:
            assert "marker" not in page
            break
        kwargs = {"marker": page["marker"]}

    # then each page holds at most 7 and together they hold each instance once
    assert [len(p) for p in pages] == [7] * 8 + [4]
    seen = [i for p in pages for i in p]
    assert sorted(seen) == sorted(fleet.instances.values())

    # and boto3's paginator with a page size agrees
    paginator = api.get_paginator("query_objects")
    walked = paginator.paginate(pipelineId=fleet.pipeline_id, sphere="INSTANCE", PaginationConfig={"PageSize": 25})
    assert [i for page in walked for i in page["ids"]] == seen


BAD_SELECTORS: dict[str, dict[str, Any]] = {
    "field that cannot be queried": selector("command", "EQ", "echo 1"),
    "BETWEEN on a non-time field": selector("@status", "BETWEEN", "A", "B"),
    "BETWEEN with one value": selector("@scheduledStartTime", "BETWEEN", "2026-01-01T00:00:00"),
    "GE with two values": selector("@actualStartTime", "GE", "2026-01-01T00:00:00", "2026-01-02T00:00:00"),
    "no values": selector("@status", "EQ"),
    "no operator type": {"selectors": [{"fieldName": "@status", "operator": {"values": ["RUNNING"]}}]},
    "11 selectors": {"selectors": selector("@status", "EQ", "RUNNING")["selectors"] * 11},
}


@pytest.mark.parametrize("case", list(BAD_SELECTORS))
def test_query_objects_refuses_a_bad_query(api: Any, fleet: Fleet, case: str) -> None:
    code = code_of(
        lambda: api.query_objects(pipelineId=fleet.pipeline_id, sphere="INSTANCE", query=BAD_SELECTORS[case])
    )
    assert code == "InvalidRequestException"


@pytest.mark.parametrize(
    "kwargs", [{"sphere": "PIPELINE"}, {"sphere": "INSTANCE", "limit": 0}, {"sphere": "INSTANCE", "limit": -1}]
)
def test_query_objects_refuses_a_bad_sphere_or_limit(api: Any, fleet: Fleet, kwargs: dict[str, Any]) -> None:
    assert code_of(lambda: api.query_objects(pipelineId=fleet.pipeline_id, **kwargs)) == "InvalidRequestException"


def test_set_status_try_cancel_cancels_a_running_instance(api: Any) -> None:
    # given an instance whose task a runner holds
    group = f"wg-api-cancel-{uuid.uuid4().hex[:8]}"
    pipeline_id = start_pipeline(api, ondemand_definition(shell_activity("Long"), workerGroup=group))
    task = wait_for_task(api, group)
    assert api.report_task_progress(taskId=task["taskId"])["canceled"] is False
    instance_id = instance_of(api, pipeline_id, "Long")

    # when the user asks to cancel it
    api.set_status(pipelineId=pipeline_id, objectIds=[instance_id], status="TRY_CANCEL")

    # then the instance is CANCELED and the runner is told at its next progress report
    assert describe(api, pipeline_id, instance_id)["@status"] == "CANCELED"
    assert api.report_task_progress(taskId=task["taskId"])["canceled"] is True

    # and unknown objects or statuses are refused
    assert code_of(lambda: api.set_status(pipelineId=pipeline_id, objectIds=["@Nope_1"], status="TRY_CANCEL")) == (
        "InvalidRequestException"
    )
    assert code_of(lambda: api.set_status(pipelineId=pipeline_id, objectIds=[instance_id], status="EXPLODE")) == (
        "InvalidRequestException"
    )


def test_add_and_remove_tags(api: Any) -> None:
    # given a pipeline with one tag
    pipeline_id = new_pipeline(api, tags=[{"key": "team", "value": "data"}])

    def tags() -> dict[str, str]:
        described = api.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"][0]
        return {t["key"]: t["value"] for t in described["tags"]}

    # when tags are added (one replacing a value) and one is removed
    api.add_tags(pipelineId=pipeline_id, tags=[{"key": "team", "value": "ml"}, {"key": "env", "value": "dev"}])
    api.remove_tags(pipelineId=pipeline_id, tagKeys=["env", "absent"])

    # then the pipeline shows the result
    assert tags() == {"team": "ml"}

    # and a pipeline holds at most 10 tags: the 11th is refused and nothing changes
    api.add_tags(pipelineId=pipeline_id, tags=[{"key": f"k{n}", "value": "v"} for n in range(9)])
    assert len(tags()) == 10
    assert code_of(lambda: api.add_tags(pipelineId=pipeline_id, tags=[{"key": "k9", "value": "v"}])) == (
        "InvalidRequestException"
    )
    assert len(tags()) == 10
    assert code_of(lambda: api.remove_tags(pipelineId="df-MISSING", tagKeys=["team"])) == "PipelineNotFoundException"


# -- 8. bad input -------------------------------------------------------------------------------

LONG_VALUE = "x" * 10241

BAD_REQUESTS: dict[str, tuple[str | None, Any, str, dict[str, str]]] = {
    # case: (target, body, error code, extra headers)
    "invalid JSON": ("DataPipeline.ListPipelines", b"{not json", "SerializationException", {}),
    "JSON array body": ("DataPipeline.ListPipelines", b"[1, 2]", "SerializationException", {}),
    "body not UTF-8": ("DataPipeline.ListPipelines", b"\xff\xfe{}", "SerializationException", {}),
    "boolean for a string": (
        "DataPipeline.CreatePipeline",
        {"name": True, "uniqueId": "u"},
        "InvalidRequestException",
        {},
    ),
    "unknown operation": ("DataPipeline.LaunchRocket", {}, "UnknownOperationException", {}),
    "no X-Amz-Target": (None, {}, "UnknownOperationException", {}),
    "missing required member": ("DataPipeline.CreatePipeline", {"name": "n"}, "InvalidRequestException", {}),
    "workerGroup of 2000 characters": (
        "DataPipeline.PollForTask",
        {"workerGroup": "w" * 2000},
        "InvalidRequestException",
        {},
    ),
    "field value of 10241 characters": (
        "DataPipeline.PutPipelineDefinition",
        {
            "pipelineId": "df-ANY",
            "pipelineObjects": [{"id": "A", "name": "A", "fields": [{"key": "myNote", "stringValue": LONG_VALUE}]}],
        },
        "InvalidRequestException",
        {},
    ),
    "unknown pipeline id": (
        "DataPipeline.DescribeObjects",
        {"pipelineId": "df-NOPE", "objectIds": ["A"]},
        "PipelineNotFoundException",
        {},
    ),
    "unknown task id": ("DataPipeline.ReportTaskProgress", {"taskId": "no-such-task"}, "TaskNotFoundException", {}),
    "taskStatus BOGUS": (
        "DataPipeline.SetTaskStatus",
        {"taskId": "no-such-task", "taskStatus": "BOGUS"},
        "InvalidRequestException",
        {},
    ),
    "Content-Length not a number": (
        "DataPipeline.ListPipelines",
        b"{}",
        "SerializationException",
        {"Content-Length": "ten"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_an_aws_error_and_the_service_keeps_serving(
    service: EmulatorProcess, api: Any, case: str
) -> None:
    target, body, code, headers = BAD_REQUESTS[case]

    # when the bad request is posted
    reply = raw_post(service.url, target, body, headers=headers)

    # then it gets a 400 JSON error with the expected code, never a traceback
    assert reply.status == 400, reply.body
    assert reply.headers["content-type"] == JSON_1_1
    assert reply.error_code == code, reply.body
    assert isinstance(reply.json()["message"], str)
    # and the service still answers
    assert "pipelineIdList" in api.list_pipelines()


def test_boto3_sends_what_it_does_not_validate_and_the_service_refuses_it(api: Any) -> None:
    # botocore checks neither enums nor max lengths, so these reach the service
    assert code_of(lambda: api.set_task_status(taskId="t", taskStatus="BOGUS")) == "InvalidRequestException"
    assert code_of(lambda: api.poll_for_task(workerGroup="w" * 2000)) == "InvalidRequestException"


def test_an_error_id_starting_with_service_is_refused(api: Any) -> None:
    # given a task a runner holds
    group = f"wg-api-errorid-{uuid.uuid4().hex[:8]}"
    pipeline_id = start_pipeline(api, ondemand_definition(shell_activity("Job"), workerGroup=group, maximumRetries="0"))
    task = wait_for_task(api, group)
    api.report_task_progress(taskId=task["taskId"])

    # when it reports failure with an errorId in the service's reserved namespace
    response = error_of(
        lambda: api.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Service_Crash")
    )

    # then the call is refused and the task is still running, so a proper report still counts
    assert response["Error"]["Code"] == "InvalidRequestException"
    assert "Service_" in response["Error"]["Message"]
    instance_id = instance_of(api, pipeline_id, "Job")
    assert describe(api, pipeline_id, instance_id)["@status"] == "RUNNING"
    api.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Crash", errorMessage="exit 3")
    final = describe(api, pipeline_id, instance_id)
    assert (final["@status"], final["errorId"], final["errorMessage"]) == ("FAILED", "Crash", "exit 3")


# -- 6. serving: held polls ----------------------------------------------------------------------


class HeldPolls:
    """One PollForTask per worker group, each on its own thread and boto3 client."""

    def __init__(self, url: str, groups: list[str]) -> None:
        self.results: dict[str, Any] = {}
        self._lock = threading.Lock()
        clients = dp_clients(url, len(groups))
        self._threads = [
            threading.Thread(target=self._poll, args=(client, group), name=f"poll-{group}", daemon=True)
            for client, group in zip(clients, groups, strict=True)
        ]

    def _poll(self, client: Any, group: str) -> None:
        try:
            result: Any = client.poll_for_task(workerGroup=group, hostname="held")
        except Exception as exc:  # recorded for the assertions
            result = exc
        with self._lock:
            self.results[group] = result

    def start(self) -> HeldPolls:
        for thread in self._threads:
            thread.start()
        return self

    def returned(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.results)

    def join(self, timeout: float) -> None:
        """Wait for every poll to return."""
        wait_for(lambda: not any(t.is_alive() for t in self._threads), timeout=timeout, what="held polls to end")


def poll_calls(service: EmulatorProcess) -> int:
    counts: int = service.admin("counters")["counters"].get("PollForTask", {}).get("calls", 0)
    return counts


def test_held_polls_do_not_hold_up_other_calls(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given a service that holds polls for 60 s, with one task being worked on
    service = emulator_factory("--poll-wait", "60")
    api = dp_client(service.url)
    busy = start_pipeline(api, ondemand_definition(shell_activity("Busy"), workerGroup="wg-busy"))
    task = wait_for_task(api, "wg-busy")
    # and a pipeline, not yet active, whose only task goes to one of the held worker groups
    later = start_pipeline(api, ondemand_definition(shell_activity("Later"), workerGroup="wg-held-7"), activate=False)
    polls = HeldPolls(service.url, [f"wg-held-{n}" for n in range(200)])
    try:
        # when 200 runners each hold a poll on a worker group without work
        polls.start()
        wait_for(lambda: poll_calls(service) >= 201, timeout=60, what="200 polls to reach the service")
        listed = api.list_pipelines()["pipelineIdList"]
        canceled = api.report_task_progress(taskId=task["taskId"])["canceled"]

        # then other calls were answered while every poll is still held
        assert polls.returned() == {}
        assert {p["id"] for p in listed} == {busy, later}
        assert canceled is False

        # when the pipeline is activated, its task goes to the waiting poll at once
        api.activate_pipeline(pipelineId=later)
        wait_for(lambda: "wg-held-7" in polls.returned(), timeout=30, what="the poll of wg-held-7 to return")
        assert list(polls.returned()) == ["wg-held-7"]
        assert polls.returned()["wg-held-7"]["taskObject"]["pipelineId"] == later
    finally:
        # when the service is stopped (SIGTERM), the other held polls end
        exit_code = service.stop()
        polls.join(timeout=30)

    # then it exits cleanly, and each other poll got an empty reply (no task), not a dropped connection
    assert exit_code == 0
    ended = polls.returned()
    assert len(ended) == 200
    leftovers = [r for group, r in ended.items() if group != "wg-held-7"]
    assert all(isinstance(r, dict) and "taskObject" not in r for r in leftovers), {type(r).__name__ for r in leftovers}


# -- 7. authentication ---------------------------------------------------------------------------


def test_require_auth_checks_signatures(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given a service that only accepts the test's keys
    key_id, secret = TEST_ENV["AWS_ACCESS_KEY_ID"], TEST_ENV["AWS_SECRET_ACCESS_KEY"]
    service = emulator_factory("--poll-wait", "2", "--require-auth", "--credentials", f"{key_id}:{secret}")

    def client(key: str, secret_key: str) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret_key, region_name="us-east-1"
        )
        return session.client(
            "datapipeline", endpoint_url=service.url, config=Config(retries={"max_attempts": 1, "mode": "standard"})
        )

    # then a client with the right keys works
    pipeline_id = client(key_id, secret).create_pipeline(name="signed", uniqueId="u1")["pipelineId"]
    # and a wrong secret, an unknown key, and no signature at all are refused
    assert code_of(lambda: client(key_id, "wrong-secret").list_pipelines()) == "InvalidRequestException"
    assert code_of(lambda: client("AKIDUNKNOWN", secret).list_pipelines()) == "InvalidRequestException"
    unsigned = raw_post(service.url, "DataPipeline.ListPipelines", {})
    assert (unsigned.status, unsigned.error_code) == (400, "InvalidRequestException")
    # and the AWS CLI with the right keys works
    listed = aws_cli(service.url, "list-pipelines")
    assert [p["id"] for p in json.loads(listed.stdout)["pipelineIdList"]] == [pipeline_id]


def test_poll_for_task_without_work_returns_no_task(api: Any) -> None:
    # an idle worker group: the poll is held for --poll-wait, then answers without a task
    assert poll_task(api, f"wg-api-idle-{uuid.uuid4().hex[:8]}") is None


# -- 8. fuzzing -----------------------------------------------------------------------------------

_MODEL = get_session().get_service_model("datapipeline")
_OPERATIONS = sorted(_MODEL.operation_names)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=30)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
)
_TARGET_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
#: Values that mean something to the service, so well-shaped bodies sometimes get past the checks.
_HINTS: dict[str, list[str]] = {
    "key": ["type", "workerGroup", "command", "parent", "scheduleType", "maximumRetries", "period", "myX"],
    "stringValue": ["ondemand", "ShellCommandActivity", "wg-fuzz", "true", "#{myX}", "1", "15 minutes"],
    "refValue": ["Default", "Target", "Nowhere"],
    "id": ["Default", "Target", "myX"],
    "fieldName": ["@status", "@scheduledStartTime", "name", "@componentParent", "command"],
    "status": ["TRY_CANCEL", "RERUN", "MARK_FINISHED", "PAUSE"],
    "sphere": ["COMPONENT", "INSTANCE", "ATTEMPT"],
    "version": ["latest", "active"],
    "workerGroup": ["wg-fuzz"],
}


_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=20)


def _from_shape(shape: Any, name: str, pipeline_id: str, sloppy: bool, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a model shape (``name`` is the member's name); if ``sloppy``, now and then of the wrong type."""
    kind = shape.type_name
    if kind == "structure":
        members = {
            m: _from_shape(s, m, pipeline_id, sloppy, depth + 1)
            for m, s in shape.members.items()
            if m in shape.required_members
        }
        optional = {
            m: _from_shape(s, m, pipeline_id, sloppy, depth + 1)
            for m, s in shape.members.items()
            if m not in shape.required_members
        }
        right: st.SearchStrategy[Any] = st.fixed_dictionaries(members, optional=optional)
    elif kind == "list":
        right = st.lists(_from_shape(shape.member, name, pipeline_id, sloppy, depth + 1), max_size=4)
    elif kind == "map":
        right = st.dictionaries(
            st.text(max_size=8), _from_shape(shape.value, name, pipeline_id, sloppy, depth + 1), max_size=3
        )
    elif kind == "boolean":
        right = st.booleans()
    elif kind in ("integer", "long"):
        right = st.integers(-5, 200)
    elif kind == "timestamp":
        right = st.floats(0, 2e9) | st.just("2026-01-01T00:00:00")
    else:
        hints = [pipeline_id] if name in ("pipelineId", "pipelineIds") else _HINTS.get(name, [])
        enum = shape.metadata.get("enum", [])
        right = st.sampled_from([*hints, *enum]) | _TEXT if hints or enum else _TEXT
    return st.one_of(right, right, right, _JSON if depth < 3 else _SCALARS) if sloppy else right


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[EmulatorProcess, str]]:
    """A service of its own (fuzzing creates and deletes things), with one active pipeline to aim at."""
    proc = EmulatorProcess(["--poll-wait", "0.2", "--time-scale", "60"]).start()
    api = dp_client(proc.url)
    pipeline_id = start_pipeline(api, ondemand_definition(shell_activity("Target"), workerGroup="wg-fuzz"))
    yield proc, pipeline_id
    proc.stop()


@st.composite
def api_requests(draw: st.DrawFn, pipeline_id: str) -> tuple[str, bytes]:
    """An operation name (mostly real) and a body: mostly well-shaped, else any JSON or any bytes."""
    operation = draw(st.sampled_from(_OPERATIONS) | _TARGET_TEXT)
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "json", "bytes"]))
    if kind == "bytes":
        return operation, draw(st.binary(max_size=100))
    if kind == "json" or operation not in _OPERATIONS:
        return operation, json.dumps(draw(_JSON)).encode()
    shape = _MODEL.operation_model(operation).input_shape
    body = draw(_from_shape(shape, "", pipeline_id, sloppy=draw(st.booleans())))
    return operation, json.dumps(body).encode()


def test_random_requests_never_break_the_service(fuzzed: tuple[EmulatorProcess, str]) -> None:
    service, pipeline_id = fuzzed

    @settings(max_examples=50, deadline=None)
    @given(request=api_requests(pipeline_id))
    def check(request: tuple[str, bytes]) -> None:
        operation, body = request

        # when a random body is posted to a random operation
        reply = raw_post(service.url, f"DataPipeline.{operation}", body)

        # then the reply is JSON: a result, or an AWS error that is the client's fault
        assert reply.headers["content-type"] == JSON_1_1
        assert reply.status in (200, 400), reply.body
        decoded = reply.json()
        assert isinstance(decoded, dict)
        if reply.status == 400:
            assert isinstance(decoded["__type"], str)
            assert isinstance(decoded["message"], str)
        # and the service still answers
        assert raw_post(service.url, "DataPipeline.ListPipelines", {}).status == 200

    check()
