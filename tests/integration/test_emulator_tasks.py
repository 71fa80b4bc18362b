"""The local service's task-runner side over HTTP: task objects, PollForTask, dependencies, errors, heartbeats.

Each test starts its own ``bridge emulator`` process and talks to it with boto3, as a task runner would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

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
    task_fields,
    wait_for,
    wait_for_status,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]

FAST = ("--poll-wait", "1", "--time-scale", "60")


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


def finish(dp: Any, task: dict[str, Any]) -> None:
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")


def reference_pipeline() -> dict[str, Any]:
    """An activity whose refs reach data nodes, a database, a data format, a precondition and a resource."""
    return ondemand_definition(
        {"id": "Base", "attemptTimeout": "2 hours", "myBase": "from-base", "myShared": "from-base"},
        {"id": "Worker", "type": "Ec2Resource", "role": "r", "resourceRole": "rr"},
        {"id": "Db", "type": "JdbcDatabase", "connectionString": "jdbc:x", "jdbcDriverClass": "D", "username": "u"}
        | {"*password": "p"},
        {"id": "Source", "type": "SqlDataNode", "table": "src", "database": {"ref": "Db"}},
        {"id": "Csv", "type": "CSV"},
        {"id": "Far", "type": "TSV"},
        {"id": "Side", "type": "S3DataNode", "filePath": "s3://b/side", "dataFormat": {"ref": "Far"}},
        {"id": "Ready", "type": "ShellCommandPrecondition", "command": "true", "workerGroup": "checks"}
        | {"input": {"ref": "Side"}},
        {"id": "Sink", "type": "S3DataNode", "filePath": "s3://b/out", "dataFormat": {"ref": "Csv"}}
        | {"precondition": {"ref": "Ready"}},
        shell_activity(
            "Copy",
            parent={"ref": "Base"},
            command="echo $1 $2 $3",
            scriptArgument=["zeta", "alpha", "mid"],
            runsOn={"ref": "Worker"},
            input={"ref": "Source"},
            output={"ref": "Sink"},
            maximumRetries="3",
        ),
        reportProgressTimeout="20 minutes",
        myShared="from-default",
        myDefault="d",
    )


# -- the object model as a runner receives it ------------------------------------------------------


def test_handed_out_attempt_carries_inherited_flattened_fields(dp: Any) -> None:
    # Given an activity that inherits from a parent object and from Default
    pipeline_id = start_pipeline(dp, reference_pipeline())

    # When a runner polls the worker group named after the activity's Ec2Resource
    task = wait_for_task(dp, "Worker", hostname="runner-7")

    # Then the attempt holds its own, its parent's and Default's fields, nearest first
    attempt_id = task["attemptId"]
    instance_id = instance_of(dp, pipeline_id, "Copy")
    assert attempt_id == f"{instance_id}_Attempt=1"
    assert task["pipelineId"] == pipeline_id
    fields = dict(task_fields(task))
    assert fields["command"] == "echo $1 $2 $3"
    assert fields["myBase"] == "from-base"
    assert fields["myShared"] == "from-base"
    assert fields["myDefault"] == "d"
    assert fields["type"] == "ShellCommandActivity"
    # And the runtime fields place it in the component / instance / attempt hierarchy
    raw = task["objects"][attempt_id]["fields"]
    assert {"key": "parent", "refValue": "Copy"} in raw
    assert {"key": "@componentParent", "refValue": "Copy"} in raw
    assert {"key": "@instanceParent", "refValue": instance_id} in raw
    assert fields["@sphere"] == "ATTEMPT"
    assert fields["@pipelineId"] == pipeline_id
    assert fields["@scheduledStartTime"] == describe(dp, pipeline_id, instance_id)["@scheduledStartTime"]
    assert fields["hostname"] == "runner-7"
    assert task["objects"][attempt_id]["id"] == attempt_id


def test_retry_and_timeout_fields_are_copied_onto_the_attempt_and_time_scaled(dp: Any) -> None:
    # Given --time-scale 60 and timeouts set on Default, on the parent and on the activity
    start_pipeline(dp, reference_pipeline())

    # When the attempt is handed out
    task = wait_for_task(dp, "Worker")

    # Then each Period arrives divided by 60, and maximumRetries as written
    fields = dict(task_fields(task))
    assert fields["reportProgressTimeout"] == "20 seconds"
    assert fields["attemptTimeout"] == "2 minutes"
    assert fields["maximumRetries"] == "3"
    # And referenced objects carry scaled Periods too (they inherit Default's)
    assert dict(task_fields(task, "Source"))["reportProgressTimeout"] == "20 seconds"


def test_referenced_objects_travel_with_the_task_up_to_three_refs_deep(dp: Any) -> None:
    # Given refs Copy -> Source -> Db, Copy -> Sink -> Csv, Copy -> runsOn Worker,
    # and the four-step chain Copy -> Sink -> Ready -> Side -> Far
    pipeline_id = start_pipeline(dp, reference_pipeline())

    # When the activity's task is handed out
    task = wait_for_task(dp, "Worker")

    # Then every object within three refs is in the map, keyed by its id, and nothing further
    objects = task["objects"]
    assert set(objects) == {task["attemptId"], "Source", "Db", "Sink", "Csv", "Worker", "Ready", "Side"}
    for object_id in ("Source", "Db", "Sink", "Csv", "Worker", "Ready", "Side"):
        assert objects[object_id]["id"] == object_id
    assert dict(task_fields(task, "Db"))["connectionString"] == "jdbc:x"
    assert dict(task_fields(task, "Source"))["table"] == "src"
    assert {"key": "database", "refValue": "Db"} in objects["Source"]["fields"]
    assert dict(task_fields(task, "Csv"))["type"] == "CSV"
    assert dict(task_fields(task, "Worker"))["type"] == "Ec2Resource"
    assert dict(task_fields(task, "Sink"))["@pipelineId"] == pipeline_id
    # And the attempt refers to them by those ids
    raw = objects[task["attemptId"]]["fields"]
    for key, target in (("input", "Source"), ("output", "Sink"), ("runsOn", "Worker")):
        assert {"key": key, "refValue": target} in raw


def test_attempt_only_mode_hands_out_only_the_attempt(emulator_factory: Factory) -> None:
    # Given the service runs with --task-objects attempt-only
    service = emulator_factory(*FAST, "--task-objects", "attempt-only")
    dp = dp_client(service.url)
    start_pipeline(dp, reference_pipeline())

    # When the activity's task is handed out
    task = wait_for_task(dp, "Worker")

    # Then its objects map holds the attempt alone, still with its ref fields
    assert list(task["objects"]) == [task["attemptId"]]
    assert ("input", "Source") in task_fields(task)


def test_repeated_fields_keep_their_order(dp: Any) -> None:
    # Given an activity with three scriptArguments in a non-sorted order
    start_pipeline(dp, reference_pipeline())

    # When its task is handed out
    task = wait_for_task(dp, "Worker")

    # Then all three arrive, in the order written
    assert [v for k, v in task_fields(task) if k == "scriptArgument"] == ["zeta", "alpha", "mid"]


def test_runs_on_an_ec2_resource_routes_to_a_worker_group_named_after_it(emulator_factory: Factory) -> None:
    # Given an activity that sets both runsOn (an Ec2Resource) and workerGroup
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    doc = ondemand_definition(
        {"id": "Box", "type": "Ec2Resource", "role": "r", "resourceRole": "rr"},
        shell_activity("Job", runsOn={"ref": "Box"}, workerGroup="ignored-group"),
    )
    pipeline_id = start_pipeline(dp, doc)

    # When runners poll the workerGroup and the resource's id
    from_group = poll_task(dp, "ignored-group")
    from_resource = wait_for_task(dp, "Box")

    # Then only the resource's worker group gets the task (runsOn wins)
    assert from_group is None
    assert from_resource["attemptId"].startswith(instance_of(dp, pipeline_id, "Job"))


# -- PollForTask ---------------------------------------------------------------------------------


def test_poll_with_no_work_returns_no_task_object_after_the_poll_wait(emulator_factory: Factory) -> None:
    # Given a service with nothing to do and a 1 s poll wait
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)

    # When a runner polls
    reply = dp.poll_for_task(workerGroup="idle", hostname="h")

    # Then the reply succeeds without a taskObject
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "taskObject" not in reply


def test_worker_groups_match_exactly_and_case_sensitively(emulator_factory: Factory) -> None:
    # Given a task for worker group "wg"
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"))

    # When runners poll "WG", "wg " and then "wg"
    upper = poll_task(dp, "WG")
    spaced = poll_task(dp, "wg ")
    exact = poll_task(dp, "wg")

    # Then only the exact name receives it
    assert upper is None
    assert spaced is None
    assert exact is not None


def test_a_held_poll_gets_a_task_as_soon_as_a_pipeline_is_activated(emulator_factory: Factory) -> None:
    # Given a service that holds polls for 30 s and a defined, not yet active, pipeline
    service = emulator_factory("--poll-wait", "30")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"), activate=False)
    received: list[dict[str, Any] | None] = []
    poller = threading.Thread(target=lambda: received.append(poll_task(dp_client(service.url), "wg")), daemon=True)
    poller.start()
    wait_for(
        lambda: service.admin("counters")["counters"].get("PollForTask", {}).get("calls", 0) >= 1,
        what="the poll to reach the service",
    )

    # When the pipeline is activated while the poll is held
    dp.activate_pipeline(pipelineId=pipeline_id)

    # Then the held poll returns with the task, long before its 30 s poll wait would end
    poller.join(timeout=20)
    assert not poller.is_alive(), "the held poll did not return when a task became ready"
    assert received and received[0] is not None
    assert received[0]["attemptId"].startswith(instance_of(dp, pipeline_id, "Job"))


def test_a_task_arriving_after_the_client_gave_up_is_not_lost(emulator_factory: Factory) -> None:
    # Given a client that gives up after 1 s on a poll the service holds for 5 s
    service = emulator_factory("--poll-wait", "5")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"), activate=False)
    impatient = dp_client(service.url, read_timeout=1)
    with pytest.raises(ReadTimeoutError):
        impatient.poll_for_task(workerGroup="wg", hostname="impatient")

    # When a task becomes ready while the abandoned poll could still be held
    dp.activate_pipeline(pipelineId=pipeline_id)

    # Then a later poll receives it (the ack timeout is 2 minutes, so it was never handed to the gone client)
    task = wait_for_task(dp, "wg", timeout=20)
    assert task["attemptId"] == f"{instance_of(dp, pipeline_id, 'Job')}_Attempt=1"


# -- dependsOn ---------------------------------------------------------------------------------


def chain(**default_fields: Any) -> dict[str, Any]:
    return ondemand_definition(
        shell_activity("Third", dependsOn={"ref": "Second"}),
        shell_activity("Second", dependsOn={"ref": "First"}),
        shell_activity("First"),
        workerGroup="wg",
        **default_fields,
    )


def test_chained_activities_are_handed_out_in_dependency_order(dp: Any) -> None:
    # Given First <- Second <- Third (defined in reverse order)
    pipeline_id = start_pipeline(dp, chain())

    # When a runner keeps taking and finishing tasks
    order = []
    for _ in range(3):
        task = wait_for_task(dp, "wg")
        component = dict(task_fields(task))["@componentParent"]
        order.append(component)
        # Then, while one runs, the next waits on it
        if component != "Third":
            following = "Second" if component == "First" else "Third"
            assert instance_status(dp, pipeline_id, following) == "WAITING_ON_DEPENDENCIES"
            assert poll_task(dp, "wg") is None
        finish(dp, task)

    assert order == ["First", "Second", "Third"]
    for component in order:
        wait_for_status(dp, pipeline_id, component, "FINISHED")


def fail_first_for_good(dp: Any, pipeline_id: str) -> None:
    task = wait_for_task(dp, "wg")
    assert dict(task_fields(task))["@componentParent"] == "First"
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Boom", errorMessage="no")
    wait_for_status(dp, pipeline_id, "First", "FAILED")


def test_a_failed_dependency_leaves_dependents_waiting_by_default(emulator_factory: Factory) -> None:
    # Given the chain with no retries and the default failureAndRerunMode
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, chain(maximumRetries="0"))

    # When First fails
    fail_first_for_good(dp, pipeline_id)

    # Then its dependents keep waiting on dependencies, and nothing more is handed out
    assert poll_task(dp, "wg") is None
    assert instance_status(dp, pipeline_id, "Second") == "WAITING_ON_DEPENDENCIES"
    assert instance_status(dp, pipeline_id, "Third") == "WAITING_ON_DEPENDENCIES"


def test_a_failed_dependency_cascades_with_failure_and_rerun_mode_cascade(emulator_factory: Factory) -> None:
    # Given the chain with no retries and failureAndRerunMode cascade
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, chain(maximumRetries="0", failureAndRerunMode="cascade"))

    # When First fails
    fail_first_for_good(dp, pipeline_id)

    # Then both dependents are CASCADE_FAILED, each naming what failed before it
    wait_for_status(dp, pipeline_id, "Second", "CASCADE_FAILED")
    wait_for_status(dp, pipeline_id, "Third", "CASCADE_FAILED")
    second = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Second"))
    assert second["@cascadeFailedOn"] == instance_of(dp, pipeline_id, "First")
    assert poll_task(dp, "wg") is None


# -- preconditions -----------------------------------------------------------------------------


def guarded(*, cascade: bool = False, **precondition_fields: Any) -> dict[str, Any]:
    return ondemand_definition(
        {"id": "Check", "type": "ShellCommandPrecondition", "command": "test -e /x", "retryDelay": "2 minutes"}
        | precondition_fields,
        shell_activity("Job", workerGroup="wg", precondition={"ref": "Check"}, maximumRetries="0"),
        **({"failureAndRerunMode": "cascade"} if cascade else {}),
    )


def answer_check(dp: Any, status: str) -> dict[str, Any]:
    task = wait_for_task(dp, "wg")
    assert dict(task_fields(task))["@componentParent"] == "Check"
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus=status)
    return task


def test_a_precondition_is_checked_first_and_rechecked_until_it_holds(emulator_factory: Factory) -> None:
    # Given an activity guarded by a ShellCommandPrecondition without a worker group of its own
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, guarded())

    # When the runner reports FALSE twice, then FINISHED
    first = answer_check(dp, "FALSE")
    assert instance_status(dp, pipeline_id, "Job") == "WAITING_ON_DEPENDENCIES"
    second = answer_check(dp, "FALSE")
    third = answer_check(dp, "FINISHED")

    # Then each check was a new attempt handed to the activity's worker group, and the activity runs after
    assert [first["attemptId"][-10:], second["attemptId"][-10:], third["attemptId"][-10:]] == [
        "_Attempt=1",
        "_Attempt=2",
        "_Attempt=3",
    ]
    wait_for_status(dp, pipeline_id, "Check", "FINISHED")
    job = wait_for_task(dp, "wg")
    assert dict(task_fields(job))["@componentParent"] == "Job"
    finish(dp, job)
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")


@pytest.mark.parametrize(("cascade", "guarded_status"), [(False, "WAITING_ON_DEPENDENCIES"), (True, "CASCADE_FAILED")])
def test_a_precondition_that_never_holds_fails_after_its_timeout(
    emulator_factory: Factory, cascade: bool, guarded_status: str
) -> None:
    # Given a precondition re-checked every 2 s (scaled) that gives up after 3 s
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, guarded(preconditionTimeout="3 minutes", cascade=cascade))

    # When the runner answers FALSE to every check
    def check_false() -> bool:
        task = poll_task(dp, "wg")
        if task is not None:
            dp.set_task_status(taskId=task["taskId"], taskStatus="FALSE")
        return instance_status(dp, pipeline_id, "Check") == "FAILED"

    wait_for(check_false, timeout=30, interval=0, what="the precondition to time out")

    # Then the precondition is FAILED and the activity it guards never runs
    wait_for_status(dp, pipeline_id, "Job", guarded_status)
    assert poll_task(dp, "wg") is None
    assert instance_status(dp, pipeline_id, "Job") == guarded_status


# -- SetTaskStatus errors ------------------------------------------------------------------------


def test_set_task_status_rejects_reserved_error_ids_unknown_and_ended_tasks(dp: Any) -> None:
    # Given a handed-out, acknowledged task
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg"))
    task = wait_for_task(dp, "wg")
    dp.report_task_progress(taskId=task["taskId"])

    # When the runner uses a reserved errorId, then an unknown task id
    with pytest.raises(ClientError) as reserved:
        dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Service_Oops")
    with pytest.raises(ClientError) as unknown:
        dp.set_task_status(taskId="no-such-task", taskStatus="FINISHED")

    # Then they are InvalidRequestException and TaskNotFoundException, and the task is still running
    assert error_code(reserved) == "InvalidRequestException"
    assert error_code(unknown) == "TaskNotFoundException"
    assert instance_status(dp, pipeline_id, "Job") == "RUNNING"

    # When it ends, a second SetTaskStatus and a progress report on it are TaskNotFoundException
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    with pytest.raises(ClientError) as again:
        dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED")
    with pytest.raises(ClientError) as progress:
        dp.report_task_progress(taskId=task["taskId"])
    assert error_code(again) == "TaskNotFoundException"
    assert error_code(progress) == "TaskNotFoundException"
    assert instance_status(dp, pipeline_id, "Job") == "FINISHED"


def test_failure_details_show_on_the_attempt(dp: Any) -> None:
    # Given a handed-out task with no retries
    pipeline_id = start_pipeline(dp, ondemand_definition(shell_activity("Job"), workerGroup="wg", maximumRetries="0"))
    task = wait_for_task(dp, "wg")

    # When the runner reports it FAILED with details
    dp.set_task_status(
        taskId=task["taskId"], taskStatus="FAILED", errorId="ExitCode2", errorMessage="bad", errorStackTrace="at x"
    )

    # Then the attempt and the instance show them
    attempt = describe(dp, pipeline_id, task["attemptId"])
    assert (attempt["@status"], attempt["errorId"], attempt["errorMessage"]) == ("FAILED", "ExitCode2", "bad")
    assert attempt["errorStackTrace"] == "at x"
    wait_for_status(dp, pipeline_id, "Job", "FAILED")
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))["errorId"] == "ExitCode2"


# -- runner heartbeats -----------------------------------------------------------------------------


def test_heartbeats_record_runners_until_they_are_told_to_terminate(emulator: EmulatorProcess, dp: Any) -> None:
    # Given a runner sending heartbeats
    first = dp.report_task_runner_heartbeat(taskrunnerId="runner-1", workerGroup="wg", hostname="host-a")
    dp.report_task_runner_heartbeat(taskrunnerId="runner-1", workerGroup="wg", hostname="host-a")
    dp.report_task_runner_heartbeat(taskrunnerId="runner-2", workerGroup="other")

    # Then the service lists both and tells them to keep running
    assert first["terminate"] is False
    runners = {r["taskrunnerId"]: r for r in emulator.admin("runners")["runners"]}
    assert set(runners) == {"runner-1", "runner-2"}
    assert (runners["runner-1"]["workerGroup"], runners["runner-1"]["hostname"]) == ("wg", "host-a")
    assert runners["runner-1"]["heartbeats"] == 2

    # When an operator asks runner-1 to terminate
    emulator.admin("terminate-runner", {"taskrunnerId": "runner-1"})

    # Then runner-1's next heartbeat says terminate, and runner-2's does not
    assert dp.report_task_runner_heartbeat(taskrunnerId="runner-1", workerGroup="wg")["terminate"] is True
    assert dp.report_task_runner_heartbeat(taskrunnerId="runner-2", workerGroup="other")["terminate"] is False
