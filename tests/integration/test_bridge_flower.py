"""Flower (a real ``celery flower`` with basic auth) shows bridge tasks as dp.<ActivityType>: ids, never secrets, as
arguments; progress while they run; and the Data Pipeline outcome (finished, failed, canceled) once they end.

Progress reaches Flower as ``task-progress`` events (workers/progress.py): Flower shows the task as ``PROGRESS``,
its Result as a JSON text with the last heartbeat, the elapsed time and the output lines so far, and its Runtime.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.bridge_stack import (
    Stack,
    instance,
    run_pipeline,
    running_stack,
    stop_process,
    wait_final,
)
from tests.support import BIN, ManagedProcess, free_port, shell_activity, wait_for

AUTH = "ops:flower-test"
GROUP = "fl"
SECRET = "tok-3141-secret"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # A 6 s progress deadline: running tasks heartbeat every 2 s, so a cancel reaches the worker within seconds.
    with running_stack(
        GROUP,
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "6"],
        BRIDGE_PROGRESS_DEADLINE_S="6",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[int]:
    """A Flower with basic auth on the stack's broker, its event receiver live; yields its port."""
    port = free_port()
    proc = ManagedProcess(
        [
            str(BIN / "celery"),
            "-A",
            "workers",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={AUTH}",
        ],
        stack.env,
        ready_text="Visit me at",
    ).start()
    try:
        wait_for(lambda: _answers(port), timeout=30, what="Flower's API")
        # Flower misses whatever ran before its receiver connected: quick tasks until it has seen one.
        warm_ups: list[str] = []

        def flower_saw_a_warm_up() -> bool:
            seen = " ".join((t.get("args") or "") for t in flower_tasks(port).values())
            if any(p in seen for p in warm_ups):
                return True
            warm_ups.append(run_pipeline(stack.dp, GROUP, shell_activity("WarmUp")))
            return False

        wait_for(flower_saw_a_warm_up, timeout=90, interval=3.0, what="Flower to see a warm-up task")
        yield port
    finally:
        stop_process(proc)


def flower_get(port: int, path: str, auth: str | None = AUTH) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def flower_tasks(port: int) -> dict[str, Any]:
    tasks: dict[str, Any] = flower_get(port, "/api/tasks")
    return tasks


def task_of(port: int, pipeline_id: str, *states: str) -> tuple[str, dict[str, Any]] | None:
    """The Celery task id and Flower's view of the pipeline's task, if Flower shows it in one of ``states``."""
    return next(
        (
            (task_id, task)
            for task_id, task in flower_tasks(port).items()
            if task.get("state") in states and f"pipeline={pipeline_id} " in (task.get("args") or "")
        ),
        None,
    )


def progress_of(task: dict[str, Any]) -> dict[str, Any]:
    progress: dict[str, Any] = json.loads(task["result"])
    return progress


def test_flower_shows_a_running_task_with_its_progress_and_no_secret(stack: Stack, flower: int) -> None:
    # given a pipeline with a secret whose command prints a line every 0.2 s until a gate file appears
    gate = stack.dir / "flower-gate"
    pipeline_id = run_pipeline(
        stack.dp,
        GROUP,
        shell_activity(
            "Slow",
            command=f"n=0; while [ ! -e {gate} ]; do n=$((n+1)); echo line $n; sleep 0.2; done",
            **{"*myToken": SECRET},
        ),
    )

    # when it runs, then Flower shows it in progress, named after its type, with ids (not values) as arguments
    task_id, task = wait_for(lambda: task_of(flower, pipeline_id, "PROGRESS"), timeout=60, what="a PROGRESS task")
    assert task["name"] == "dp.ShellCommandActivity"
    assert f"pipeline={pipeline_id}" in task["args"] and "object=Slow" in task["args"]
    assert "_Attempt=1" in task["args"]

    # and its progress: the lease state, the last heartbeat, the time since it started and its output lines so far
    first = progress_of(task)
    assert first["state"] == "RUNNING"
    assert first["last_heartbeat"].endswith("Z")

    def later_progress() -> dict[str, Any] | None:
        info = flower_get(flower, f"/api/task/info/{task_id}")
        found = progress_of(info)
        return info if found["output_lines"] > first["output_lines"] and found["elapsed_s"] > 0 else None

    info = wait_for(later_progress, timeout=30, interval=1.0, what="the output line count to grow in Flower")
    later = progress_of(info)
    assert later["elapsed_s"] > first["elapsed_s"]
    assert later["last_heartbeat"] >= first["last_heartbeat"]
    assert info["state"] == "PROGRESS" and info["runtime"] == pytest.approx(later["elapsed_s"])

    # when the gate opens, then the task ends FINISHED, and Flower shows the outcome in place of the progress
    gate.touch()
    assert wait_final(stack.dp, pipeline_id, "Slow")["@status"] == "FINISHED"
    _, finished = wait_for(lambda: task_of(flower, pipeline_id, "SUCCESS"), timeout=30, what="the end in Flower")
    assert finished["result"] == "'finished'"
    # and no secret anywhere in Flower's API
    assert SECRET not in json.dumps(flower_tasks(flower))
    assert SECRET not in json.dumps(flower_get(flower, f"/api/task/info/{task_id}"))


def test_flower_tells_a_canceled_task_from_a_failed_one(stack: Stack, flower: int) -> None:
    # given a task whose command fails, and one that runs until it is canceled
    failing = run_pipeline(stack.dp, GROUP, shell_activity("Broken", command="echo broken >&2; exit 3"))
    canceled = run_pipeline(stack.dp, GROUP, shell_activity("Endless", command="while true; do sleep 0.2; done"))
    wait_for(lambda: task_of(flower, canceled, "PROGRESS"), timeout=60, what="the endless task running in Flower")

    # when Data Pipeline cancels the endless one
    target = instance(stack.dp, canceled, "Endless")["@id"]
    stack.dp.set_status(pipelineId=canceled, objectIds=[target], status="TRY_CANCEL")

    # then Data Pipeline has one FAILED and one CANCELED
    assert wait_final(stack.dp, failing, "Broken")["@status"] == "FAILED"
    assert wait_final(stack.dp, canceled, "Endless")["@status"] == "CANCELED"

    # and Flower's API tells them apart by their result (the Celery tasks themselves both did their job)
    failed_id, failed = wait_for(lambda: task_of(flower, failing, "SUCCESS"), timeout=30, what="the failed end")
    canceled_id, ended = wait_for(lambda: task_of(flower, canceled, "SUCCESS"), timeout=30, what="the canceled end")
    assert failed["result"] == "'failed'"
    assert ended["result"] == "'canceled'"
    assert flower_get(flower, f"/api/task/info/{canceled_id}")["result"] == "'canceled'"
    assert flower_get(flower, f"/api/task/info/{failed_id}")["result"] == "'failed'"


def test_flowers_api_needs_its_basic_auth(flower: int) -> None:
    assert http_status(flower, "/api/tasks", auth=None) == 401
    assert http_status(flower, "/api/tasks", auth="ops:wrong") == 401
    assert http_status(flower, "/api/tasks", auth=AUTH) == 200


def http_status(port: int, path: str, auth: str | None) -> int:
    try:
        flower_get(port, path, auth)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection
        return exc.code
    return 200


def _answers(port: int) -> bool:
    try:
        flower_tasks(port)
        return True
    except OSError:
        return False
