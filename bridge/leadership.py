"""One active poller per worker group: a Redis lock with a TTL, renewed by its holder, plus process liveness.

The lock only keeps standbys from polling needlessly; correctness never depends on it (reservations,
leases and epochs do), so losing it is cheap and a holder that cannot prove it still holds it steps down.

Keys::

    dpb:leader:<worker_group>   the owner id of the active poller (SET NX PX, renewed every TTL / 3)
    dpb:alive:<owner>           json {owner, hostname, pid, started, worker_groups} (SET PX, every TTL / 3)
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis

from bridge.errors import BrokerError
from bridge.leases import PREFIX

log = logging.getLogger(__name__)

# Returns {1, ttl_ms} when the lock is (now) ours, else {0, the holder's remaining ms}.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(ARGV[2])}
end
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, tonumber(ARGV[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Callback = Callable[[str], None]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class LeaderLock:
    """The poller lock of one worker group.

    Args:
        client: A redis-py client with ``decode_responses=True``.
        worker_group: The group the lock is for.
        owner: This process's identity, stored as the lock's value.
        ttl_s: How long the lock outlives its last renewal.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, worker_group: str, owner: str, ttl_s: float) -> None:
        self.redis = client
        self.worker_group = worker_group
        self.owner = owner
        self.ttl_s = ttl_s
        self.key = self.lock_key(worker_group)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def lock_key(worker_group: str) -> str:
        return f"{PREFIX}:leader:{worker_group}"

    def try_acquire(self) -> bool:
        """Take the lock if it is free (renewing it if it is already ours); whether we hold it now.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self.attempt()[0]

    def attempt(self) -> tuple[bool, float]:
        """Like ``try_acquire``, also returning the seconds until the lock expires (ours or the holder's).

        A lock written without a TTL (by hand) never expires: ``math.inf``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            won, remaining_ms = self._acquire(keys=[self.key], args=[self.owner, _ms(self.ttl_s)])
        except redis.RedisError as exc:
            raise BrokerError(f"cannot take the poller lock of {self.worker_group}: {exc}") from exc
        remaining_ms = int(remaining_ms)
        return int(won) == 1, math.inf if remaining_ms < 0 else remaining_ms / 1000

    def renew(self) -> bool:
        """Extend the lock by a TTL; ``False`` when it is not ours any more.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            return int(self._renew(keys=[self.key], args=[self.owner, _ms(self.ttl_s)])) == 1
        except redis.RedisError as exc:
            raise BrokerError(f"cannot renew the poller lock of {self.worker_group}: {exc}") from exc

    def release(self) -> None:
        """Give the lock up now if it is ours, so a standby takes over without waiting for the TTL.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError as exc:
            raise BrokerError(f"cannot release the poller lock of {self.worker_group}: {exc}") from exc

    def holder(self) -> str | None:
        """The owner holding the lock, or ``None`` when it is free.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            value = self.redis.get(self.key)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read the poller lock of {self.worker_group}: {exc}") from exc
        return None if value is None else str(value)


class Liveness:
    """This process's liveness key; the active poller adopts the leases of owners whose key expired.

    Args:
        client: A redis-py client with ``decode_responses=True``.
        owner: This process's identity (the ``owner`` recorded in its leases).
        ttl_s: How long the key outlives its last beat.
        hostname: Recorded for operators (default: this host's name).
        worker_groups: Recorded for operators.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(
        self,
        client: redis.Redis,
        owner: str,
        ttl_s: float,
        *,
        hostname: str | None = None,
        worker_groups: Iterable[str] = (),
    ) -> None:
        self.redis = client
        self.owner = owner
        self.ttl_s = ttl_s
        self.key = self.alive_key(owner)
        self.record = {
            "owner": owner,
            "hostname": hostname or socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "worker_groups": list(worker_groups),
        }

    @staticmethod
    def alive_key(owner: str) -> str:
        return f"{PREFIX}:alive:{owner}"

    def beat(self) -> None:
        """(Re)write the key with a fresh TTL.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            self.redis.set(self.key, json.dumps(self.record, separators=(",", ":")), px=_ms(self.ttl_s))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot write liveness of {self.owner}: {exc}") from exc

    def clear(self) -> None:
        """Delete the key: a clean exit, so peers need not wait for the TTL.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            self.redis.delete(self.key)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot clear liveness of {self.owner}: {exc}") from exc

    @staticmethod
    def is_alive(client: redis.Redis, owner: str) -> bool:
        """Whether ``owner``'s liveness key exists.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            return bool(client.exists(Liveness.alive_key(owner)))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read liveness of {owner}: {exc}") from exc

    @staticmethod
    def live_owners(client: redis.Redis) -> list[str]:
        """Every owner with a liveness key, sorted.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        prefix = Liveness.alive_key("")
        try:
            return sorted(str(key)[len(prefix) :] for key in client.scan_iter(match=prefix + "*", count=500))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot list live owners: {exc}") from exc


@dataclass
class _Group:
    lock: LeaderLock
    leader: threading.Event = field(default_factory=threading.Event)
    #: Monotonic time by which the lock has surely expired unless renewed again (set on each success).
    expires_at: float = 0.0
    #: The holder last logged while standing by (log once per holder, not every tick).
    standby_for: str | None = None
    unreachable: bool = False


class Leadership:
    """Keeps this process's liveness key and its poller locks, in a thread.

    Every TTL / 3 it beats liveness and, per group, renews the lock it holds or tries to take a free
    one. A standby retries right when the holder's lock expires, so a holder killed with ``kill -9``
    is replaced within one TTL. Leadership is lost at once when a renewal is refused, and when Redis
    has been unreachable for a TTL since the last successful renewal (the lock may have expired).

    Args:
        client: A redis-py client with ``decode_responses=True``.
        owner: This process's identity.
        worker_groups: Groups to poll.
        leader_ttl_s: TTL of the poller locks.
        liveness_ttl_s: TTL of the liveness key.
        hostname: Recorded in the liveness key.
        on_gained: Called with the group (in the leadership thread) when this process becomes its poller.
        on_lost: Called with the group when it stops being its poller (not on ``stop``/``step_down``).
    """

    def __init__(
        self,
        client: redis.Redis,
        owner: str,
        worker_groups: Iterable[str],
        leader_ttl_s: float,
        liveness_ttl_s: float,
        *,
        hostname: str | None = None,
        on_gained: Callback | None = None,
        on_lost: Callback | None = None,
    ) -> None:
        self.owner = owner
        self.ttl_s = leader_ttl_s
        self.groups = {g: _Group(LeaderLock(client, g, owner, leader_ttl_s)) for g in dict.fromkeys(worker_groups)}
        self.liveness = Liveness(client, owner, liveness_ttl_s, hostname=hostname, worker_groups=self.groups)
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.stopping = threading.Event()
        self._stepped_down = threading.Event()
        self._tend_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_beat = 0.0
        self._liveness_down = False

    @property
    def interval_s(self) -> float:
        return self.ttl_s / 3

    def start(self) -> Leadership:
        """Start the thread (idempotent)."""
        if self._thread is None and not self.stopping.is_set():
            self._thread = threading.Thread(target=self.run, name="leadership", daemon=True)
            self._thread.start()
        return self

    def is_leader(self, worker_group: str) -> bool:
        """Whether this process is the active poller of ``worker_group`` (and its lock cannot have expired yet)."""
        state = self.groups[worker_group]
        return state.leader.is_set() and time.monotonic() < state.expires_at

    def wait_leader(self, worker_group: str, stop_event: threading.Event, timeout_s: float | None = None) -> bool:
        """Block until this process polls ``worker_group``; ``False`` if ``stop_event`` is set first (or timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        state = self.groups[worker_group]
        while not stop_event.is_set():
            if self.is_leader(worker_group):
                return True
            wait_s = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait_s <= 0:
                return False
            # A set event whose lock expired means the thread is late; don't spin on it.
            if state.leader.is_set():
                stop_event.wait(wait_s)
            else:
                state.leader.wait(wait_s)
        return False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                wait_s = self.tick()
            except Exception:
                log.critical("leadership error", exc_info=True)
                wait_s = self.interval_s
            self.stopping.wait(wait_s)

    def tick(self) -> float:
        """Beat liveness if due and tend every lock; returns the seconds until something is due again."""
        now = time.monotonic()
        waits = [self.interval_s]
        if now >= self._next_beat:
            self._beat()
            self._next_beat = now + self.liveness.ttl_s / 3
        waits.append(self._next_beat - now)
        with self._tend_lock:  # (step_down must not race a renewal or an acquisition in flight)
            if not self._stepped_down.is_set():
                waits += [self._tend(group, state) for group, state in self.groups.items()]
        return max(0.01, min(waits))

    def step_down(self) -> None:
        """Release every lock now and stop contending, keeping liveness (the drain that follows still owns leases)."""
        self._stepped_down.set()
        with self._tend_lock:
            self._release_all()

    def _release_all(self) -> None:
        for group, state in self.groups.items():
            held = state.leader.is_set()
            state.leader.clear()
            state.expires_at = 0.0
            try:
                state.lock.release()
            except BrokerError as exc:
                log.warning("cannot release the poller lock worker_group=%s: %s", group, exc)
                continue
            if held:
                log.info("released leadership worker_group=%s", group)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, release the locks and clear liveness so peers take over at once. Idempotent."""
        # 1. stop the thread first, so it cannot re-take a lock released below
        self.stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        # 2. hand the groups over
        self.step_down()
        # 3. our leases become adoptable right away
        try:
            self.liveness.clear()
        except BrokerError as exc:
            log.warning("cannot clear liveness of %s: %s", self.owner, exc)

    def _beat(self) -> None:
        try:
            self.liveness.beat()
        except BrokerError as exc:
            if not self._liveness_down:
                log.warning("cannot beat liveness of %s: %s", self.owner, exc)
            self._liveness_down = True
            return
        if self._liveness_down:
            log.info("liveness of %s restored", self.owner)
        self._liveness_down = False

    def _tend(self, group: str, state: _Group) -> float:
        sent = time.monotonic()
        if state.leader.is_set():
            try:
                renewed = state.lock.renew()
            except BrokerError as exc:
                return self._unreachable(group, state, exc)
            state.unreachable = False
            if renewed:
                state.expires_at = sent + self.ttl_s
                return self.interval_s
            self._lose(group, state)
            sent = time.monotonic()
        try:
            won, remaining_s = state.lock.attempt()
            holder = None if won else state.lock.holder()
        except BrokerError as exc:
            return self._unreachable(group, state, exc)
        state.unreachable = False
        if won:
            state.expires_at = sent + self.ttl_s
            state.standby_for = None
            state.leader.set()
            log.info("active worker_group=%s", group)
            self._call(self.on_gained, group)
            return self.interval_s
        if holder is not None and holder != state.standby_for:
            log.info("standby worker_group=%s: poller %s is active", group, holder)
            state.standby_for = holder
        # Retry right as the holder's lock runs out: a killed holder is replaced within one TTL.
        return min(self.interval_s, remaining_s + 0.01)

    def _unreachable(self, group: str, state: _Group, exc: BrokerError) -> float:
        if not state.unreachable:
            log.warning("cannot reach Redis for the poller lock worker_group=%s: %s", group, exc)
            state.unreachable = True
        if not state.leader.is_set():
            return self.interval_s
        left = state.expires_at - time.monotonic()
        if left <= 0:
            self._lose(group, state)
            return self.interval_s
        return min(self.interval_s, left)

    def _lose(self, group: str, state: _Group) -> None:
        state.leader.clear()
        state.expires_at = 0.0
        log.warning("lost leadership worker_group=%s", group)
        self._call(self.on_lost, group)

    @staticmethod
    def _call(callback: Callback | None, group: str) -> None:
        if callback is None:
            return
        try:
            callback(group)
        except Exception:
            log.critical("leadership callback failed worker_group=%s", group, exc_info=True)
