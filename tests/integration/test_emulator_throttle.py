"""The local service's throttling and fault injection over HTTP, as boto3 clients see them.

Throttling is on by default in ``bridge emulator`` (``tests.support.EmulatorProcess`` turns it off unless a
test asks for ``--throttle`` or ``--rate``). Refill rates here are slow (a token every few seconds) so that
"the burst passes, the next call is refused" never depends on how fast the machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from botocore.retries.standard import RetryContext, RetryEventAdapter, StandardRetryConditions, ThrottlingErrorDetector

from tests.support import (
    ROOT,
    TEST_ENV,
    EmulatorProcess,
    LineReader,
    bridge_cli,
    child_env,
    describe,
    dp_client,
    free_port,
    instance_of,
    ondemand_definition,
    poll_task,
    raw_post,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]
DROPPED = (ConnectionClosedError, EndpointConnectionError, ReadTimeoutError)
AWS_TABLE = {
    "ActivatePipeline": (1, 100),
    "CreatePipeline": (1, 100),
    "DeletePipeline": (1, 100),
    "DescribeObjects": (2, 100),
    "DescribePipelines": (1, 100),
    "GetPipelineDefinition": (1, 100),
    "PollForTask": (2, 100),
    "ListPipelines": (1, 100),
    "PutPipelineDefinition": (1, 100),
    "QueryObjects": (2, 100),
    "ReportTaskProgress": (10, 100),
    "SetTaskStatus": (10, 100),
    "SetStatus": (1, 100),
    "ReportTaskRunnerHeartbeat": (1, 100),
    "ValidatePipelineDefinition": (1, 100),
}


def client_error(call: Callable[[], Any]) -> dict[str, Any]:
    """The response of the ``ClientError`` that ``call`` raises."""
    with pytest.raises(ClientError) as caught:
        call()
    response: dict[str, Any] = caught.value.response
    return response


def counters_of(service: EmulatorProcess, operation: str) -> dict[str, int]:
    counts: dict[str, int] = service.admin("counters")["counters"].get(operation, {})
    return counts


def passes(call: Callable[[], Any]) -> bool:
    """Whether ``call`` succeeds; ``False`` if it is throttled (any other error fails the test)."""
    try:
        call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ThrottlingException":
            raise
        return False
    return True


def retrying_client(url: str) -> Any:
    """A client with botocore's standard retries on, as most applications build one."""
    session = boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 10})
    return session.client("datapipeline", endpoint_url=url, config=config)


def new_pipeline(dp: Any) -> str:
    pipeline_id: str = dp.create_pipeline(name="throttle-test", uniqueId=str(uuid.uuid4()))["pipelineId"]
    return pipeline_id


# -- throttling -----------------------------------------------------------------------------------


def test_calls_past_the_burst_are_throttled_and_pass_again_after_a_refill(emulator_factory: Factory) -> None:
    # Given ListPipelines limited to a burst of 5, refilled at one call every 5 s
    service = emulator_factory("--rate", "ListPipelines=0.2/5")
    dp = dp_client(service.url)

    # When 6 calls arrive at once
    for _ in range(5):
        dp.list_pipelines()
    refused = client_error(dp.list_pipelines)

    # Then the 6th is a ThrottlingException, HTTP 400, "Rate exceeded"
    assert refused["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    assert refused["ResponseMetadata"]["HTTPStatusCode"] == 400
    # And botocore's standard retry mode classifies it as throttling, hence retryable
    context = RetryContext(attempt_number=1, parsed_response=refused)
    assert ThrottlingErrorDetector(RetryEventAdapter()).is_throttling_error_from_context(context)
    assert StandardRetryConditions().is_retryable(context)
    # And the admin API counts it
    assert counters_of(service, "ListPipelines") == {
        "calls": 6,
        "throttled": 1,
        "faulted": 0,
        "dropped": 0,
        "errors": 0,
    }

    # When the bucket has had time to refill one token
    wait_for(lambda: passes(dp.list_pipelines), timeout=30, interval=0.5, what="a token to come back")

    # Then one call passed, and the bucket is empty again
    assert client_error(dp.list_pipelines)["Error"]["Code"] == "ThrottlingException"


def test_the_throttling_body_is_aws_shape(emulator_factory: Factory) -> None:
    # Given an operation that may be called once
    service = emulator_factory("--rate", "DescribePipelines=0/1")
    target = "DataPipeline.DescribePipelines"
    assert raw_post(service.url, target, {"pipelineIds": ["df-NOPE"]}).status == 400  # PipelineNotFound

    # When it is called again
    reply = raw_post(service.url, target, {"pipelineIds": ["df-NOPE"]})

    # Then the reply is the namespaced ThrottlingException botocore strips to its code
    assert reply.status == 400
    assert reply.json() == {"__type": "com.amazon.setl.webservice#ThrottlingException", "message": "Rate exceeded"}
    assert reply.headers["x-amzn-requestid"]
    # And a throttled call is counted as throttled, not as an error of the operation
    assert counters_of(service, "DescribePipelines")["throttled"] == 1
    assert counters_of(service, "DescribePipelines")["errors"] == 1


def test_a_throttled_call_does_nothing(emulator_factory: Factory) -> None:
    # Given CreatePipeline allowed once, never refilled
    service = emulator_factory("--rate", "CreatePipeline=0/1")
    dp = dp_client(service.url)
    kept = new_pipeline(dp)

    # When a second CreatePipeline is throttled
    assert client_error(lambda: new_pipeline(dp))["Error"]["Code"] == "ThrottlingException"

    # Then no second pipeline exists
    assert [p["id"] for p in dp.list_pipelines()["pipelineIdList"]] == [kept]


def test_a_retrying_client_rides_out_throttling(emulator_factory: Factory) -> None:
    # Given ListPipelines at one call a second, burst 1, and a client with botocore's standard retries
    service = emulator_factory("--rate", "ListPipelines=1/1")
    patient = retrying_client(service.url)
    dp_client(service.url).list_pipelines()  # takes the only token

    # When the retrying client calls at once
    reply = patient.list_pipelines()

    # Then botocore retried the throttled attempts until one passed
    assert reply["ResponseMetadata"]["RetryAttempts"] >= 1
    assert counters_of(service, "ListPipelines")["throttled"] >= 1


def test_default_rates_are_aws_table(emulator_factory: Factory) -> None:
    # Given the service with its default throttling
    service = emulator_factory("--throttle")

    # When the buckets are read back through the admin CLI
    result = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "throttle")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)

    # Then they are AWS's table, full; operations missing from the table are not throttled
    assert shown["enabled"] is True
    assert {op: (b["rate"], b["burst"]) for op, b in shown["operations"].items()} == AWS_TABLE
    assert all(b["tokens"] > 99 for b in shown["operations"].values())
    for operation in ("EvaluateExpression", "AddTags", "RemoveTags", "DeactivatePipeline"):
        assert operation not in shown["operations"]


def test_a_burst_of_100_polls_passes_and_more_are_refused(emulator_factory: Factory) -> None:
    # Given AWS's PollForTask limit (2/s, burst 100) and short held polls
    service = emulator_factory("--throttle", "--poll-wait", "0.2")

    # When 150 runners poll at once
    def poll(_: int) -> int:
        return raw_post(service.url, "DataPipeline.PollForTask", {"workerGroup": "wg-burst"}).status

    with ThreadPoolExecutor(max_workers=150) as pool:
        statuses = list(pool.map(poll, range(150)))

    # Then at least the burst passed and the rest were throttled (2/s refill cannot cover 50 calls here)
    assert statuses.count(200) >= 100
    assert statuses.count(400) >= 1
    assert set(statuses) == {200, 400}
    assert counters_of(service, "PollForTask")["throttled"] == statuses.count(400)


def test_a_held_poll_takes_one_token_at_arrival(emulator_factory: Factory) -> None:
    # Given PollForTask allowed once, never refilled, polls held 1 s
    service = emulator_factory("--rate", "PollForTask=0/1", "--poll-wait", "1")
    dp = dp_client(service.url)

    # When a poll is held for its whole wait
    assert poll_task(dp, "wg-held") is None

    # Then it was not refused while held (it paid at arrival), and the next poll is refused
    assert client_error(lambda: poll_task(dp, "wg-held"))["Error"]["Code"] == "ThrottlingException"
    assert counters_of(service, "PollForTask")["throttled"] == 1


def test_no_throttle_never_refuses(emulator_factory: Factory) -> None:
    # Given throttling turned off
    service = emulator_factory("--no-throttle")
    dp = dp_client(service.url)

    # When calls go well past AWS's burst of 100
    for _ in range(150):
        dp.list_pipelines()

    # Then none is refused
    assert counters_of(service, "ListPipelines")["throttled"] == 0
    assert service.admin("throttle") == {"enabled": False, "operations": {}}


# -- fault injection ------------------------------------------------------------------------------


def test_injected_errors_answer_500_without_running(emulator_factory: Factory) -> None:
    # Given every call faulted except ListPipelines (a default plus an override)
    service = emulator_factory("--fault-rate", "1", "--fault-rate", "ListPipelines=0")
    dp = dp_client(service.url)

    # When a pipeline is created
    refused = client_error(lambda: new_pipeline(dp))

    # Then the client gets InternalServiceError, HTTP 500, and no pipeline exists
    assert refused["Error"]["Code"] == "InternalServiceError"
    assert refused["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert dp.list_pipelines()["pipelineIdList"] == []
    # And the admin API counts it as faulted, per operation
    assert counters_of(service, "CreatePipeline") == {
        "calls": 1,
        "throttled": 0,
        "faulted": 1,
        "dropped": 0,
        "errors": 0,
    }
    assert counters_of(service, "ListPipelines")["faulted"] == 0
    # And the health and admin endpoints are never faulted
    with urllib.request.urlopen(f"{service.url}/_health", timeout=10) as health:
        assert health.status == 200
    assert service.admin("faults")["faultRate"] == {"default": 1.0, "operations": {"ListPipelines": 0.0}}

    # When the faults are turned off at run time through the admin CLI
    healed = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "faults", "--off")
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout)["enabled"] is False

    # Then the same call runs
    created = new_pipeline(dp)
    assert [p["id"] for p in dp.list_pipelines()["pipelineIdList"]] == [created]


def test_injected_latency_delays_each_call(emulator_factory: Factory) -> None:
    # Given 300 ms of latency on ListPipelines
    service = emulator_factory("--latency-ms", "ListPipelines=300")
    dp = dp_client(service.url)
    dp.list_pipelines()  # a first call opens the connection

    # When it is called
    started = time.monotonic()
    dp.list_pipelines()
    elapsed = time.monotonic() - started

    # Then it took at least that long
    assert elapsed >= 0.9 * 0.3


def test_a_dropped_reply_still_did_the_work(emulator_factory: Factory) -> None:
    # Given every CreatePipeline reply dropped
    service = emulator_factory("--drop-rate", "CreatePipeline=1")
    dp = dp_client(service.url)

    # When a pipeline is created
    with pytest.raises(DROPPED):
        dp.create_pipeline(name="dropped", uniqueId="dropped-1")

    # Then the client saw the connection close, yet the pipeline exists
    listed = dp.list_pipelines()["pipelineIdList"]
    assert [p["name"] for p in listed] == ["dropped"]
    assert counters_of(service, "CreatePipeline")["dropped"] == 1
    assert counters_of(service, "ListPipelines")["dropped"] == 0


def test_a_dropped_poll_reply_leaves_the_task_handed_out_until_its_ack_deadline(emulator_factory: Factory) -> None:
    # Given PollForTask replies dropped, and a 5 s acknowledgement deadline
    service = emulator_factory("--drop-rate", "PollForTask=1", "--ack-timeout", "5", "--poll-wait", "1")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg-drop"))
    wait_for(lambda: service.admin("stats")["queued"].get("wg-drop"), what="the task to be queued")

    # When a runner's poll is handed the task and the reply is lost
    with pytest.raises(DROPPED):
        dp.poll_for_task(workerGroup="wg-drop", hostname="unlucky-runner")

    # Then the service handed it out to that runner
    attempt_id = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))["@headAttempt"]
    attempt = describe(dp, pipeline_id, attempt_id)
    assert (attempt["@status"], attempt["hostname"]) == ("WAITING_FOR_RUNNER", "unlucky-runner")
    assert counters_of(service, "PollForTask")["dropped"] == 1

    # When the replies flow again and a runner polls at once
    assert service.admin("faults", {"dropRate": []})["enabled"] is False
    again = poll_task(dp, "wg-drop", hostname="next-runner")

    # Then it is not offered again before its deadline: the lost reply is not undone
    assert again is None

    # And after the deadline it comes back, as a new attempt, the lost one TIMEDOUT
    task = wait_for_task(dp, "wg-drop", timeout=30, hostname="next-runner")
    assert task["attemptId"] == attempt_id.replace("_Attempt=1", "_Attempt=2")
    assert describe(dp, pipeline_id, attempt_id)["@status"] == "TIMEDOUT"


def test_a_fault_seed_makes_runs_reproducible(emulator_factory: Factory) -> None:
    # Given two services with the same seed and half their ListPipelines calls faulted
    def outcomes() -> list[bool]:
        service = emulator_factory("--fault-rate", "ListPipelines=0.5", "--fault-seed", "42")
        dp = dp_client(service.url)
        results = []
        for _ in range(20):
            try:
                dp.list_pipelines()
                results.append(True)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "InternalServiceError"
                results.append(False)
        return results

    # Then both see the same calls fail, and some but not all
    first = outcomes()
    assert first == outcomes()
    assert 0 < first.count(False) < 20


# -- environment variables ------------------------------------------------------------------------


@pytest.fixture
def env_emulator() -> Iterator[Callable[..., str]]:
    """Start ``bridge emulator`` configured only through ``BRIDGE_EMULATOR_*`` variables; returns its URL."""
    started: list[tuple[subprocess.Popen[str], LineReader]] = []

    def start(**env: str) -> str:
        port = free_port()
        cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(port)]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(**env), cwd=ROOT
        )
        output = LineReader(proc.stdout)
        started.append((proc, output))
        output.wait_for("listening on", timeout=30)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc, output in started:
        proc.terminate()
        proc.wait(timeout=15)
        output.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_throttling_and_faults_are_set_by_environment_variables(env_emulator: Callable[..., str]) -> None:
    # Given the service configured through its environment
    url = env_emulator(
        BRIDGE_EMULATOR_RATES="PollForTask=5/10,SetStatus=1/2 AddTags=3/4",
        BRIDGE_EMULATOR_FAULT_RATE="0.25 ReportTaskProgress=0.5",
        BRIDGE_EMULATOR_LATENCY_MS="QueryObjects=7",
        BRIDGE_EMULATOR_DROP_RATE="SetTaskStatus=0.1",
        BRIDGE_EMULATOR_FAULT_SEED="9",
    )
    service = EmulatorProcess(port=int(url.rsplit(":", 1)[1]))

    # Then the admin API shows what they say
    buckets = service.admin("throttle")["operations"]
    assert (buckets["PollForTask"]["rate"], buckets["PollForTask"]["burst"]) == (5, 10)
    assert (buckets["SetStatus"]["rate"], buckets["SetStatus"]["burst"]) == (1, 2)
    assert (buckets["AddTags"]["rate"], buckets["AddTags"]["burst"]) == (3, 4)
    assert (buckets["ListPipelines"]["rate"], buckets["ListPipelines"]["burst"]) == (1, 100)
    faults = service.admin("faults")
    assert faults["faultRate"] == {"default": 0.25, "operations": {"ReportTaskProgress": 0.5}}
    assert faults["latencyMs"] == {"default": 0.0, "operations": {"QueryObjects": 7.0}}
    assert faults["dropRate"] == {"default": 0.0, "operations": {"SetTaskStatus": 0.1}}
    assert faults["seed"] == 9

    # And BRIDGE_EMULATOR_NO_THROTTLE turns throttling off
    unthrottled = EmulatorProcess(port=int(env_emulator(BRIDGE_EMULATOR_NO_THROTTLE="1").rsplit(":", 1)[1]))
    assert unthrottled.admin("throttle")["enabled"] is False
