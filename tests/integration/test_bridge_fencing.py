"""Fencing end to end: instance exclusion, self-fencing, the cancel relay and the report hand-off.

Real processes: the local service, a private Redis, `bridge start` and real Celery workers. Commands write
``START``/``END`` lines stamped with ``time.monotonic()`` (one clock for every process of the host), so overlaps
are read from the files they wrote. Running locks have a 6 s TTL here (a worker that cannot renew its lock stops
its command after 4 s).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.fencing import request_cancel, run_lock_key
from bridge.leases import Lease, LeaseState, LeaseStore
from bridge.messages import TaskMessage
from bridge.publisher import Publisher
from bridge.taskmodel import parse_task_object
from tests.integration.bridge_stack import (
    Stack,
    alive,
    instance,
    logged,
    read_pids,
    run_pipeline,
    status,
    wait_final,
)
from tests.support import shell_activity, wait_for, wait_for_task

GROUP = "fe"
HANDOFF_GROUP = "fe-handoff"
#: A group no bridge serves: its tasks are polled by the test itself, and its leases are swept by no keeper.
SIDE_GROUP = "fe-side"
TTL_S = "6"
STAMP = f"$({sys.executable} -c 'import time; print(time.monotonic())')"
ENV = {"BRIDGE_RUNNING_TTL_S": TTL_S, "BRIDGE_KILL_GRACE_S": "1", "BRIDGE_HEARTBEAT_INTERVAL_S": "2"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(["--poll-wait", "2", "--time-scale", "60"], **ENV)
    try:
        stack.start()
        stack.worker(f"dp.{GROUP}", concurrency=2)
        stack.worker(f"dp.{HANDOFF_GROUP}", concurrency=1, env={**stack.env, "BRIDGE_REPORT_TIMEOUT_S": "3"})
        stack.bridge(GROUP, HANDOFF_GROUP)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def store(stack: Stack) -> Iterator[LeaseStore]:
    leases = LeaseStore.from_url(stack.redis.url)
    yield leases
    leases.redis.close()


def lease_of(store: LeaseStore, pipeline_id: str) -> Lease | None:
    """The lease of a task of ``pipeline_id`` (task keys start with the pipeline id), whatever its state."""
    for key in store.redis.scan_iter(match=LeaseStore.lease_key(f"{pipeline_id}:*")):
        data = store.redis.hgetall(key)
        if data:
            fields = {str(k): str(v) for k, v in data.items()}
            return Lease.from_hash(str(key).removeprefix(LeaseStore.lease_key("")), fields)
    return None


def wait_lease(store: LeaseStore, pipeline_id: str, state: LeaseState, timeout: float = 60) -> Lease:
    found: Lease = wait_for(
        lambda: (lease := lease_of(store, pipeline_id)) is not None and lease.state == state and lease,
        timeout=timeout,
        what=f"the lease of {pipeline_id} to be {state}",
    )
    return found


def journal_lines(path: Path) -> dict[str, float]:
    """``START A`` / ``END A`` -> the monotonic time each was written at."""
    return {" ".join(words[:2]): float(words[2]) for words in (line.split() for line in path.read_text().splitlines())}


def sleeper(pid_file: Path) -> str:
    """A command that records its pid and then sleeps for a minute (as that same process)."""
    return f"echo $$ > {pid_file}; exec sleep 60"


def running_pid(pid_file: Path) -> int:
    pids: list[int] = wait_for(lambda: read_pids(pid_file), timeout=60, what="the command to start")
    assert alive(pids[0])
    return pids[0]


def test_a_second_attempt_of_a_running_instance_starts_only_after_the_first_ends(
    stack: Stack, store: LeaseStore
) -> None:
    # given a task of another pipeline, handed out to the test itself (so its SetTaskStatus is real)
    journal = stack.dir / "exclusion.journal"
    side = run_pipeline(
        stack.dp,
        SIDE_GROUP,
        shell_activity("B", command=f'echo "START B {STAMP}" >> {journal}; echo "END B {STAMP}" >> {journal}'),
    )
    raw: dict[str, Any] = wait_for_task(stack.dp, SIDE_GROUP)
    stack.dp.report_task_progress(taskId=raw["taskId"])
    second = parse_task_object(raw)
    # and attempt A of an instance running under the bridge
    first = run_pipeline(
        stack.dp,
        GROUP,
        shell_activity("A", command=f'echo "START A {STAMP}" >> {journal}; sleep 5; echo "END A {STAMP}" >> {journal}'),
    )
    running = wait_lease(store, first, LeaseState.RUNNING)
    wait_for(lambda: journal.exists() and "START A" in journal.read_text(), timeout=30, what="A to start")

    # when a second copy for the same instance (another hand-out, its own lease and epoch) is published
    instance_id = str(store.redis.hget(LeaseStore.lease_key(running.task_key), "instance_id"))
    fields = {
        "task_id": second.task_id,
        "pipeline_id": running.pipeline_id,
        "attempt_id": second.attempt_id,
        "instance_id": instance_id,
        "worker_group": SIDE_GROUP,
        "queue": f"dp.{GROUP}",
        "object_type": second.object_type,
        "owner": "test",
        "heartbeat_owner": "test",
        "progress_deadline_s": 300.0,
        "heartbeat_interval_s": 2.0,
        "task_object": raw,
    }
    epoch = store.claim(second.key, SIDE_GROUP, fields)
    assert store.transition(second.key, SIDE_GROUP, [LeaseState.CLAIMED], LeaseState.QUEUED, epoch=epoch).ok
    message = TaskMessage(
        1, second.key, epoch, SIDE_GROUP, f"dp.{GROUP}", second.object_type, 2.0, 300.0, time.time(), raw
    )
    publisher = Publisher(stack.redis.url)
    try:
        publisher.publish(message, "exclusion test")
    finally:
        publisher.close()

    # then the worker holds it back while A runs, and runs it once A has ended
    worker = stack.workers[0]
    logged(worker, "waiting worker_group=fe-side", second.key, timeout=30)
    assert wait_final(stack.dp, first, "A")["@status"] == "FINISHED"
    assert wait_final(stack.dp, side, "B")["@status"] == "FINISHED"
    stamps = journal_lines(journal)
    assert set(stamps) == {"START A", "END A", "START B", "END B"}
    assert stamps["START B"] > stamps["END A"], stamps
    assert store.redis.get(run_lock_key(running.pipeline_id, instance_id)) is None


def test_a_relayed_cancel_stops_the_command_and_reports_nothing(stack: Stack, store: LeaseStore) -> None:
    # given a running command
    pid_file = stack.dir / "relay.pids"
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Relay", command=sleeper(pid_file)))
    pid = running_pid(pid_file)
    lease = wait_lease(store, pipeline, LeaseState.RUNNING)
    reports_before = stack.counters("SetTaskStatus")

    # when the keeper's cancel relay is set for it
    request_cancel(store.redis, lease.task_key, "canceled by Data Pipeline", 60)

    # then the command is gone, the lease is canceled and no SetTaskStatus was sent
    wait_for(lambda: not alive(pid), timeout=30, what="the command to end")
    logged(stack.workers[0], "canceled worker_group=fe", lease.task_key, "canceled by Data Pipeline")
    assert wait_lease(store, pipeline, LeaseState.CANCELED).epoch == lease.epoch
    assert stack.counters("SetTaskStatus") == reports_before
    assert status(stack.dp, pipeline, "Relay") == "RUNNING"


def test_a_run_superseded_by_a_new_hand_out_kills_its_command(stack: Stack, store: LeaseStore) -> None:
    # given a running command
    pid_file = stack.dir / "superseded.pids"
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Superseded", command=sleeper(pid_file)))
    pid = running_pid(pid_file)
    lease = wait_lease(store, pipeline, LeaseState.RUNNING)
    reports_before = stack.counters("SetTaskStatus")

    # when the same task is leased again (as a new hand-out would: a new epoch; nobody publishes it here)
    fields = {"pipeline_id": lease.pipeline_id, "owner": lease.owner, "heartbeat_owner": "test"}
    epoch = store.claim(lease.task_key, SIDE_GROUP, fields)
    store.redis.zrem(LeaseStore.inflight_key(GROUP), lease.task_key)  # out of the bridge's sight: nobody runs it

    # then the running copy fences itself: its command is gone, nothing is reported, the new lease is untouched
    wait_for(lambda: not alive(pid), timeout=30, what="the command to end")
    logged(stack.workers[0], "fenced worker_group=fe", lease.task_key, "fenced: superseded")
    assert stack.counters("SetTaskStatus") == reports_before
    now = store.get(lease.task_key)
    assert now is not None and (now.state, now.epoch) == (LeaseState.CLAIMED, epoch)
    assert status(stack.dp, pipeline, "Superseded") == "RUNNING"


def test_an_outcome_that_cannot_be_reported_is_handed_to_the_keeper(stack: Stack, store: LeaseStore) -> None:
    # given every SetTaskStatus failing (500), and workers that retry it for 3 s
    stack.emulator.admin("faults", {"faultRate": ["SetTaskStatus=1.0"]})
    try:
        # when a task finishes
        pipeline = run_pipeline(stack.dp, HANDOFF_GROUP, shell_activity("Handoff", command="true"))
        worker = stack.workers[1]
        lease = wait_for(
            lambda: (
                (found := lease_of(store, pipeline)) is not None
                and (found.state, found.heartbeat_owner) == (LeaseState.REPORTING, "poller")
                and found
            ),
            timeout=60,
            what="the outcome to be handed off",
        )

        # then its outcome is on the lease, in reporting, for the bridge keeper to deliver and beat
        assert lease.state == LeaseState.REPORTING
        assert lease.outcome is not None and lease.outcome["status"] == "FINISHED"
        assert float(store.redis.hget(LeaseStore.lease_key(lease.task_key), "handed_off_at") or 0) > 0
        logged(worker, f"handed outcome of task_key={lease.task_key} to the bridge keeper")
        assert store.redis.get(str(store.redis.hget(LeaseStore.lease_key(lease.task_key), "run_lock"))) is None
        assert status(stack.dp, pipeline, "Handoff") == "RUNNING"
    finally:
        stack.emulator.admin("faults", {"faultRate": []})


def test_a_report_whose_reply_was_lost_counts_as_delivered(stack: Stack, store: LeaseStore) -> None:
    # given SetTaskStatus calls that run but whose replies are lost (the connection is closed)
    stack.emulator.admin("faults", {"dropRate": ["SetTaskStatus=1.0"]})
    try:
        # when a task finishes and its first report is dropped (this task's: another test's keeper may still be
        # delivering, so the service's drop counter alone does not say whose call it was)
        pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Dropped", command="true"))
        logged(stack.workers[0], f"SetTaskStatus task_key={pipeline}:", "failed", timeout=60)
    finally:
        stack.emulator.admin("faults", {"dropRate": []})

    # then the retry's TaskNotFound counts as delivered: the lease is done, on the first attempt
    lease = wait_lease(store, pipeline, LeaseState.DONE)
    logged(stack.workers[0], "SetTaskStatus task_key=" + lease.task_key, "counted as delivered")
    ended = wait_final(stack.dp, pipeline, "Dropped")
    assert ended["@status"] == "FINISHED"
    assert ended["@attemptCount"] == "1"


# -- self-fencing when Redis goes away -------------------------------------------------------------------

FENCE_GROUP = "fb"


@pytest.fixture
def own_stack() -> Iterator[Stack]:
    """A stack of its own: this test stops its Redis. Progress deadline 12 s: fencing after ~7 s of silence."""
    stack = Stack(["--poll-wait", "2", "--time-scale", "60"], **ENV, BRIDGE_PROGRESS_DEADLINE_S="12")
    try:
        stack.start()
        stack.worker(f"dp.{FENCE_GROUP}", concurrency=1)
        stack.bridge(FENCE_GROUP)
        yield stack
    finally:
        stack.stop()


def test_a_worker_cut_off_from_redis_and_data_pipeline_kills_its_command(own_stack: Stack) -> None:
    stack = own_stack
    assert stack.redis.proc is not None
    # given a running command
    pid_file = stack.dir / "cutoff.pids"
    pipeline = run_pipeline(stack.dp, FENCE_GROUP, shell_activity("CutOff", command=sleeper(pid_file)))
    pid = running_pid(pid_file)
    reports_before = stack.counters("SetTaskStatus")

    # when Redis stops answering for 1.5 s (well under the lock's TTL)
    stack.redis.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    stack.redis.proc.send_signal(signal.SIGCONT)

    # then the command goes on
    time.sleep(3)
    assert alive(pid)

    # when Redis goes away for longer than the lock's TTL, while Data Pipeline still accepts heartbeats
    stack.redis.stop()
    time.sleep(float(TTL_S) + 4)

    # then the command still goes on: no other copy can start (Data Pipeline hands the attempt to no one else)
    assert alive(pid)
    assert "fenced" not in stack.workers[0].text()

    # when Data Pipeline stops accepting its heartbeats too
    stack.emulator.admin("faults", {"faultRate": ["ReportTaskProgress=1"]})
    cut_at = time.monotonic()

    # then the worker stops the command before Data Pipeline could hand the attempt out again, and reports nothing
    wait_for(lambda: not alive(pid), timeout=30, what="the command to be stopped")
    print(f"command stopped {time.monotonic() - cut_at:.1f} s after heartbeats began failing (deadline 12 s)")
    logged(stack.workers[0], "fenced worker_group=fb", "fenced: cannot renew running lease", timeout=30)
    assert stack.counters("SetTaskStatus") == reports_before
    assert instance(stack.dp, pipeline, "CutOff")["@status"] == "RUNNING"
    stack.emulator.admin("faults", {"faultRate": []})
    stack.redis.start()  # so that the worker and the bridge can stop gracefully
