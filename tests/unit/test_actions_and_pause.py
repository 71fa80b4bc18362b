"""Actions on a hand-driven clock, and PAUSE / RESUME under random runner behaviour.

An in-process :class:`emulator.service.Service` (memory store, a clock that moves only when the
test says, timers fired by the test), as in ``test_lifecycle_props``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.clock import Clock, stamp
from emulator.config import Rehandout, ServiceConfig
from emulator.definition import definition_file_to_api
from emulator.errors import InvalidRequestException
from emulator.model import PipelineState, Status
from emulator.service import Service
from emulator.store import MemoryStore
from tests.unit.test_lifecycle_props import ADVANCES, NAMES, Harness

START = 1_900_000_800.0  # on a 15-minute boundary


class Driver:
    """A service on a clock that moves only by ``advance`` (service clock and real time together)."""

    def __init__(self, **config: Any) -> None:
        self.t = START
        self.service = Service(
            ServiceConfig(poll_wait_s=0.001, **config), store=MemoryStore(), clock=Clock(real=lambda: self.t)
        )
        self.handlers = self.service.lifecycle.timer_handlers()

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.service.call(operation, params)

    def start(self, doc: dict[str, Any]) -> str:
        objects, _, _ = definition_file_to_api(doc)
        pipeline_id: str = self.call("CreatePipeline", {"name": "p", "uniqueId": str(self.t)})["pipelineId"]
        put = self.call("PutPipelineDefinition", {"pipelineId": pipeline_id, "pipelineObjects": objects})
        assert not put["errored"], put["validationErrors"]
        self.call("ActivatePipeline", {"pipelineId": pipeline_id})
        return pipeline_id

    def advance(self, seconds: float) -> None:
        self.t += seconds
        with self.service.state.lock:
            self.service.state.fire_due_timers(self.handlers)

    def poll(self, group: str = "wg") -> dict[str, Any] | None:
        task: dict[str, Any] | None = self.call("PollForTask", {"workerGroup": group}).get("taskObject")
        return task

    def status(self, pipeline_id: str, component_id: str) -> Status:
        found = [
            i
            for (pid, _), i in self.service.state.instances.items()
            if pid == pipeline_id and i.component_id == component_id
        ]
        assert len(found) == 1, found
        return found[0].status

    def instance_id(self, pipeline_id: str, component_id: str) -> str:
        return next(
            i.instance_id
            for (pid, _), i in self.service.state.instances.items()
            if pid == pipeline_id and i.component_id == component_id
        )


def scheduled(*objects: dict[str, Any]) -> dict[str, Any]:
    return {
        "objects": [
            {"id": "Default", "scheduleType": "cron", "schedule": {"ref": "Daily"}, "workerGroup": "wg"},
            {"id": "Daily", "type": "Schedule", "period": "1 day", "startAt": "FIRST_ACTIVATION_DATE_TIME"},
            {"id": "Late", "type": "SnsAlarm", "topicArn": "arn:t", "role": "r"}
            | {"subject": "#{node.name} late", "message": "#{node.@scheduledStartTime}"},
            {"id": "Stop", "type": "Terminate"},
            *objects,
        ]
    }


def late_activity(object_id: str) -> dict[str, Any]:
    return {"id": object_id, "type": "ShellCommandActivity", "command": "true", "lateAfterTimeout": "30 minutes"} | {
        "onLateAction": [{"ref": "Late"}, {"ref": "Stop"}]
    }


def test_on_late_action_fires_at_scheduled_start_plus_late_after_timeout() -> None:
    # given a scheduled activity a runner holds (and reports on well within the progress timeout),
    # and one that finishes in time
    driver = Driver(progress_timeout_s=7200)
    pipeline_id = driver.start(scheduled(late_activity("Slow"), late_activity("Quick")))
    tasks = [driver.poll(), driver.poll()]
    assert all(tasks)
    by_instance = {t["attemptId"].rsplit("_Attempt", 1)[0]: t for t in tasks if t}
    quick = by_instance[driver.instance_id(pipeline_id, "Quick")]
    slow = by_instance[driver.instance_id(pipeline_id, "Slow")]
    for task in (quick, slow):
        driver.call("ReportTaskProgress", {"taskId": task["taskId"]})
    driver.call("SetTaskStatus", {"taskId": quick["taskId"], "taskStatus": "FINISHED"})

    # when 29 minutes pass, nothing is late yet
    driver.advance(29 * 60)
    assert driver.service.fired_actions(pipeline_id) == []

    # when 31 minutes have passed
    driver.advance(2 * 60)

    # then only the unfinished instance's onLateAction ran: the alarm recorded, Terminate canceled it
    fired = driver.service.fired_actions(pipeline_id)
    assert [(a["objectId"], a["event"], a["actionId"]) for a in fired] == [
        ("Slow", "onLateAction", "Late"),
        ("Slow", "onLateAction", "Stop"),
    ]
    assert fired[0]["subject"] == "Slow late"
    assert fired[0]["time"] == stamp(START + 31 * 60)  # when the timer fired: the clock jumped past 30 minutes
    assert driver.status(pipeline_id, "Slow") == Status.CANCELED
    assert driver.call("ReportTaskProgress", {"taskId": slow["taskId"]}) == {"canceled": True}

    # and it fires once only
    driver.advance(3600)
    assert len(driver.service.fired_actions(pipeline_id)) == 2


def test_a_paused_instance_waiting_to_retry_is_not_retried_until_resumed() -> None:
    # given an activity whose first attempt failed, with a 2-minute retry delay
    driver = Driver()
    doc = {
        "objects": [
            {"id": "Default", "scheduleType": "ondemand", "workerGroup": "wg", "retryDelay": "2 minutes"},
            {"id": "Job", "type": "ShellCommandActivity", "command": "true", "maximumRetries": "1"},
        ]
    }
    pipeline_id = driver.start(doc)
    task = driver.poll()
    assert task is not None
    driver.call("SetTaskStatus", {"taskId": task["taskId"], "taskStatus": "FAILED", "errorId": "E"})
    job = driver.instance_id(pipeline_id, "Job")

    # when it is paused and the retry delay passes
    driver.call("SetStatus", {"pipelineId": pipeline_id, "objectIds": [job], "status": "PAUSE"})
    driver.advance(300)

    # then no new attempt is handed out
    assert driver.status(pipeline_id, "Job") == Status.PAUSED
    assert driver.poll() is None

    # when it is resumed, the overdue retry runs
    driver.call("SetStatus", {"pipelineId": pipeline_id, "objectIds": [job], "status": "RESUME"})
    assert driver.status(pipeline_id, "Job") == Status.WAITING_FOR_RUNNER
    driver.advance(0)
    retry = driver.poll()
    assert retry is not None
    assert retry["attemptId"] == f"{job}_Attempt=2"


def test_set_status_on_a_finished_pipeline_is_refused() -> None:
    driver = Driver()
    doc = {
        "objects": [
            {"id": "Default", "scheduleType": "ondemand", "workerGroup": "wg"},
            {"id": "Job", "type": "ShellCommandActivity", "command": "true"},
        ]
    }
    pipeline_id = driver.start(doc)
    driver.service.state.pipelines[pipeline_id].state = PipelineState.FINISHED
    with pytest.raises(InvalidRequestException, match="finished"):
        driver.call("SetStatus", {"pipelineId": pipeline_id, "objectIds": ["Job"], "status": "PAUSE"})


# -- PAUSE / RESUME under random behaviour ---------------------------------------------------------------


class PausingHarness(Harness):
    """The lifecycle property's harness, with operators pausing and resuming instances and components."""

    def apply(self, action: tuple[str, int]) -> None:
        name, arg = action
        if name in ("PAUSE", "RESUME"):
            self.set_status(arg, name)
        elif name in ("PAUSE_COMPONENT", "RESUME_COMPONENT"):
            component = "ABP"[arg % 3]
            status = name.split("_")[0]
            self.attempt("SetStatus", {"pipelineId": self.pipeline_id, "objectIds": [component], "status": status})
        else:
            super().apply(action)

    def check(self) -> None:
        super().check()
        for instance in self.instances:
            if instance.status != Status.PAUSED:
                continue
            head = self.service.state.attempts.get((self.pipeline_id, instance.head_attempt or ""))
            held = head is not None and head.open and head.handed_out_at is not None
            assert not held, f"{instance.instance_id} is PAUSED while a runner holds {head}"

    def resume_all(self) -> None:
        for component in "ABP":
            self.call("SetStatus", {"pipelineId": self.pipeline_id, "objectIds": [component], "status": "RESUME"})


PAUSING_NAMES = (*NAMES, "PAUSE", "RESUME", "PAUSE_COMPONENT", "RESUME_COMPONENT")
PAUSING_ACTIONS = st.one_of(
    st.tuples(st.sampled_from(PAUSING_NAMES), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.sampled_from(ADVANCES)),
)


@settings(max_examples=50, deadline=None)
@given(
    rehandout=st.sampled_from(list(Rehandout)),
    failure_mode=st.sampled_from(["none", "cascade"]),
    actions=st.lists(PAUSING_ACTIONS, min_size=10, max_size=60),
)
def test_pause_and_resume_keep_the_lifecycle_sound(
    rehandout: Rehandout, failure_mode: str, actions: list[tuple[str, int]]
) -> None:
    # Given the lifecycle property's pipeline
    harness = PausingHarness(rehandout, failure_mode, 1)

    # When operators pause and resume among random runner behaviour
    for action in actions:
        harness.apply(action)
        # Then a paused instance is never with a runner, and no instance has two open hand-outs
        harness.check()

    # And once everything is resumed and a runner keeps finishing its tasks, every instance settles
    harness.resume_all()
    harness.drain()
    assert all(harness.settled(i) for i in harness.instances)
