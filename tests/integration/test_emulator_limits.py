"""AWS's limits over HTTP: each is refused the way AWS refuses it, and ``--limit NAME=N`` moves it.

Definition limits come back from PutPipelineDefinition as ``LIMIT_EXCEEDED`` / ``INVALID_FIELD_VALUE``
validation errors (and the pipeline cannot be activated); the pipeline limit makes CreatePipeline
answer ``InvalidRequestException``.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import (
    EmulatorProcess,
    ManagedProcess,
    bridge_cli,
    child_env,
    dp_client,
    free_port,
    ondemand_definition,
    put_definition,
    shell_activity,
)

Factory = Callable[..., EmulatorProcess]
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def dp() -> Iterator[Any]:
    """One service with AWS's default limits for the definition tests (they create one pipeline each)."""
    proc = EmulatorProcess(["--poll-wait", "1"]).start()
    yield dp_client(proc.url)
    proc.stop()


def new_pipeline(dp: Any) -> str:
    pipeline_id: str = dp.create_pipeline(name="limits", uniqueId=str(uuid.uuid4()))["pipelineId"]
    return pipeline_id


def errors_of(reply: dict[str, Any]) -> dict[str, list[str]]:
    return {entry["id"]: entry["errors"] for entry in reply["validationErrors"]}


def put(dp: Any, doc: Doc) -> tuple[str, dict[str, Any]]:
    pipeline_id = new_pipeline(dp)
    return pipeline_id, put_definition(dp, pipeline_id, doc)


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    code: str = exc.value.response["Error"]["Code"]
    return code


def assert_refused(dp: Any, doc: Doc, object_id: str, pattern: str) -> None:
    """PutPipelineDefinition reports ``pattern`` on ``object_id``, and activation is refused."""
    pipeline_id, reply = put(dp, doc)
    assert reply["errored"] is True
    messages = errors_of(reply).get(object_id, [])
    assert any(re.search(pattern, m) for m in messages), reply["validationErrors"]
    assert code_of(lambda: dp.activate_pipeline(pipelineId=pipeline_id)) == "InvalidRequestException"


def assert_accepted(dp: Any, doc: Doc) -> None:
    _, reply = put(dp, doc)
    assert reply["errored"] is False, reply["validationErrors"]


def activities(count: int) -> Doc:
    """A definition of ``count`` objects: Default and ``count - 1`` activities."""
    return ondemand_definition(*(shell_activity(f"Step{n}") for n in range(count - 1)), workerGroup="wg")


def wide_object(field_count: int) -> Doc:
    """An activity with exactly ``field_count`` fields (type, command and ``my`` fields)."""
    extra = {f"myField{n}": "x" for n in range(field_count - 2)}
    return ondemand_definition(shell_activity("Wide", **extra), workerGroup="wg")


def object_of_bytes(total: int) -> Doc:
    """An activity whose fields (names and values, UTF-8) add up to exactly ``total`` bytes."""
    base = {"type": "ShellCommandActivity", "command": "true"}
    used = sum(len(k) + len(v) for k, v in base.items()) + len("myA") + len("myB")
    rest = total - used
    big = {"id": "Big", **base, "myA": "a" * (rest // 2), "myB": "b" * (rest - rest // 2)}
    return ondemand_definition(big, workerGroup="wg")


# -- definition limits -------------------------------------------------------------------------------


def test_objects_per_pipeline(dp: Any) -> None:
    assert_accepted(dp, activities(100))
    assert_refused(dp, activities(101), "Step99", r"LIMIT_EXCEEDED: the pipeline has 101 objects; the limit is 100")


def test_fields_per_object(dp: Any) -> None:
    assert_accepted(dp, wide_object(50))
    assert_refused(dp, wide_object(51), "Wide", r"LIMIT_EXCEEDED: the object has 51 fields; the limit is 50")


def test_bytes_per_field_counts_utf8_bytes_not_characters(dp: Any) -> None:
    # "é" is two UTF-8 bytes: 5,121 characters make 10,242 bytes, 5,120 plus "a" make 10,241
    assert_accepted(dp, ondemand_definition(shell_activity("Text", myText="é" * 5120), workerGroup="wg"))
    over = ondemand_definition(shell_activity("Text", myText="é" * 5120 + "a"), workerGroup="wg")
    assert_refused(dp, over, "Text", r"LIMIT_EXCEEDED: the value of 'myText' is over 10240 UTF-8 bytes")


def test_bytes_per_object_includes_field_names(dp: Any) -> None:
    assert_accepted(dp, object_of_bytes(15360))
    assert_refused(dp, object_of_bytes(15361), "Big", r"LIMIT_EXCEEDED: the object is 15361 UTF-8 bytes")


def test_retries_per_activity(dp: Any) -> None:
    assert_accepted(dp, ondemand_definition(shell_activity("Job", maximumRetries="5"), workerGroup="wg"))
    doc = ondemand_definition(shell_activity("Job", maximumRetries="6"), workerGroup="wg")
    assert_refused(dp, doc, "Job", r"INVALID_FIELD_VALUE: 'maximumRetries' must be an integer from 0 to 5")


def test_parameters_per_definition(dp: Any) -> None:
    def with_parameters(count: int) -> Doc:
        doc = ondemand_definition(shell_activity("Job"), workerGroup="wg")
        doc["parameters"] = [{"id": f"myP{n}", "type": "String", "default": "v"} for n in range(count)]
        return doc

    assert_accepted(dp, with_parameters(50))
    assert_refused(
        dp, with_parameters(51), "myP50", r"LIMIT_EXCEEDED: the definition has 51 parameters; the limit is 50"
    )


def test_validate_pipeline_definition_reports_limits_too(dp: Any) -> None:
    from emulator.definition import definition_file_to_api

    objects, _, _ = definition_file_to_api(activities(101))
    reply = dp.validate_pipeline_definition(pipelineId=new_pipeline(dp), pipelineObjects=objects)
    assert reply["errored"] is True
    assert any("LIMIT_EXCEEDED" in m for m in errors_of(reply)["Step99"])


# -- --limit -------------------------------------------------------------------------------------------


def test_limit_option_raises_the_objects_per_pipeline_limit(emulator_factory: Factory) -> None:
    dp = dp_client(emulator_factory("--limit", "objects-per-pipeline=101").url)
    assert_accepted(dp, activities(101))
    assert_refused(dp, activities(102), "Step100", r"LIMIT_EXCEEDED: the pipeline has 102 objects; the limit is 101")


def test_pipelines_per_account(emulator_factory: Factory) -> None:
    # given a service whose account may hold 3 pipelines, holding 3
    dp = dp_client(emulator_factory("--limit", "pipelines=3").url)
    ids = [dp.create_pipeline(name=f"p{n}", uniqueId=f"u{n}")["pipelineId"] for n in range(3)]

    # when a 4th is created, it is refused with AWS's error
    with pytest.raises(ClientError) as exc:
        dp.create_pipeline(name="p3", uniqueId="u3")
    assert exc.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "limit exceeded" in exc.value.response["Error"]["Message"].lower()
    assert len(dp.list_pipelines()["pipelineIdList"]) == 3

    # and CreatePipeline stays idempotent at the limit
    assert dp.create_pipeline(name="p0", uniqueId="u0")["pipelineId"] == ids[0]

    # when one is deleted, there is room again
    dp.delete_pipeline(pipelineId=ids[0])
    assert dp.create_pipeline(name="p3", uniqueId="u3")["pipelineId"].startswith("df-")


def test_the_default_pipeline_limit_is_100(emulator_factory: Factory) -> None:
    dp = dp_client(emulator_factory().url)
    for n in range(100):
        dp.create_pipeline(name=f"p{n}", uniqueId=f"u{n}")
    assert code_of(lambda: dp.create_pipeline(name="p100", uniqueId="u100")) == "InvalidRequestException"


def test_limits_come_from_the_environment() -> None:
    port = free_port()
    env = child_env(BRIDGE_EMULATOR_LIMITS="pipelines=1 parameters=60")
    cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(port), "--no-throttle"]
    proc = ManagedProcess(cmd, env, ready_text="listening on").start(timeout=30)
    try:
        dp = dp_client(f"http://127.0.0.1:{port}")
        dp.create_pipeline(name="only", uniqueId="only")
        assert code_of(lambda: dp.create_pipeline(name="two", uniqueId="two")) == "InvalidRequestException"
    finally:
        proc.stop()


@pytest.mark.parametrize("value", ["bogus=3", "pipelines", "pipelines=-1", "pipelines=many"])
def test_a_bad_limit_stops_the_start_with_a_usage_error(value: str) -> None:
    result = bridge_cli("emulator", "--port", "0", "--limit", value, timeout=30)
    assert result.returncode == 2
    assert "--limit" in result.stderr
