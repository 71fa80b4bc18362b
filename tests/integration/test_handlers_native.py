"""Celery-native steps end to end: a ShellCommandActivity with ``myCeleryTask`` runs a Celery task's body.

One stack for the module: the local service (periods scaled 60x, a 5 s progress timeout), a private Redis,
``bridge start`` for two worker groups, and for each a real worker that imports ``tests.native_tasks``
(``-I``): a threads-pool worker on ``dp.native`` and a prefork one on ``dp.nativefork``. Outcomes are read the
way a user reads them: DescribeObjects, the files the task bodies wrote, call counters and the workers' log lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.bridge_stack import Stack, attempts, instance, logged, run_pipeline, status, wait_final
from tests.support import ROOT, celery_worker, shell_activity, wait_for

THREADS, PREFORK = "native", "nativefork"
#: The worker's Celery app (``-A``).
APP = "workers"
#: What every step's command would do if the shell ran it: the tests check it never did.
COMMAND = "echo #{myCeleryTask} >> {marker}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "5"],
        BRIDGE_PROGRESS_DEADLINE_S="5",
        BRIDGE_KILL_GRACE_S="2",
    )
    try:
        stack.start()
        for group, pool in ((THREADS, "threads"), (PREFORK, "prefork")):
            # tests/ is not installed: the worker finds tests.native_tasks from the project root
            proc = celery_worker({**stack.env, "PYTHONPATH": str(ROOT)}, f"dp.{group}", pool=pool, name=f"{group}1")
            proc.cmd[proc.cmd.index("-A") + 1] = APP
            proc.cmd += ["--include", "tests.native_tasks"]
            stack.processes.append(proc)
            stack.workers.append(proc)
            proc.start()
        stack.bridge(THREADS, PREFORK)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def dp(stack: Stack) -> Any:
    return stack.dp


def native_step(stack: Stack, object_id: str, task_name: str, **fields: Any) -> dict[str, Any]:
    """A ShellCommandActivity naming ``task_name``; its command would append to ``<dir>/shell-ran``."""
    marker = stack.dir / "shell-ran"
    return shell_activity(object_id, command=COMMAND.replace("{marker}", str(marker)), myCeleryTask=task_name, **fields)


def shell_ran(stack: Stack) -> bool:
    return (stack.dir / "shell-ran").exists()


@pytest.mark.parametrize("group", [THREADS, PREFORK])
def test_a_step_runs_its_celery_task_with_its_fields_instead_of_the_command(stack: Stack, dp: Any, group: str) -> None:
    # given a step naming a registered task, with user fields (one repeated, one secret)
    out = stack.dir / f"kwargs-{group}.json"
    pipeline = run_pipeline(
        dp,
        group,
        native_step(
            stack,
            "Load",
            "tests.native_tasks.write_kwargs",
            myOutput=str(out),
            myTable="events",
            myColumn=["id", "payload"],
            **{"*myPassword": f"native-secret-{group}"},
        ),
    )

    # when the bridge and the worker run it
    ended = wait_final(dp, pipeline, "Load")

    # then it finished, the body got the fields and a context naming the attempt, and the command never ran
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    got = json.loads(out.read_text())
    assert got["fields"] == {
        "myOutput": str(out),
        "myTable": "events",
        "myColumn": ["id", "payload"],
        "myPassword": f"native-secret-{group}",
    }
    assert (got["pipeline_id"], got["object_id"]) == (pipeline, "Load")
    assert got["attempt_id"] == ended["@headAttempt"]
    assert got["called_directly"] is True and got["cancelled"] is False
    assert not shell_ran(stack)
    # and the worker said what ran, never the secret
    worker = stack.workers[[THREADS, PREFORK].index(group)]
    logged(worker, "running Celery task tests.native_tasks.write_kwargs", pipeline)
    logged(worker, "finished worker_group=" + group, pipeline)
    assert f"native-secret-{group}" not in worker.text()


def test_a_raising_task_fails_the_step_with_its_message(stack: Stack, dp: Any) -> None:
    # given a step whose task raises ValueError
    pipeline = run_pipeline(
        dp, THREADS, native_step(stack, "Broken", "tests.native_tasks.fail", myMessage="table events is locked")
    )

    # when it runs
    ended = wait_final(dp, pipeline, "Broken")

    # then the instance and its attempt show BridgeCeleryTaskError with the exception and its traceback
    attempt = attempts(dp, pipeline, "Broken")[-1]
    assert ended["@status"] == "FAILED"
    for shown in (ended, attempt):
        assert shown["errorId"] == "BridgeCeleryTaskError"
        assert shown["errorMessage"] == "ValueError: table events is locked"
        assert "raise ValueError(myMessage)" in shown["errorStackTrace"]
    assert not shell_ran(stack)


def test_an_unknown_task_fails_the_step_naming_close_matches(stack: Stack, dp: Any) -> None:
    # given a step naming a task no worker registered (a typo)
    pipeline = run_pipeline(dp, THREADS, native_step(stack, "Typo", "tests.native_tasks.write_kwarg"))

    # when it runs
    ended = wait_final(dp, pipeline, "Typo")

    # then it failed with a clear errorId, suggesting the right name
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeUnknownCeleryTask"
    assert "did you mean tests.native_tasks.write_kwargs" in ended["errorMessage"]
    assert not shell_ran(stack)


def test_a_canceled_step_stops_cooperatively_and_reports_nothing(stack: Stack, dp: Any) -> None:
    # given a running step whose body loops until context.cancelled
    started, stopped = stack.dir / "cancel.started", stack.dir / "cancel.stopped"
    set_task_status_before = stack.counters("SetTaskStatus")
    pipeline = run_pipeline(
        dp,
        THREADS,
        native_step(
            stack, "Waiter", "tests.native_tasks.wait_for_cancel", myStarted=str(started), myStopped=str(stopped)
        ),
    )
    wait_for(started.exists, timeout=60, what="the body to start")

    # when the instance is canceled
    dp.set_status(pipelineId=pipeline, objectIds=[instance(dp, pipeline, "Waiter")["@id"]], status="TRY_CANCEL")

    # then the body saw it and returned, the worker says canceled, and no SetTaskStatus was sent
    wait_for(stopped.exists, timeout=30, what="the body to stop")
    worker = stack.workers[0]
    logged(worker, "canceled worker_group=native", pipeline)
    assert status(dp, pipeline, "Waiter") == "CANCELED"
    assert stack.counters("SetTaskStatus") == set_task_status_before
    assert int(stopped.read_text()) > 0  # it was reporting progress while it waited
    assert not shell_ran(stack)


@pytest.mark.parametrize("group", [THREADS, PREFORK])
def test_waiting_on_a_subtask_result_fails_at_once_instead_of_holding_the_slot(
    stack: Stack, dp: Any, group: str
) -> None:
    # given a step whose body calls .delay().get() on another task
    pipeline = run_pipeline(dp, group, native_step(stack, "Waits", "tests.native_tasks.wait_on_child"))

    # when it runs
    ended = wait_final(dp, pipeline, "Waits", timeout=30)

    # then Celery's guard ended it FAILED rather than letting it wait
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeCeleryTaskError"
    assert "Never call result.get() within a task" in ended["errorMessage"]
