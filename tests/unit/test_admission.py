"""Admission control: reservations against live leases, worker slot registrations, limits (real redis-server)."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from bridge.admission import Admission, Reservations, SlotRegistry, budget_cap, reservation_key
from bridge.errors import BrokerError
from bridge.keeper import STRETCH_SLACK_S, stretched_period_s
from bridge.leases import LeaseState, LeaseStore
from bridge.settings import Settings
from tests.support import RedisServer, wait_for


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_connect_timeout=1, socket_timeout=2)
    yield client
    client.close()


def hold_leases(client: redis.Redis, group: str, count: int) -> None:
    """``count`` live leases in the group's in-flight index (as bridge.leases writes it)."""
    for n in range(count):
        client.zadd(f"dpb:inflight:{group}", {f"df-1:@A_{n}:abc": 1.0})


# -- reservations -------------------------------------------------------------------------------------


def test_racing_reservations_never_exceed_the_limit(client: redis.Redis) -> None:
    # given 8 threads racing for places under a limit of 5
    reservations = Reservations(client)
    barrier = threading.Barrier(8)
    granted: list[str] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        for _ in range(25):
            resv_id = uuid.uuid4().hex
            if reservations.reserve("g", resv_id, limit=5, ttl_s=60):
                with lock:
                    granted.append(resv_id)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # then exactly 5 were granted
    assert len(granted) == 5
    assert client.zcard(reservation_key("g")) == 5
    assert reservations.count("g") == 5


def test_live_leases_count_against_the_limit(client: redis.Redis) -> None:
    # given 3 live leases and a limit of 5
    hold_leases(client, "g", 3)
    reservations = Reservations(client)

    # when reserving
    results = [reservations.reserve("g", f"r{n}", limit=5) for n in range(4)]

    # then only 2 places are left
    assert results == [True, True, False, False]


def test_released_and_expired_reservations_free_their_places(client: redis.Redis) -> None:
    reservations = Reservations(client)
    assert reservations.reserve("g", "long", limit=2, ttl_s=60)
    assert reservations.reserve("g", "short", limit=2, ttl_s=0.5)
    assert not reservations.reserve("g", "third", limit=2, ttl_s=60)

    # when the short one expires, its place is free again
    wait_for(lambda: reservations.reserve("g", "third", limit=2, ttl_s=60), timeout=10, what="an expired place")
    assert not reservations.reserve("g", "fourth", limit=2, ttl_s=60)

    # when one is released, so is its place
    reservations.release("g", "long")
    assert reservations.reserve("g", "fourth", limit=2, ttl_s=60)
    assert set(client.zrange(reservation_key("g"), 0, -1)) == {"third", "fourth"}


def test_renewing_a_held_reservation_does_not_need_a_free_place(client: redis.Redis) -> None:
    reservations = Reservations(client)
    assert reservations.reserve("g", "r1", limit=1, ttl_s=60)
    assert reservations.reserve("g", "r1", limit=1, ttl_s=60)
    assert reservations.count("g") == 1


def test_a_full_poller_wakes_when_a_lease_of_its_group_ends(client: redis.Redis) -> None:
    # given a live lease of group g and a poller waiting for room in g (and one in another group)
    store = LeaseStore(client)
    store.claim("df-1:@A_1:abc", "g", {"task_id": "t1"})
    assert not store.wait_freed("g", 0.1)  # nothing ended yet: the wait times out

    def end_later() -> None:
        time.sleep(0.3)
        assert store.transition("df-1:@A_1:abc", "g", [LeaseState.CLAIMED], LeaseState.DONE).ok

    ender = threading.Thread(target=end_later)
    started = time.monotonic()
    ender.start()
    woke = store.wait_freed("g", 10.0)
    waited = time.monotonic() - started
    ender.join(5)

    # then the wait ends when the lease does, not at its timeout; the other group is not woken
    assert woke and waited < 5.0, waited
    assert not store.wait_freed("other", 0.1)
    # and a lease that only changes state (still live) wakes nobody
    store.claim("df-1:@A_2:abc", "g", {"task_id": "t2"})
    assert store.transition("df-1:@A_2:abc", "g", [LeaseState.CLAIMED], LeaseState.QUEUED).ok
    assert not store.wait_freed("g", 0.1)


def test_reservations_raise_broker_error_when_redis_is_down(client: redis.Redis, redis_server: RedisServer) -> None:
    redis_server.stop()
    with pytest.raises(BrokerError):
        Reservations(client).reserve("g", "r1", limit=5)
    with pytest.raises(BrokerError):
        Reservations(client).release("g", "r1")


# -- worker slots --------------------------------------------------------------------------------------


def test_workers_on_overlapping_queues_are_counted_once_each(client: redis.Redis) -> None:
    # given w1 (3 slots) on both queues of g1 and w2 (2 slots) on one of them and another queue
    registry = SlotRegistry(client)
    registry.register("w1@host", 3, ["dp.g1", "dp.g1.shell"])
    registry.register("w2@host", 2, ["dp.g1.shell", "dp.other"])

    # then each worker's slots count once over the group's queues
    assert registry.live_slots(["dp.g1", "dp.g1.shell"]) == 5
    assert registry.live_slots(["dp.g1"]) == 3
    assert registry.live_slots(["dp.other"]) == 2
    assert registry.live_slots(["dp.nobody"]) == 0
    assert registry.consumers("dp.g1.shell") == 2
    assert registry.consumers("dp.g1") == 1
    assert registry.consumers("dp.nobody") == 0
    record = client.get("dpb:worker:w1@host")
    assert record is not None and '"concurrency":3' in record


def test_a_refreshed_registration_replaces_the_old_one(client: redis.Redis) -> None:
    registry = SlotRegistry(client)
    registry.register("w1@host", 3, ["dp.g1"])
    registry.register("w1@host", 4, ["dp.g1"])
    assert registry.live_slots(["dp.g1"]) == 4
    assert registry.consumers("dp.g1") == 1


def test_registrations_expire_after_their_ttl(client: redis.Redis) -> None:
    # given a worker that registered once and then died (no refresh, no unregister)
    registry = SlotRegistry(client)
    registry.register("w1@host", 3, ["dp.g1", "dp.g1.shell"], ttl_s=0.5)
    registry.register("w2@host", 2, ["dp.g1"], ttl_s=60)
    assert registry.live_slots(["dp.g1", "dp.g1.shell"]) == 5

    # then its slots stop counting, and its entries are pruned
    wait_for(lambda: registry.live_slots(["dp.g1", "dp.g1.shell"]) == 2, timeout=10, what="w1 to expire")
    assert registry.consumers("dp.g1.shell") == 0
    assert client.zrange("dpb:consumers:dp.g1", 0, -1) == ["w2@host"]
    assert client.zcard("dpb:consumers:dp.g1.shell") == 0


def test_unregister_removes_the_slots_at_once(client: redis.Redis) -> None:
    registry = SlotRegistry(client)
    registry.register("w1@host", 3, ["dp.g1", "dp.g1.shell"])
    registry.unregister("w1@host")
    assert registry.live_slots(["dp.g1", "dp.g1.shell"]) == 0
    assert client.exists("dpb:worker:w1@host", "dpb:consumers:dp.g1", "dpb:consumers:dp.g1.shell") == 0


# -- limits --------------------------------------------------------------------------------------------


def test_budget_cap_is_what_the_progress_budget_keeps_alive() -> None:
    # 0.9 x 1 call/s x one beat per 100 s
    assert budget_cap(1.0, 100.0) == 90
    assert budget_cap(0.5, 3.0) == 1
    assert budget_cap(0.1, 10.0) == 0
    # AWS's 15 min deadline at the default 90 % budget: one beat per 900 - 90 - 1 s, 9 calls/s
    assert budget_cap(9.0, stretched_period_s(900.0)) == math.floor(0.9 * 9.0 * 809.0)
    with pytest.raises(ValueError):
        budget_cap(1.0, 0)


def test_stretched_period_leaves_the_margin_and_the_slack() -> None:
    assert stretched_period_s(20.0) == 20.0 - 2.0 - STRETCH_SLACK_S
    assert stretched_period_s(900.0) == 900.0 - 90.0 - STRETCH_SLACK_S
    assert stretched_period_s(2.0) == 1.0  # never below a second


SHELL = {"ShellCommandActivity": "dp.g1.shell"}


def test_the_limit_names_its_binding_bound(client: redis.Redis) -> None:
    # given w1 with 3 slots on g1's queues and one message of allowance
    SlotRegistry(client).register("w1@host", 3, ["dp.g1", "dp.g1.shell"])
    admission = Admission(client, Settings(routes=SHELL, queue_allowance=1, max_in_flight=8))

    assert admission.queues("g1") == ["dp.g1", "dp.g1.shell"]
    assert admission.limit("g1") == (4, "slots")

    admission.set_budget_cap(2)
    assert admission.limit("g1") == (2, "budget")

    admission.set_budget_cap(None)
    SlotRegistry(client).register("w2@host", 16, ["dp.g1"])
    assert admission.limit("g1") == (8, "max_in_flight")


def test_reserve_admits_up_to_the_limit_counting_leases(client: redis.Redis) -> None:
    # given 2 slots, one live lease and a poller reserving before each poll
    SlotRegistry(client).register("w1@host", 2, ["dp.g1"])
    admission = Admission(client, Settings())
    hold_leases(client, "g1", 1)

    first = admission.reserve("g1")
    second = admission.reserve("g1")

    # then one place was left; an empty poll gives it back
    assert first is not None
    assert second is None
    assert admission.bound["g1"] == "slots"
    admission.release("g1", first)
    assert admission.reserve("g1") is not None


def test_no_claims_while_a_queue_of_the_group_has_no_consumer(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.admission")
    # given workers on g1's default queue only, while ShellCommandActivity routes to dp.g1.shell
    SlotRegistry(client).register("w1@host", 4, ["dp.g1"])
    admission = Admission(client, Settings(routes=SHELL, queue_allowance=2))

    # when the poller asks for places repeatedly
    results = [admission.reserve("g1") for _ in range(3)]

    # then it gets none, and says why once
    assert results == [None, None, None]
    assert admission.no_consumer_queues("g1") == ["dp.g1.shell"]
    line = "no live worker consumes queue dp.g1.shell; not claiming for worker_group=g1"
    assert caplog.text.count(line) == 1

    # when a worker consumes it, claims resume
    SlotRegistry(client).register("w2@host", 1, ["dp.g1.shell"])
    assert admission.no_consumer_queues("g1") == []
    assert admission.reserve("g1") is not None


def test_admission_raises_broker_error_when_redis_is_down(client: redis.Redis, redis_server: RedisServer) -> None:
    admission = Admission(client, Settings())
    redis_server.stop()
    with pytest.raises(BrokerError):
        admission.reserve("g1")
    with pytest.raises(BrokerError):
        admission.limit("g1")


def test_the_budget_bound_counts_the_leases_of_every_group_together(client: redis.Redis) -> None:
    # given a budget cap of 3 and live leases in two groups: 2 in g1, 1 in g2
    store = LeaseStore(client)
    for group, key in (("g1", "a"), ("g1", "b"), ("g2", "c")):
        store.claim(key, group, {"state_note": "x"})
    reservations = Reservations(client)
    # then no group may reserve another place, however roomy its own limit is
    assert reservations.try_reserve("g2", "r1", limit=10, fleet_limit=3) == -1
    assert reservations.try_reserve("g3", "r2", limit=10, fleet_limit=3) == -1
    # and when one lease ends, a place frees up for any group
    store.transition("a", "g1", [LeaseState.CLAIMED], LeaseState.DONE)
    assert reservations.try_reserve("g3", "r3", limit=10, fleet_limit=3) == 1
