"""One active poller per worker group: the Redis lock, liveness keys and the leadership thread (real redis-server)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import pytest
import redis

from bridge.errors import BrokerError
from bridge.leadership import LeaderLock, Leadership, Liveness
from tests.support import RedisServer, wait_for

TTL_S = 0.6
#: For tests where the holder must keep its lock: renewals every second leave two seconds of slack.
STEADY_TTL_S = 3.0


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_connect_timeout=1, socket_timeout=2)
    yield client
    client.close()


class Events:
    """Records on_gained / on_lost callbacks as ("gained" | "lost", owner, group)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, str, str]] = queue.Queue()

    def callbacks(self, owner: str) -> dict[str, object]:
        return {
            "on_gained": lambda group: self.queue.put(("gained", owner, group)),
            "on_lost": lambda group: self.queue.put(("lost", owner, group)),
        }

    def next(self, timeout_s: float = 15.0) -> tuple[str, str, str]:
        return self.queue.get(timeout=timeout_s)


@pytest.fixture
def started() -> Iterator[list[Leadership]]:
    leaderships: list[Leadership] = []
    yield leaderships
    for leadership in leaderships:
        leadership.stop()


def leadership(
    client: redis.Redis,
    owner: str,
    events: Events,
    started: list[Leadership],
    groups: tuple[str, ...] = ("g",),
    ttl_s: float = TTL_S,
) -> Leadership:
    made = Leadership(client, owner, groups, ttl_s, ttl_s, **events.callbacks(owner))  # type: ignore[arg-type]
    started.append(made)
    return made.start()


# -- LeaderLock --------------------------------------------------------------------------------------


def test_only_one_owner_holds_the_lock(client: redis.Redis) -> None:
    # given two pollers of one group
    a = LeaderLock(client, "g", "owner-a", ttl_s=30)
    b = LeaderLock(client, "g", "owner-b", ttl_s=30)

    # when both try to take the lock
    # then the first gets it, the second does not, and the first may take it again (a renewal)
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert a.try_acquire() is True
    assert a.holder() == b.holder() == "owner-a"
    assert client.get("dpb:leader:g") == "owner-a"


def test_locks_of_different_groups_are_independent(client: redis.Redis) -> None:
    assert LeaderLock(client, "g1", "owner-a", ttl_s=30).try_acquire()
    assert LeaderLock(client, "g2", "owner-b", ttl_s=30).try_acquire()


def test_renewal_by_a_non_owner_fails_and_leaves_the_lock_alone(client: redis.Redis) -> None:
    # given a lock held by a with a short remaining TTL
    a = LeaderLock(client, "g", "owner-a", ttl_s=30)
    b = LeaderLock(client, "g", "owner-b", ttl_s=300)
    assert a.try_acquire()

    # when b tries to renew and release it
    renewed = b.renew()
    b.release()

    # then it is still a's, with a's TTL
    assert renewed is False
    assert a.holder() == "owner-a"
    assert 0 < client.pttl("dpb:leader:g") <= 30_000
    assert a.renew() is True


def test_renewal_fails_once_the_lock_expired(client: redis.Redis) -> None:
    a = LeaderLock(client, "g", "owner-a", ttl_s=TTL_S)
    assert a.try_acquire()
    wait_for(lambda: a.holder() is None, timeout=10, what="the lock to expire")
    assert a.renew() is False


def test_a_lock_that_is_not_renewed_is_taken_over_after_its_ttl(client: redis.Redis) -> None:
    # given a holder that stops renewing (as after kill -9)
    a = LeaderLock(client, "g", "owner-a", ttl_s=TTL_S)
    b = LeaderLock(client, "g", "owner-b", ttl_s=TTL_S)
    assert a.try_acquire()
    assert not b.try_acquire()

    # when the standby keeps trying
    wait_for(b.try_acquire, timeout=10, what="b to take the lock over")

    # then b holds it and a's renewal is refused
    assert b.holder() == "owner-b"
    assert a.renew() is False


def test_release_hands_the_lock_over_at_once(client: redis.Redis) -> None:
    a = LeaderLock(client, "g", "owner-a", ttl_s=300)
    b = LeaderLock(client, "g", "owner-b", ttl_s=300)
    assert a.try_acquire()

    a.release()

    assert a.holder() is None
    assert b.try_acquire() is True


def test_lock_calls_raise_broker_error_when_redis_is_down(client: redis.Redis, redis_server: RedisServer) -> None:
    lock = LeaderLock(client, "g", "owner-a", ttl_s=30)
    redis_server.stop()
    for call in (lock.try_acquire, lock.renew, lock.release, lock.holder):
        with pytest.raises(BrokerError):
            call()


# -- Liveness ----------------------------------------------------------------------------------------


def test_liveness_key_lives_while_beaten_and_clears_on_exit(client: redis.Redis) -> None:
    # given two processes beating their liveness
    a = Liveness(client, "owner-a", ttl_s=30, hostname="host-a", worker_groups=["g1", "g2"])
    b = Liveness(client, "owner-b", ttl_s=30)
    a.beat()
    b.beat()

    # then both are alive and their record tells who they are
    assert Liveness.is_alive(client, "owner-a")
    assert Liveness.live_owners(client) == ["owner-a", "owner-b"]
    record = client.get("dpb:alive:owner-a")
    assert record is not None
    assert '"hostname":"host-a"' in record
    assert '"worker_groups":["g1","g2"]' in record

    # when a exits cleanly
    a.clear()

    # then only b is alive
    assert not Liveness.is_alive(client, "owner-a")
    assert Liveness.live_owners(client) == ["owner-b"]


def test_liveness_expires_without_beats(client: redis.Redis) -> None:
    Liveness(client, "owner-a", ttl_s=TTL_S).beat()
    assert Liveness.is_alive(client, "owner-a")
    wait_for(lambda: not Liveness.is_alive(client, "owner-a"), timeout=10, what="liveness to expire")
    assert Liveness.live_owners(client) == []


# -- Leadership thread --------------------------------------------------------------------------------


def test_first_process_polls_and_the_second_stands_by(
    client: redis.Redis, started: list[Leadership], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.leadership")
    events = Events()

    # given one process that became active
    a = leadership(client, "owner-a", events, started, ttl_s=STEADY_TTL_S)
    assert events.next() == ("gained", "owner-a", "g")
    assert a.is_leader("g")

    # when a second process starts for the same group
    b = leadership(client, "owner-b", events, started, ttl_s=STEADY_TTL_S)
    wait_for(lambda: "standby worker_group=g: poller owner-a is active" in caplog.text, timeout=10, what="standby")

    # then it stands by (saying so once), while both beat liveness
    stop = threading.Event()
    assert not b.wait_leader("g", stop, timeout_s=STEADY_TTL_S)
    assert a.is_leader("g") and not b.is_leader("g")
    assert events.queue.empty()
    assert caplog.text.count("standby worker_group=g") == 1
    assert Liveness.live_owners(client) == ["owner-a", "owner-b"]


def test_a_clean_stop_hands_over_to_the_standby_and_clears_liveness(
    client: redis.Redis, started: list[Leadership]
) -> None:
    events = Events()
    a = leadership(client, "owner-a", events, started, ttl_s=STEADY_TTL_S)
    assert events.next() == ("gained", "owner-a", "g")
    b = leadership(client, "owner-b", events, started, ttl_s=STEADY_TTL_S)

    # when the active process stops
    a.stop()

    # then its lock is gone at once (no TTL to wait out), the standby takes over, and a is no longer alive
    assert client.get("dpb:leader:g") != "owner-a"
    assert events.next() == ("gained", "owner-b", "g")
    assert b.wait_leader("g", threading.Event(), timeout_s=10)
    assert not a.is_leader("g")
    assert not Liveness.is_alive(client, "owner-a")


def test_a_holder_that_stops_renewing_is_replaced(client: redis.Redis, started: list[Leadership]) -> None:
    # given a holder that took the lock and then died without a word (kill -9: no renewals, no release)
    dead = LeaderLock(client, "g", "owner-dead", ttl_s=TTL_S)
    assert dead.try_acquire()
    events = Events()

    # when a standby runs
    b = leadership(client, "owner-b", events, started)

    # then it takes over once the lock expires
    assert events.next() == ("gained", "owner-b", "g")
    assert b.is_leader("g")
    assert dead.holder() == "owner-b"


def test_a_stolen_lock_is_lost_and_reported(
    client: redis.Redis, started: list[Leadership], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.leadership")
    events = Events()
    a = leadership(client, "owner-a", events, started)
    assert events.next() == ("gained", "owner-a", "g")

    # when another owner force-writes the lock (without a TTL, as by hand)
    client.set("dpb:leader:g", "thief")

    # then a loses leadership at its next renewal and stands by for the thief
    assert events.next() == ("lost", "owner-a", "g")
    assert not a.is_leader("g")
    wait_for(lambda: "standby worker_group=g: poller thief is active" in caplog.text, timeout=10, what="standby")
    assert "lost leadership worker_group=g" in caplog.text
    assert client.get("dpb:leader:g") == "thief"


def test_leadership_is_lost_when_redis_goes_away(
    client: redis.Redis, redis_server: RedisServer, started: list[Leadership]
) -> None:
    events = Events()
    a = leadership(client, "owner-a", events, started, groups=("g1", "g2"))
    assert {events.next(), events.next()} == {("gained", "owner-a", "g1"), ("gained", "owner-a", "g2")}

    # when Redis stops answering
    redis_server.stop()

    # then both groups are lost (the locks may have expired), well within a generous timeout
    assert {events.next(30), events.next(30)} == {("lost", "owner-a", "g1"), ("lost", "owner-a", "g2")}
    assert not a.is_leader("g1") and not a.is_leader("g2")


def test_stop_is_idempotent_and_safe_before_start(client: redis.Redis) -> None:
    never_started = Leadership(client, "owner-a", ["g"], TTL_S, TTL_S)
    never_started.stop()
    never_started.stop()
    assert not never_started.is_leader("g")
    assert client.get("dpb:leader:g") is None
