"""Leadership, adoption, admission, the not-started rule and shutdown hand-off, with real processes.

Each test starts its own stack: the local service, a private Redis, real ``bridge start`` processes and,
where a task must run, a real Celery worker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.cli import EXIT_OK
from tests.integration.bridge_stack import Stack, attempts, logged, run_pipeline, wait_final
from tests.support import advertise_slots, bridge_start, shell_activity, wait_for

GROUP = "tk"
FAST = {
    "BRIDGE_LEADER_TTL_S": "3",
    "BRIDGE_LIVENESS_TTL_S": "4",
    "BRIDGE_DRAIN_TIMEOUT_S": "2",
}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    env = {**FAST, **getattr(request, "param", {})}
    stack = Stack(["--poll-wait", "2", "--time-scale", "60"], **env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def lease_states(stack: Stack) -> dict[str, str]:
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        return {key.split(":", 2)[2]: str(client.hget(key, "state")) for key in client.scan_iter("dpb:lease:*")}
    finally:
        client.close()


def in_flight(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        return int(client.zcard(f"dpb:inflight:{GROUP}"))
    finally:
        client.close()


def starts(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_standby_takes_over_after_kill_9_and_adopts_the_dead_pollers_queued_lease(stack: Stack) -> None:
    # given an active bridge and a standby for one group, and a worker with one slot busy with a long task
    # while a second task waits queued (allowance 1) in a lease the active bridge owns
    log = stack.dir / "starts.log"
    active = stack.bridge(GROUP, extra=["--queue-allowance", "1"])
    logged(active, f"active worker_group={GROUP}")
    standby = stack.bridge(GROUP, extra=["--queue-allowance", "1"])
    logged(standby, f"standby worker_group={GROUP}")
    stack.worker(f"dp.{GROUP}", concurrency=1)
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        shell_activity("First", command=f"echo First >> {log}; sleep 8"),
        shell_activity("Second", command=f"echo Second >> {log}"),
    )
    wait_for(lambda: sorted(lease_states(stack).values()) == ["queued", "running"], timeout=30, what="run + queued")

    # when the active bridge is killed with SIGKILL
    killed_at = time.monotonic()
    os.kill(active.pid, signal.SIGKILL)
    active.wait()

    # then the standby becomes active, adopts the queued lease once the dead process's liveness expired,
    # and both tasks finish, each run exactly once
    logged(standby, f"active worker_group={GROUP}")
    print(f"standby active {time.monotonic() - killed_at:.1f} s after kill -9 (leader TTL 3 s)")
    logged(standby, "adopted worker_group=tk")
    assert wait_final(stack.dp, pipeline, "First")["@status"] == "FINISHED"
    assert wait_final(stack.dp, pipeline, "Second")["@status"] == "FINISHED"
    assert sorted(starts(log)) == ["First", "Second"]
    wait_for(lambda: in_flight(stack) == 0, timeout=15, what="no lease in flight")


def test_no_claims_without_a_live_consumer_and_claims_once_one_registers(stack: Stack) -> None:
    # given a bridge and a ready task, but no worker consuming the group's queue
    bridge = stack.bridge(GROUP)
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Waits", command="true"))
    logged(bridge, f"no live worker consumes queue dp.{GROUP}")

    # then nothing is polled while that lasts
    time.sleep(2)
    assert stack.counters("PollForTask") == 0

    # when a worker starts, then the task is claimed and runs
    stack.worker(f"dp.{GROUP}")
    assert wait_final(stack.dp, pipeline, "Waits")["@status"] == "FINISHED"


def test_in_flight_never_exceeds_the_live_slots(stack: Stack) -> None:
    # given a worker with 2 slots (allowance 0) and 6 tasks of 2 s
    stack.worker(f"dp.{GROUP}", concurrency=2)
    stack.bridge(GROUP)
    objects = [shell_activity(f"T{i}", command="sleep 2") for i in range(6)]
    pipeline = run_pipeline(stack.dp, GROUP, *objects)

    # when they run, sampling the leases in flight
    peak = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        peak = max(peak, in_flight(stack))
        done = sum(1 for state in lease_states(stack).values() if state == "done")
        if done == 6:
            break
        time.sleep(0.05)

    # then all finished, and never more than 2 leases were in flight
    assert all(wait_final(stack.dp, pipeline, f"T{i}")["@status"] == "FINISHED" for i in range(6))
    assert 1 <= peak <= 2


@pytest.mark.parametrize("stack", [{"BRIDGE_MAX_QUEUE_WAIT_S": "2"}], indirect=True)
def test_a_task_no_worker_starts_is_republished_once_then_failed_not_started(stack: Stack) -> None:
    # given slots advertised for the queue but no worker actually consuming it
    advertise_slots(stack.redis.url, [f"dp.{GROUP}"])
    bridge = stack.bridge(GROUP)
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Stuck", command="true"))

    # then after one wait it is re-published with a new epoch, after a second it ends FAILED BridgeNotStarted
    logged(bridge, "re-publishing with epoch 2")
    ended = wait_final(stack.dp, pipeline, "Stuck", timeout=30)
    assert ended["@status"] == "FAILED"
    assert attempts(stack.dp, pipeline, "Stuck")[-1]["errorId"] == "BridgeNotStarted"
    assert list(lease_states(stack).values()) == ["released"]
    assert in_flight(stack) == 0


def test_shutdown_without_a_peer_fails_queued_tasks_bridge_shutdown_and_exits_0(stack: Stack) -> None:
    # given a queued task no worker takes (a slot advertised, nobody consuming)
    advertise_slots(stack.redis.url, [f"dp.{GROUP}"])
    bridge = stack.bridge(GROUP)
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Queued", command="true"))
    wait_for(lambda: list(lease_states(stack).values()) == ["queued"], timeout=30, what="a queued lease")

    # when the bridge gets SIGTERM (drain timeout 2 s)
    bridge.send(signal.SIGTERM)

    # then the task ends FAILED BridgeShutdown (so Data Pipeline retries it at once), and the bridge exits 0
    assert bridge.wait(timeout=60) == EXIT_OK
    assert wait_final(stack.dp, pipeline, "Queued")["@status"] == "FAILED"
    assert attempts(stack.dp, pipeline, "Queued")[-1]["errorId"] == "BridgeShutdown"
    assert "failed 1 queued task(s) BridgeShutdown" in bridge.text()


def test_shutdown_with_a_live_peer_hands_queued_tasks_over(stack: Stack) -> None:
    # given an active bridge holding a queued task (no consumer yet) and a standby peer
    log = stack.dir / "starts.log"
    advertise_slots(stack.redis.url, [f"dp.{GROUP}"])
    first = stack.bridge(GROUP)
    logged(first, f"active worker_group={GROUP}")
    peer = stack.bridge(GROUP)
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("HandOver", command=f"echo ran >> {log}"))
    wait_for(lambda: list(lease_states(stack).values()) == ["queued"], timeout=30, what="a queued lease")

    # when the active bridge is stopped
    first.send(signal.SIGTERM)
    assert first.wait(timeout=60) == EXIT_OK
    assert "handing 1 queued task(s) to live bridge process(es)" in first.text()

    # then the peer adopts the lease and keeps it alive until a worker comes, which runs it once
    logged(peer, "adopted worker_group=tk")
    stack.worker(f"dp.{GROUP}")
    assert wait_final(stack.dp, pipeline, "HandOver")["@status"] == "FINISHED"
    assert starts(log) == ["ran"]


def test_start_up_rides_out_a_service_answering_500_for_a_while(stack: Stack) -> None:
    # given a service that answers every ReportTaskRunnerHeartbeat with a 500 for now
    stack.emulator.admin("faults", {"faultRate": ["ReportTaskRunnerHeartbeat=1"]})
    proc = bridge_start(stack.env, GROUP)
    proc.ready_text = None
    stack.processes.append(proc)
    proc.start()
    logged(proc, "start-up heartbeat failed (InternalServiceError)")

    # when the service recovers, then the bridge starts polling instead of exiting with a configuration error
    stack.emulator.admin("faults", {"faultRate": []})
    logged(proc, f"polling worker_group={GROUP}")
    assert proc.proc is not None and proc.proc.poll() is None
