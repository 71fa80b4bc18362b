"""The local service's deadlines over HTTP: ack and progress timeouts, retries, attemptTimeout, cancellation.

Periods in definitions run under ``--time-scale 60``, so "2 minutes" lasts 2 s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

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
    wait_for,
    wait_for_status,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]

FAST = ("--poll-wait", "1", "--time-scale", "60")


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


def one_job(**fields: Any) -> dict[str, Any]:
    return ondemand_definition(shell_activity("Job", **fields), workerGroup="wg")


def attempt_no(task: dict[str, Any]) -> int:
    return int(task["attemptId"].rsplit("_Attempt=", 1)[1])


def stamp_seconds(value: str) -> float:
    """An API time stamp (``YYYY-MM-DDTHH:MM:SS``, UTC) as epoch seconds."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


# -- acknowledgement and progress deadlines --------------------------------------------------------


def test_an_unacknowledged_task_times_out_and_is_handed_out_as_a_new_attempt(emulator_factory: Factory) -> None:
    # Given --ack-timeout 2 and the default --rehandout new-attempt
    service = emulator_factory(*FAST, "--ack-timeout", "2")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job())
    first = wait_for_task(dp, "wg")

    # When the runner never acknowledges it
    second = wait_for_task(dp, "wg", timeout=30)

    # Then the first attempt is TIMEDOUT and attempt 2 of the same instance is handed out with a new task id
    assert attempt_no(first) == 1
    assert second["attemptId"] == first["attemptId"].replace("_Attempt=1", "_Attempt=2")
    assert second["taskId"] != first["taskId"]
    assert describe(dp, pipeline_id, first["attemptId"])["@status"] == "TIMEDOUT"
    # And the old task id is gone for the runner that held it
    with pytest.raises(ClientError) as late:
        dp.report_task_progress(taskId=first["taskId"])
    assert error_code(late) == "TaskNotFoundException"
    dp.report_task_progress(taskId=second["taskId"])
    dp.set_task_status(taskId=second["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")


def test_an_unacknowledged_task_is_handed_out_again_as_the_same_task(emulator_factory: Factory) -> None:
    # Given --ack-timeout 2 and --rehandout same-task
    service = emulator_factory(*FAST, "--ack-timeout", "2", "--rehandout", "same-task")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job())
    first = wait_for_task(dp, "wg", hostname="runner-a")

    # When the runner never acknowledges it
    again = wait_for_task(dp, "wg", timeout=30, hostname="runner-b")

    # Then the same task and attempt are handed out again, now to the second runner
    assert (again["taskId"], again["attemptId"]) == (first["taskId"], first["attemptId"])
    attempt = describe(dp, pipeline_id, first["attemptId"])
    assert (attempt["@status"], attempt["hostname"]) == ("WAITING_FOR_RUNNER", "runner-b")
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))["@attemptCount"] == "1"
    dp.report_task_progress(taskId=again["taskId"])
    dp.set_task_status(taskId=again["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")


@pytest.mark.parametrize("mode", ["new-attempt", "same-task"])
def test_missed_deadlines_never_consume_maximum_retries(emulator_factory: Factory, mode: str) -> None:
    # Given a job with no retries at all
    service = emulator_factory(*FAST, "--ack-timeout", "2", "--rehandout", mode)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job(maximumRetries="0"))
    wait_for_task(dp, "wg")

    # When the runner misses the ack deadline and the task is handed out again
    again = wait_for_task(dp, "wg", timeout=30)

    # Then the re-handed task can still finish the instance
    dp.report_task_progress(taskId=again["taskId"])
    dp.set_task_status(taskId=again["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")
    instance = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))
    assert instance["@triesLeft"] == "1"


def test_a_runner_that_goes_quiet_after_acknowledging_loses_the_task(emulator_factory: Factory) -> None:
    # Given --progress-timeout 3 and a runner that acknowledged its task
    service = emulator_factory(*FAST, "--progress-timeout", "3")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job())
    first = wait_for_task(dp, "wg")
    assert dp.report_task_progress(taskId=first["taskId"])["canceled"] is False
    wait_for_status(dp, pipeline_id, "Job", "RUNNING")

    # When it reports nothing more
    second = wait_for_task(dp, "wg", timeout=30)

    # Then the work is handed out again and the quiet attempt is TIMEDOUT
    assert attempt_no(second) == 2
    assert describe(dp, pipeline_id, first["attemptId"])["@status"] == "TIMEDOUT"


def test_progress_reports_keep_a_task_past_the_progress_timeout(emulator_factory: Factory) -> None:
    # Given --progress-timeout 3 and a runner reporting every half second
    service = emulator_factory(*FAST, "--progress-timeout", "3")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job())
    task = wait_for_task(dp, "wg")
    dp.report_task_progress(taskId=task["taskId"])
    reports = []

    # When it keeps reporting for longer than the timeout
    def keep_reporting() -> bool:
        reports.append(dp.report_task_progress(taskId=task["taskId"])["canceled"])
        return len(reports) >= 10

    wait_for(keep_reporting, timeout=30, interval=0.5, what="ten progress reports")

    # Then it keeps the task: never canceled, nothing handed out again, and it can finish
    assert not any(reports)
    assert poll_task(dp, "wg") is None
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")
    assert describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))["@attemptCount"] == "1"


def test_report_progress_timeout_on_the_object_overrides_the_service_default(emulator_factory: Factory) -> None:
    # Given a 15-minute service default but reportProgressTimeout "5 minutes" (5 s) on the activity
    service = emulator_factory(*FAST, "--progress-timeout", "900")
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job(reportProgressTimeout="5 minutes"))
    first = wait_for_task(dp, "wg")
    dp.report_task_progress(taskId=first["taskId"])

    # When the runner goes quiet after acknowledging
    second = wait_for_task(dp, "wg", timeout=30)

    # Then the task is handed out again after the object's timeout
    assert attempt_no(second) == 2
    assert describe(dp, pipeline_id, first["attemptId"])["@status"] == "TIMEDOUT"


# -- retries ---------------------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_after_the_retry_delay_and_can_succeed(emulator_factory: Factory) -> None:
    # Given maximumRetries 2 and retryDelay "2 minutes" (2 s)
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job(maximumRetries="2", retryDelay="2 minutes"))
    first = wait_for_task(dp, "wg")

    # When attempt 1 fails
    dp.report_task_progress(taskId=first["taskId"])
    dp.set_task_status(taskId=first["taskId"], taskStatus="FAILED", errorId="Exit1", errorMessage="exit 1")

    # Then the instance waits for a runner again, with the failure visible on attempt 1
    failed = describe(dp, pipeline_id, first["attemptId"])
    assert (failed["@status"], failed["errorId"], failed["errorMessage"]) == ("FAILED", "Exit1", "exit 1")
    assert instance_status(dp, pipeline_id, "Job") == "WAITING_FOR_RUNNER"

    # When attempt 2 arrives after the delay and finishes
    second = wait_for_task(dp, "wg", timeout=30)
    assert attempt_no(second) == 2
    dp.report_task_progress(taskId=second["taskId"])
    dp.set_task_status(taskId=second["taskId"], taskStatus="FINISHED")

    # Then attempt 2 started no sooner than the retry delay after attempt 1 ended
    ended = stamp_seconds(describe(dp, pipeline_id, first["attemptId"])["@actualEndTime"])
    assert stamp_seconds(describe(dp, pipeline_id, second["attemptId"])["@actualStartTime"]) - ended >= 2
    # And attempt 2 and the instance are FINISHED after two attempts
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")
    assert describe(dp, pipeline_id, second["attemptId"])["@status"] == "FINISHED"
    instance = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))
    assert instance["@attemptCount"] == "2"
    assert instance["@headAttempt"] == second["attemptId"]


def test_an_instance_fails_with_the_last_error_once_retries_are_exhausted(emulator_factory: Factory) -> None:
    # Given maximumRetries 1 and retryDelay "2 minutes" (2 s)
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job(maximumRetries="1", retryDelay="2 minutes"))

    # When both attempts fail
    for n in (1, 2):
        task = wait_for_task(dp, "wg", timeout=30)
        assert attempt_no(task) == n
        dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId=f"Err{n}", errorMessage=f"try {n}")

    # Then the instance is FAILED with the second error, and no third attempt comes
    wait_for_status(dp, pipeline_id, "Job", "FAILED")
    instance = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Job"))
    assert (instance["errorId"], instance["errorMessage"], instance["@attemptCount"]) == ("Err2", "try 2", "2")
    assert poll_task(dp, "wg") is None


def test_a_runner_still_working_past_attempt_timeout_is_canceled_and_retried(emulator_factory: Factory) -> None:
    # Given attemptTimeout "2 minutes" (2 s), one retry after "2 minutes" (2 s)
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id = start_pipeline(dp, one_job(attemptTimeout="2 minutes", maximumRetries="1", retryDelay="2 minutes"))
    first = wait_for_task(dp, "wg")

    # When the runner keeps reporting progress past the timeout
    wait_for(
        lambda: dp.report_task_progress(taskId=first["taskId"])["canceled"],
        timeout=30,
        interval=0.3,
        what="ReportTaskProgress to say canceled",
    )

    # Then the attempt is TIMEDOUT and a retry follows
    assert describe(dp, pipeline_id, first["attemptId"])["@status"] == "TIMEDOUT"
    second = wait_for_task(dp, "wg", timeout=30)
    assert attempt_no(second) == 2
    dp.report_task_progress(taskId=second["taskId"])
    dp.set_task_status(taskId=second["taskId"], taskStatus="FINISHED")
    wait_for_status(dp, pipeline_id, "Job", "FINISHED")


# -- cancellation ----------------------------------------------------------------------------------


def running_job(dp: Any, **fields: Any) -> tuple[str, dict[str, Any]]:
    pipeline_id = start_pipeline(dp, one_job(**fields))
    task = wait_for_task(dp, "wg")
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False
    return pipeline_id, task


def test_try_cancel_on_a_running_instance_cancels_its_task(emulator_factory: Factory) -> None:
    # Given a running task
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id, task = running_job(dp)

    # When an operator sets the instance TRY_CANCEL
    dp.set_status(pipelineId=pipeline_id, objectIds=[instance_of(dp, pipeline_id, "Job")], status="TRY_CANCEL")

    # Then the runner's next report says canceled, the instance is CANCELED, and nothing is handed out again
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is True
    wait_for_status(dp, pipeline_id, "Job", "CANCELED")
    assert describe(dp, pipeline_id, task["attemptId"])["@status"] == "CANCELED"
    assert poll_task(dp, "wg") is None


def test_deactivating_a_pipeline_cancels_its_running_task(emulator_factory: Factory) -> None:
    # Given a running task
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    pipeline_id, task = running_job(dp)

    # When the pipeline is deactivated (cancelActive defaults to true)
    dp.deactivate_pipeline(pipelineId=pipeline_id)

    # Then the runner is told to cancel and the instance is CANCELED
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is True
    wait_for_status(dp, pipeline_id, "Job", "CANCELED")
    assert poll_task(dp, "wg") is None


def test_deleting_a_pipeline_cancels_its_running_task(emulator_factory: Factory) -> None:
    # Given a running task
    service = emulator_factory(*FAST)
    dp = dp_client(service.url)
    _pipeline_id, task = running_job(dp)

    # When the pipeline is deleted
    dp.delete_pipeline(pipelineId=_pipeline_id)

    # Then progress reports say canceled, SetTaskStatus says the pipeline is deleted, and nothing is handed out
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is True
    with pytest.raises(ClientError) as deleted:
        dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    assert error_code(deleted) == "PipelineDeletedException"
    assert poll_task(dp, "wg") is None
