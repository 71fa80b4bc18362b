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
        # when a pipeline with a secret runs a 4-second command
        pipeline_id = run_pipeline(
            stack.dp,
            "fl",
            {"id": "Slow", "type": "ShellCommandActivity", "command": "sleep 4", "*myToken": "tok-3141-secret"},
        )

        def running() -> dict[str, Any] | None:
            return next((t for t in flower_tasks(port).values() if t.get("state") == "STARTED"), None)

        # then Flower shows it running, named after its type, with ids (not values) as arguments
        task = wait_for(running, timeout=60, what="a STARTED task in Flower")
        assert task["name"] == "dp.ShellCommandActivity"
        assert f"pipeline={pipeline_id}" in task["args"] and "object=Slow" in task["args"]
        assert "_Attempt=1" in task["args"]
        assert wait_final(stack.dp, pipeline_id, "Slow")["@status"] == "FINISHED"
        finished = wait_for(
            lambda: next((t for t in flower_tasks(port).values() if t.get("state") == "SUCCESS"), None),
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
