"""Scheduled pipelines over HTTP: backfill, the 1-day rule, maxActiveInstances, a fast clock, restarts.

The service clock is read and moved through the admin API (``clock``, ``advance-clock``), so the
tests never depend on the host's time zone or on how long a call took.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import (
    EmulatorProcess,
    aws_cli,
    bridge_cli,
    describe,
    dp_client,
    fields_of,
    poll_task,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]
HOUR = 3600
DAY = 24 * HOUR


def service_now(service: EmulatorProcess) -> float:
    """The service clock, in epoch seconds."""
    return float(service.admin("clock")["epochSeconds"])


def at(epoch: float) -> str:
    """Epoch seconds as a definition's ``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%S")


def scheduled(
    *objects: dict[str, Any], schedule: dict[str, Any], schedule_type: str = "timeseries", **default: Any
) -> dict[str, Any]:
    """A definition whose ``Default`` runs everything on ``schedule`` (a Schedule object's fields, with ``id``)."""
    default_object = {"id": "Default", "scheduleType": schedule_type, "schedule": {"ref": schedule["id"]}, **default}
    return {"objects": [default_object, {"type": "Schedule", **schedule}, *objects]}


def instances_of(dp: Any, pipeline_id: str, component_id: str) -> list[dict[str, Any]]:
    """Every instance of a component as DescribeObjects shows it, oldest scheduled start first."""
    query = {"selectors": [{"fieldName": "@componentParent", "operator": {"type": "REF_EQ", "values": [component_id]}}]}
    ids: list[str] = []
    marker: dict[str, str] = {}
    while True:
        page = dp.query_objects(pipelineId=pipeline_id, sphere="INSTANCE", query=query, limit=100, **marker)
        ids += page["ids"]
        if not page.get("hasMoreResults"):
            break
        marker = {"marker": page["marker"]}
    found = []
    for n in range(0, len(ids), 25):
        found += dp.describe_objects(pipelineId=pipeline_id, objectIds=ids[n : n + 25])["pipelineObjects"]
    return sorted((fields_of(obj) for obj in found), key=lambda f: f["@scheduledStartTime"])


def wait_for_instances(dp: Any, pipeline_id: str, component_id: str, count: int, timeout: float = 40) -> list[Any]:
    """Wait until ``component_id`` has at least ``count`` instances; returns them all."""

    def enough() -> list[dict[str, Any]] | None:
        runs = instances_of(dp, pipeline_id, component_id)
        return runs if len(runs) >= count else None

    found: list[dict[str, Any]] = wait_for(enough, timeout=timeout, what=f"{count} instances of {component_id}")
    return found


def starts(runs: list[dict[str, Any]]) -> list[str]:
    return [run["@scheduledStartTime"] for run in runs]


def statuses(runs: list[dict[str, Any]]) -> list[str]:
    return [run["@status"] for run in runs]


def instance_of_task(task: dict[str, Any]) -> str:
    instance_id: str = fields_of(task["objects"][task["attemptId"]])["@instanceParent"]
    return instance_id


def finish(dp: Any, task: dict[str, Any]) -> None:
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")


def status_of(dp: Any, pipeline_id: str, instance_id: str) -> str:
    status: str = describe(dp, pipeline_id, instance_id)["@status"]
    return status


# -- backfill and the 1-day rule ------------------------------------------------------------------


def test_a_start_23_hours_ago_backfills_23_instances_run_max_active_at_a_time(emulator_factory: Factory) -> None:
    # given an hourly timeseries schedule that started 23 hours ago, at most 3 instances active
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)
    start = int(service_now(service)) - 23 * HOUR - 60
    doc = scheduled(
        shell_activity("Hourly", maxActiveInstances="3"),
        schedule={"id": "EveryHour", "period": "1 hour", "startDateTime": at(start)},
        workerGroup="wg-backfill",
    )

    # when it is activated
    pipeline_id = start_pipeline(dp, doc)

    # then every interval that ended before now exists at once, each with its interval's times
    runs = instances_of(dp, pipeline_id, "Hourly")
    assert starts(runs) == [at(start + k * HOUR) for k in range(23)]
    assert [run["@scheduledEndTime"] for run in runs] == [at(start + (k + 1) * HOUR) for k in range(23)]
    assert [run["@id"] for run in runs] == [f"@Hourly_{at(start + k * HOUR)}" for k in range(23)]
    # and only the three oldest may run
    assert statuses(runs) == ["WAITING_FOR_RUNNER"] * 3 + ["WAITING_ON_DEPENDENCIES"] * 20
    held = [wait_for_task(dp, "wg-backfill") for _ in range(3)]
    assert [instance_of_task(task) for task in held] == [run["@id"] for run in runs[:3]]
    assert poll_task(dp, "wg-backfill") is None

    # when a runner finishes the oldest
    finish(dp, held.pop(0))

    # then the fourth starts, and as tasks keep finishing the rest follow in scheduled order
    assert status_of(dp, pipeline_id, runs[3]["@id"]) == "WAITING_FOR_RUNNER"
    assert status_of(dp, pipeline_id, runs[4]["@id"]) == "WAITING_ON_DEPENDENCIES"
    order = [runs[0]["@id"]] + [instance_of_task(task) for task in held]
    while len(order) < 23:
        task = wait_for_task(dp, "wg-backfill", timeout=10)
        order.append(instance_of_task(task))
        held.append(task)
        finish(dp, held.pop(0))
    for task in held:
        finish(dp, task)
    assert order == [run["@id"] for run in runs]
    assert set(statuses(instances_of(dp, pipeline_id, "Hourly"))) == {"FINISHED"}

    # and the AWS CLI's list-runs shows every backfilled instance once it ran
    rows = json.loads(aws_cli(service.url, "list-runs", "--pipeline-id", pipeline_id).stdout)
    listed = sorted((row["@scheduledStartTime"], row["@status"]) for row in rows)
    assert listed == [(start_time, "FINISHED") for start_time in starts(runs)]


def test_a_start_more_than_a_day_ago_is_refused_unless_allowed(emulator_factory: Factory) -> None:
    # given an hourly schedule that started 25 hours ago
    strict = emulator_factory("--poll-wait", "1")
    dp = dp_client(strict.url)
    start = at(service_now(strict) - 25 * HOUR - 60)
    doc = scheduled(
        shell_activity("Hourly"),
        schedule={"id": "LongAgo", "period": "1 hour", "startDateTime": start},
        workerGroup="wg-old",
    )
    pipeline_id = start_pipeline(dp, doc, activate=False)

    # when it is activated, then AWS's backfill rule refuses it, naming the schedule and its start
    with pytest.raises(ClientError) as refused:
        dp.activate_pipeline(pipelineId=pipeline_id)
    error = refused.value.response["Error"]
    assert error["Code"] == "InvalidRequestException"
    assert "LongAgo" in error["Message"] and start in error["Message"]
    # and nothing ran
    assert instances_of(dp, pipeline_id, "Hourly") == []
    assert {"key": "@pipelineState", "stringValue": "PENDING"} in (
        dp.describe_pipelines(pipelineIds=[pipeline_id])["pipelineDescriptionList"][0]["fields"]
    )

    # given a service started with --allow-old-start
    lenient = emulator_factory("--poll-wait", "1", "--allow-old-start")
    dp = dp_client(lenient.url)

    # when the same definition is activated, then every hour since the start is backfilled
    pipeline_id = start_pipeline(dp, doc)
    runs = instances_of(dp, pipeline_id, "Hourly")
    assert len(runs) == 25
    assert runs[0]["@scheduledStartTime"] == start


def test_first_activation_start_takes_the_activation_start_timestamp(emulator_factory: Factory) -> None:
    # given a cron schedule that starts at the first activation
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)
    doc = scheduled(
        shell_activity("Job"),
        schedule={"id": "Hourly", "period": "1 hour", "startAt": "FIRST_ACTIVATION_DATE_TIME"},
        schedule_type="CRON",
        workerGroup="wg-first",
    )
    pipeline_id = start_pipeline(dp, doc, activate=False)
    begin = int(service_now(service)) - 2 * HOUR - 30

    # when it is activated with a startTimestamp two hours back
    dp.activate_pipeline(pipelineId=pipeline_id, startTimestamp=datetime.fromtimestamp(begin, UTC))

    # then its intervals start there: cron runs at each interval's start, so three are due
    assert starts(instances_of(dp, pipeline_id, "Job")) == [at(begin + k * HOUR) for k in range(3)]


# -- a fast clock ---------------------------------------------------------------------------------


def test_a_fast_clock_runs_twelve_hourly_instances_on_time_within_seconds(emulator_factory: Factory) -> None:
    # given a service whose clock runs an hour per second, and an hourly cron schedule of 12 from now
    service = emulator_factory("--poll-wait", "1", "--clock-speed", "3600")
    dp = dp_client(service.url)
    start = int(service_now(service))
    doc = scheduled(
        shell_activity("Tick"),
        schedule={"id": "Hourly", "period": "1 hour", "startDateTime": at(start), "occurrences": "12"},
        schedule_type="cron",
        workerGroup="wg-fast",
    )

    # when it is activated
    pipeline_id = start_pipeline(dp, doc)

    # then a runner gets the first at once; a fast clock does not expire its acknowledgement deadline
    task = wait_for_task(dp, "wg-fast", timeout=5)
    assert instance_of_task(task) == f"@Tick_{at(start)}"
    time.sleep(2)  # two hours on the service clock, two seconds in real time
    assert dp.report_task_progress(taskId=task["taskId"])["canceled"] is False
    attempt = describe(dp, pipeline_id, task["attemptId"])
    assert attempt["@status"] == "RUNNING"
    assert attempt["@actualStartTime"] >= at(start)
    dp.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    # and the twelve instances appear within seconds, at consecutive hours, and no more after them
    runs = wait_for_instances(dp, pipeline_id, "Tick", 12)  # twelve service hours, about 12 s real
    assert starts(runs) == [at(start + k * HOUR) for k in range(12)]
    time.sleep(1.5)
    assert len(instances_of(dp, pipeline_id, "Tick")) == 12


def test_advance_clock_from_the_admin_cli_makes_the_next_instance_appear_at_once(emulator_factory: Factory) -> None:
    # given an hourly cron schedule that started now, on a real-time clock
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)
    start = int(service_now(service))
    doc = scheduled(
        shell_activity("Job"),
        schedule={"id": "Hourly", "period": "1 hour", "startDateTime": at(start)},
        schedule_type="cron",
        workerGroup="wg-advance",
    )
    pipeline_id = start_pipeline(dp, doc)
    assert starts(instances_of(dp, pipeline_id, "Job")) == [at(start)]

    # when the clock is advanced an hour with `bridge emulator admin advance-clock`
    advanced = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "advance-clock", "3600")

    # then the next instance exists at once, and `admin clock` shows the new time
    assert advanced.returncode == 0, advanced.stderr
    assert json.loads(advanced.stdout)["instancesCreated"] == 1
    assert starts(instances_of(dp, pipeline_id, "Job")) == [at(start), at(start + HOUR)]
    shown = bridge_cli("emulator", "admin", "--endpoint-url", service.url, "clock")
    assert shown.returncode == 0, shown.stderr
    clock = json.loads(shown.stdout)
    assert clock["epochSeconds"] >= start + HOUR
    assert clock["now"] >= at(start + HOUR)
    assert clock["speed"] == 1
    # and the clock never moves back
    with pytest.raises(urllib.error.HTTPError) as refused:
        service.admin("advance-clock", {"seconds": -60})
    assert refused.value.code == 400
    refused.value.close()


def test_a_daily_schedule_on_a_day_per_second_clock(emulator_factory: Factory) -> None:
    # given a daily timeseries schedule ending three days after it starts, on a clock running a day per second
    service = emulator_factory("--poll-wait", "1", "--clock-speed", "86400")
    dp = dp_client(service.url)
    start = int(service_now(service))
    doc = scheduled(
        shell_activity("Nightly"),
        schedule={"id": "Daily", "period": "1 day", "startDateTime": at(start), "endDateTime": at(start + 3 * DAY)},
        workerGroup="wg-daily",
    )

    # when it is activated
    pipeline_id = start_pipeline(dp, doc)

    # then three daily instances appear within seconds, each covering its day, and the schedule ends
    runs = wait_for_instances(dp, pipeline_id, "Nightly", 3, timeout=20)
    assert starts(runs) == [at(start + k * DAY) for k in range(3)]
    assert [run["@scheduledEndTime"] for run in runs] == [at(start + (k + 1) * DAY) for k in range(3)]
    time.sleep(1.5)
    assert len(instances_of(dp, pipeline_id, "Nightly")) == 3


# -- resuming -------------------------------------------------------------------------------------


def fast_hourly(service: EmulatorProcess, dp: Any, worker_group: str) -> tuple[str, int]:
    """Activate a 12-occurrence hourly cron schedule starting now; returns (pipeline id, start)."""
    start = int(service_now(service))
    doc = scheduled(
        shell_activity("Tick"),
        schedule={"id": "Hourly", "period": "1 hour", "startDateTime": at(start), "occurrences": "12"},
        schedule_type="cron",
        workerGroup=worker_group,
    )
    return start_pipeline(dp, doc), start


def test_a_restart_mid_schedule_continues_without_duplicates(emulator_factory: Factory, tmp_path: Path) -> None:
    # given a fast-clock schedule, persisted, a few instances in
    service = emulator_factory("--poll-wait", "1", "--clock-speed", "3600", "--state", str(tmp_path / "state.db"))
    dp = dp_client(service.url)
    pipeline_id, start = fast_hourly(service, dp, "wg-restart")
    wait_for_instances(dp, pipeline_id, "Tick", 3)
    clock_before = service_now(service)

    # when the service restarts on the same state file
    service.restart()

    # then its clock carries on from where it was, and the schedule completes with each hour once
    assert service_now(service) >= clock_before
    runs = wait_for_instances(dp, pipeline_id, "Tick", 12)
    assert starts(runs) == [at(start + k * HOUR) for k in range(12)]
    time.sleep(1.5)
    assert len(instances_of(dp, pipeline_id, "Tick")) == 12


def test_deactivate_then_activate_resumes_the_schedule_without_duplicates(emulator_factory: Factory) -> None:
    # given a fast-clock schedule a few instances in
    service = emulator_factory("--poll-wait", "1", "--clock-speed", "3600")
    dp = dp_client(service.url)
    pipeline_id, start = fast_hourly(service, dp, "wg-deactivate")
    wait_for_instances(dp, pipeline_id, "Tick", 3)

    # when it is deactivated, then no instance is created while it is inactive
    dp.deactivate_pipeline(pipelineId=pipeline_id)
    made = len(instances_of(dp, pipeline_id, "Tick"))
    time.sleep(2)
    assert len(instances_of(dp, pipeline_id, "Tick")) == made < 12

    # when it is activated again, then it resumes where it was: each hour exactly once
    dp.activate_pipeline(pipelineId=pipeline_id)
    runs = wait_for_instances(dp, pipeline_id, "Tick", 12)
    assert starts(runs) == [at(start + k * HOUR) for k in range(12)]
    time.sleep(1.5)
    assert len(instances_of(dp, pipeline_id, "Tick")) == 12


# -- dependencies between scheduled components ----------------------------------------------------


def test_depends_on_pairs_instances_of_the_same_scheduled_start(emulator_factory: Factory) -> None:
    # given Load depending on Extract, both hourly since three hours ago, up to 5 active each
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)
    start = int(service_now(service)) - 3 * HOUR - 60
    doc = scheduled(
        shell_activity("Extract"),
        shell_activity("Load", dependsOn={"ref": "Extract"}),
        schedule={"id": "Hourly", "period": "1 hour", "startDateTime": at(start)},
        workerGroup="wg-pairs",
        maxActiveInstances="5",
    )
    pipeline_id = start_pipeline(dp, doc)
    extract = instances_of(dp, pipeline_id, "Extract")
    load = instances_of(dp, pipeline_id, "Load")
    assert starts(extract) == starts(load) == [at(start + k * HOUR) for k in range(3)]
    # then each Load waits on the Extract of its own hour
    assert [run["@waitingOn"] for run in load] == [run["@id"] for run in extract]

    # when a runner finishes only the middle hour's Extract
    tasks = {instance_of_task(task): task for task in (wait_for_task(dp, "wg-pairs") for _ in range(3))}
    assert set(tasks) == {run["@id"] for run in extract}
    finish(dp, tasks[extract[1]["@id"]])

    # then only the middle hour's Load may run
    assert statuses(instances_of(dp, pipeline_id, "Load")) == [
        "WAITING_ON_DEPENDENCIES",
        "WAITING_FOR_RUNNER",
        "WAITING_ON_DEPENDENCIES",
    ]
    assert instance_of_task(wait_for_task(dp, "wg-pairs")) == load[1]["@id"]


def test_a_dependency_on_another_schedule_is_its_interval_containing_the_start(emulator_factory: Factory) -> None:
    # given an hourly cron Report depending on a daily timeseries Rollup (which runs at each day's end)
    service = emulator_factory("--poll-wait", "1")
    dp = dp_client(service.url)
    start = int(service_now(service)) - 60
    doc = {
        "objects": [
            {"id": "Default", "scheduleType": "cron", "workerGroup": "wg-cross"},
            {"id": "Hourly", "type": "Schedule", "period": "1 hour", "startDateTime": at(start)},
            {"id": "Daily", "type": "Schedule", "period": "1 day", "startDateTime": at(start)},
            shell_activity("Rollup", schedule={"ref": "Daily"}, scheduleType="timeseries"),
            shell_activity("Report", schedule={"ref": "Hourly"}, dependsOn={"ref": "Rollup"}),
        ]
    }
    pipeline_id = start_pipeline(dp, doc)

    # then the first Report waits for a Rollup that does not exist yet
    assert instances_of(dp, pipeline_id, "Rollup") == []
    (first,) = instances_of(dp, pipeline_id, "Report")
    assert first["@status"] == "WAITING_ON_DEPENDENCIES"

    # when a day passes on the service clock
    service.admin("advance-clock", {"seconds": DAY})

    # then the day's Rollup exists, and every Report of that day waits on it (the next day's on nothing yet)
    (rollup,) = instances_of(dp, pipeline_id, "Rollup")
    assert rollup["@scheduledStartTime"] == at(start)
    reports = instances_of(dp, pipeline_id, "Report")
    assert starts(reports) == [at(start + k * HOUR) for k in range(25)]
    assert [run.get("@waitingOn") for run in reports] == [rollup["@id"]] * 24 + [None]
    # and once the Rollup finishes, the first Report runs
    task = wait_for_task(dp, "wg-cross")
    assert instance_of_task(task) == rollup["@id"]
    finish(dp, task)
    assert instance_of_task(wait_for_task(dp, "wg-cross")) == first["@id"]
