"""kill -9 of a Celery worker's main process while a command runs: no process of the command survives it.

Commands run in their own process group under a small supervisor holding a lifeline to the worker process;
both pools are covered (prefork: the task runs in a pool child; threads: in the main process).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.integration.bridge_stack import (
    Stack,
    alive,
    group_alive,
    instance,
    read_pids,
    run_pipeline,
    stop_process,
)
from tests.support import shell_activity, wait_for

POOLS = ("prefork", "threads")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "5"],
        BRIDGE_PROGRESS_DEADLINE_S="5",
        BRIDGE_KILL_GRACE_S="2",
    )
    try:
        stack.start()
        stack.bridge(*(f"loss-{pool}" for pool in POOLS))
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("pool", POOLS)
def test_killing_the_worker_leaves_no_process_of_its_command(stack: Stack, pool: str) -> None:
    # given a worker running a command whose shell started a child shell with two background sleeps
    group = f"loss-{pool}"
    worker = stack.worker(f"dp.{group}", pool=pool, concurrency=1)
    pid_file = stack.dir / f"{pool}.pids"
    command = (
        f"echo $$ > {pid_file}; "
        f"bash -c 'echo $$ >> {pid_file}; sleep 300 & echo $! >> {pid_file}; sleep 300 & echo $! >> {pid_file}; wait'; "
        "echo not reached"
    )
    pipeline = run_pipeline(stack.dp, group, shell_activity("Long", command=command))
    pids = wait_for(lambda: len(read_pids(pid_file)) == 4 and read_pids(pid_file), timeout=60, what="the pids")
    assert all(alive(pid) for pid in pids)

    # when the worker's main process is killed with SIGKILL
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    # then every process of the command is gone, and so is everything else of the worker (pool, supervisor)
    try:
        wait_for(
            lambda: not any(alive(pid) for pid in pids) and not group_alive(pids[0]),
            timeout=30,
            what="the command's processes to end",
        )
        wait_for(lambda: not group_alive(worker.pid), timeout=30, what="the worker's processes to end")
    finally:
        # Data Pipeline would hand the task out again once its heartbeats stop; this test is done with it.
        stack.dp.set_status(
            pipelineId=pipeline, objectIds=[instance(stack.dp, pipeline, "Long")["@id"]], status="TRY_CANCEL"
        )
        stop_process(worker)
