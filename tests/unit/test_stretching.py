"""Heartbeats stretch under API budget pressure, earliest deadline first, never past deadline - margin."""

from __future__ import annotations

import time
from typing import Any

from bridge.errors import BUDGET_EXHAUSTED, Throttled, Unavailable
from bridge.keeper import RETRY_LEAD_S, Held, Keeper, beat_margin_s
from bridge.leases import LeaseState, TransitionResult
from bridge.settings import Settings
from workers.heartbeat import CancelSignal, Heartbeat


class Api:
    def __init__(self) -> None:
        self.beaten: list[str] = []

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.beaten.append(task_id)
        return False


class Budget:
    def __init__(self, pressure: bool) -> None:
        self.low = pressure

    def pressure(self, op: str) -> bool:
        return self.low

    def starved(self, op: str) -> bool:
        return False


class Leases:
    def transition(self, *a: Any, **k: Any) -> TransitionResult:
        return TransitionResult(True, "queued", 1)


def held(key: str, last_beat: float, deadline_s: float = 30.0, interval_s: float = 10.0) -> Held:
    return Held(
        task_key=key,
        task_id=key,
        worker_group="wg",
        epoch=1,
        state=LeaseState.QUEUED,
        queue="dp.wg",
        object_type="ShellCommandActivity",
        deadline_s=deadline_s,
        interval_s=interval_s,
        task_object={},
        last_beat=last_beat,
        next_beat=0.0,
        acked=True,
    )


def keeper(api: Api, pressure: bool) -> Keeper:
    return Keeper(Settings(worker_groups=("wg",)), api, Leases(), "me", budget=Budget(pressure))  # type: ignore[arg-type]


def test_without_pressure_every_due_lease_is_beaten() -> None:
    api = Api()
    k = keeper(api, pressure=False)
    now = time.time()
    for name, age in (("a", 11), ("b", 15)):
        k.track(held(name, now - age))
    k.beat_due()
    assert sorted(api.beaten) == ["a", "b"]
    assert k.stats.stretched == 0


def test_under_pressure_only_leases_near_their_deadline_are_beaten_and_the_rest_wait() -> None:
    # given two due leases: one 26 s into a 30 s deadline (margin 3 s: must beat now), one only 11 s in
    api = Api()
    k = keeper(api, pressure=True)
    now = time.time()
    urgent, relaxed = held("urgent", now - 26), held("relaxed", now - 11)
    k.track(urgent)
    k.track(relaxed)
    # when the keeper ticks under budget pressure
    k.beat_due()
    # then only the urgent one was beaten; the other is put off, but never past deadline - margin
    assert api.beaten == ["urgent"]
    assert k.stats.stretched == 1
    assert relaxed.next_beat <= relaxed.last_beat + relaxed.deadline_s - beat_margin_s(relaxed.deadline_s)


def test_a_running_tasks_heartbeat_stretches_under_pressure_and_beats_before_the_deadline() -> None:
    api = Api()
    beat = Heartbeat(api, "t", "k", 10.0, CancelSignal(), deadline_s=30.0, budget=Budget(True))  # type: ignore[arg-type]
    beat._last_ok = time.time() - 11
    beat.beat_when_due()
    assert api.beaten == []
    assert beat.stretched == 1
    beat._last_ok = time.time() - 26  # 1 s from deadline - margin: due whatever the budget says
    beat.beat_when_due()
    assert api.beaten == ["t"]


class RefusingEarlyApi(Api):
    """The early view of an API whose budget sits below the pressure line: it refuses, sending nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.refused.append(task_id)
        raise Throttled("local API budget exhausted for ReportTaskProgress", BUDGET_EXHAUSTED)


def test_a_beat_that_can_wait_gets_no_token_from_below_the_pressure_line_and_is_stretched() -> None:
    # given no pressure seen yet (the reading is cached) but a bucket already below the pressure line, so the
    # early view refuses: a crowd of due beats must not drain what urgent ones need
    api, early = Api(), RefusingEarlyApi()
    k = Keeper(Settings(worker_groups=("wg",)), api, Leases(), "me", budget=Budget(False), early_api=early)  # type: ignore[arg-type]
    now = time.time()
    urgent, relaxed = held("urgent", now - 26), held("relaxed", now - 11)
    k.track(urgent)
    k.track(relaxed)

    # when the keeper ticks
    k.beat_due()

    # then the relaxed lease asked the early view, was refused and is put off (not a failure); the urgent one
    # went through the normal client
    assert early.refused == ["relaxed"] and api.beaten == ["urgent"]
    assert k.stats.stretched == 1 and k.stats.beat_failures == 0 and relaxed.failures == 0
    assert now < relaxed.next_beat <= relaxed.last_beat + relaxed.deadline_s - beat_margin_s(relaxed.deadline_s)

    # and a running task's heartbeat does the same
    beat = Heartbeat(api, "t", "k", 10.0, CancelSignal(), deadline_s=30.0, budget=Budget(False), early_api=early)  # type: ignore[arg-type]
    beat._last_ok = time.time() - 11
    beat.beat_when_due()
    assert early.refused[-1] == "t" and api.beaten == ["urgent"] and beat.stretched == 1
    beat._last_ok = time.time() - 26
    beat.beat_when_due()
    assert api.beaten == ["urgent", "t"]


class FailingApi(Api):
    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.beaten.append(task_id)
        raise Unavailable("500", "InternalServiceError")


def test_a_stretched_beat_that_fails_is_retried_before_the_deadline() -> None:
    # given a 20 s deadline (margin 2 s): a beat stretched to its latest moment, 17 s after the last accepted one,
    # fails with a 500; the usual retry (5 s later, or the keeper's backoff) would land after the deadline
    api = FailingApi()
    beat = Heartbeat(api, "t", "k", 6.0, CancelSignal(), deadline_s=20.0, budget=Budget(True))  # type: ignore[arg-type]
    beat._last_ok = time.time() - 17.0
    beat.beat_when_due()
    k = keeper(api, pressure=True)
    lease = held("q", time.time() - 17.0, deadline_s=20.0, interval_s=6.0)
    lease.failures = 5  # (a backoff of 30 s)
    k.track(lease)
    k.beat_due()

    # then both retry while Data Pipeline still counts the last beat: at the latest a second before the deadline
    assert api.beaten == ["t", "q"]
    assert beat._next_beat <= beat._last_ok + 20.0 - RETRY_LEAD_S
    assert lease.next_beat <= lease.last_beat + 20.0 - RETRY_LEAD_S
    assert beat._next_beat > time.time() and lease.next_beat > time.time()
