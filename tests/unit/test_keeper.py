"""The keeper's decisions, with stand-ins for Redis and the API (the integration and chaos suites run it for real)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bridge.errors import BrokerError, InvalidRequest
from bridge.keeper import POLLER, Held, Keeper
from bridge.leases import Lease, LeaseState, TransitionResult
from bridge.settings import Settings


class Api:
    def __init__(self, status_error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.status_error = status_error

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.calls.append(f"beat:{task_id}")
        return False

    def set_task_status(self, task_id: str, status: str, *a: Any) -> None:
        self.calls.append(f"status:{task_id}:{status}")
        if self.status_error is not None:
            raise self.status_error


class Store:
    """Leases by key; transitions always succeed and are recorded."""

    def __init__(self, leases: list[Lease] | None = None) -> None:
        self.leases = {lease.task_key: lease for lease in leases or []}
        self.transitions: list[tuple[str, Any]] = []

    def live(self, group: str) -> list[Lease]:
        return [lease for lease in self.leases.values() if lease.worker_group == group]

    def get(self, key: str) -> Lease | None:
        return self.leases.get(key)

    def transition(self, key: str, group: str, allowed: Any, to: Any, **kw: Any) -> TransitionResult:
        self.transitions.append((key, to))
        if to is not None and key in self.leases:
            if to in (LeaseState.DONE, LeaseState.LOST, LeaseState.RELEASED, LeaseState.CANCELED):
                del self.leases[key]  # terminal: out of the live index
            else:
                self.leases[key] = dataclasses.replace(self.leases[key], state=to)
        return TransitionResult(True, str(to or ""), kw.get("epoch") or 1)


def lease(key: str, state: str, owner: str = "me", **fields: str) -> Lease:
    data = {
        "state": state,
        "epoch": "1",
        "task_id": key,
        "worker_group": "wg",
        "queue": "dp.wg",
        "owner": owner,
        "heartbeat_owner": POLLER,
        "progress_deadline_s": "60",
        "heartbeat_interval_s": "20",
        "last_beat": repr(time.time()),
        "next_beat": repr(time.time() + 20),
        **fields,
    }
    return Lease.from_hash(key, data)


def keeper(api: Api, store: Store, **kw: Any) -> Keeper:
    settings = Settings(worker_groups=("wg",), max_queue_wait_s=1.0)
    return Keeper(settings, api, store, "me", **kw)  # type: ignore[arg-type]


def test_an_outcome_refused_as_invalid_is_given_up_not_retried_forever() -> None:
    # given a handed-over outcome that the service refuses as invalid
    api = Api(status_error=InvalidRequest("SetTaskStatus: bad", "InvalidRequestException"))
    outcome = '{"status": "FINISHED"}'
    store = Store([lease("k", "reporting", outcome=outcome)])
    k = keeper(api, store)
    # when the keeper ticks a few times
    for _ in range(3):
        k.tick()
    # then it tried once, ended the lease lost, and holds nothing any more (no rot, no endless beats)
    assert [c for c in api.calls if c.startswith("status")] == ["status:k:FINISHED"]
    assert ("k", LeaseState.LOST) in store.transitions
    assert k.held() == []


def test_a_consumer_census_failing_during_an_outage_does_not_stop_delivering_other_outcomes() -> None:
    # given a queued lease past its queue wait and an outcome to deliver, while the slot census fails
    def census(queue: str) -> bool:
        raise BrokerError("Redis is unreachable")

    store = Store([lease("q", "queued", queued_at=repr(time.time() - 10)), lease("r", "reporting", outcome="{}")])
    api = Api()
    k = keeper(api, store, has_consumer=census)
    # when the keeper ticks, then the outcome is still delivered
    k.tick()
    assert "status:r:FAILED" in api.calls


def test_an_outcome_handed_back_between_two_looks_replaces_the_stale_queued_copy() -> None:
    # given the keeper's copy says queued, but a worker took the lease and handed its outcome back meanwhile
    store = Store([lease("k", "queued")])
    api = Api()
    k = keeper(api, store)
    k.reconcile()
    assert k.get("k") is not None and k.get("k").state == LeaseState.QUEUED  # type: ignore[union-attr]
    store.leases["k"] = lease("k", "reporting", outcome='{"status": "FINISHED"}')
    # when the keeper ticks, then it delivers that outcome
    k.tick()
    assert "status:k:FINISHED" in api.calls


def test_reconcile_never_takes_an_unacknowledged_claim_from_the_poller() -> None:
    store = Store([lease("k", "claimed")])
    k = keeper(Api(), store)
    k.reconcile()
    assert k.get("k") is None


def test_a_copy_found_in_redis_never_replaces_the_pollers_own() -> None:
    k = keeper(Api(), Store())
    mine = Held.from_lease(lease("k", "claimed"))
    k.track(mine)
    assert not k.track_if_absent(Held.from_lease(lease("k", "queued")))
    assert k.get("k") is mine
    # and forgetting an older copy leaves the current one alone
    k.forget("k", Held.from_lease(lease("k", "queued")))
    assert k.get("k") is mine


def test_shutdown_fails_queued_tasks_even_while_redis_is_down() -> None:
    # given a queued lease held in memory, and a lease store that cannot be reached
    class Down(Store):
        def transition(self, *a: Any, **kw: Any) -> TransitionResult:
            raise BrokerError("Redis is unreachable")

    api = Api()
    k = keeper(api, Down())
    k.track(Held.from_lease(lease("k", "queued")))
    # when the bridge shuts down with no peer, then the task still ends FAILED BridgeShutdown at the service
    assert k.fail_unstarted("BridgeShutdown") == 1
    assert api.calls == ["status:k:FAILED"]
    assert k.held() == []
