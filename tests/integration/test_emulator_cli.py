"""The local Data Pipeline service driven by command lines: the AWS CLI (`aws datapipeline ...`) and `bridge emulator`.

Every CLI call is a subprocess, as a user would run it. Tasks are driven through boto3, as a
task runner would.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ROOT,
    EmulatorProcess,
    LineReader,
    aws_cli,
    bridge_cli,
    child_env,
    describe,
    dp_client,
    fields_of,
    ondemand_definition,
    raw_post,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_task,
)


@pytest.fixture(scope="module")
def service() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(["--poll-wait", "2", "--time-scale", "60"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(service: EmulatorProcess) -> Any:
    return dp_client(service.url)


def cli(service: EmulatorProcess, *args: str) -> Any:
    """Run ``aws datapipeline ARGS`` and decode its JSON output (``None`` when it prints nothing)."""
    out = aws_cli(service.url, *args).stdout
    return json.loads(out) if out.strip() else None


def cli_error(service: EmulatorProcess, *args: str) -> str:
    """Run a command that must fail; returns what it printed on stderr."""
    result = aws_cli(service.url, *args, check=False)
    assert result.returncode != 0, result.stdout
    return result.stderr


def create(service: EmulatorProcess, name: str = "cli-test") -> str:
    created = cli(service, "create-pipeline", "--name", name, "--unique-id", str(uuid.uuid4()))
    pipeline_id: str = created["pipelineId"]
    return pipeline_id


def write_definition(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return f"file://{path}"


def state_of(service: EmulatorProcess, pipeline_id: str) -> str:
    described = cli(service, "describe-pipelines", "--pipeline-ids", pipeline_id)["pipelineDescriptionList"][0]
    state: str = {f["key"]: f["stringValue"] for f in described["fields"]}["@pipelineState"]
    return state


GREETING_DEFINITION = {
    "objects": [
        {"id": "Default", "name": "Default", "scheduleType": "ondemand", "workerGroup": "wg-cli-greet"},
        {"id": "Greet", "name": "Greet", "type": "ShellCommandActivity", "command": "echo #{myGreeting}"},
    ],
    "parameters": [{"id": "myGreeting", "type": "String", "description": "What to say"}],
}


# -- the AWS CLI walkthrough ------------------------------------------------------------------------


def test_create_put_and_get_a_definition_with_parameters(service: EmulatorProcess, tmp_path: Path) -> None:
    # given a pipeline created twice with the same name and unique id
    unique_id = str(uuid.uuid4())
    first = cli(service, "create-pipeline", "--name", "greeter", "--unique-id", unique_id)
    again = cli(service, "create-pipeline", "--name", "greeter", "--unique-id", unique_id)
    assert re.fullmatch(r"df-[A-Z0-9]{19}", first["pipelineId"])
    assert again == first
    pipeline_id = first["pipelineId"]

    # when a definition file with a parameter is put, with the parameter's value on the command line
    put = cli(
        service,
        "put-pipeline-definition",
        "--pipeline-id",
        pipeline_id,
        "--pipeline-definition",
        write_definition(tmp_path / "def.json", GREETING_DEFINITION),
        "--parameter-values",
        "myGreeting=hello world",
    )

    # then it validates, and get-pipeline-definition gives back the file, parameters and values
    assert put == {"validationErrors": [], "validationWarnings": [], "errored": False}
    got = cli(service, "get-pipeline-definition", "--pipeline-id", pipeline_id)
    assert got == {**GREETING_DEFINITION, "values": {"myGreeting": "hello world"}}


def test_put_a_definition_with_errors(service: EmulatorProcess, tmp_path: Path) -> None:
    # given a definition whose activity has both command and scriptUri, and a mistyped field
    pipeline_id = create(service)
    doc = ondemand_definition(
        shell_activity("Both", scriptUri="s3://bucket/run.sh", colour="blue"), workerGroup="wg-cli-broken"
    )

    # when it is put
    result = aws_cli(
        service.url,
        "put-pipeline-definition",
        "--pipeline-id",
        pipeline_id,
        "--pipeline-definition",
        write_definition(tmp_path / "broken.json", doc),
        check=False,
    )

    # then the CLI exits 0 (it does not treat "errored" as a failure) and prints the errors and warnings
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["errored"] is True
    assert [e["id"] for e in printed["validationErrors"]] == ["Both"]
    assert printed["validationErrors"][0]["errors"][0].startswith("CONFLICTING_FIELDS")
    assert [w["id"] for w in printed["validationWarnings"]] == ["Both"]
    # and activating it fails with the service's message
    stderr = cli_error(service, "activate-pipeline", "--pipeline-id", pipeline_id)
    assert "InvalidRequestException" in stderr
    assert "errors" in stderr


def test_activate_then_list_describe_query_and_list_runs(service: EmulatorProcess, api: Any, tmp_path: Path) -> None:
    # given a pipeline with a put definition
    pipeline_id = create(service, name="walkthrough")
    doc = ondemand_definition(shell_activity("Hello", command="echo hello"), workerGroup="wg-cli-walk")
    definition = write_definition(tmp_path / "def.json", doc)
    cli(service, "put-pipeline-definition", "--pipeline-id", pipeline_id, "--pipeline-definition", definition)
    assert state_of(service, pipeline_id) == "PENDING"

    # when it is activated
    assert cli(service, "activate-pipeline", "--pipeline-id", pipeline_id) is None

    # then list-pipelines and describe-pipelines show it scheduled
    listed = cli(service, "list-pipelines")["pipelineIdList"]
    assert {"id": pipeline_id, "name": "walkthrough"} in listed
    assert state_of(service, pipeline_id) == "SCHEDULED"
    # and query-objects finds its one instance, which describe-objects shows waiting for a runner
    ids = cli(service, "query-objects", "--pipeline-id", pipeline_id, "--sphere", "INSTANCE")["ids"]
    assert len(ids) == 1
    assert ids[0].startswith("@Hello_")
    described = cli(service, "describe-objects", "--pipeline-id", pipeline_id, "--object-ids", ids[0], "Hello")
    objects = {o["id"]: fields_of(o) for o in described["pipelineObjects"]}
    assert objects[ids[0]]["@status"] == "WAITING_FOR_RUNNER"
    assert objects[ids[0]]["@componentParent"] == "Hello"
    assert objects["Hello"]["command"] == "echo hello"

    # when a runner runs the task to the end
    task = wait_for_task(api, "wg-cli-walk")
    api.report_task_progress(taskId=task["taskId"])
    api.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")

    # then list-runs shows the run finished, with its times
    runs = cli(service, "list-runs", "--pipeline-id", pipeline_id)
    assert len(runs) == 1
    run = runs[0]
    assert (run["@id"], run["@status"], run["@componentParent"]) == (ids[0], "FINISHED", "Hello")
    assert run["@actualStartTime"] <= run["@actualEndTime"]


def test_deactivate_and_delete(service: EmulatorProcess, api: Any) -> None:
    # given an active pipeline whose task a runner holds
    pipeline_id = start_pipeline(api, ondemand_definition(shell_activity("Long"), workerGroup="wg-cli-stop"))
    task = wait_for_task(api, "wg-cli-stop")
    api.report_task_progress(taskId=task["taskId"])

    # when it is deactivated
    assert cli(service, "deactivate-pipeline", "--pipeline-id", pipeline_id) is None

    # then it is inactive and the running task is canceled
    assert state_of(service, pipeline_id) == "INACTIVE"
    assert api.report_task_progress(taskId=task["taskId"])["canceled"] is True

    # when it is deleted
    assert cli(service, "delete-pipeline", "--pipeline-id", pipeline_id) is None

    # then it is gone from the list and describing it fails
    assert pipeline_id not in {p["id"] for p in cli(service, "list-pipelines")["pipelineIdList"]}
    assert "PipelineDeletedException" in cli_error(service, "describe-pipelines", "--pipeline-ids", pipeline_id)
    assert "PipelineNotFoundException" in cli_error(service, "delete-pipeline", "--pipeline-id", pipeline_id)


def test_add_and_remove_tags(service: EmulatorProcess) -> None:
    # given a pipeline
    pipeline_id = create(service)

    def tags() -> dict[str, str]:
        described = cli(service, "describe-pipelines", "--pipeline-ids", pipeline_id)["pipelineDescriptionList"][0]
        return {t["key"]: t["value"] for t in described["tags"]}

    # when two tags are added and one removed
    cli(service, "add-tags", "--pipeline-id", pipeline_id, "--tags", "key=team,value=data", "key=env,value=dev")
    cli(service, "remove-tags", "--pipeline-id", pipeline_id, "--tag-keys", "env")

    # then one is left
    assert tags() == {"team": "data"}
    # and more than 10 are refused
    eleven = [f"key=k{n},value=v" for n in range(10)]
    assert "InvalidRequestException" in cli_error(service, "add-tags", "--pipeline-id", pipeline_id, "--tags", *eleven)
    assert tags() == {"team": "data"}


# -- list-runs over many instances ---------------------------------------------------------------


def run_all(api: Any, worker_group: str, count: int) -> dict[str, str]:
    """Take ``count`` tasks as a runner would and leave them in a spread of states; instance id -> status."""
    outcome = {}
    for n in range(count):
        task = wait_for_task(api, worker_group)
        instance_id = fields_of(task["objects"][task["attemptId"]])["@instanceParent"]
        if n % 6 == 0:  # handed out, never acknowledged
            outcome[instance_id] = "WAITING_FOR_RUNNER"
            continue
        api.report_task_progress(taskId=task["taskId"])
        if n % 6 == 1:
            outcome[instance_id] = "RUNNING"
        elif n % 6 == 2:
            api.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Exit1", errorMessage="exit 1")
            outcome[instance_id] = "FAILED"
        else:
            api.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
            outcome[instance_id] = "FINISHED"
    return outcome


def finish_all(api: Any, worker_group: str, count: int) -> dict[str, str]:
    outcome = {}
    for _ in range(count):
        task = wait_for_task(api, worker_group)
        api.report_task_progress(taskId=task["taskId"])
        api.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
        outcome[fields_of(task["objects"][task["attemptId"]])["@instanceParent"]] = "FINISHED"
    return outcome


def runs_of(service: EmulatorProcess, pipeline_id: str, *extra: str) -> dict[str, str]:
    rows = cli(service, "list-runs", "--pipeline-id", pipeline_id, *extra)
    statuses = {row["@id"]: row["@status"] for row in rows}
    assert len(statuses) == len(rows), "list-runs listed an instance twice"
    return statuses


def describe_calls(service: EmulatorProcess) -> int:
    calls: int = service.admin("counters")["counters"].get("DescribeObjects", {}).get("calls", 0)
    return calls


def test_list_runs_over_180_instances(service: EmulatorProcess, api: Any) -> None:
    # given pipeline A run twice (120 instances: more than one DescribeObjects call of 100 ids) ...
    steps = [shell_activity(f"Step{n:02d}", command=f"echo {n}") for n in range(60)]
    first_a = start_pipeline(api, ondemand_definition(*steps, workerGroup="wg-runs-a", maximumRetries="0"))
    expected_a = finish_all(api, "wg-runs-a", 60)
    first_stamp = describe(api, first_a, next(iter(expected_a)))["@scheduledStartTime"]
    # (a second run started within the same second would have the same instance ids)
    wait_for(lambda: _utc_now() > first_stamp, timeout=5, what="the clock to pass the first run's second")
    api.activate_pipeline(pipelineId=first_a)
    expected_a.update(run_all(api, "wg-runs-a", 60))
    # ... and pipeline B run once, each instance handed out and left in some state
    pipeline_b = start_pipeline(api, ondemand_definition(*steps, workerGroup="wg-runs-b", maximumRetries="0"))
    expected_b = run_all(api, "wg-runs-b", 60)
    assert len(expected_a) == 120
    assert set(expected_b.values()) == {"WAITING_FOR_RUNNER", "RUNNING", "FAILED", "FINISHED"}

    # when list-runs lists each pipeline
    calls_before = describe_calls(service)
    runs_a = runs_of(service, first_a)
    calls_for_a = describe_calls(service) - calls_before
    runs_b = runs_of(service, pipeline_b)

    # then every instance appears once, with its status
    assert runs_a == expected_a
    assert runs_b == expected_b
    assert calls_for_a == 2  # 100 ids, then 20
    # and --status filters them
    finished_b = {i for i, s in expected_b.items() if s == "FINISHED"}
    assert set(runs_of(service, pipeline_b, "--status", "finished")) == finished_b
    running_or_failed = {i for i, s in expected_b.items() if s in ("RUNNING", "FAILED")}
    assert set(runs_of(service, pipeline_b, "--status", "running,failed")) == running_or_failed


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


# -- bridge emulator admin -------------------------------------------------------------------------


def admin(service: EmulatorProcess, *args: str) -> Any:
    """Run ``bridge emulator admin --endpoint-url URL ARGS`` and decode its JSON output."""
    result = bridge_cli("emulator", "admin", "--endpoint-url", service.url, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_admin_counters_count_calls_and_errors(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given a fresh service that got 3 ListPipelines, 2 failing DescribePipelines and 1 unknown operation
    service = emulator_factory("--poll-wait", "2")
    api = dp_client(service.url)
    for _ in range(3):
        api.list_pipelines()
    for _ in range(2):
        with pytest.raises(api.exceptions.PipelineNotFoundException):
            api.describe_pipelines(pipelineIds=["df-MISSING"])
    assert raw_post(service.url, "DataPipeline.LaunchRocket", {}).status == 400

    # when the counters are read through the CLI and the raw admin API
    counters = admin(service, "counters")["counters"]
    raw = service.admin("counters")["counters"]

    # then both show the calls and errors per operation; unknown operations share one entry
    assert counters["ListPipelines"] == {"calls": 3, "errors": 0, "throttled": 0, "faulted": 0, "dropped": 0}
    assert counters["DescribePipelines"]["calls"] == 2
    assert counters["DescribePipelines"]["errors"] == 2
    assert counters["?"]["calls"] == counters["?"]["errors"] == 1
    assert set(counters) == {"ListPipelines", "DescribePipelines", "?"}
    assert raw == counters


def test_admin_runners_and_terminate_runner(service: EmulatorProcess, api: Any) -> None:
    # given a task runner that sent a heartbeat
    runner_id = f"runner-{uuid.uuid4().hex[:8]}"
    reply = api.report_task_runner_heartbeat(taskrunnerId=runner_id, workerGroup="wg-cli-hb", hostname="host-1")
    assert reply["terminate"] is False

    # then `admin runners` lists it
    runners = {r["taskrunnerId"]: r for r in admin(service, "runners")["runners"]}
    assert runners[runner_id]["workerGroup"] == "wg-cli-hb"
    assert runners[runner_id]["hostname"] == "host-1"
    assert runners[runner_id]["heartbeats"] == 1
    assert runners[runner_id]["terminate"] is False

    # when `admin terminate-runner` asks it to stop
    assert admin(service, "terminate-runner", runner_id) == {"taskrunnerId": runner_id, "terminate": True}

    # then its next heartbeat answers terminate
    assert api.report_task_runner_heartbeat(taskrunnerId=runner_id)["terminate"] is True


def test_admin_stats(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given a fresh service with one active pipeline of 3 tasks waiting
    service = emulator_factory("--poll-wait", "2")
    api = dp_client(service.url)
    steps = [shell_activity(f"S{n}") for n in range(3)]
    start_pipeline(api, ondemand_definition(*steps, workerGroup="wg-cli-stats"))

    # then `admin stats` counts them
    stats = admin(service, "stats")
    assert stats["pipelines"] == 1
    assert stats["instances"] == 3
    assert stats["queued"] == {"wg-cli-stats": 3}
    assert stats == service.admin("stats")


def test_admin_errors(service: EmulatorProcess) -> None:
    # an unknown action is a 400 in the AWS error shape
    request = urllib.request.Request(f"{service.url}/_admin/explode", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["__type"].endswith("#UnknownOperationException")
    caught.value.close()

    # the CLI exits non-zero with a message for a refused action and for a service it cannot reach
    refused = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "terminate-runner", "")
    assert refused.returncode != 0
    assert "taskrunnerId" in refused.stderr
    unreachable = bridge_cli("emulator", "admin", "--endpoint-url", "http://127.0.0.1:9", "stats")
    assert unreachable.returncode != 0
    assert "cannot reach" in unreachable.stderr


# -- bridge emulator ------------------------------------------------------------------------------


def test_the_address_is_printed_at_start_and_sigterm_stops_cleanly() -> None:
    # given the service started on a port the OS picks
    cmd = [sys.executable, "-m", "bridge", "emulator", "--port", "0", "--poll-wait", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=ROOT)
    output = LineReader(proc.stdout)
    try:
        # then it prints the address it listens on, and answers there
        line = output.wait_for("listening on", timeout=30)
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match is not None, line
        assert int(match.group(2)) > 0
        assert dp_client(match.group(1)).list_pipelines()["pipelineIdList"] == []

        # when it gets SIGTERM
        proc.send_signal(signal.SIGTERM)

        # then it says so and exits 0
        assert proc.wait(timeout=15) == 0
        output.wait_for("stopped", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
