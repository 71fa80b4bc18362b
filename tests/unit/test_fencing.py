"""Fencing on a real redis-server: the running lock, its renewal and release, the cancel relay, and how a worker
execution honours them (with a stand-in Data Pipeline API, so outcomes can be scripted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.errors import TaskGone, Unavailable
from bridge.fencing import Fence, RunningLock, TakeStatus, cancel_key, lock_token, request_cancel, run_lock_key
from bridge.leases import LeaseState, LeaseStore
from bridge.messages import TaskMessage
from bridge.settings import Settings
from bridge.taskmodel import parse_task_object
from tests.support import RedisServer, wait_for
from workers.context import Outcome, TaskContext
from workers.execution import Execution, Runtime
from workers.heartbeat import CLOCK_SKEW_S, FENCED_SUPERSEDED, FENCED_UNRENEWABLE, CancelSignal, LeaseGuard

GROUP = "wg"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer().start()
    yield started
    started.cleanup()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(server.url, decode_responses=True)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis) -> LeaseStore:
    return LeaseStore(client)


@pytest.fixture
def fence(client: redis.Redis) -> Fence:
    return Fence(client)


def queued(
    store: LeaseStore, task_key: str, *, instance: str = "@A_1", attempt: str = "@A_1_Attempt=1", **more: Any
) -> int:
    """A lease for ``task_key`` moved to ``queued``, as the poller leaves it; returns its epoch."""
    fields = {
        "pipeline_id": "df-1",
        "instance_id": instance,
        "attempt_id": attempt,
        "heartbeat_owner": "poller",
        **more,
    }
    epoch = store.claim(task_key, GROUP, fields)
    assert store.transition(task_key, GROUP, [LeaseState.CLAIMED], LeaseState.QUEUED, epoch=epoch).ok
    return epoch


def state_of(store: LeaseStore, task_key: str) -> tuple[str, int, str]:
    lease = store.get(task_key)
    assert lease is not None
    return str(lease.state), lease.epoch, lease.heartbeat_owner


# -- take_running ---------------------------------------------------------------------------------------


def test_taking_a_queued_lease_runs_it_and_locks_its_instance(store: LeaseStore, fence: Fence) -> None:
    # given a queued lease
    epoch = queued(store, "k1")
    # when a worker takes it with the message's epoch
    result = fence.take_running("k1", epoch, "worker:1", 15)
    # then the lease runs under that worker and the instance lock holds this hand-out for the TTL
    assert result.status == TakeStatus.OK
    assert result.lock is not None
    assert (result.lock.task_key, result.lock.epoch, result.lock.key) == ("k1", epoch, run_lock_key("df-1", "@A_1"))
    assert result.lock.token.startswith(f"k1:{epoch}:")
    assert state_of(store, "k1") == ("running", epoch, "worker:1")
    assert store.redis.get(run_lock_key("df-1", "@A_1")) == result.lock.token
    assert 0 < int(store.redis.pttl(run_lock_key("df-1", "@A_1"))) <= 15000


@pytest.mark.parametrize("case", ["older epoch", "already running", "missing"])
def test_a_stale_copy_is_refused_and_changes_nothing(store: LeaseStore, fence: Fence, case: str) -> None:
    # given a lease the message no longer matches
    epoch = 1 if case == "missing" else queued(store, "k1")
    if case == "already running":
        assert fence.take_running("k1", epoch, "worker:1", 15).ok
    message_epoch = epoch - 1 if case == "older epoch" else epoch
    before = store.redis.hgetall(LeaseStore.lease_key("k1"))
    # when a worker tries to take it
    result = fence.take_running("k1", message_epoch, "worker:2", 15)
    # then it is stale and the lease is as it was
    assert result.status == TakeStatus.STALE
    assert result.lock is None
    assert store.redis.hgetall(LeaseStore.lease_key("k1")) == before
    if case == "older epoch":
        assert (result.state, result.epoch) == ("queued", epoch)


def test_another_attempt_of_a_running_instance_is_blocked_and_stays_queued(store: LeaseStore, fence: Fence) -> None:
    # given attempt 1 of an instance running
    first = fence.take_running("k1", queued(store, "k1"), "worker:1", 15)
    # when attempt 2 of the same instance (another task key) is taken
    epoch2 = queued(store, "k2", attempt="@A_1_Attempt=2")
    result = fence.take_running("k2", epoch2, "worker:2", 15)
    # then it is blocked by attempt 1's lock, and its lease stays queued with the poller beating it
    assert result.status == TakeStatus.BLOCKED
    assert first.lock is not None and result.holder == first.lock.token
    assert 0 < result.holder_ttl_s <= 15
    assert state_of(store, "k2") == ("queued", epoch2, "poller")


def test_a_different_instance_is_not_blocked(store: LeaseStore, fence: Fence) -> None:
    assert fence.take_running("k1", queued(store, "k1"), "worker:1", 15).ok
    assert fence.take_running("k2", queued(store, "k2", instance="@B_1"), "worker:2", 15).ok


def test_without_an_instance_id_the_attempt_is_the_unit_of_exclusion(store: LeaseStore, fence: Fence) -> None:
    result = fence.take_running("k1", queued(store, "k1", instance=""), "worker:1", 15)
    assert result.lock is not None and result.lock.key == run_lock_key("df-1", "@A_1_Attempt=1")


def test_an_expired_lock_frees_the_instance(store: LeaseStore, fence: Fence) -> None:
    # given attempt 1 took the instance with a short TTL and then stopped renewing (its worker died)
    assert fence.take_running("k1", queued(store, "k1"), "worker:1", 0.3).ok
    epoch2 = queued(store, "k2", attempt="@A_1_Attempt=2")
    assert fence.take_running("k2", epoch2, "worker:2", 15).status == TakeStatus.BLOCKED
    # when the TTL passes, then attempt 2 can take it
    result = wait_for(lambda: fence.take_running("k2", epoch2, "worker:2", 15).ok, timeout=5, what="the lock to expire")
    assert result
    assert str(store.redis.get(run_lock_key("df-1", "@A_1"))).startswith(f"k2:{epoch2}:")


def test_a_lock_already_holding_this_execution_does_not_block_it(store: LeaseStore, fence: Fence) -> None:
    epoch = queued(store, "k1")
    token = lock_token("k1", epoch)
    store.redis.set(run_lock_key("df-1", "@A_1"), token, px=5000)
    assert fence.take_running("k1", epoch, "worker:1", 15, token=token).ok


@pytest.mark.parametrize(("recorded", "expected"), [(1234.5, 1234.5), (None, 0.0), ("garbage", 0.0), ("nan", 0.0)])
def test_a_take_tells_when_data_pipeline_last_accepted_a_beat(
    store: LeaseStore, fence: Fence, recorded: object, expected: float
) -> None:
    # given a queued lease whose last beat (the poller's acknowledgement) is recorded, or not, or unreadable
    epoch = queued(store, "k1", **({} if recorded is None else {"last_beat": recorded}))
    # when a worker takes it, then the take returns that time (0 when unknown), also when the take is retried
    token = lock_token("k1", epoch)
    assert fence.take_running("k1", epoch, "worker:1", 15, token=token).last_beat == expected
    assert fence.take_running("k1", epoch, "worker:1", 15, token=token).last_beat == expected


# -- renew and release ----------------------------------------------------------------------------------


def taken(store: LeaseStore, fence: Fence, key: str = "k1", ttl_s: float = 15) -> RunningLock:
    result = fence.take_running(key, queued(store, key), "worker:1", ttl_s)
    assert result.lock is not None
    return result.lock


def test_renewing_extends_the_lock_and_records_the_beat(store: LeaseStore, fence: Fence) -> None:
    # given a lock with a 1 s TTL
    lock = taken(store, fence, ttl_s=1)
    # when it is renewed for 15 s with a beat time, while running and then while reporting
    result = fence.renew(lock, 15, last_beat=1234.5)
    assert store.transition("k1", GROUP, [LeaseState.RUNNING], LeaseState.REPORTING, epoch=lock.epoch).ok
    reporting = fence.renew(lock, 15)
    # then both renewals hold and the TTL is the new one
    assert result.ok and reporting.ok and not reporting.superseded
    assert int(store.redis.pttl(lock.key)) > 1000
    lease = store.get("k1")
    assert lease is not None and lease.last_beat == 1234.5


def test_a_new_hand_out_of_the_task_supersedes_the_renewal(store: LeaseStore, fence: Fence) -> None:
    # given a running lease
    lock = taken(store, fence)
    # when Data Pipeline hands the task out again (a new epoch is claimed)
    epoch2 = store.claim("k1", GROUP, {"pipeline_id": "df-1", "instance_id": "@A_1"})
    # then the renewal says superseded, with what it found, and the lock is not extended
    ttl_before = int(store.redis.pttl(lock.key))
    result = fence.renew(lock, 60)
    assert result.superseded and not result.lease_ours
    assert (result.state, result.epoch, result.holder) == ("claimed", epoch2, lock.token)
    assert int(store.redis.pttl(lock.key)) <= ttl_before


def test_a_lock_taken_by_another_attempt_supersedes_the_renewal(store: LeaseStore, fence: Fence) -> None:
    # given a running lease whose lock expired and was taken by attempt 2
    lock = taken(store, fence, ttl_s=0.2)
    epoch2 = queued(store, "k2", attempt="@A_1_Attempt=2")
    wait_for(lambda: fence.take_running("k2", epoch2, "worker:2", 15).ok, timeout=5, what="attempt 2 to take it")
    # when attempt 1 renews, then it is superseded although its lease is still its own
    result = fence.renew(lock, 15)
    assert result.superseded and result.lease_ours
    assert result.holder.startswith(f"k2:{epoch2}:")
    assert store.redis.get(lock.key) == result.holder


def test_release_deletes_only_this_hand_outs_lock(store: LeaseStore, fence: Fence) -> None:
    lock = taken(store, fence)
    other = RunningLock("k1", lock.epoch + 1, lock.key, lock_token("k1", lock.epoch + 1))
    assert not fence.release(other)
    assert store.redis.get(lock.key) == lock.token
    assert fence.release(lock)
    assert store.redis.get(lock.key) is None
    assert not fence.release(lock)


def test_a_renewal_can_read_the_cancel_relay_in_the_same_round_trip(
    store: LeaseStore, fence: Fence, client: redis.Redis
) -> None:
    # given a running lease, and then a relayed cancel
    lock = taken(store, fence)
    assert fence.renew(lock, 15, read_cancel=True).cancel_reason is None
    request_cancel(client, "k1", "canceled by Data Pipeline", 60)
    # when it is renewed, then the reason comes back only when asked for, and the renewal still holds
    asked = fence.renew(lock, 15, read_cancel=True)
    assert asked.ok and asked.cancel_reason == "canceled by Data Pipeline"
    assert fence.renew(lock, 15).cancel_reason is None
    # and a superseded renewal still carries the reason
    store.claim("k1", GROUP, {"pipeline_id": "df-1", "instance_id": "@A_1"})
    superseded = fence.renew(lock, 15, read_cancel=True)
    assert superseded.superseded and superseded.cancel_reason == "canceled by Data Pipeline"


def test_the_cancel_relay_carries_its_reason_for_a_while(client: redis.Redis, fence: Fence) -> None:
    assert fence.cancel_requested("k1") is None
    request_cancel(client, "k1", "lost: TaskNotFoundException", 60)
    assert fence.cancel_requested("k1") == "lost: TaskNotFoundException"
    assert 0 < int(client.pttl(cancel_key("k1"))) <= 60000
    assert fence.cancel_requested("k2") is None


# -- the lease guard --------------------------------------------------------------------------------------


def guard_for(fence: Fence, lock: RunningLock, renewed_ago_s: float = 0.0, ttl_s: float = 15) -> LeaseGuard:
    return LeaseGuard(fence, lock, ttl_s, CancelSignal(), renewed_at=time.monotonic() - renewed_ago_s)


def test_the_guard_relays_a_cancel_with_its_reason(store: LeaseStore, fence: Fence, client: redis.Redis) -> None:
    guard = guard_for(fence, taken(store, fence))
    guard.tick()
    assert not guard.cancel.is_set()
    request_cancel(client, "k1", "canceled by Data Pipeline", 60)
    guard.tick()
    assert guard.cancel.is_set() and guard.cancel.reason == "canceled by Data Pipeline"
    assert not guard.superseded


def test_the_guard_fences_a_superseded_run(store: LeaseStore, fence: Fence) -> None:
    guard = guard_for(fence, taken(store, fence))
    store.claim("k1", GROUP, {"pipeline_id": "df-1", "instance_id": "@A_1"})
    guard.tick()
    assert guard.cancel.reason == FENCED_SUPERSEDED and guard.superseded


@pytest.fixture
def dead_fence(client: redis.Redis) -> Iterator[Fence]:
    """A fence whose Redis refuses connections."""
    from tests.support import free_port

    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True, socket_connect_timeout=1)
    yield Fence(dead)
    dead.close()


def test_a_redis_blip_shorter_than_the_ttl_stops_nothing(store: LeaseStore, fence: Fence, dead_fence: Fence) -> None:
    # given a guard whose last renewal was 5 s ago (TTL 15 s) and Redis unreachable now
    guard = guard_for(dead_fence, taken(store, fence), renewed_ago_s=5)
    # when it ticks, then nothing is canceled
    guard.tick()
    assert not guard.cancel.is_set()


def test_no_renewal_for_nearly_a_ttl_fences_the_command(store: LeaseStore, fence: Fence, dead_fence: Fence) -> None:
    # given a guard whose last renewal was 13 s ago (TTL 15 s) and Redis unreachable
    guard = guard_for(dead_fence, taken(store, fence), renewed_ago_s=13)
    # when it ticks, then it cancels the command before the lock can expire
    guard.tick()
    assert guard.cancel.reason == FENCED_UNRENEWABLE
    assert not guard.superseded


def test_after_the_command_an_unreachable_redis_never_stops_the_report(
    store: LeaseStore, fence: Fence, dead_fence: Fence
) -> None:
    guard = guard_for(dead_fence, taken(store, fence), renewed_ago_s=60)
    guard.command_ended()
    guard.tick()
    assert not guard.cancel.is_set()


# -- an execution honouring the fence -------------------------------------------------------------------

TASK = {
    "taskId": "t" * 40,
    "pipelineId": "df-1",
    "attemptId": "@A_1_Attempt=1",
    "objects": {
        "@A_1_Attempt=1": {
            "id": "@A_1_Attempt=1",
            "name": "A",
            "fields": [
                {"key": "type", "stringValue": "ShellCommandActivity"},
                {"key": "@instanceParent", "refValue": "@A_1"},
                {"key": "command", "stringValue": "true"},
            ],
        }
    },
}
KEY = parse_task_object(TASK).key


class Api:
    """Data Pipeline as scripted: SetTaskStatus raises the queued errors in turn, then succeeds."""

    def __init__(self, *status_errors: Exception) -> None:
        self.status_errors = list(status_errors)
        self.calls: list[str] = []

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.calls.append("ReportTaskProgress")
        return False

    def set_task_status(self, task_id: str, status: str, *rest: Any) -> None:
        self.calls.append(f"SetTaskStatus {status}")
        if self.status_errors:
            raise self.status_errors.pop(0)


def execute(
    store: LeaseStore,
    api: Api,
    tmp_path: Path,
    handler: Callable[[TaskContext], Outcome] = lambda ctx: Outcome.finished(),
    epoch: int | None = None,
    interval_s: float = 30.0,
    **settings: Any,
) -> str:
    """Run one message for ``KEY`` (queued now, unless ``epoch`` is given) through an execution."""
    if epoch is None:
        epoch = queued(store, KEY)
    runtime = Runtime(Settings(work_dir=str(tmp_path), **settings), api, store, "worker:1")  # type: ignore[arg-type]
    body = TaskMessage(
        1, KEY, epoch, GROUP, "dp.wg", "ShellCommandActivity", interval_s, 10 * interval_s, 0.0, TASK
    ).to_body()
    return Execution(runtime, body, {"ShellCommandActivity": handler}).run()


def test_a_finished_task_is_reported_and_frees_its_instance(store: LeaseStore, tmp_path: Path) -> None:
    api = Api()
    assert execute(store, api, tmp_path) == "finished"
    assert api.calls[-1] == "SetTaskStatus FINISHED"
    assert state_of(store, KEY)[0] == "done"
    assert store.redis.get(run_lock_key("df-1", "@A_1")) is None


# -- taking heartbeating over from the bridge -----------------------------------------------------------


def test_a_task_taken_within_an_interval_of_the_last_beat_starts_without_a_beat(
    store: LeaseStore, tmp_path: Path
) -> None:
    # given a lease the poller acknowledged 1 s ago (heartbeat interval 30 s)
    epoch = queued(store, KEY, last_beat=time.time() - 1)
    api = Api()
    # when a short task runs, then Data Pipeline gets its outcome and no heartbeat from the worker
    assert execute(store, api, tmp_path, epoch=epoch) == "finished"
    assert api.calls == ["SetTaskStatus FINISHED"]


@pytest.mark.parametrize("last_beat_ago_s", [None, -60.0], ids=["unknown", "future"])
def test_a_task_whose_last_beat_is_unknown_beats_before_its_handler(
    store: LeaseStore, tmp_path: Path, last_beat_ago_s: float | None
) -> None:
    # given a lease with no usable last beat: none recorded, or one from a badly skewed clock
    fields = {} if last_beat_ago_s is None else {"last_beat": time.time() - last_beat_ago_s}
    epoch = queued(store, KEY, **fields)
    api = Api()
    seen: list[list[str]] = []

    def handler(ctx: TaskContext) -> Outcome:
        seen.append(list(api.calls))
        return Outcome.finished()

    # when it runs, then a heartbeat reaches Data Pipeline before the handler starts, as the only one
    assert execute(store, api, tmp_path, handler=handler, epoch=epoch) == "finished"
    assert seen == [["ReportTaskProgress"]]
    assert api.calls == ["ReportTaskProgress", "SetTaskStatus FINISHED"]


def test_a_task_whose_last_beat_is_old_beats_at_once_from_its_loop(store: LeaseStore, tmp_path: Path) -> None:
    # given a lease whose last beat is older than the 30 s interval (the bridge stretched it)
    epoch = queued(store, KEY, last_beat=time.time() - 31)
    api = Api()

    def handler(ctx: TaskContext) -> Outcome:
        wait_for(lambda: "ReportTaskProgress" in api.calls, timeout=5, what="the worker's first beat")
        return Outcome.finished()

    # when it runs, then its loop beats at once, while the handler runs
    assert execute(store, api, tmp_path, handler=handler, epoch=epoch) == "finished"
    assert api.calls == ["ReportTaskProgress", "SetTaskStatus FINISHED"]


def test_a_long_task_beats_one_interval_after_the_bridges_last_beat_and_self_fences_from_it(
    store: LeaseStore, tmp_path: Path
) -> None:
    # given a lease acknowledged 0.5 s ago, with a 4 s heartbeat interval
    acked = time.time() - 0.5
    epoch = queued(store, KEY, last_beat=acked)
    api = Api()
    beats: list[float] = []
    lease_beats: list[float] = []

    def handler(ctx: TaskContext) -> Outcome:
        # (the lease guard renews every second, writing the last accepted beat it knows to the lease)
        time.sleep(1.2)
        lease = store.get(KEY)
        lease_beats.append(lease.last_beat if lease is not None else 0.0)
        wait_for(lambda: "ReportTaskProgress" in api.calls, timeout=5, what="the worker's first beat")
        beats.append(time.time())
        return Outcome.finished()

    # when it runs for longer than the interval
    assert execute(store, api, tmp_path, handler=handler, epoch=epoch, interval_s=4.0) == "finished"
    # then the lease still counts from the bridge's beat until the worker's own, due one interval after it (less
    # the clock skew allowed between the bridge's host and the worker's)
    assert lease_beats == [pytest.approx(acked)]
    assert acked + 4.0 - CLOCK_SKEW_S <= beats[0] <= acked + 4.0 - CLOCK_SKEW_S + 1.5
    assert api.calls[0] == "ReportTaskProgress" and api.calls[-1] == "SetTaskStatus FINISHED"


def test_task_not_found_after_a_transport_error_counts_as_delivered(store: LeaseStore, tmp_path: Path) -> None:
    # given a SetTaskStatus whose reply was lost (it landed), so the retry finds the task ended
    api = Api(Unavailable("dropped connection", "ConnectionClosedError"), TaskGone("gone", "TaskNotFoundException"))
    # when the task finishes, then it counts as delivered
    assert execute(store, api, tmp_path) == "finished"
    assert api.calls.count("SetTaskStatus FINISHED") == 2
    assert state_of(store, KEY)[0] == "done"


def test_task_not_found_on_the_first_report_is_lost(store: LeaseStore, tmp_path: Path) -> None:
    api = Api(TaskGone("gone", "TaskNotFoundException"))
    assert execute(store, api, tmp_path) == "lost"
    assert state_of(store, KEY)[0] == "lost"


def test_a_report_failing_past_the_timeout_is_handed_to_the_keeper(store: LeaseStore, tmp_path: Path) -> None:
    # given SetTaskStatus failing every time, and a 1 s report timeout
    api = Api(*[Unavailable("500", "InternalServiceError")] * 1000)
    # when the task finishes
    result = execute(store, api, tmp_path, report_timeout_s=1.0)
    # then the outcome is left on the lease for the keeper, which now owns its heartbeats; the instance is free
    assert result == "handed off"
    lease = store.get(KEY)
    assert lease is not None
    assert (lease.state, lease.heartbeat_owner) == ("reporting", "poller")
    assert lease.outcome is not None and lease.outcome["status"] == "FINISHED"
    assert float(store.redis.hget(LeaseStore.lease_key(KEY), "handed_off_at") or 0) > 0
    assert store.redis.get(run_lock_key("df-1", "@A_1")) is None


def wait_for_cancel(ctx: TaskContext) -> Outcome:
    """A handler that runs until canceled (at most 30 s), then ends as the shell handler does."""
    from bridge.errors import Canceled

    if ctx.cancel.wait(30):
        raise Canceled("stopped")
    return Outcome.finished()


def test_a_relayed_cancel_stops_the_run_and_reports_nothing(
    store: LeaseStore, client: redis.Redis, tmp_path: Path
) -> None:
    api = Api()
    threading.Timer(0.5, lambda: request_cancel(client, KEY, "canceled by Data Pipeline", 60)).start()
    assert execute(store, api, tmp_path, handler=wait_for_cancel) == "canceled"
    assert not any(call.startswith("SetTaskStatus") for call in api.calls)
    assert state_of(store, KEY)[0] == "canceled"


def test_a_relayed_loss_ends_the_lease_lost(store: LeaseStore, client: redis.Redis, tmp_path: Path) -> None:
    threading.Timer(0.5, lambda: request_cancel(client, KEY, "lost: TaskNotFoundException", 60)).start()
    assert execute(store, Api(), tmp_path, handler=wait_for_cancel) == "canceled"
    assert state_of(store, KEY)[0] == "lost"


def test_a_run_superseded_by_a_new_hand_out_fences_itself(store: LeaseStore, tmp_path: Path) -> None:
    # given a run during which Data Pipeline hands the task out again (the poller claims a new epoch)
    api = Api()
    claimed: list[int] = []
    threading.Timer(0.5, lambda: claimed.append(store.claim(KEY, GROUP, {"pipeline_id": "df-1"}))).start()
    # when it notices, then it stops without reporting and leaves the new lease alone
    assert execute(store, api, tmp_path, handler=wait_for_cancel) == "fenced"
    assert not any(call.startswith("SetTaskStatus") for call in api.calls)
    assert state_of(store, KEY)[:2] == ("claimed", claimed[0])


def test_a_blocked_instance_waits_for_the_holders_lock_to_expire(store: LeaseStore, tmp_path: Path) -> None:
    # given another attempt's lock on the instance, about to expire (its worker died)
    store.redis.set(run_lock_key("df-1", "@A_1"), "other:1", px=1500)
    api = Api()
    # when the message arrives, then the run waits and then goes ahead
    assert execute(store, api, tmp_path) == "finished"
    assert api.calls[-1] == "SetTaskStatus FINISHED"


def test_a_blocked_instance_leaves_the_lease_queued_when_the_holder_stays(store: LeaseStore, tmp_path: Path) -> None:
    # given another attempt holding the instance for longer than the wait (running_ttl_s + 1)
    store.redis.set(run_lock_key("df-1", "@A_1"), "other:1", px=60000)
    api = Api()
    ran: list[bool] = []

    def handler(ctx: TaskContext) -> Outcome:
        ran.append(True)
        return Outcome.finished()

    # when the message arrives
    result = execute(store, api, tmp_path, handler=handler, running_ttl_s=1)
    # then it is dropped without running, and the lease stays queued for the poller's not-started rule
    assert result == "dropped"
    assert not ran and api.calls == []
    assert state_of(store, KEY)[::2] == ("queued", "poller")


def test_an_unreadable_message_is_failed_only_after_winning_its_lease(store: LeaseStore, tmp_path: Path) -> None:
    # given a message of an unknown schema that still names its lease
    epoch = queued(store, KEY, task_id=TASK["taskId"])
    body = {"schema": 99, "task_key": KEY, "epoch": epoch, "worker_group": GROUP, "task_object": TASK}
    api = Api()
    runtime = Runtime(Settings(work_dir=str(tmp_path)), api, store, "worker:1")  # type: ignore[arg-type]
    # when a stale copy arrives, then it is dropped unreported
    assert Execution(runtime, {**body, "epoch": epoch - 1}, {}).run() == "dropped"
    assert api.calls == []
    # when the current copy arrives, then it wins the lease and fails the task
    assert Execution(runtime, body, {}).run() == "invalid"
    assert api.calls == ["SetTaskStatus FAILED"]
    assert state_of(store, KEY)[0] == "done"


def test_two_workers_never_share_a_lock_even_for_one_epoch(store: LeaseStore, fence: Fence) -> None:
    # given a lease a worker runs, put back to queued with the same epoch (a record restored from an old snapshot)
    lock = taken(store, fence)
    store.redis.hset(LeaseStore.lease_key("k1"), "state", "queued")
    # when a second worker takes it, then it is blocked by the first execution's lock
    second = fence.take_running("k1", lock.epoch, "worker:2", 15)
    assert second.status == TakeStatus.BLOCKED and second.holder == lock.token


def test_a_take_retried_with_its_own_token_is_recognised(store: LeaseStore, fence: Fence) -> None:
    # given a take that ran on the server but whose reply was lost
    epoch = queued(store, "k1")
    token = lock_token("k1", epoch)
    first = fence.take_running("k1", epoch, "worker:1", 15, token=token)
    # when the worker retries with the same token, then it is ours (not a stale copy)
    again = fence.take_running("k1", epoch, "worker:1", 15, token=token)
    assert first.ok and again.ok and again.lock == first.lock
    # and any other token is refused
    assert fence.take_running("k1", epoch, "worker:9", 15).status == TakeStatus.STALE


def test_a_running_execution_claims_back_a_record_restored_after_redis_lost_it(store: LeaseStore, fence: Fence) -> None:
    # given a running execution, then Redis losing its data, then the bridge restoring the lease as queued
    lock = taken(store, fence)
    store.redis.flushall()
    epoch = store.claim("k1", "wg", {"pipeline_id": "df-1", "instance_id": "@A_1"})
    store.redis.hset(LeaseStore.lease_key("k1"), mapping={"state": "queued", "epoch": str(lock.epoch)})
    assert epoch >= 1
    # when the execution renews, then the record is its own again (running, its lock), so no other copy takes it
    assert fence.renew(lock, 15, worker_id="worker:1").ok
    assert state_of(store, "k1") == ("running", lock.epoch, "worker:1")
    assert store.redis.get(lock.key) == lock.token
    assert fence.take_running("k1", lock.epoch, "worker:2", 15).status == TakeStatus.STALE
