"""Actions (onFail / onSuccess / onLateAction: SnsAlarm, Terminate) and SetStatus over HTTP.

Alarms are recorded, never sent; ``bridge emulator admin actions`` (``POST /_admin/actions``)
lists them with their subject and message evaluated for the instance they fired for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import (
    EmulatorProcess,
    aws_cli,
    bridge_cli,
    describe,
    dp_client,
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
TOPIC = "arn:aws:sns:us-east-1:123456789012:etl-alerts"
STAMP = "%Y-%m-%dT%H:%M:%S"


@pytest.fixture(scope="module")
def service() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(["--poll-wait", "1", "--time-scale", "60"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def dp(service: EmulatorProcess) -> Any:
    return dp_client(service.url)


def group_name() -> str:
    return f"wg-actions-{uuid.uuid4().hex[:8]}"


def alarm(object_id: str, subject: str, message: str) -> dict[str, Any]:
    return {
        "id": object_id,
        "type": "SnsAlarm",
        "topicArn": TOPIC,
        "subject": subject,
        "message": message,
        "role": "DataPipelineDefaultRole",
    }


def actions_of(service: EmulatorProcess, pipeline_id: str) -> list[dict[str, Any]]:
    fired: list[dict[str, Any]] = service.admin("actions", {"pipelineId": pipeline_id})["actions"]
    return fired


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    code: str = exc.value.response["Error"]["Code"]
    return code


def run_task(dp: Any, group: str, status: str, **extra: str) -> dict[str, Any]:
    task = wait_for_task(dp, group)
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus=status, **extra)
    return task


# -- SnsAlarm --------------------------------------------------------------------------------------


def test_on_fail_records_an_alarm_evaluated_for_the_failed_instance(service: EmulatorProcess, dp: Any) -> None:
    # given an activity whose onFail is an SnsAlarm with node expressions
    group = group_name()
    doc = ondemand_definition(
        shell_activity("Copy", name="Nightly copy", onFail={"ref": "FailureAlarm"}, maximumRetries="0"),
        shell_activity("Other", onSuccess={"ref": "FailureAlarm"}, command="false"),
        alarm(
            "FailureAlarm",
            "#{node.name} failed",
            "#{node.@id} (scheduled #{node.@scheduledStartTime}) is #{node.@status}: #{node.errorMessage}",
        ),
        workerGroup=group,
    )
    pipeline_id = start_pipeline(dp, doc)
    copy = instance_of(dp, pipeline_id, "Copy")

    # when the activity fails for good
    while True:
        task = wait_for_task(dp, group)
        dp.report_task_progress(taskId=task["taskId"])
        if task["attemptId"].startswith(copy):
            dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Exit1", errorMessage="disk full")
            break
        dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="E", errorMessage="other")

    # then one alarm was recorded, with its subject and message evaluated for that instance
    wait_for(lambda: actions_of(service, pipeline_id), timeout=10, what="an action")
    fired = [a for a in actions_of(service, pipeline_id) if a["instanceId"] == copy]
    assert len(fired) == 1
    record = fired[0]
    scheduled = describe(dp, pipeline_id, copy)["@scheduledStartTime"]
    assert record["event"] == "onFail"
    assert (record["objectId"], record["actionId"], record["type"]) == ("Copy", "FailureAlarm", "SnsAlarm")
    assert record["topicArn"] == TOPIC
    assert record["subject"] == "Nightly copy failed"
    assert record["message"] == f"{copy} (scheduled {scheduled}) is FAILED: disk full"
    assert record["pipelineId"] == pipeline_id
    # and the activity whose onSuccess names the alarm fired nothing by failing
    assert not [a for a in actions_of(service, pipeline_id) if a["objectId"] == "Other"]


def test_on_success_fires_after_finished_and_on_fail_does_not(service: EmulatorProcess, dp: Any) -> None:
    group = group_name()
    doc = ondemand_definition(
        shell_activity("Load", onSuccess={"ref": "Done"}, onFail={"ref": "Broken"}),
        alarm("Done", "#{node.name} finished", "at #{node.@actualEndTime}"),
        alarm("Broken", "broken", "broken"),
        workerGroup=group,
    )
    pipeline_id = start_pipeline(dp, doc)

    run_task(dp, group, "FINISHED")

    wait_for(lambda: actions_of(service, pipeline_id), timeout=10, what="an action")
    fired = actions_of(service, pipeline_id)
    load = instance_of(dp, pipeline_id, "Load")
    assert [(a["event"], a["actionId"], a["subject"]) for a in fired] == [("onSuccess", "Done", "Load finished")]
    assert fired[0]["message"] == f"at {describe(dp, pipeline_id, load)['@actualEndTime']}"


def test_default_on_fail_applies_to_every_object_and_the_cli_lists_actions(service: EmulatorProcess, dp: Any) -> None:
    # given onFail on Default, inherited by two activities that both fail
    group = group_name()
    doc = ondemand_definition(
        shell_activity("First"),
        shell_activity("Second"),
        alarm("Alarm", "#{node.name}", "#{node.name} failed"),
        workerGroup=group,
        maximumRetries="0",
        onFail={"ref": "Alarm"},
    )
    pipeline_id = start_pipeline(dp, doc)
    run_task(dp, group, "FAILED", errorId="E", errorMessage="boom")
    run_task(dp, group, "FAILED", errorId="E", errorMessage="boom")

    # then `bridge emulator admin actions` lists both, in the order they fired
    wait_for(lambda: len(actions_of(service, pipeline_id)) == 2, timeout=10, what="two actions")
    result = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "actions", "--pipeline-id", pipeline_id)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["actions"]
    assert sorted(a["subject"] for a in listed) == ["First", "Second"]
    assert listed[0]["seq"] < listed[1]["seq"]
    assert all(a["event"] == "onFail" and a["time"] for a in listed)


# -- onLateAction -------------------------------------------------------------------------------------


def scheduled_definition(group: str, *objects: dict[str, Any]) -> dict[str, Any]:
    return {
        "objects": [
            {"id": "Default", "scheduleType": "cron", "schedule": {"ref": "Every15"}, "workerGroup": group},
            {"id": "Every15", "type": "Schedule", "period": "15 minutes", "startAt": "FIRST_ACTIVATION_DATE_TIME"},
            *objects,
        ]
    }


def test_a_late_instance_fires_on_late_action_and_terminate_cancels_it(service: EmulatorProcess, dp: Any) -> None:
    # given a scheduled activity that must finish within 2 (scaled) minutes of its scheduled start
    group = group_name()
    doc = scheduled_definition(
        group,
        shell_activity("Slow", lateAfterTimeout="2 minutes", onLateAction=[{"ref": "Late"}, {"ref": "Stop"}]),
        alarm("Late", "#{node.name} is late", "#{node.@id} is still #{node.@status}"),
        {"id": "Stop", "type": "Terminate"},
    )
    pipeline_id = start_pipeline(dp, doc)

    # when a runner holds its task past that
    task = wait_for_task(dp, group)
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False
    slow = describe(dp, pipeline_id, task["attemptId"])["@instanceParent"]

    # then the alarm is recorded and Terminate cancels the instance; the runner is told
    wait_for(lambda: len(actions_of(service, pipeline_id)) == 2, timeout=15, what="the late actions")
    fired = actions_of(service, pipeline_id)
    assert [(a["event"], a["actionId"], a["type"]) for a in fired] == [
        ("onLateAction", "Late", "SnsAlarm"),
        ("onLateAction", "Stop", "Terminate"),
    ]
    assert fired[0]["message"] == f"{slow} is still RUNNING"
    assert fired[1]["outcome"] == "Canceled the instance."
    assert describe(dp, pipeline_id, slow)["@status"] == "CANCELED"
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is True


def test_on_late_action_is_not_triggered_for_ondemand_pipelines(service: EmulatorProcess, dp: Any) -> None:
    # given an on-demand activity with a 1 (scaled) minute lateAfterTimeout ("only when the schedule
    # type is not set to ondemand")
    group = group_name()
    doc = ondemand_definition(
        shell_activity("Slow", lateAfterTimeout="1 minute", onLateAction={"ref": "Stop"}),
        {"id": "Stop", "type": "Terminate"},
        workerGroup=group,
    )
    pipeline_id = start_pipeline(dp, doc)
    task = wait_for_task(dp, group)
    dp.report_task_progress(taskId=task["taskId"])

    # when well past it
    time.sleep(3)

    # then nothing fired and the task still runs
    assert actions_of(service, pipeline_id) == []
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Slow"))["@status"] == "RUNNING"


# -- SetStatus --------------------------------------------------------------------------------------------


def test_pause_and_resume_an_instance_waiting_for_a_runner(dp: Any) -> None:
    # given an activity ready for a runner
    group = group_name()
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup=group))
    job = instance_of(dp, pipeline_id, "Job")
    assert describe(dp, pipeline_id, job)["@status"] == "WAITING_FOR_RUNNER"

    # when it is paused, it is PAUSED and not handed out
    dp.set_status(pipelineId=pipeline_id, objectIds=[job], status="PAUSE")
    assert describe(dp, pipeline_id, job)["@status"] == "PAUSED"
    assert poll_task(dp, group) is None

    # when it is resumed, it waits for a runner again and is handed out
    dp.set_status(pipelineId=pipeline_id, objectIds=[job], status="RESUME")
    assert describe(dp, pipeline_id, job)["@status"] == "WAITING_FOR_RUNNER"
    assert wait_for_task(dp, group)["attemptId"] == f"{job}_Attempt=1"


def test_a_paused_dependent_stays_paused_when_its_dependency_finishes(dp: Any) -> None:
    # given B depends on A, and B is paused while waiting on A
    group = group_name()
    doc = ondemand_definition(shell_activity("A"), shell_activity("B", dependsOn={"ref": "A"}), workerGroup=group)
    pipeline_id = start_pipeline(dp, doc)
    b = instance_of(dp, pipeline_id, "B")
    dp.set_status(pipelineId=pipeline_id, objectIds=[b], status="PAUSE")

    # when A finishes
    run_task(dp, group, "FINISHED")

    # then B is still PAUSED and nothing is handed out, until RESUME
    assert describe(dp, pipeline_id, b)["@status"] == "PAUSED"
    assert poll_task(dp, group) is None
    dp.set_status(pipelineId=pipeline_id, objectIds=[b], status="RESUME")
    assert wait_for_task(dp, group)["attemptId"].startswith(b)


def test_pause_and_resume_a_component_applies_to_its_unfinished_instances(dp: Any) -> None:
    # given a component whose instance waits for a runner, and another that a runner holds
    group = group_name()
    doc = ondemand_definition(
        shell_activity("Held"), shell_activity("Queued", dependsOn={"ref": "Held"}), workerGroup=group
    )
    pipeline_id = start_pipeline(dp, doc)
    held_task = wait_for_task(dp, group)
    dp.report_task_progress(taskId=held_task["taskId"])

    # when both components are paused
    dp.set_status(pipelineId=pipeline_id, objectIds=["Held", "Queued"], status="PAUSE")

    # then the waiting instance is PAUSED and the running one carries on
    queued = instance_of(dp, pipeline_id, "Queued")
    assert describe(dp, pipeline_id, queued)["@status"] == "PAUSED"
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Held"))["@status"] == "RUNNING"
    dp.set_task_status(taskId=held_task["taskId"], taskStatus="FINISHED")
    assert poll_task(dp, group) is None

    # when the component is resumed, its instance runs
    dp.set_status(pipelineId=pipeline_id, objectIds=["Queued"], status="RESUME")
    assert wait_for_task(dp, group)["attemptId"].startswith(queued)


def test_set_status_refusals(dp: Any) -> None:
    group = group_name()
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup=group))
    job = instance_of(dp, pipeline_id, "Job")
    task = wait_for_task(dp, group)
    dp.report_task_progress(taskId=task["taskId"])

    def set_status(object_id: str, status: str) -> Callable[[], Any]:
        return lambda: dp.set_status(pipelineId=pipeline_id, objectIds=[object_id], status=status)

    # a status AWS does not define, on an instance or a component
    assert code_of(set_status(job, "CANCEL")) == "InvalidRequestException"
    assert code_of(set_status("Job", "SHUTDOWN")) == "InvalidRequestException"
    # instance commands on a component
    assert code_of(set_status("Job", "TRY_CANCEL")) == "InvalidRequestException"
    # pausing an instance a runner holds (TRY_CANCEL is how to stop it)
    assert code_of(set_status(job, "PAUSE")) == "InvalidRequestException"
    # rerunning an unfinished one
    assert code_of(set_status(job, "RERUN")) == "InvalidRequestException"
    # and none of that changed anything
    assert describe(dp, pipeline_id, job)["@status"] == "RUNNING"
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False


def test_list_runs_shows_paused_canceled_and_cascade_failed(service: EmulatorProcess, dp: Any) -> None:
    # given: A fails and B (dependsOn A, cascade) cascade-fails; C is canceled before it ran; D is paused
    group = group_name()
    doc = ondemand_definition(
        shell_activity("A", maximumRetries="0"),
        shell_activity("B", dependsOn={"ref": "A"}),
        shell_activity("C"),
        shell_activity("D"),
        workerGroup=group,
        failureAndRerunMode="cascade",
    )
    pipeline_id = start_pipeline(dp, doc)
    ids = {name: instance_of(dp, pipeline_id, name) for name in "ABCD"}
    dp.set_status(pipelineId=pipeline_id, objectIds=[ids["C"]], status="TRY_CANCEL")
    dp.set_status(pipelineId=pipeline_id, objectIds=[ids["D"]], status="PAUSE")
    run_task(dp, group, "FAILED", errorId="E", errorMessage="boom")
    wait_for_status(dp, pipeline_id, "B", "CASCADE_FAILED", timeout=10)

    # when the AWS CLI lists the runs scheduled around now
    scheduled = datetime.strptime(describe(dp, pipeline_id, ids["A"])["@scheduledStartTime"], STAMP)
    window = f"{(scheduled - timedelta(minutes=1)):{STAMP}},{(scheduled + timedelta(minutes=1)):{STAMP}}"
    out = aws_cli(service.url, "list-runs", "--pipeline-id", pipeline_id, "--schedule-interval", window).stdout
    rows = json.loads(out)

    # then each instance shows the status AWS uses
    statuses = {row["@componentParent"]: row["@status"] for row in rows}
    assert statuses == {"A": "FAILED", "B": "CASCADE_FAILED", "C": "CANCELED", "D": "PAUSED"}
    assert {row["@id"] for row in rows} == set(ids.values())


def test_fired_actions_and_paused_instances_survive_a_restart(emulator_factory: Factory, tmp_path: Any) -> None:
    # given a service with --state, an alarm that fired and an instance that is paused
    emulator = emulator_factory("--poll-wait", "1", "--time-scale", "60", "--state", str(tmp_path / "state.db"))
    dp = dp_client(emulator.url)
    group = group_name()
    doc = ondemand_definition(
        shell_activity("Done", onSuccess={"ref": "Alarm"}),
        shell_activity("Later", dependsOn={"ref": "Done"}),
        alarm("Alarm", "#{node.name} ok", "ok"),
        workerGroup=group,
    )
    pipeline_id = start_pipeline(dp, doc)
    later = instance_of(dp, pipeline_id, "Later")
    dp.set_status(pipelineId=pipeline_id, objectIds=[later], status="PAUSE")
    run_task(dp, group, "FINISHED")
    before = actions_of(emulator, pipeline_id)
    assert [a["subject"] for a in before] == ["Done ok"]

    # when the service restarts
    emulator.restart()
    dp = dp_client(emulator.url)

    # then the record is still listed, and the paused instance is still paused and not handed out
    assert actions_of(emulator, pipeline_id) == before
    assert describe(dp, pipeline_id, later)["@status"] == "PAUSED"
    assert poll_task(dp, group) is None
    dp.set_status(pipelineId=pipeline_id, objectIds=[later], status="RESUME")
    assert wait_for_task(dp, group)["attemptId"].startswith(later)
