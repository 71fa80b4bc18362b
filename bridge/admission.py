"""Admission: how many tasks a worker group may hold, and the reservations that keep claims under it.

A poller claims only while in-flight < min(live slots + allowance, ReportTaskProgress budget cap,
``max_in_flight``) (DESIGN.md §4 "Admission"). Before each PollForTask it reserves a place atomically;
the lease claim script removes the reservation when it writes the lease, an empty poll releases it,
and a crashed poller's reservation expires by itself.

Keys::

    dpb:resv:<worker_group>    zset: reservation id -> expiry (epoch seconds, Redis TIME)
    dpb:inflight:<worker_group> zset of live leases' task keys (written by bridge.leases)
    dpb:worker:<worker_id>     json {concurrency, queues, hostname, pid}, with a TTL refreshed by the worker
    dpb:consumers:<queue>      zset: worker_id -> expiry (epoch seconds, Redis TIME)
    dpb:paused:<worker_group>  json {by, at, reason}: no claims for the group while it exists (``bridge pause``)
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from bridge.errors import BrokerError
from bridge.leases import ALL_INFLIGHT_KEY, PREFIX, LeaseStore
from bridge.settings import Settings

log = logging.getLogger(__name__)

#: A reservation covers one held PollForTask (up to 90 s) plus the lease write, with margin.
RESERVATION_TTL_S = 120.0
#: A worker's registration lives this long past its last refresh.
WORKER_TTL_S = 15.0
#: How often a worker refreshes its registration.
WORKER_REFRESH_S = 5.0
#: At most one "no live worker consumes" line per group and queue this often.
NO_CONSUMER_LOG_EVERY_S = 60.0
#: At most one "is paused" line per group this often.
PAUSED_LOG_EVERY_S = 60.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: inflight, reservations, every group's inflight. ARGV: id, limit, ttl_s, fleet-wide limit ('' for none).
# Re-reserving a held id only extends it. Returns 1, or 0 (group full), or -1 (the fleet-wide bound is reached).
_RESERVE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
  if ARGV[4] ~= '' and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local ms = math.ceil(ttl * 1000)
if redis.call('PTTL', KEYS[2]) < ms then redis.call('PEXPIRE', KEYS[2], ms) end
return 1
"""
)

# KEYS: the worker's record, then one consumers zset per queue. ARGV: worker id, record, ttl_s.
_REGISTER = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
local ms = math.ceil(ttl * 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return 1
"""
)

# KEYS: consumers zsets. Prunes expired members; returns each zset's live members.
_MEMBERS = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[i] = redis.call('ZRANGE', KEYS[i], 0, -1)
end
return out
"""
)


def reservation_key(worker_group: str) -> str:
    """The reservations zset of ``worker_group`` (the lease claim script ZREMs a reservation from it)."""
    return f"{PREFIX}:resv:{worker_group}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def consumers_key(queue: str) -> str:
    return f"{PREFIX}:consumers:{queue}"


def paused_key(worker_group: str) -> str:
    """The flag ``bridge pause`` sets: while it exists no process claims for ``worker_group``."""
    return f"{PREFIX}:paused:{worker_group}"


#: Share of the ReportTaskProgress budget the admission cap plans for: the rest absorbs beats bunching up,
#: the keeper and a worker both beating a lease while it changes hands, and SetTaskStatus-time retries.
CAP_SHARE = 0.9


def budget_cap(progress_rate: float, stretched_period_s: float) -> int:
    """How many leases the ReportTaskProgress budget keeps alive: floor(CAP_SHARE * rate * stretched period).

    Acknowledgements share the budget but need no room here: the poller claims only while the bucket holds
    a claim's reserve (``BudgetPressure.starved``), so claims slow down as the beats that must be sent grow.

    Args:
        progress_rate: ReportTaskProgress calls per second the fleet may make.
        stretched_period_s: Seconds between two beats of one lease stretched as far as it goes
            (``bridge.keeper.stretched_period_s``).

    Raises:
        ValueError: ``stretched_period_s`` is not positive.
    """
    if stretched_period_s <= 0:
        raise ValueError("stretched_period_s must be positive")
    return max(0, math.floor(CAP_SHARE * progress_rate * stretched_period_s))


class Reservations:
    """Places reserved ahead of a poll, counted together with live leases against a limit.

    Args:
        client: A redis-py client with ``decode_responses=True``.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._reserve = client.register_script(_RESERVE)

    def reserve(
        self,
        worker_group: str,
        resv_id: str,
        limit: int,
        ttl_s: float = RESERVATION_TTL_S,
        fleet_limit: int | None = None,
    ) -> bool:
        """Reserve a place if live leases + unexpired reservations < ``limit``, atomically; whether it was granted.

        Args:
            fleet_limit: Also refuse while every group's live leases together reach this (the API budget's bound).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self.try_reserve(worker_group, resv_id, limit, ttl_s, fleet_limit) == 1

    def try_reserve(
        self,
        worker_group: str,
        resv_id: str,
        limit: int,
        ttl_s: float = RESERVATION_TTL_S,
        fleet_limit: int | None = None,
    ) -> int:
        """Like ``reserve``; returns 1 (granted), 0 (the group is full) or -1 (the fleet-wide bound is reached)."""
        keys = [LeaseStore.inflight_key(worker_group), reservation_key(worker_group), ALL_INFLIGHT_KEY]
        args: list[str | int] = [resv_id, int(limit), repr(float(ttl_s)), "" if fleet_limit is None else fleet_limit]
        try:
            return int(self._reserve(keys=keys, args=args))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot reserve a place for {worker_group}: {exc}") from exc

    def release(self, worker_group: str, resv_id: str) -> None:
        """Give a reservation back (an empty poll).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            self.redis.zrem(reservation_key(worker_group), resv_id)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot release reservation of {worker_group}: {exc}") from exc

    def count(self, worker_group: str) -> int:
        """Unexpired reservations of ``worker_group``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            seconds, micros = self.redis.time()
            return int(self.redis.zcount(reservation_key(worker_group), f"({seconds + micros / 1e6!r}", "+inf"))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot count reservations of {worker_group}: {exc}") from exc


@dataclass(frozen=True)
class Census:
    """Live workers on a set of queues: slots counted once per worker, and consumers per queue."""

    slots: int
    consumers: dict[str, int]


class SlotRegistry:
    """Celery workers' registrations: each worker's concurrency and the queues it consumes.

    Args:
        client: A redis-py client with ``decode_responses=True``.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._register = client.register_script(_REGISTER)
        self._members = client.register_script(_MEMBERS)

    def register(
        self,
        worker_id: str,
        concurrency: int,
        queues: Iterable[str],
        *,
        hostname: str | None = None,
        pid: int | None = None,
        ttl_s: float = WORKER_TTL_S,
    ) -> None:
        """Register (or refresh) ``worker_id`` with ``concurrency`` slots on ``queues`` for ``ttl_s``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        names = sorted(set(queues))
        record = {
            "concurrency": int(concurrency),
            "queues": names,
            "hostname": hostname or socket.gethostname(),
            "pid": os.getpid() if pid is None else pid,
        }
        keys = [worker_key(worker_id), *(consumers_key(q) for q in names)]
        args = [worker_id, json.dumps(record, separators=(",", ":")), repr(float(ttl_s))]
        try:
            self._register(keys=keys, args=args)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot register worker {worker_id}: {exc}") from exc

    def unregister(self, worker_id: str, queues: Iterable[str] = ()) -> None:
        """Remove ``worker_id`` from the queues it registered (and ``queues``) at once: a clean shutdown.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            raw = self.redis.get(worker_key(worker_id))
            names = set(queues)
            if raw is not None:
                names.update(json.loads(str(raw)).get("queues", []))
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(worker_key(worker_id))
            for queue in sorted(names):
                pipe.zrem(consumers_key(queue), worker_id)
            pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"cannot unregister worker {worker_id}: {exc}") from exc

    def census(self, queues: Iterable[str]) -> Census:
        """Live slots and consumers on ``queues``; expired registrations are pruned and ignored.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        names = sorted(set(queues))
        if not names:
            return Census(0, {})
        try:
            members = [[str(m) for m in row] for row in self._members(keys=[consumers_key(q) for q in names])]
            workers = sorted({m for row in members for m in row})
            records = self.redis.mget([worker_key(w) for w in workers]) if workers else []
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read worker registrations: {exc}") from exc
        # A member whose record is gone unregistered or expired between its refreshes: not live.
        concurrency = {w: _concurrency(raw) for w, raw in zip(workers, records, strict=True) if raw is not None}
        return Census(
            slots=sum(concurrency.values()),
            consumers={q: sum(1 for m in row if m in concurrency) for q, row in zip(names, members, strict=True)},
        )

    def live_slots(self, queues: Iterable[str]) -> int:
        """Concurrency summed over the unique live workers consuming any of ``queues``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self.census(queues).slots

    def consumers(self, queue: str) -> int:
        """How many live workers consume ``queue``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self.census([queue]).consumers[queue]


def _concurrency(raw: object) -> int:
    try:
        return max(0, int(json.loads(str(raw)).get("concurrency", 0)))
    except (ValueError, TypeError, AttributeError):
        return 0


class Admission:
    """The poller's admission control for its worker groups.

    Args:
        client: A redis-py client with ``decode_responses=True``.
        settings: ``queue_allowance``, ``max_in_flight`` and ``routes`` are read.
        budget_cap: What the ReportTaskProgress budget keeps alive (``None``: no bound yet); see ``budget_cap()``.
        reservation_ttl_s: How long an unreleased reservation holds its place.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        budget_cap: int | None = None,
        reservation_ttl_s: float = RESERVATION_TTL_S,
    ) -> None:
        self.settings = settings
        self.reservations = Reservations(client)
        self.slots = SlotRegistry(client)
        self.budget_cap = budget_cap
        self.reservation_ttl_s = reservation_ttl_s
        #: The bound that limited each group at its last ``reserve`` (a metric).
        self.bound: dict[str, str] = {}
        self._logged: dict[tuple[str, str], float] = {}
        #: Paused groups -> when their "is paused" line was last logged (monotonic).
        self._paused: dict[str, float] = {}

    def set_budget_cap(self, cap: int | None) -> None:
        """Bound all groups together by what the ReportTaskProgress budget keeps alive (``None``: unbounded)."""
        self.budget_cap = cap

    def queues(self, worker_group: str) -> list[str]:
        """Every queue a task of ``worker_group`` can be published to: its default queue and each routed one."""
        types = ["", *self.settings.routes]
        return sorted({self.settings.queue_for(worker_group, t) for t in types})

    def limit(self, worker_group: str) -> tuple[int, str]:
        """The in-flight limit of ``worker_group`` and which bound sets it: ``slots``, ``budget`` or ``max_in_flight``.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self._limit(self.slots.live_slots(self.queues(worker_group)))

    def _limit(self, live_slots: int) -> tuple[int, str]:
        bounds = [(live_slots + self.settings.queue_allowance, "slots")]
        if self.budget_cap is not None:  # (enforced fleet-wide in ``reserve``: over every group's leases)
            bounds.append((self.budget_cap, "budget"))
        bounds.append((self.settings.max_in_flight, "max_in_flight"))
        return min(bounds, key=lambda bound: bound[0])

    def no_consumer_queues(self, worker_group: str) -> list[str]:
        """The group's queues no live worker consumes (logged at most once a minute per queue).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        return self._no_consumer(worker_group, self.slots.census(self.queues(worker_group)))

    def _no_consumer(self, worker_group: str, census: Census) -> list[str]:
        empty = [q for q, n in census.consumers.items() if n == 0]
        now = time.monotonic()
        for queue in empty:
            last = self._logged.get((worker_group, queue))
            if last is None or now - last >= NO_CONSUMER_LOG_EVERY_S:
                self._logged[(worker_group, queue)] = now
                log.warning("no live worker consumes queue %s; not claiming for worker_group=%s", queue, worker_group)
        return empty

    def reserve(self, worker_group: str) -> str | None:
        """Reserve a place for one poll; its id, or ``None`` (the group is paused or full, or a queue has no consumer).

        A task could be routed to any of the group's queues, so a queue without a live consumer stops
        every claim of the group (the task would only wait there until it is failed as not started).

        A paused group (``bridge pause``) claims nothing; the leases it holds are still heartbeated.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        if self.paused(worker_group):
            self.bound[worker_group] = "paused"
            return None
        census = self.slots.census(self.queues(worker_group))
        if self._no_consumer(worker_group, census):
            self.bound[worker_group] = "slots"
            return None
        limit, self.bound[worker_group] = self._limit(census.slots)
        resv_id = uuid.uuid4().hex
        granted = self.reservations.try_reserve(
            worker_group, resv_id, limit, self.reservation_ttl_s, fleet_limit=self.budget_cap
        )
        if granted == 1:
            return resv_id
        if granted == -1:
            self.bound[worker_group] = "budget"
        return None

    def paused(self, worker_group: str) -> bool:
        """Whether an operator paused ``worker_group`` (logged at most once a minute, and once on resume).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            raw = self.reservations.redis.get(paused_key(worker_group))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read the pause flag of {worker_group}: {exc}") from exc
        if raw is None:
            if self._paused.pop(worker_group, None) is not None:
                log.info("worker_group=%s resumed; claiming again", worker_group)
            return False
        now = time.monotonic()
        last = self._paused.get(worker_group)
        if last is None or now - last >= PAUSED_LOG_EVERY_S:
            self._paused[worker_group] = now
            try:
                record = json.loads(str(raw))
                by = str(record.get("by") or "an operator")
                reason = str(record.get("reason") or "")
            except (ValueError, AttributeError):
                by, reason = "an operator", ""
            log.warning(
                "worker_group=%s is paused by %s%s; not claiming", worker_group, by, f" ({reason})" if reason else ""
            )
        return True

    def release(self, worker_group: str, resv_id: str) -> None:
        """Give back a reservation whose poll brought no task.

        Raises:
            BrokerError: Redis cannot be reached.
        """
        self.reservations.release(worker_group, resv_id)
