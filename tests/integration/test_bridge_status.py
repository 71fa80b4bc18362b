"""``bridge status``, ``check``, ``pause`` and ``resume`` against a real run.

Each test starts its own stack: the local service, a private Redis, real ``bridge start`` processes and a
real Celery worker. The commands run as an operator runs them, in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.integration.bridge_stack import Stack, logged, run_pipeline, wait_final
from tests.support import ROOT, shell_activity, wait_for

GROUP = "st"
LIVE_STATES = ("claimed", "queued", "running", "reporting")


@pytest.fixture
def stack() -> Iterator[Stack]:
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60"],
        BRIDGE_LEADER_TTL_S="3",
        BRIDGE_LIVENESS_TTL_S="2",
        BRIDGE_DRAIN_TIMEOUT_S="2",
        BRIDGE_HEARTBEAT_INTERVAL_S="1",
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def bridge_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``bridge ARGS`` with the stack's environment (Redis from BRIDGE_REDIS_URL)."""
    cmd = [sys.executable, "-m", "bridge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=stack.env, timeout=30, cwd=ROOT)


def status_json(stack: Stack) -> dict[str, Any]:
    result = bridge_cli(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def redis_client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis.url, decode_responses=True)


def lease_store(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every ``dpb:lease:*`` record by task key (state, worker group, last beat), read straight from Redis."""
    client = redis_client(stack)
    try:
        found = {}
        for key in client.scan_iter("dpb:lease:*"):
            state, group, last_beat = client.hmget(key, ["state", "worker_group", "last_beat"])
            if state is not None:
                found[key.split(":", 2)[2]] = {"state": state, "group": group, "last_beat": float(last_beat or 0)}
        return found
    finally:
        client.close()


def store_counts(stack: Stack) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in lease_store(stack).values():
        assert record["group"] == GROUP
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    return counts


def status_counts(doc: dict[str, Any]) -> dict[str, int]:
    return {state: n for state, n in doc["groups"][GROUP]["leases_by_state"].items() if n}


def leader(stack: Stack) -> str | None:
    client = redis_client(stack)
    try:
        holder = client.get(f"dpb:leader:{GROUP}")
        return None if holder is None else str(holder)
    finally:
        client.close()


def owner_of(proc: Any) -> str:
    """The owner id a ``bridge start`` logs at start-up."""
    return logged(proc, "bridge starting", "owner=").rsplit("owner=", 1)[1].split()[0]


def agreeing_snapshot(stack: Stack) -> tuple[dict[str, Any], dict[str, int]]:
    """A status and a lease-store reading taken with no transition in between (retried while tasks move)."""
    for _ in range(20):
        before = store_counts(stack)
        doc = status_json(stack)
        if before == store_counts(stack):
            return doc, before
    raise AssertionError("the lease store never held still for one status reading")


def test_status_json_agrees_with_the_lease_store_during_a_run(stack: Stack) -> None:
    # given an active bridge and a standby for one group, a worker with 2 slots (allowance 1), and 3 tasks
    active = stack.bridge(GROUP, extra=["--queue-allowance", "1"])
    logged(active, f"active worker_group={GROUP}")
    standby = stack.bridge(GROUP, extra=["--queue-allowance", "1"])
    logged(standby, f"standby worker_group={GROUP}")
    stack.worker(f"dp.{GROUP}", concurrency=2)
    pipeline = run_pipeline(stack.dp, GROUP, *[shell_activity(f"T{i}", command="sleep 6") for i in range(3)])

    # when they are in flight (2 running, 1 queued)
    wait_for(lambda: store_counts(stack) == {"running": 2, "queued": 1}, timeout=40, what="2 running + 1 queued")
    doc, counts = agreeing_snapshot(stack)

    # then the status agrees with the lease store: counts by state, in-flight, each live lease listed
    group = doc["groups"][GROUP]
    assert status_counts(doc) == counts
    assert group["in_flight"] == sum(counts.get(s, 0) for s in LIVE_STATES) == len(group["leases"])
    assert {lease["task_key"] for lease in group["leases"]} == {
        key for key, record in lease_store(stack).items() if record["state"] in LIVE_STATES
    }
    for lease in group["leases"]:
        assert 0 <= lease["age_s"] < 60
        assert 0 < lease["deadline_in_s"] <= 300
    # and the active poller is the lock holder, the second process its standby, the worker's slots live
    assert group["active_poller"] == leader(stack) == owner_of(active)
    assert group["active_poller_alive"] is True
    assert group["standbys"] == [owner_of(standby)]
    assert (group["slots"], group["queues"], group["paused"]) == (2, {f"dp.{GROUP}": 1}, None)
    assert sorted(p["owner"] for p in doc["processes"]) == sorted([owner_of(active), owner_of(standby)])

    # and the table says the same in a row per group
    table = bridge_cli(stack, "status")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(f"{GROUP} "))
    assert row.split()[:3] == [GROUP, owner_of(active), "1"]

    # when the tasks end, then the status shows them done and nothing live, still agreeing with the store
    for i in range(3):
        assert wait_final(stack.dp, pipeline, f"T{i}")["@status"] == "FINISHED"
    wait_for(lambda: store_counts(stack) == {"done": 3}, timeout=20, what="3 done leases")
    doc = status_json(stack)
    assert status_counts(doc) == {"done": 3} and doc["groups"][GROUP]["leases"] == []
    assert doc["groups"][GROUP]["in_flight"] == 0


def test_pause_stops_claims_while_queued_leases_keep_being_heartbeated_and_resume_restarts_them(stack: Stack) -> None:
    # given a worker with 1 slot busy with a long task, a second task queued (allowance 3, so the bridge
    # still has room and keeps polling)
    bridge = stack.bridge(GROUP, extra=["--queue-allowance", "3"])
    stack.worker(f"dp.{GROUP}", concurrency=1)
    first = run_pipeline(
        stack.dp, GROUP, shell_activity("Long", command="sleep 15"), shell_activity("Waits", command="true")
    )
    wait_for(lambda: sorted(store_counts(stack)) == ["queued", "running"], timeout=40, what="running + queued")
    polls = stack.counters("PollForTask")
    wait_for(lambda: stack.counters("PollForTask") > polls, timeout=10, what="the bridge to keep polling")

    # when an operator pauses the group, and a new task becomes ready meanwhile
    paused = bridge_cli(stack, "pause", "--worker-group", GROUP, "--reason", "drain for upgrade", "--by", "ops")
    assert paused.returncode == 0, paused.stderr
    logged(bridge, f"worker_group={GROUP} is paused by ops (drain for upgrade); not claiming")
    later = run_pipeline(stack.dp, GROUP, shell_activity("Later", command="true"))
    time.sleep(2.5)  # (a poll held when the flag was set returns within the service's poll wait, 2 s)
    polls = stack.counters("PollForTask")
    [queued] = [key for key, record in lease_store(stack).items() if record["state"] == "queued"]
    beat = lease_store(stack)[queued]["last_beat"]
    time.sleep(4)

    # then no PollForTask reaches the service, nothing new is claimed, and the queued lease is still beaten
    assert stack.counters("PollForTask") == polls
    assert len(lease_store(stack)) == 2
    assert lease_store(stack)[queued]["last_beat"] > beat
    group = status_json(stack)["groups"][GROUP]
    assert group["paused"]["by"] == "ops" and group["paused"]["reason"] == "drain for upgrade"
    assert "drain for upgrade" in bridge_cli(stack, "status").stdout

    # when it is resumed, then tasks flow again: every task finishes, the one made ready during the pause too
    resumed = bridge_cli(stack, "resume", "--worker-group", GROUP)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, f"resumed worker_group={GROUP}")
    logged(bridge, f"worker_group={GROUP} resumed; claiming again")
    for pipeline, component in ((first, "Long"), (first, "Waits"), (later, "Later")):
        assert wait_final(stack.dp, pipeline, component, timeout=60)["@status"] == "FINISHED"
    assert stack.counters("PollForTask") > polls
    assert status_json(stack)["groups"][GROUP]["paused"] is None


def test_check_follows_the_bridge_process_and_the_worker(stack: Stack) -> None:
    # given a running bridge and worker on this host
    bridge = stack.bridge(GROUP)
    worker = stack.worker(f"dp.{GROUP}")
    worker_name = worker.cmd[worker.cmd.index("--hostname") + 1].split("@")[0]

    # then both checks pass
    up = bridge_cli(stack, "check")
    assert (up.returncode, up.stdout.startswith("healthy: bridge process ")) == (0, True), up.stderr
    wait_for(lambda: bridge_cli(stack, "check", "--worker", worker_name).returncode == 0, timeout=10, what="worker")

    # when the bridge is killed with SIGKILL (no clean exit), then the check fails once its liveness expires
    killed_at = time.monotonic()
    os.kill(bridge.pid, signal.SIGKILL)
    bridge.wait()
    down = wait_for(
        lambda: (result := bridge_cli(stack, "check")).returncode == 1 and result,
        timeout=10,
        what="check to fail after the liveness TTL (2 s)",
    )
    print(f"check failed {time.monotonic() - killed_at:.1f} s after kill -9")
    assert down.stderr.strip().startswith("bridge: unhealthy: no live bridge process on host")
    assert len(down.stderr.strip().splitlines()) == 1

    # when the worker stops, then its check fails too
    worker.stop()
    gone = bridge_cli(stack, "check", "--worker", worker_name)
    assert gone.returncode == 1 and "is not registered" in gone.stderr
