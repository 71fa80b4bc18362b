"""System-managed preconditions over HTTP: the service itself checks S3 (a moto S3 server on a free port).

``--time-scale 60`` makes ``retryDelay: 2 minutes`` a 2-second re-check, so a key that appears
between two checks releases the guarded activity within seconds.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.support import (
    TEST_ENV,
    EmulatorProcess,
    describe,
    dp_client,
    free_port,
    instance_of,
    ondemand_definition,
    poll_task,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_status,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]


@pytest.fixture
def s3_url() -> Iterator[str]:
    """A moto S3 server on a free port."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_url: str) -> Any:
    """A boto3 S3 client for the moto server, with a fresh bucket as ``s3.bucket``."""
    client = boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=s3_url)
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client


@pytest.fixture
def dp(emulator_factory: Factory, s3_url: str) -> Any:
    emulator = emulator_factory("--poll-wait", "1", "--time-scale", "60", "--s3-endpoint-url", s3_url)
    return dp_client(emulator.url)


def guarded(group: str, precondition: dict[str, Any], **default_fields: Any) -> dict[str, Any]:
    """Activity ``Load`` guarded by ``precondition`` (id ``Ready``), re-checked every 2 (scaled) minutes."""
    return ondemand_definition(
        {"id": "Ready", "role": "DataPipelineDefaultRole", "retryDelay": "2 minutes", **precondition},
        shell_activity("Load", precondition={"ref": "Ready"}),
        workerGroup=group,
        **default_fields,
    )


def attempts(dp: Any, pipeline_id: str, instance_id: str) -> list[dict[str, Any]]:
    """The instance's attempts as DescribeObjects shows them, oldest first."""
    query = {"selectors": [{"fieldName": "@instanceParent", "operator": {"type": "REF_EQ", "values": [instance_id]}}]}
    ids = dp.query_objects(pipelineId=pipeline_id, sphere="ATTEMPT", query=query)["ids"]
    found = [describe(dp, pipeline_id, attempt_id) for attempt_id in ids]
    return sorted(found, key=lambda a: int(a["@attemptCount"]))


def failed_checks(dp: Any, pipeline_id: str, instance_id: str) -> int:
    return sum(1 for a in attempts(dp, pipeline_id, instance_id) if a["@status"] == "FAILED")


def test_s3_key_exists_is_rechecked_until_the_key_appears(dp: Any, s3: Any) -> None:
    # given an activity guarded by S3KeyExists on a key that does not exist yet
    group = f"wg-s3key-{uuid.uuid4().hex[:8]}"
    key = f"s3://{s3.bucket}/daily/_SUCCESS"
    pipeline_id = start_pipeline(dp, guarded(group, {"type": "S3KeyExists", "s3Key": key}))
    ready = instance_of(dp, pipeline_id, "Ready")

    # when the service has checked once and found nothing
    wait_for(lambda: failed_checks(dp, pipeline_id, ready) >= 1, timeout=15, what="a first, failed check")

    # then the precondition is still being checked, and the activity is not handed out
    assert describe(dp, pipeline_id, ready)["@status"] == "RUNNING"
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Load"))["@status"] == "WAITING_ON_DEPENDENCIES"
    assert poll_task(dp, group) is None
    first = attempts(dp, pipeline_id, ready)[0]
    assert first["attemptStatus"] == "FALSE"
    assert "does not exist" in first["errorMessage"]

    # when the key appears
    s3.put_object(Bucket=s3.bucket, Key="daily/_SUCCESS", Body=b"")

    # then a re-check (every 2 s) finds it and the activity is handed out
    task = wait_for_task(dp, group, timeout=15)
    assert task["attemptId"].startswith(instance_of(dp, pipeline_id, "Load"))
    assert describe(dp, pipeline_id, ready)["@status"] == "FINISHED"
    # and DescribeObjects shows every check as an attempt, the last one FINISHED
    history = attempts(dp, pipeline_id, ready)
    assert len(history) >= 2
    assert [a["@status"] for a in history[:-1]] == ["FAILED"] * (len(history) - 1)
    assert history[-1]["@status"] == "FINISHED"
    assert history[-1]["@id"] == f"{ready}_Attempt={len(history)}"


def test_s3_prefix_not_empty_waits_for_an_object_under_the_prefix(dp: Any, s3: Any) -> None:
    # given S3PrefixNotEmpty on a prefix written with a parameter, and an object next to (not under) it
    group = f"wg-s3prefix-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=s3.bucket, Key="incoming-other/x.csv", Body=b"x")
    doc = guarded(group, {"type": "S3PrefixNotEmpty", "s3Prefix": f"s3://{s3.bucket}/#{{myDir}}/"})
    doc["parameters"] = [{"id": "myDir", "type": "String"}]
    doc["values"] = {"myDir": "incoming"}
    pipeline_id = start_pipeline(dp, doc)
    ready = instance_of(dp, pipeline_id, "Ready")

    # when the service has looked and found the prefix empty
    wait_for(lambda: failed_checks(dp, pipeline_id, ready) >= 1, timeout=15, what="a first, failed check")
    assert poll_task(dp, group) is None
    assert f"s3://{s3.bucket}/incoming/" in attempts(dp, pipeline_id, ready)[0]["errorMessage"]

    # when an object lands under the prefix
    s3.put_object(Bucket=s3.bucket, Key="incoming/part-0000.csv", Body=b"a,b\n")

    # then the activity is handed out
    wait_for_task(dp, group, timeout=15)
    assert describe(dp, pipeline_id, ready)["@status"] == "FINISHED"


@pytest.mark.parametrize(("mode", "load_status"), [("none", "WAITING_ON_DEPENDENCIES"), ("cascade", "CASCADE_FAILED")])
def test_a_precondition_never_met_fails_after_its_timeout(dp: Any, s3: Any, mode: str, load_status: str) -> None:
    # given S3KeyExists on a key that never appears, with a 4 (scaled) minute timeout
    group = f"wg-s3timeout-{uuid.uuid4().hex[:8]}"
    precondition = {"type": "S3KeyExists", "s3Key": f"s3://{s3.bucket}/never", "preconditionTimeout": "4 minutes"}
    pipeline_id = start_pipeline(dp, guarded(group, precondition, failureAndRerunMode=mode))
    ready = instance_of(dp, pipeline_id, "Ready")

    # when the timeout passes
    wait_for_status(dp, pipeline_id, "Ready", "FAILED", timeout=20)

    # then the precondition says why, after several checks, and the activity follows the dependency rules
    fields = describe(dp, pipeline_id, ready)
    assert fields["errorId"] == "PreconditionTimeout"
    assert "preconditionTimeout" in fields["errorMessage"]
    assert len(attempts(dp, pipeline_id, ready)) >= 2
    wait_for_status(dp, pipeline_id, "Load", load_status, timeout=5)
    assert poll_task(dp, group) is None


@pytest.mark.parametrize("type_name", ["DynamoDBTableExists", "DynamoDBDataExists"])
def test_dynamodb_preconditions_fail_with_a_clear_message(dp: Any, type_name: str) -> None:
    # given a DynamoDB system precondition
    group = f"wg-ddb-{uuid.uuid4().hex[:8]}"
    pipeline_id = start_pipeline(dp, guarded(group, {"type": type_name, "tableName": "orders"}))

    # then it fails at once, saying the local service does not check DynamoDB
    wait_for_status(dp, pipeline_id, "Ready", "FAILED", timeout=10)
    fields = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Ready"))
    assert fields["errorId"] == "UnsupportedPrecondition"
    assert "not supported by the local service" in fields["errorMessage"]


def test_a_malformed_s3_key_fails_the_precondition_without_rechecking(dp: Any) -> None:
    group = f"wg-badkey-{uuid.uuid4().hex[:8]}"
    pipeline_id = start_pipeline(dp, guarded(group, {"type": "S3KeyExists", "s3Key": "not-a-url"}))

    wait_for_status(dp, pipeline_id, "Ready", "FAILED", timeout=10)
    ready = instance_of(dp, pipeline_id, "Ready")
    assert "s3://bucket/key" in describe(dp, pipeline_id, ready)["errorMessage"]
    assert len(attempts(dp, pipeline_id, ready)) == 1


def test_a_slow_s3_never_blocks_the_api(emulator_factory: Factory) -> None:
    # given an "S3" that accepts connections and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        emulator = emulator_factory("--poll-wait", "1", "--time-scale", "60", "--s3-endpoint-url", url)
        dp = dp_client(emulator.url)
        group = f"wg-slow-{uuid.uuid4().hex[:8]}"
        pipeline_id = start_pipeline(dp, guarded(group, {"type": "S3KeyExists", "s3Key": "s3://b/k"}))
        ready = instance_of(dp, pipeline_id, "Ready")

        # when a check is in flight
        wait_for(lambda: describe(dp, pipeline_id, ready)["@status"] == "RUNNING", timeout=10, what="a check")
        time.sleep(0.5)

        # then API calls still answer (the S3 endpoint never does: a call waiting on it would time out)
        for _ in range(5):
            dp.list_pipelines()
            describe(dp, pipeline_id, ready)
        assert attempts(dp, pipeline_id, ready)[0]["@status"] == "RUNNING"


def test_checking_resumes_after_a_restart(emulator_factory: Factory, s3_url: str, s3: Any, tmp_path: Any) -> None:
    # given a service with --state checking a key that does not exist yet
    args = ("--poll-wait", "1", "--time-scale", "60", "--s3-endpoint-url", s3_url, "--state", str(tmp_path / "s.db"))
    emulator = emulator_factory(*args)
    dp = dp_client(emulator.url)
    group = f"wg-s3restart-{uuid.uuid4().hex[:8]}"
    pipeline_id = start_pipeline(dp, guarded(group, {"type": "S3KeyExists", "s3Key": f"s3://{s3.bucket}/late"}))
    ready = instance_of(dp, pipeline_id, "Ready")
    wait_for(lambda: failed_checks(dp, pipeline_id, ready) >= 1, timeout=15, what="a first, failed check")

    # when the service restarts and the key then appears
    emulator.restart()
    dp = dp_client(emulator.url)
    s3.put_object(Bucket=s3.bucket, Key="late", Body=b"")

    # then checking carries on and the activity is handed out
    wait_for_task(dp, group, timeout=15)
    assert describe(dp, pipeline_id, ready)["@status"] == "FINISHED"
