"""The fleet-wide API budget: one token bucket per task-runner operation, shared in Redis.

AWS limits Data Pipeline calls per account and region with token buckets that everything in the
account shares (the console, other tools), so the bridge budgets a fraction of each. The buckets
live in Redis so every bridge process and worker draws from the same ones; Redis's own clock
refills them, so the processes' clocks never matter.

Callers share a bucket at four priorities. A lower priority only takes a token while the bucket
keeps a reserve for the higher ones, so under pressure heartbeats that could wait give way first, then
polls and acknowledgements, then heartbeats that cannot wait, and SetTaskStatus last::

    REPORT     SetTaskStatus                          may empty the bucket
    HEARTBEAT  heartbeats due now, lookups            leaves HEARTBEAT_RESERVE of the burst
    CLAIM      PollForTask, acknowledgements           leaves CLAIM_RESERVE of the burst
    EARLY      heartbeats that could still wait        leaves PRESSURE_SHARE of the burst, never waits

When Redis is unreachable, REPORT and HEARTBEAT fall back at once to a process-local bucket at a
fraction of the budget, and CLAIM raises ``BrokerError``: polls stop until Redis is back.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

import boto3
import botocore.exceptions
import redis
from botocore.config import Config

from bridge.api import TaskApi
from bridge.apiwrap import DelegatingApi
from bridge.errors import BUDGET_EXHAUSTED, BrokerError, ConfigError, Throttled
from bridge.leases import PREFIX
from bridge.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: AWS's per-account limits for the task-runner calls: (calls per second, burst).
AWS_LIMITS: dict[str, tuple[float, float]] = {
    "PollForTask": (2.0, 100.0),
    "ReportTaskProgress": (10.0, 100.0),
    "SetTaskStatus": (10.0, 100.0),
    "ReportTaskRunnerHeartbeat": (1.0, 100.0),
    "DescribeObjects": (2.0, 100.0),
    # Not in AWS's table: assume the lowest rate the table lists anywhere, to be safe.
    "EvaluateExpression": (1.0, 100.0),
}


class Priority(IntEnum):
    """Who is asking for a token; lower values are served first under pressure."""

    REPORT = 0
    HEARTBEAT = 1
    CLAIM = 2
    #: A heartbeat sent ahead of its latest moment: it takes a token only from above the pressure line, or
    #: is not sent (and waits for its deadline), so a crowd of them can never use up what urgent beats need.
    EARLY = 3


#: Share of an operation's burst a HEARTBEAT must leave in the bucket, kept for SetTaskStatus.
HEARTBEAT_RESERVE = 0.10
#: Share of an operation's burst a CLAIM must leave in the bucket, kept for heartbeats and SetTaskStatus.
CLAIM_RESERVE = 0.30
#: Below this share of its burst an operation's bucket is "under pressure": heartbeats that can wait, wait.
#: It sits well above CLAIM_RESERVE, so beats that can wait stop before claims do: between the two only
#: claims and beats that cannot wait take tokens, and claims slow down only once the beats that must be
#: sent (one per lease per stretched period) use the rate up.
PRESSURE_SHARE = 0.5
# Reserves apply in every bucket, even one only claims use (PollForTask): they trim its burst, not its rate.
RESERVES: Mapping[Priority, float] = {
    Priority.REPORT: 0.0,
    Priority.HEARTBEAT: HEARTBEAT_RESERVE,
    Priority.CLAIM: CLAIM_RESERVE,
    Priority.EARLY: PRESSURE_SHARE,
}
#: How long ``RateLimitedApi`` waits for a token before raising ``Throttled``, per priority.
ACQUIRE_TIMEOUT_S: Mapping[Priority, float] = {
    Priority.REPORT: 60.0,
    Priority.HEARTBEAT: 60.0,
    Priority.CLAIM: 30.0,
    Priority.EARLY: 0.0,
}
#: How often a limiter running on its local buckets checks whether Redis is back.
RECHECK_S = 2.0
#: Upward jitter on each sleep, as a share of the wait (so waiters do not all wake at once).
JITTER = 0.1
#: Longest single sleep: a waiter re-reads the bucket at least this often (Redis may have been reset).
MAX_SLEEP_S = 5.0
#: The account name used when the real one is unknown (the local service, or STS failed).
LOCAL_ACCOUNT = "local"
STS_TIMEOUT_S = 5.0


# KEYS[1] the bucket; ARGV: rate, burst, tokens needed (reserve + cost), cost (0 peeks), TTL in ms.
# Redis 7 replicates a script's effects, not the script, so reading TIME before writing is allowed.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local cur = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(cur[1]) or burst
local ts = tonumber(cur[2]) or now
if now > ts then tokens = tokens + (now - ts) * rate end
tokens = math.min(tokens, burst)
if cost == 0 then return {1, string.format('%.17g', tokens)} end
if tokens < need then return {0, string.format('%.17g', (need - tokens) / rate)} end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, string.format('%.17g', tokens)}
"""


@dataclass(frozen=True)
class Budget:
    """One operation's budget: ``rate`` calls per second, bursts of up to ``burst``."""

    rate: float
    burst: float

    def need(self, priority: Priority) -> float:
        """Tokens the bucket must hold for ``priority`` to take one (its reserve plus the token itself)."""
        # A tiny burst must still let every priority through eventually.
        reserve = min(RESERVES[priority] * self.burst, max(0.0, self.burst - 1.0))
        return reserve + 1.0

    @property
    def ttl_ms(self) -> int:
        """How long an idle bucket is kept: twice the time it takes to fill (a vanished bucket starts full)."""
        return max(1000, math.ceil(2000 * self.burst / self.rate))


@dataclass(frozen=True)
class WaitStats:
    """How one operation's acquires went, for metrics."""

    acquires: int = 0
    waits: int = 0
    wait_s: float = 0.0
    timeouts: int = 0


class Limiter(Protocol):
    """What callers need from an API budget."""

    def acquire(self, op: str, priority: Priority, timeout_s: float | None = None) -> bool:
        """Take a token for ``op``, waiting as needed; ``False`` when ``timeout_s`` passes first."""

    def rate(self, op: str) -> float:
        """Budgeted calls per second for ``op`` (``inf`` when it is not limited)."""

    def burst(self, op: str) -> float:
        """Budgeted burst for ``op`` (``inf`` when it is not limited)."""

    def tokens(self, op: str) -> float | None:
        """Tokens in ``op``'s shared bucket now; ``None`` when unknown."""

    def wait_stats(self) -> dict[str, WaitStats]:
        """Per operation, how acquires went so far."""

    def close(self) -> None:
        """Stop background work. Idempotent."""


def _budgets(limits: Mapping[str, tuple[float, float]], fraction: float) -> dict[str, Budget]:
    budgets = {}
    for op, (rate, burst) in limits.items():
        if rate <= 0 or burst <= 0:
            raise ConfigError(f"bad API limit for {op}: rate and burst must be positive")
        budgets[op] = Budget(rate * fraction, max(1.0, burst * fraction))
    return budgets


class _LocalBucket:
    """A process-local token bucket on the monotonic clock (callers hold the limiter's lock)."""

    def __init__(self, budget: Budget, now: float) -> None:
        self.budget = budget
        self.tokens = budget.burst
        self.ts = now

    def take(self, priority: Priority, now: float) -> float:
        """Take a token for ``priority``: 0 when granted, else the seconds until one would be."""
        self.tokens = min(self.budget.burst, self.tokens + max(0.0, now - self.ts) * self.budget.rate)
        self.ts = now
        need = self.budget.need(priority)
        if self.tokens >= need:
            self.tokens -= 1.0
            return 0.0
        return (need - self.tokens) / self.budget.rate


class RateLimiter:
    """The API budget, in token buckets shared in Redis. Safe to share between threads.

    Args:
        client: Redis holding the shared buckets; ``None`` to use only process-local buckets (at
            ``local_fraction``, CLAIM included). A client with its retries off notices an outage sooner.
        region: The AWS region (buckets are per account and region).
        account: The AWS account id (see ``resolve_account``).
        fraction: Share of ``limits`` the fleet may use.
        local_fraction: Share of the budget one process uses on its own while Redis is unreachable.
        limits: Per operation, (calls per second, burst); operations not listed are not limited.
        recheck_s: How often to check whether Redis is back after it failed.

    Raises:
        ConfigError: a fraction outside (0, 1], or a limit that is not positive.
    """

    def __init__(
        self,
        client: redis.Redis | None,
        region: str,
        account: str,
        fraction: float = 0.9,
        local_fraction: float = 0.25,
        limits: Mapping[str, tuple[float, float]] = AWS_LIMITS,
        *,
        recheck_s: float = RECHECK_S,
    ) -> None:
        for name, value in (("fraction", fraction), ("local_fraction", local_fraction)):
            if not 0 < value <= 1:
                raise ConfigError(f"API budget {name} must be in (0, 1], got {value}")
        self._client = client
        self._prefix = f"{PREFIX}:rl:{region}:{account}"
        self._budgets = _budgets(limits, fraction)
        self._local_budgets = _budgets(limits, fraction * local_fraction)
        self._recheck_s = recheck_s
        self._script = client.register_script(_TAKE) if client is not None else None
        self._lock = threading.Lock()
        self._local: dict[str, _LocalBucket] = {}
        self._stats: dict[str, WaitStats] = {}
        self._shared = client is not None
        self._closed = threading.Event()
        self._rechecker: threading.Thread | None = None

    def key(self, op: str) -> str:
        """The Redis key of ``op``'s shared bucket."""
        return f"{self._prefix}:{op}"

    def rate(self, op: str) -> float:
        """Budgeted calls per second for ``op`` (``inf`` when it is not limited)."""
        budget = self._budgets.get(op)
        return budget.rate if budget else math.inf

    def burst(self, op: str) -> float:
        """Budgeted burst for ``op`` (``inf`` when it is not limited)."""
        budget = self._budgets.get(op)
        return budget.burst if budget else math.inf

    @property
    def shared(self) -> bool:
        """Whether tokens come from the shared buckets in Redis (``False``: this process's local ones)."""
        return self._shared

    def acquire(self, op: str, priority: Priority, timeout_s: float | None = None) -> bool:
        """Take a token for ``op`` at ``priority``, sleeping (jittered) until one is granted.

        Args:
            op: The AWS operation name (``SetTaskStatus``...); operations without a limit pass at once.
            priority: Who asks; lower priorities leave a reserve in the bucket for higher ones.
            timeout_s: Give up once a token cannot come within this long; ``None`` waits forever.

        Returns:
            ``True`` with a token taken; ``False`` when ``timeout_s`` would pass first.

        Raises:
            BrokerError: a CLAIM while Redis is unreachable (polls stop until it is back).
        """
        budget = self._budgets.get(op)
        if budget is None:
            return True
        start = time.monotonic()
        deadline = None if timeout_s is None else start + max(0.0, timeout_s)
        waited = False
        while True:
            wait = self._take(op, priority, budget)
            now = time.monotonic()
            if wait <= 0:
                self._record(op, waited, now - start, timed_out=False)
                return True
            if deadline is not None and now + wait > deadline:
                if priority is not Priority.EARLY:  # (an early beat refused is the design, not a shortage)
                    self._record(op, waited, now - start, timed_out=True)
                return False
            waited = True
            time.sleep(min(MAX_SLEEP_S, wait * (1.0 + random.uniform(0.0, JITTER))))

    def tokens(self, op: str) -> float | None:
        """Tokens in ``op``'s shared bucket now; ``None`` when unlimited, or Redis is not in use or unreachable."""
        budget = self._budgets.get(op)
        if budget is None or self._script is None or not self._shared:
            return None
        try:
            _, value = self._script(keys=[self.key(op)], args=[repr(budget.rate), repr(budget.burst), "1", "0", "0"])
        except redis.RedisError:
            return None
        return float(value)

    def wait_stats(self) -> dict[str, WaitStats]:
        """Per operation, how many acquires there were, how many waited, for how long, and how many gave up."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop checking for Redis in the background. Idempotent."""
        self._closed.set()

    # -- internals --------------------------------------------------------------------------------

    def _take(self, op: str, priority: Priority, budget: Budget) -> float:
        """One attempt at a token: 0 when granted, else the seconds until one would be."""
        if self._script is None:
            return self._take_local(op, priority)
        # A CLAIM always asks Redis: it may find it back; it never falls back to a local bucket.
        if self._shared or priority is Priority.CLAIM:
            try:
                granted, value = self._script(
                    keys=[self.key(op)],
                    args=[repr(budget.rate), repr(budget.burst), repr(budget.need(priority)), "1", budget.ttl_ms],
                )
            except redis.RedisError as exc:
                self._to_local(exc)
                if priority is Priority.CLAIM:
                    raise BrokerError(f"no API budget for {op}: Redis is unreachable: {exc}") from exc
            else:
                self._to_shared()
                return 0.0 if int(granted) else float(value)
        return self._take_local(op, priority)

    def _take_local(self, op: str, priority: Priority) -> float:
        with self._lock:
            now = time.monotonic()
            bucket = self._local.get(op)
            if bucket is None:
                bucket = self._local[op] = _LocalBucket(self._local_budgets[op], now)
            return bucket.take(priority, now)

    def _to_local(self, exc: Exception) -> None:
        with self._lock:
            if not self._shared:
                return
            self._shared = False
            if self._rechecker is None and not self._closed.is_set():
                self._rechecker = threading.Thread(target=self._recheck, name="ratelimit-recheck", daemon=True)
                self._rechecker.start()
        log.warning("API budget: Redis is unreachable (%s); using local buckets, polls stop until it is back", exc)

    def _to_shared(self) -> None:
        with self._lock:
            if self._shared:
                return
            self._shared = True
        log.info("API budget: Redis is back; using the shared buckets again")

    def _recheck(self) -> None:
        """Wait for Redis to answer again (the callers on local buckets never touch it meanwhile)."""
        assert self._client is not None
        while not self._closed.wait(self._recheck_s):
            with self._lock:
                if self._shared:
                    self._rechecker = None
                    return
            try:
                self._client.ping()
            except redis.RedisError:
                continue
            self._to_shared()

    def _record(self, op: str, waited: bool, elapsed_s: float, *, timed_out: bool) -> None:
        with self._lock:
            old = self._stats.get(op, WaitStats())
            self._stats[op] = WaitStats(
                acquires=old.acquires + 1,
                waits=old.waits + (1 if waited or timed_out else 0),
                wait_s=old.wait_s + (elapsed_s if waited or timed_out else 0.0),
                timeouts=old.timeouts + (1 if timed_out else 0),
            )


class NullLimiter:
    """No API budget (``--no-rate-limit``): every acquire passes at once.

    ``rate`` and ``burst`` still report the budget that would apply, so admission keeps its bound.

    Args:
        fraction: Share of ``limits`` reported by ``rate`` and ``burst``.
        limits: Per operation, (calls per second, burst).
    """

    def __init__(self, fraction: float = 0.9, limits: Mapping[str, tuple[float, float]] = AWS_LIMITS) -> None:
        self._budgets = _budgets(limits, fraction)

    def acquire(self, op: str, priority: Priority, timeout_s: float | None = None) -> bool:
        """Always ``True``, at once."""
        return True

    def rate(self, op: str) -> float:
        """Calls per second the budget would allow for ``op`` (``inf`` when it is not limited)."""
        budget = self._budgets.get(op)
        return budget.rate if budget else math.inf

    def burst(self, op: str) -> float:
        """Burst the budget would allow for ``op`` (``inf`` when it is not limited)."""
        budget = self._budgets.get(op)
        return budget.burst if budget else math.inf

    def tokens(self, op: str) -> float | None:
        """Always ``None``: there is no bucket."""
        return None

    def wait_stats(self) -> dict[str, WaitStats]:
        """Always empty: nothing ever waits."""
        return {}

    def close(self) -> None:
        """Nothing to stop."""


class BudgetPressure:
    """How full an operation's shared bucket is (read at most every half second: one Redis read per tick).

    Heartbeat loops ask ``pressure`` before a beat that is not yet urgent: under pressure they stretch their
    interval (never past the deadline minus a margin), leaving the tokens to beats that are. The poller asks
    ``starved`` before each poll: it claims only while the acknowledgement would get its token at once.
    """

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._cache: dict[str, tuple[float, float | None]] = {}
        self._lock = threading.Lock()

    def _tokens(self, op: str) -> float | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(op)
            if cached is not None and now - cached[0] < 0.5:
                return cached[1]
        tokens = self.limiter.tokens(op)
        with self._lock:
            self._cache[op] = (now, tokens)
        return tokens

    def pressure(self, op: str) -> bool:
        tokens = self._tokens(op)
        return tokens is not None and tokens < PRESSURE_SHARE * self.limiter.burst(op)

    def starved(self, op: str) -> bool:
        tokens = self._tokens(op)
        burst = self.limiter.burst(op)
        if tokens is None or math.isinf(burst):
            return False
        return tokens < Budget(self.limiter.rate(op), burst).need(Priority.CLAIM)


#: Priority of each task-runner call (ReportTaskProgress: the view's ``progress_priority``; others: HEARTBEAT).
CALL_PRIORITY: Mapping[str, Priority] = {"PollForTask": Priority.CLAIM, "SetTaskStatus": Priority.REPORT}


class RateLimitedApi(DelegatingApi):
    """A ``TaskApi`` that takes a token from the budget before each call to ``inner``.

    Retries happen above this layer (``bridge.retry``), so every attempt takes its own token.

    Args:
        inner: The API to call.
        limiter: The budget.
        progress_priority: Priority of ``report_task_progress`` (see ``claiming``).
        timeouts_s: How long to wait for a token per priority (default ``ACQUIRE_TIMEOUT_S``).

    Every method raises ``Throttled`` when no token came in time, ``BrokerError`` for a CLAIM while
    Redis is unreachable, and whatever ``inner`` raises.
    """

    def __init__(
        self,
        inner: TaskApi,
        limiter: Limiter,
        progress_priority: Priority = Priority.HEARTBEAT,
        timeouts_s: Mapping[Priority, float] | None = None,
    ) -> None:
        super().__init__(inner)
        self.limiter = limiter
        self.progress_priority = progress_priority
        self._timeouts_s = dict(timeouts_s or ACQUIRE_TIMEOUT_S)

    def claiming(self) -> RateLimitedApi:
        """A view on the same budget whose ``report_task_progress`` is a CLAIM (for acknowledgements)."""
        return RateLimitedApi(self.inner, self.limiter, Priority.CLAIM, self._timeouts_s)

    def early(self) -> RateLimitedApi:
        """A view whose ``report_task_progress`` is an EARLY beat: sent only with a token from above the
        pressure line, else refused at once (``Throttled`` with code ``BUDGET_EXHAUSTED``) and not sent."""
        return RateLimitedApi(self.inner, self.limiter, Priority.EARLY, self._timeouts_s)

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        priority = self.progress_priority if op == "ReportTaskProgress" else CALL_PRIORITY.get(op, Priority.HEARTBEAT)
        if not self.limiter.acquire(op, priority, self._timeouts_s.get(priority)):
            raise Throttled(f"local API budget exhausted for {op}", BUDGET_EXHAUSTED)
        return fn()


def resolve_account(
    account_id: str, endpoint_url: str | None, region: str, session: boto3.session.Session | None = None
) -> str:
    """The account whose budget the bridge shares.

    ``account_id`` when given; ``"local"`` with a custom endpoint (the local service); else the
    account of the credentials, from STS (one attempt, short timeouts), or ``"local"`` with a
    warning if that fails.
    """
    if account_id:
        return account_id
    if endpoint_url:
        return LOCAL_ACCOUNT
    config = Config(
        connect_timeout=STS_TIMEOUT_S,
        read_timeout=STS_TIMEOUT_S,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    try:
        sts = (session or boto3.session.Session()).client("sts", region_name=region, config=config)
        return str(sts.get_caller_identity()["Account"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError, KeyError) as exc:
        log.warning(
            "cannot find the AWS account (%s); budgeting API calls as account %r: "
            "set BRIDGE_ACCOUNT_ID so every process shares one budget",
            exc,
            LOCAL_ACCOUNT,
        )
        return LOCAL_ACCOUNT


def build_limiter(settings: Settings, client: redis.Redis | None) -> RateLimiter | NullLimiter:
    """The limiter ``settings`` ask for, on the shared buckets in ``client``.

    Raises:
        ConfigError: a budget fraction outside (0, 1].
    """
    if not settings.rate_limit:
        return NullLimiter(settings.api_budget_fraction)
    account = resolve_account(settings.account_id, settings.endpoint_url, settings.region)
    return RateLimiter(client, settings.region, account, settings.api_budget_fraction, settings.local_budget_fraction)
