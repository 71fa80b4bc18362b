"""Lease records in Redis: one per hand-out, moved between states by atomic scripts.

A lease holds the full task object, an epoch (bumped by every hand-out of the same task), its
owner process, its heartbeat owner, deadlines and the outcome. States::

    claimed -> queued -> running -> reporting -> done
    (any live state) -> canceled | lost | released

Every transition checks the current state (and epoch, when given) and writes in one script, so
two processes can never both win the same transition. Terminal records expire after a day.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from bridge.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

PREFIX = "dpb"
TERMINAL_TTL_S = 86400
#: Every live lease of every group sharing this Redis (the API budget's admission bound is fleet-wide).
ALL_INFLIGHT_KEY = f"{PREFIX}:inflight-all"


class LeaseState(StrEnum):
    CLAIMED = "claimed"
    QUEUED = "queued"
    RUNNING = "running"
    REPORTING = "reporting"
    DONE = "done"
    CANCELED = "canceled"
    LOST = "lost"
    RELEASED = "released"


LIVE = frozenset({LeaseState.CLAIMED, LeaseState.QUEUED, LeaseState.RUNNING, LeaseState.REPORTING})
TERMINAL = frozenset(LeaseState) - LIVE

_CLAIM = """
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'claimed', 'epoch', epoch, 'claimed_at', ARGV[2], 'updated_at', ARGV[2])
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if KEYS[4] then redis.call('ZREM', KEYS[4], KEYS[5]) end
return epoch
"""

# Adopt a live lease whose owner process died: only if it is still that owner's, with the same epoch.
_ADOPT = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'owner')
if not cur[1] then return 0 end
if cur[2] ~= ARGV[1] or cur[3] ~= ARGV[2] then return 0 end
if cur[1] ~= 'claimed' and cur[1] ~= 'queued' and cur[1] ~= 'running' and cur[1] ~= 'reporting' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'adopted_from', ARGV[2], 'updated_at', ARGV[4])
return 1
"""

# Re-publish a queued lease under a new epoch (older message copies are then fenced out).
_BUMP = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if cur[1] ~= 'queued' or cur[2] ~= ARGV[1] then return 0 end
local epoch = tonumber(cur[2]) + 1
redis.call('HSET', KEYS[1], 'epoch', epoch, 'queued_at', ARGV[2], 'updated_at', ARGV[2], 'republished', '1')
return epoch
"""

_TRANSITION = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if not cur[1] then return {-1, '', ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur[1] then allowed = true end end
if (not allowed) or (ARGV[3] ~= '' and ARGV[3] ~= cur[2]) then return {0, cur[1], cur[2]} end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[4]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
if ARGV[6] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  if KEYS[4] then
    redis.call('LPUSH', KEYS[4], ARGV[1])
    redis.call('LTRIM', KEYS[4], 0, 15)
    redis.call('PEXPIRE', KEYS[4], 60000)
  end
end
return {1, ARGV[4], cur[2]}
"""


@dataclass(frozen=True)
class Lease:
    """A snapshot of one lease record."""

    task_key: str
    state: LeaseState
    epoch: int
    task_id: str
    pipeline_id: str
    attempt_id: str
    worker_group: str
    instance_id: str
    queue: str
    object_type: str
    owner: str
    heartbeat_owner: str
    claimed_at: float
    updated_at: float
    progress_deadline_s: float
    heartbeat_interval_s: float
    last_beat: float
    next_beat: float
    outcome: dict[str, Any] | None
    task_object: dict[str, Any]
    queued_at: float = 0.0
    acked: bool = False
    republished: bool = False
    #: The instance lock the running worker renews every second (``bridge.fencing``).
    run_lock: str = ""

    @property
    def last_seen(self) -> float:
        """When Data Pipeline last heard about this hand-out (its claim, acknowledgement or last beat)."""
        return max(self.claimed_at, self.last_beat)

    @property
    def instance_key(self) -> str:
        """The unit of exclusion: pipeline and instance (else the attempt)."""
        return f"{self.pipeline_id}:{self.instance_id or self.attempt_id}"

    @classmethod
    def from_hash(cls, task_key: str, data: Mapping[str, str]) -> Lease:
        outcome = data.get("outcome")
        return cls(
            task_key=task_key,
            state=LeaseState(data["state"]),
            epoch=int(data.get("epoch", 0)),
            task_id=data.get("task_id", ""),
            pipeline_id=data.get("pipeline_id", ""),
            attempt_id=data.get("attempt_id", ""),
            worker_group=data.get("worker_group", ""),
            instance_id=data.get("instance_id", ""),
            queue=data.get("queue", ""),
            object_type=data.get("object_type", ""),
            owner=data.get("owner", ""),
            heartbeat_owner=data.get("heartbeat_owner", ""),
            claimed_at=float(data.get("claimed_at", 0)),
            updated_at=float(data.get("updated_at", 0)),
            progress_deadline_s=float(data.get("progress_deadline_s", 0)),
            heartbeat_interval_s=float(data.get("heartbeat_interval_s", 0)),
            last_beat=float(data.get("last_beat", 0)),
            next_beat=float(data.get("next_beat", 0)),
            outcome=json.loads(outcome) if outcome else None,
            task_object=json.loads(data.get("task_object") or "{}"),
            queued_at=float(data.get("queued_at", 0)),
            acked=data.get("acked") == "1",
            republished=data.get("republished") == "1",
            run_lock=data.get("run_lock", ""),
        )


@dataclass(frozen=True)
class TransitionResult:
    ok: bool
    state: str
    epoch: int
    missing: bool = False


class LeaseStore:
    """Lease records in Redis.

    Args:
        client: A redis-py client with ``decode_responses=True``.

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)
        self._transition = client.register_script(_TRANSITION)
        self._adopt = client.register_script(_ADOPT)
        self._bump = client.register_script(_BUMP)

    @classmethod
    def from_url(cls, url: str) -> LeaseStore:
        """A store on the Redis at ``url``.

        Raises:
            ConfigError: ``url`` does not parse (bad port or database number...).
        """
        try:
            # Few, quick retries: the keeper must notice an outage at once and beat from memory, not stall
            # for seconds in redis-py's default retry loop on every call.
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=2,
                socket_connect_timeout=2,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
            )
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
        return cls(client)

    @staticmethod
    def fast_client(url: str, timeout_s: float = 0.5) -> redis.Redis:
        """A client that gives up within ``timeout_s`` and never retries: for callers that must not wait on
        Redis (the API budget on the heartbeat and SetTaskStatus path falls back to a local bucket instead).

        Raises:
            ConfigError: ``url`` does not parse.
        """
        try:
            return redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc

    @staticmethod
    def lease_key(task_key: str) -> str:
        return f"{PREFIX}:lease:{task_key}"

    @staticmethod
    def inflight_key(worker_group: str) -> str:
        return f"{PREFIX}:inflight:{worker_group}"

    @staticmethod
    def freed_key(worker_group: str) -> str:
        """A short list a lease's key is pushed to when it ends: a full poller waits on it (``wait_freed``)."""
        return f"{PREFIX}:freed:{worker_group}"

    def wait_freed(self, worker_group: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a lease of ``worker_group`` to end; whether one did.

        A hint, not a count: an entry may be older than the wait (the list keeps the last 16 for a minute).

        Raises:
            BrokerError: Redis cannot be reached.
        """
        try:
            return self.redis.blpop([self.freed_key(worker_group)], timeout=timeout_s) is not None
        except redis.RedisError as exc:
            raise BrokerError(f"cannot wait for a free place in {worker_group}: {exc}") from exc

    def ping(self) -> None:
        """Raises: BrokerError when Redis does not answer."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise BrokerError(f"Redis is unreachable: {exc}") from exc

    def claim(
        self,
        task_key: str,
        worker_group: str,
        fields: Mapping[str, Any],
        reservation: tuple[str, str] | None = None,
    ) -> int:
        """Write a new lease for a hand-out (superseding any older record of it); returns its epoch.

        Args:
            reservation: ``(reservation zset key, reservation id)`` to remove in the same step: the slot
                reserved before the poll becomes this lease.
        """
        now = time.time()
        args: list[Any] = [task_key, repr(now)]
        for key, value in fields.items():
            args += [key, _encode(value)]
        keys = [self.lease_key(task_key), self.inflight_key(worker_group), ALL_INFLIGHT_KEY]
        if reservation is not None:
            keys += list(reservation)
        try:
            return int(self._claim(keys=keys, args=args))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot write lease {task_key}: {exc}") from exc

    def transition(
        self,
        task_key: str,
        worker_group: str,
        allowed: Iterable[LeaseState],
        to: LeaseState | None,
        *,
        epoch: int | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> TransitionResult:
        """Move a lease from one of ``allowed`` to ``to`` (``None``: only update ``fields``), atomically."""
        ttl = str(TERMINAL_TTL_S) if to in TERMINAL else ""
        args: list[Any] = [
            task_key,
            ",".join(allowed),
            "" if epoch is None else str(epoch),
            "" if to is None else str(to),
            repr(time.time()),
            ttl,
        ]
        for key, value in (fields or {}).items():
            args += [key, _encode(value)]
        keys = [self.lease_key(task_key), self.inflight_key(worker_group), ALL_INFLIGHT_KEY]
        keys.append(self.freed_key(worker_group))
        try:
            code, state, cur_epoch = self._transition(keys=keys, args=args)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot update lease {task_key}: {exc}") from exc
        return TransitionResult(int(code) == 1, str(state), int(cur_epoch or 0), missing=int(code) == -1)

    def adopt(self, lease: Lease, new_owner: str) -> bool:
        """Take over ``lease`` from its dead owner; False when it changed meanwhile (someone else won)."""
        try:
            return bool(
                self._adopt(
                    keys=[self.lease_key(lease.task_key)],
                    args=[str(lease.epoch), lease.owner, new_owner, repr(time.time())],
                )
            )
        except redis.RedisError as exc:
            raise BrokerError(f"cannot adopt lease {lease.task_key}: {exc}") from exc

    def bump_epoch(self, task_key: str, epoch: int) -> int:
        """Give a queued lease a new epoch for re-publishing; returns it, or 0 when the lease moved on."""
        try:
            return int(self._bump(keys=[self.lease_key(task_key)], args=[str(epoch), repr(time.time())]))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot re-publish lease {task_key}: {exc}") from exc

    def get(self, task_key: str) -> Lease | None:
        try:
            data = self.redis.hgetall(self.lease_key(task_key))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read lease {task_key}: {exc}") from exc
        return Lease.from_hash(task_key, {str(k): str(v) for k, v in data.items()}) if data else None

    def in_flight_all(self) -> int:
        """How many live leases all groups hold together."""
        try:
            return int(self.redis.zcard(ALL_INFLIGHT_KEY))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot count leases: {exc}") from exc

    def in_flight(self, worker_group: str) -> int:
        """How many live leases ``worker_group`` holds."""
        try:
            return int(self.redis.zcard(self.inflight_key(worker_group)))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot count leases: {exc}") from exc

    def live(self, worker_group: str) -> list[Lease]:
        """Every live lease of ``worker_group``, oldest first (dropping index entries whose record vanished)."""
        try:
            keys = [str(k) for k in self.redis.zrange(self.inflight_key(worker_group), 0, -1)]
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self.lease_key(key))
            rows = pipe.execute()
            leases = []
            for key, data in zip(keys, rows, strict=True):
                if data:
                    try:
                        leases.append(Lease.from_hash(key, data))
                    except (ValueError, KeyError) as exc:  # e.g. written by a newer version mid-upgrade
                        log.error("unreadable lease record %s skipped: %r", key, exc)
                else:
                    self.redis.zrem(self.inflight_key(worker_group), key)
                    self.redis.zrem(ALL_INFLIGHT_KEY, key)
            return leases
        except redis.RedisError as exc:
            raise BrokerError(f"cannot list leases: {exc}") from exc


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return str(value)
