"""What the bridge does when Redis (the lease store) fails at the worst moments. Stand-ins for Redis and the API."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from bridge import poller as poller_module
from bridge.errors import BrokerError, Unavailable
from bridge.fencing import Fence
from bridge.keeper import Held, Keeper
from bridge.leases import Lease, TransitionResult
from bridge.messages import TaskMessage
from bridge.poller import Poller
from bridge.settings import Settings
from tests.support import free_port
from workers.execution import Execution, LeaseStoreDown, Runtime

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
                {"key": "command", "stringValue": "true"},
            ],
        }
    },
}


class Leases:
    """A lease store whose first ``failures`` transitions raise BrokerError."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.transitions: list[dict[str, Any]] = []

    def claim(self, *_: Any) -> int:
        return 1

    def transition(self, key: str, group: str, allowed: Any, to: Any, **kw: Any) -> TransitionResult:
        self.transitions.append({"to": to, **kw})
        if self.failures > 0:
            self.failures -= 1
            raise BrokerError("Redis is unreachable")
        return TransitionResult(True, str(to), 1)


class Api:
    def __init__(self, progress_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.progress_error = progress_error

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.calls.append("ReportTaskProgress")
        if self.progress_error is not None:
            raise self.progress_error
        return False

    def set_task_status(self, *a: Any, **k: Any) -> None:
        self.calls.append("SetTaskStatus")


class Publisher:
    def __init__(self) -> None:
        self.published: list[TaskMessage] = []

    def publish(self, message: TaskMessage, argsrepr: str) -> str:
        self.published.append(message)
        return "id"


def test_a_worker_that_cannot_take_the_lease_hands_the_message_back_without_side_effects() -> None:
    # given Redis down when a worker receives a message
    api = Api()
    unreachable = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True)
    runtime = Runtime(Settings(), api, Leases(failures=1), "worker:1", Fence(unreachable))  # type: ignore[arg-type]
    body = TaskMessage(
        1, "df-1:@A_1_Attempt=1:abc", 1, "wg", "dp.wg", "ShellCommandActivity", 1.0, 5.0, 0.0, TASK
    ).to_body()
    # when it runs, then it raises LeaseStoreDown (the Celery task turns that into a requeue, not an ack)
    with pytest.raises(LeaseStoreDown):
        Execution(runtime, body, {}).run()
    # and it neither heartbeated nor reported the task
    assert api.calls == []


def test_a_redis_error_after_the_ack_is_retried_and_the_task_still_enqueued(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a lease store that fails the claimed -> queued write twice
    monkeypatch.setattr(poller_module, "backoff_s", lambda *_a, **_k: 0.0)
    leases, publisher = Leases(failures=2), Publisher()
    poller = Poller(Settings(worker_groups=("wg",)), "wg", Api(), leases, publisher, "me")  # type: ignore[arg-type]
    # when a task arrives
    poller.dispatch(TASK, time.monotonic())
    # then the write is retried until it holds, and the task is published once
    assert [t["to"] for t in leases.transitions] == ["queued"] * 3
    assert len(publisher.published) == 1


def test_a_failing_heartbeat_backs_off_instead_of_retrying_every_tick() -> None:
    # given a queued lease whose heartbeats fail
    api = Api(progress_error=Unavailable("500"))
    keeper = Keeper(Settings(worker_groups=("wg",)), api, Leases(), "me")  # type: ignore[arg-type]
    held = Held.from_lease(
        Lease.from_hash(
            "k",
            {
                "state": "queued",
                "epoch": "1",
                "task_id": "t",
                "worker_group": "wg",
                "heartbeat_interval_s": "60",
                "next_beat": "0",
            },
        )
    )
    keeper.track(held)
    # when it fails twice in a row
    before = time.time()
    keeper.beat(held)
    first = held.next_beat
    keeper.beat(held)
    # then each failure pushes the next try into the future (never past one interval), and no beat is
    # retried on the same tick
    assert before < first <= time.time() + 60
    assert before < held.next_beat <= time.time() + 60
    assert api.calls == ["ReportTaskProgress"] * 2
    keeper.beat_due()
    assert api.calls == ["ReportTaskProgress"] * 2


def test_heartbeats_go_on_from_memory_while_redis_is_down() -> None:
    # given a queued lease held by the keeper, and Redis failing every read and write
    api = Api()
    leases = Leases(failures=1000)
    leases.live = lambda group: (_ for _ in ()).throw(BrokerError("down"))  # type: ignore[attr-defined]
    keeper = Keeper(Settings(worker_groups=("wg",)), api, leases, "me")  # type: ignore[arg-type]
    held = Held.from_lease(
        Lease.from_hash(
            "k",
            {"state": "queued", "epoch": "1", "task_id": "t", "worker_group": "wg", "heartbeat_interval_s": "60"},
        )
    )
    held.next_beat = 0.0
    keeper.track(held)
    # when the keeper ticks
    keeper.tick()
    # then the lease is still beaten, and still held
    assert api.calls == ["ReportTaskProgress"]
    assert keeper.pending() == 1
