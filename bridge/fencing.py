"""Fencing a running attempt: the per-instance running lock and the cancel relay, as atomic Redis scripts.

Two attempts of one Data Pipeline instance must never run at the same time (DESIGN.md §4 "Running"). A worker
starts an attempt only by winning, in one script, both ``queued -> running`` on the lease (with the message's
epoch) and the instance's running lock ``dpb:run:<pipeline_id>:<instance_id>``. The lock holds
``<task_key>:<epoch>`` and a short TTL that the task's own loop renews every second while its command runs; a
worker that can no longer renew it kills its command before the lock expires (self-fencing), so a dead or cut-off
worker's lock frees the instance within one TTL.

The keeper relays a cancellation to a running task through ``dpb:cancel:<task_key>`` (value: the reason), which
the task polls.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis

from bridge.errors import BrokerError, ConfigError
from bridge.leases import PREFIX, LeaseStore

RUN_PREFIX = f"{PREFIX}:run"
#: Socket timeouts of a fencing client: one hung call must not outlast the self-fencing deadline.
SOCKET_TIMEOUT_S = 1.0
CANCEL_PREFIX = f"{PREFIX}:cancel"

# KEYS[1] lease. ARGV: epoch, worker id, now, ttl ms, task key, run-lock prefix, token.
# The lock key is built from the lease's own fields, so the lock always follows the lease record. The token names
# one execution (task key, epoch and a random id), so two workers can never share a lock, even for one epoch.
# Taking again with the same token is a no-op success (a take whose reply was lost is retried safely).
# Returns {status, state, epoch, token or holder, ttl ms, lock, last_beat}: last_beat is when Data Pipeline last
# accepted a beat of this hand-out as the lease records it (the poller's acknowledgement or the keeper's last beat,
# as the time the call was sent; '' unknown), so the worker can carry on heartbeating from it.
_TAKE = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'pipeline_id', 'instance_id', 'attempt_id', 'last_beat')
if not cur[1] then return {'stale', '', '0', '', -2, '', ''} end
local instance = cur[4]
if (not instance) or instance == '' then instance = cur[5] end
if (not instance) or instance == '' then instance = ARGV[5] end
local lock = ARGV[6] .. ':' .. (cur[3] or '') .. ':' .. instance
local token = ARGV[7]
local last_beat = cur[6] or ''
local holder = redis.call('GET', lock)
if cur[1] == 'running' and cur[2] == ARGV[1] and holder == token then
  return {'ok', 'running', cur[2], token, tonumber(ARGV[4]), lock, last_beat}
end
if cur[1] ~= 'queued' or cur[2] ~= ARGV[1] then return {'stale', cur[1], cur[2] or '0', '', -2, '', ''} end
if holder and holder ~= token then
  return {'blocked', cur[1], cur[2], holder, redis.call('PTTL', lock), lock, ''}
end
redis.call('SET', lock, token, 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'running', 'heartbeat_owner', ARGV[2], 'started_at', ARGV[3],
  'updated_at', ARGV[3], 'run_lock', lock, 'run_token', token)
return {'ok', 'running', cur[2], token, tonumber(ARGV[4]), lock, last_beat}
"""

# KEYS[1] lease, KEYS[2] lock, KEYS[3] (optional) the cancel relay. ARGV: token, epoch, ttl ms, last_beat ('' for
# none), worker id.
# Returns {code, state, epoch, holder, cancel reason ('' none or not asked)}: code 1 renewed; 0 another execution
# holds the instance lock; -1 the lease has another epoch (a newer hand-out). Only those two prove this copy
# superseded: a record that vanished (Redis restarted without its data) or a lock that expired while Redis was away
# is taken again, since Data Pipeline, which the task keeps heartbeating, has handed the attempt to no one else. A
# record the bridge restored as `queued` with this execution's epoch is this execution's: it is set back to
# running, so no copy takes it. The cancel relay is read first, in the same round trip, whatever the renewal finds.
_RENEW = """
local reason = ''
if KEYS[3] then reason = redis.call('GET', KEYS[3]) or '' end
local holder = redis.call('GET', KEYS[2]) or ''
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch')
local state, epoch = cur[1] or '', cur[2] or '0'
if state ~= '' and epoch ~= ARGV[2] then return {-1, state, epoch, holder, reason} end
if holder ~= '' and holder ~= ARGV[1] then return {0, state, epoch, holder, reason} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if state == 'queued' or state == 'claimed' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'heartbeat_owner', ARGV[5], 'run_lock', KEYS[2], 'run_token', ARGV[1])
  state = 'running'
end
if ARGV[4] ~= '' and state ~= '' then redis.call('HSET', KEYS[1], 'last_beat', ARGV[4]) end
return {1, state, epoch, ARGV[1], reason}
"""

# KEYS[1] lock. ARGV[1] token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def run_lock_key(pipeline_id: str, instance_id: str) -> str:
    """The running lock of one instance: ``dpb:run:<pipeline_id>:<instance_id>``."""
    return f"{RUN_PREFIX}:{pipeline_id}:{instance_id}"


def cancel_key(task_key: str) -> str:
    """The cancel relay of one task: ``dpb:cancel:<task_key>`` (value: the reason)."""
    return f"{CANCEL_PREFIX}:{task_key}"


def lock_token(task_key: str, epoch: int, execution: str | None = None) -> str:
    """What a running lock holds: one execution of a hand-out, ``<task_key>:<epoch>:<execution id>``."""
    return f"{task_key}:{epoch}:{execution or uuid.uuid4().hex[:12]}"


def request_cancel(client: redis.Redis, task_key: str, reason: str, ttl_s: float) -> None:
    """Ask the running copy of ``task_key`` to stop: it polls the key every second and ends without SetTaskStatus.

    A reason starting with ``lost`` ends the lease ``lost``; any other ends it ``canceled``.

    Raises:
        BrokerError: Redis is unreachable.
    """
    try:
        client.set(cancel_key(task_key), reason or "canceled", px=max(1, int(ttl_s * 1000)))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot relay the cancellation of {task_key}: {exc}") from exc


class TakeStatus(StrEnum):
    OK = "ok"
    #: The lease is not ``queued`` with the message's epoch: the message is an old or duplicate copy; drop it.
    STALE = "stale"
    #: Another attempt of the same instance holds an unexpired running lock.
    BLOCKED = "blocked"


@dataclass(frozen=True)
class RunningLock:
    """A running lock this worker holds for one hand-out."""

    task_key: str
    epoch: int
    key: str
    #: This execution's id in the lock: ``<task_key>:<epoch>:<random>``.
    token: str


@dataclass(frozen=True)
class TakeResult:
    """What ``take_running`` found.

    Attributes:
        status: ok, stale or blocked.
        state: The lease's state as found (``running`` once taken; ``""`` when the lease is missing).
        epoch: The lease's epoch as found.
        holder: When blocked, the ``<task_key>:<epoch>`` holding the instance.
        holder_ttl_s: When blocked, how long the holder's lock has left unless renewed.
        lock: When ok, the lock now held.
        last_beat: When ok, when Data Pipeline last accepted a beat of this hand-out as the lease records it (the
            poller's acknowledgement or the keeper's last beat; the time the call was sent, wall clock of the host
            that sent it); 0.0 when the lease does not say.
    """

    status: TakeStatus
    state: str
    epoch: int
    holder: str = ""
    holder_ttl_s: float = 0.0
    lock: RunningLock | None = None
    last_beat: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == TakeStatus.OK


@dataclass(frozen=True)
class RenewResult:
    """What ``renew`` found.

    Attributes:
        ok: No other hand-out holds the lease or the lock; the lock was extended (or taken again).
        lease_ours: No newer hand-out holds the lease (even if the lock is someone else's).
        state: The lease's state as found (``""``: missing).
        epoch: The lease's epoch as found.
        holder: The lock's value as found (``""``: absent or expired).
        cancel_reason: What the keeper relayed for stopping the task (``None``: nothing, or not asked).
    """

    ok: bool
    lease_ours: bool
    state: str
    epoch: int
    holder: str
    cancel_reason: str | None = None

    @property
    def superseded(self) -> bool:
        return not self.ok

    def describe(self) -> str:
        """What was found, for log lines."""
        return f"lease {self.state or 'missing'} (epoch {self.epoch}), running lock {self.holder or 'free'}"


class Fence:
    """Running locks and cancel relays on the lease store's Redis.

    Args:
        client: A redis-py client with ``decode_responses=True`` (short socket timeouts: a renewal that hangs
            must not outlast the fencing deadline).

    Every method raises ``BrokerError`` when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> Fence:
        """A fence on its own client for the Redis at ``url``, with short socket timeouts.

        Raises:
            ConfigError: ``url`` does not parse.
        """
        try:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
        return cls(client)

    def take_running(
        self,
        task_key: str,
        epoch: int,
        worker_id: str,
        running_ttl_s: float,
        *,
        started_at: float | None = None,
        token: str | None = None,
    ) -> TakeResult:
        """Win ``queued -> running`` (epoch ``epoch``) and the instance's running lock, both or neither.

        The instance comes from the lease (``instance_id``, else ``attempt_id``). On success the lease records
        ``heartbeat_owner = worker_id``, ``started_at`` and ``run_lock``, and the lock holds ``<task_key>:<epoch>``
        for ``running_ttl_s``. The result also carries the lease's ``last_beat`` (see :class:`TakeResult`).
        """
        now = time.time() if started_at is None else started_at
        token = token or lock_token(task_key, epoch)
        args = [str(epoch), worker_id, repr(now), str(_ms(running_ttl_s)), task_key, RUN_PREFIX, token]
        try:
            status, state, cur_epoch, holder, ttl_ms, key, last_beat = self._take(
                keys=[LeaseStore.lease_key(task_key)], args=args
            )
        except redis.RedisError as exc:
            raise BrokerError(f"cannot take lease {task_key}: {exc}") from exc
        taken = TakeStatus(str(status))
        return TakeResult(
            status=taken,
            state=str(state),
            epoch=int(cur_epoch or 0),
            holder=str(holder) if taken == TakeStatus.BLOCKED else "",
            holder_ttl_s=max(0.0, int(ttl_ms) / 1000.0),
            lock=RunningLock(task_key, epoch, str(key), token) if taken == TakeStatus.OK else None,
            last_beat=_seconds(last_beat),
        )

    def renew(
        self,
        lock: RunningLock,
        running_ttl_s: float,
        *,
        last_beat: float | None = None,
        worker_id: str = "worker",
        read_cancel: bool = False,
    ) -> RenewResult:
        """Extend ``lock`` by ``running_ttl_s`` if it is still ours and so is the lease; record ``last_beat`` too.

        With ``read_cancel`` the same round trip also reads the task's cancel relay (``RenewResult.cancel_reason``),
        as :meth:`cancel_requested` would.
        """
        last = "" if last_beat is None else repr(last_beat)
        args = [lock.token, str(lock.epoch), str(_ms(running_ttl_s)), last, worker_id]
        keys = [LeaseStore.lease_key(lock.task_key), lock.key]
        if read_cancel:
            keys.append(cancel_key(lock.task_key))
        try:
            code, state, epoch, holder, reason = self._renew(keys=keys, args=args)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot renew the running lock of {lock.task_key}: {exc}") from exc
        return RenewResult(
            int(code) == 1, int(code) >= 0, str(state), int(epoch or 0), str(holder), str(reason) if reason else None
        )

    def release(self, lock: RunningLock) -> bool:
        """Delete ``lock`` if this hand-out still holds it; returns whether it did."""
        try:
            return bool(self._release(keys=[lock.key], args=[lock.token]))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot release the running lock of {lock.task_key}: {exc}") from exc

    def cancel_requested(self, task_key: str) -> str | None:
        """The reason the keeper relayed for stopping ``task_key``, or ``None``."""
        try:
            reason = self.redis.get(cancel_key(task_key))
        except redis.RedisError as exc:
            raise BrokerError(f"cannot read the cancel relay of {task_key}: {exc}") from exc
        return None if reason is None else str(reason)

    def request_cancel(self, task_key: str, reason: str, ttl_s: float) -> None:
        """See :func:`request_cancel`."""
        request_cancel(self.redis, task_key, reason, ttl_s)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _seconds(value: object) -> float:
    """A time a script read from a lease field (``''``: not recorded) in seconds; 0.0 when absent or unreadable."""
    try:
        seconds = float(str(value)) if value else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0
