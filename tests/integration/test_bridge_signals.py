"""Signals to `bridge start`: a task that arrives in a poll held during shutdown is still enqueued and run.

The local service holds polls for 20 s here, so a poll is in flight when the signal comes.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from bridge.cli import EXIT_INTERRUPTED, EXIT_OK
from tests.integration.bridge_stack import Stack, logged, run_pipeline, wait_final
from tests.support import shell_activity, wait_for

GROUP = "sig"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(["--poll-wait", "20", "--time-scale", "60"])
    try:
        stack.start()
        stack.worker(f"dp.{GROUP}")
        yield stack
    finally:
        stack.stop()


def held_poll(stack: Stack, polls_before: int) -> None:
    """Wait until the bridge's PollForTask reached the service (which now holds it, having no task)."""
    wait_for(lambda: stack.counters("PollForTask") > polls_before, timeout=30, what="a PollForTask")


def test_a_task_arriving_in_a_held_poll_after_sigterm_is_still_enqueued_and_run(stack: Stack) -> None:
    # given a bridge whose poll the service is holding
    polls_before = stack.counters("PollForTask")
    bridge = stack.bridge(GROUP)
    held_poll(stack, polls_before)

    # when it gets SIGTERM, and only then a task becomes ready
    bridge.send(signal.SIGTERM)
    logged(bridge, "stop requested")
    output = stack.dir / "late.txt"
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Late", command=f"echo ran > {output}"))

    # then the held poll's task is acknowledged, enqueued and run to FINISHED, and the bridge exits 0
    logged(bridge, "acknowledged worker_group=sig", pipeline)
    logged(bridge, "enqueued worker_group=sig", pipeline)
    assert wait_final(stack.dp, pipeline, "Late")["@status"] == "FINISHED"
    assert output.read_text() == "ran\n"
    assert bridge.wait(timeout=60) == EXIT_OK
    assert "bridge stopped" in bridge.text()
    assert stack.counters("PollForTask") == polls_before + 1  # no poll after the signal


def test_a_second_sigterm_exits_at_once_without_waiting_for_the_held_poll(stack: Stack) -> None:
    # given a bridge whose poll the service is holding
    polls_before = stack.counters("PollForTask")
    bridge = stack.bridge(GROUP)
    held_poll(stack, polls_before)

    # when it gets SIGTERM twice
    bridge.send(signal.SIGTERM)
    logged(bridge, "stop requested")
    bridge.send(signal.SIGTERM)

    # then it exits with the interrupted code (a graceful stop would have waited for the poll and exited 0)
    assert bridge.wait(timeout=60) == EXIT_INTERRUPTED
    assert "second signal: exiting now" in bridge.text()


def test_terminate_from_a_runner_heartbeat_drains_and_exits_0(stack: Stack) -> None:
    # given a bridge that heartbeats as runner "term-1" every second
    bridge = stack.bridge(GROUP, extra=["--taskrunner-id", "term-1", "--runner-heartbeat-interval-s", "1"])
    wait_for(
        lambda: any(r["taskrunnerId"] == "term-1" for r in stack.emulator.admin("runners")["runners"]),
        timeout=30,
        what="the runner's first heartbeat",
    )

    # when the service asks that runner to terminate
    stack.emulator.admin("terminate-runner", {"taskrunnerId": "term-1"})

    # then the bridge says so, drains and exits 0
    logged(bridge, "asked taskrunner_id=term-1 to terminate")
    assert bridge.wait(timeout=60) == EXIT_OK
    assert "bridge stopped" in bridge.text()
