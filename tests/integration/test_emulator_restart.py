"""The local service keeps its state across a restart with ``--state PATH``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support import (
    EmulatorProcess,
    describe,
    dp_client,
    instance_of,
    instance_status,
    ondemand_definition,
    poll_task,
    shell_activity,
    start_pipeline,
    wait_for_status,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]


def test_a_restart_mid_run_loses_nothing(emulator_factory: Factory, tmp_path: Path) -> None:
    # Given a two-step pipeline whose first task is handed out and acknowledged
    service = emulator_factory("--poll-wait", "1", "--time-scale", "60", "--state", str(tmp_path / "state.db"))
    dp = dp_client(service.url)
    doc = ondemand_definition(
        shell_activity("First", scriptArgument=["a", "b"]),
        shell_activity("Second", dependsOn={"ref": "First"}),
        workerGroup="wg",
    )
    pipeline_id = start_pipeline(dp, doc)
    task = wait_for_task(dp, "wg")
    dp.report_task_progress(taskId=task["taskId"])
    definition = dp.get_pipeline_definition(pipelineId=pipeline_id)["pipelineObjects"]

    # When the service restarts on the same port and state file
    service.restart()

    # Then the pipeline, its definition, its instances and the running attempt are all there
    assert [p["id"] for p in dp.list_pipelines()["pipelineIdList"]] == [pipeline_id]
    assert dp.get_pipeline_definition(pipelineId=pipeline_id)["pipelineObjects"] == definition
    description = dp.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"][0]
    assert {"key": "@pipelineState", "stringValue": "SCHEDULED"} in description["fields"]
    assert instance_status(dp, pipeline_id, "First") == "RUNNING"
    assert instance_status(dp, pipeline_id, "Second") == "WAITING_ON_DEPENDENCIES"
    assert describe(dp, pipeline_id, task["attemptId"])["@status"] == "RUNNING"
    # And the runner carries on with its old task id, and the dependent runs after it
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False
    assert poll_task(dp, "wg") is None
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "First", "FINISHED")
    second = wait_for_task(dp, "wg")
    assert second["attemptId"].startswith(instance_of(dp, pipeline_id, "Second"))
    dp.report_task_progress(taskId=second["taskId"])
    dp.set_task_status(taskId=second["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Second", "FINISHED")


def test_a_task_waiting_for_a_runner_is_offered_again_after_a_restart(
    emulator_factory: Factory, tmp_path: Path
) -> None:
    # Given an activated pipeline whose task nobody has polled yet
    service = emulator_factory("--poll-wait", "1", "--state", str(tmp_path / "state.db"))
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"))

    # When the service restarts
    service.restart()

    # Then the first poll after it gets the task
    task = poll_task(dp, "wg")
    assert task is not None
    assert task["attemptId"] == f"{instance_of(dp, pipeline_id, 'Job')}_Attempt=1"


def test_an_ack_deadline_that_passed_while_down_fires_at_once_after_restart(
    emulator_factory: Factory, tmp_path: Path
) -> None:
    # Given a task handed out but not acknowledged, with a 4 s ack timeout
    service = emulator_factory("--poll-wait", "1", "--ack-timeout", "4", "--state", str(tmp_path / "state.db"))
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"))
    first = wait_for_task(dp, "wg")

    # When the service is down until after the deadline
    service.stop()
    time.sleep(5)
    service.start()

    # Then the task is handed out again by the first poll, not one ack timeout later
    again = poll_task(dp, "wg")
    assert again is not None
    assert again["attemptId"] == first["attemptId"].replace("_Attempt=1", "_Attempt=2")
    assert describe(dp, pipeline_id, first["attemptId"])["@status"] == "TIMEDOUT"
