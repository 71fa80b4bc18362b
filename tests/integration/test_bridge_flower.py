"""Flower shows bridge tasks as dp.<ActivityType>, with a readable argsrepr, while they run."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.bridge_stack import Stack, run_pipeline, running_stack, stop_process, wait_final
from tests.support import BIN, ManagedProcess, free_port, wait_for

AUTH = "ops:flower-test"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("fl", ["--poll-wait", "2", "--time-scale", "60"]) as s:
        yield s


def flower_tasks(port: int) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
    request.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        data: dict[str, Any] = json.loads(reply.read())
        return data


def test_flower_lists_running_bridge_tasks_without_secrets(stack: Stack) -> None:
    # given Flower (basic auth) watching the stack's broker
    port = free_port()
    flower = ManagedProcess(
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
        # and Flower's event receiver is live: it has seen a quick task (started again until one is seen,
        # since Flower misses whatever ran before its receiver connected)
        warm_ups: list[str] = []

        def flower_saw_a_warm_up() -> bool:
            seen = " ".join((t.get("args") or "") for t in flower_tasks(port).values())
            if any(p in seen for p in warm_ups):
                return True
            warm_ups.append(
                run_pipeline(stack.dp, "fl", {"id": "WarmUp", "type": "ShellCommandActivity", "command": "true"})
            )
            return False

        wait_for(flower_saw_a_warm_up, timeout=90, interval=3.0, what="Flower to see a warm-up task")
        # when a pipeline with a secret runs a command that waits for a gate file
        gate = stack.dir / "flower-gate"
        pipeline_id = run_pipeline(
            stack.dp,
            "fl",
            {
                "id": "Slow",
                "type": "ShellCommandActivity",
                "command": f"while [ ! -e {gate} ]; do sleep 0.2; done",
                "*myToken": "tok-3141-secret",
            },
        )

        def running() -> dict[str, Any] | None:
            tasks = flower_tasks(port).values()
            return next(
                (t for t in tasks if t.get("state") == "STARTED" and pipeline_id in (t.get("args") or "")), None
            )

        # then Flower shows it running, named after its type, with ids (not values) as arguments
        task = wait_for(running, timeout=60, what="a STARTED task in Flower")
        assert task["name"] == "dp.ShellCommandActivity"
        assert f"pipeline={pipeline_id}" in task["args"] and "object=Slow" in task["args"]
        assert "_Attempt=1" in task["args"]
        gate.touch()
        assert wait_final(stack.dp, pipeline_id, "Slow")["@status"] == "FINISHED"
        finished = wait_for(
            lambda: next(
                (
                    t
                    for t in flower_tasks(port).values()
                    if t.get("state") == "SUCCESS" and pipeline_id in (t.get("args") or "")
                ),
                None,
            ),
            timeout=30,
            what="the task's end in Flower",
        )
        assert "tok-3141-secret" not in json.dumps(flower_tasks(port))
        assert finished["name"] == "dp.ShellCommandActivity"
    finally:
        stop_process(flower)


def _answers(port: int) -> bool:
    try:
        flower_tasks(port)
        return True
    except OSError:
        return False
