"""Prometheus metrics of ``bridge start`` (``--metrics-port``; bound to ``--metrics-host``, 127.0.0.1 by default).

Every process has its own ``CollectorRegistry`` (never prometheus_client's global one). Counters are kept in
memory as things happen; gauges about the fleet are read from Redis at scrape time by ``StateCollector``, on a
client that gives up after 0.5 s and stops at the first error, so a scrape never hangs on a dead or hung Redis:
``dpb_redis_up`` is then 0 and the Redis-derived gauges are left out. Lease gauges describe the whole fleet's
leases of the process's groups (every bridge process of a group reports the same values: aggregate with
``max``, not ``sum``). Workers export their own metrics (``workers.metrics``).

| Metric | Type | Labels | What |
|---|---|---|---|
| `dpb_polls_total` | counter | worker_group, outcome | PollForTask by this process: `task`, `empty`, `error` |
| `dpb_claims_total` | counter | worker_group | Leases written for hand-outs this process received |
| `dpb_acknowledgements_total` | counter | worker_group, outcome | `acknowledged`, `canceled`, `lost`, `failed` |
| `dpb_enqueue_latency_seconds` | histogram | worker_group | Hand-out received → message published (count: enqueued) |
| `dpb_api_calls_total` | counter | operation | Data Pipeline calls sent (each retry counts) |
| `dpb_api_errors_total` | counter | operation, kind | Failures: `unavailable`, `gone`, `invalid`, `auth`, `other` |
| `dpb_api_throttles_total` | counter | operation | Refused as over the rate (calls = successes + errors + throttles) |
| `dpb_api_calls_in_flight` | gauge | operation | Sent, not yet answered (a held PollForTask shows here) |
| `dpb_api_budget_tokens` | gauge | operation | Tokens in the fleet's shared bucket (none while on the local fallback) |
| `dpb_api_budget_burst` | gauge | operation | Bucket size (below 30 % of it heartbeats stretch, claims stop) |
| `dpb_api_budget_shared` | gauge | | 1: shared buckets in Redis in use; 0: this process's local fallback |
| `dpb_api_budget_waits_total` | counter | operation | Token requests that had to wait |
| `dpb_api_budget_wait_seconds_total` | counter | operation | Time spent waiting for tokens |
| `dpb_api_budget_timeouts_total` | counter | operation | Token requests that gave up (`LocalBudgetExhausted`) |
| `dpb_leases` | gauge | worker_group, state | Live leases: `claimed`, `queued`, `running`, `reporting` (fleet-wide) |
| `dpb_lease_min_time_to_deadline_seconds` | gauge | worker_group | Least time to a live lease's heartbeat deadline |
| `dpb_keeper_leases` | gauge | state | Leases this process heartbeats itself (from memory, also without Redis) |
| `dpb_worker_slots` | gauge | worker_group | Live worker slots on the group's queues (each worker once) |
| `dpb_queue_consumers` | gauge | queue | Live workers consuming each queue of the groups |
| `dpb_admission_bound` | gauge | worker_group, bound | 1 for the claim limit: `slots`, `budget`, `max_in_flight` |
| `dpb_admission_budget_cap` | gauge | | Leases the ReportTaskProgress budget keeps alive, fleet-wide |
| `dpb_leader` | gauge | worker_group | 1 while this process is the group's active poller |
| `dpb_keeper_heartbeats_total` | counter | | Keeper beats for claimed, queued and handed-over leases |
| `dpb_keeper_heartbeat_failures_total` | counter | | Keeper beats that failed (retried) |
| `dpb_keeper_stretched_heartbeats_total` | counter | | Keeper beats put off under budget pressure |
| `dpb_keeper_republished_total` | counter | | Queued leases re-published after `--max-queue-wait-s` |
| `dpb_keeper_not_started_total` | counter | | Leases failed `BridgeNotStarted` |
| `dpb_keeper_adopted_total` | counter | | Leases adopted from dead bridge processes |
| `dpb_keeper_lost_total` | counter | | Leases written off as lost (TaskNotFound, or silent past the deadline) |
| `dpb_keeper_delivered_total` | counter | | Outcomes the keeper delivered with SetTaskStatus |
| `dpb_keeper_shutdown_failed_total` | counter | | Queued leases failed `BridgeShutdown` at shutdown |
| `dpb_keeper_failed_total` | counter | error_id | Leases the keeper failed, by `errorId` |
| `dpb_redis_up` | gauge | | 1 when this scrape could read Redis, else 0 |

A group with no live lease has no ``dpb_lease_min_time_to_deadline_seconds`` sample; an unacknowledged claim's
deadline is Data Pipeline's 2-minute acknowledgement limit. ``dpb_admission_bound`` appears after a group's first
reservation.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.admission import Admission
from bridge.api import TaskApi
from bridge.apiwrap import DelegatingApi
from bridge.errors import AuthError, BrokerError, ConfigError, InvalidRequest, TaskGone, Throttled, Unavailable
from bridge.keeper import ACK_LIMIT_S, Keeper
from bridge.leases import LIVE, LeaseState, LeaseStore
from bridge.ratelimit import AWS_LIMITS, Limiter, RateLimiter
from bridge.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Enqueue latency buckets: a claim is normally enqueued within a second; acknowledgement retries take up to 90 s.
ENQUEUE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: How long a scrape waits on Redis per call (it stops at the first failure).
SCRAPE_REDIS_TIMEOUT_S = 0.5
#: The lease fields a scrape reads (never the task object).
_LEASE_FIELDS = ("state", "claimed_at", "last_beat", "progress_deadline_s", "acked")
BOUNDS = ("slots", "budget", "max_in_flight")


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of a failed call (throttles are counted apart)."""
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, TaskGone):
        return "gone"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, InvalidRequest):
        return "invalid"
    return "other"


# -- API calls ------------------------------------------------------------------------------------------


class ApiObserver(Protocol):
    """What ``CountingApi`` reports each call to."""

    def started(self, operation: str) -> None:
        """A call is about to be sent."""

    def ended(self, operation: str, error: BaseException | None, result: object) -> None:
        """A call was answered (``error`` is ``None``) or failed."""


class ApiMetrics:
    """Per-operation call, error and throttle counters, and calls in flight.

    Args:
        registry: Where to register them (``None``: nowhere, for prometheus_client's multiprocess mode).
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.calls = Counter("dpb_api_calls", "Data Pipeline calls sent", ["operation"], registry=registry)
        self.errors = Counter(
            "dpb_api_errors",
            "Data Pipeline calls that failed, throttles apart",
            ["operation", "kind"],
            registry=registry,
        )
        self.throttles = Counter(
            "dpb_api_throttles", "Data Pipeline calls refused as over the rate", ["operation"], registry=registry
        )
        self.in_flight = Gauge(
            "dpb_api_calls_in_flight",
            "Data Pipeline calls sent and not yet answered",
            ["operation"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def started(self, operation: str) -> None:
        self.calls.labels(operation).inc()
        self.in_flight.labels(operation).inc()

    def ended(self, operation: str, error: BaseException | None, result: object) -> None:
        self.in_flight.labels(operation).dec()
        if isinstance(error, Throttled):
            self.throttles.labels(operation).inc()
        elif error is not None:
            self.errors.labels(operation, error_kind(error)).inc()


class CountingApi(DelegatingApi):
    """A ``TaskApi`` that reports every call to ``observer`` (wrap the real client, below the rate limiter,
    so the counts are the calls the service received)."""

    def __init__(self, inner: TaskApi, observer: ApiObserver) -> None:
        super().__init__(inner)
        self.observer = observer

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        self.observer.started(operation)
        try:
            result = fn()
        except BaseException as exc:
            self.observer.ended(operation, exc, None)
            raise
        self.observer.ended(operation, None, result)
        return result


# -- the claim sequence ------------------------------------------------------------------------------


class ClaimMetrics:
    """What the pollers count: polls, claims, acknowledgements and enqueue latency.

    Args:
        registry: Where to register them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.polls = Counter("dpb_polls", "PollForTask by outcome", ["worker_group", "outcome"], registry=registry)
        self.claims = Counter(
            "dpb_claims", "Leases written for hand-outs received", ["worker_group"], registry=registry
        )
        self.acks = Counter(
            "dpb_acknowledgements",
            "Acknowledgements of claims by outcome",
            ["worker_group", "outcome"],
            registry=registry,
        )
        self.enqueue_latency = Histogram(
            "dpb_enqueue_latency_seconds",
            "Hand-out received to Celery message published",
            ["worker_group"],
            buckets=ENQUEUE_BUCKETS,
            registry=registry,
        )

    def polled(self, worker_group: str, outcome: str) -> None:
        """One PollForTask ended: ``task``, ``empty`` or ``error``."""
        self.polls.labels(worker_group, outcome).inc()

    def claimed(self, worker_group: str) -> None:
        self.claims.labels(worker_group).inc()

    def acknowledged(self, worker_group: str, outcome: str) -> None:
        """A claim's acknowledgement ended: ``acknowledged``, ``canceled``, ``lost`` or ``failed``."""
        self.acks.labels(worker_group, outcome).inc()

    def enqueued(self, worker_group: str, latency_s: float) -> None:
        self.enqueue_latency.labels(worker_group).observe(max(0.0, latency_s))


# -- state read at scrape time --------------------------------------------------------------------------


class StateCollector(Collector):
    """Gauges computed at scrape time: leases, slots and budget from Redis, the keeper's and admission's state.

    Args:
        settings: The worker groups, routes and budget settings.
        client: A Redis client that gives up quickly (``LeaseStore.fast_client``): never the lease store's.
        keeper: This process's keeper (its stats and held leases).
        admission: The admission control (its last binding bound and budget cap).
        limiter: The API budget (tokens, wait stats).
        is_leader: Whether this process is a group's active poller.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        keeper: Keeper | None = None,
        admission: Admission | None = None,
        limiter: Limiter | None = None,
        is_leader: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        # Admission's view of the groups' queues and slots, on the quick client.
        self.view = Admission(client, settings)
        self.keeper = keeper
        self.admission = admission
        self.limiter = limiter
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        yield from self._local()
        fleet: list[Metric] = []
        try:
            fleet = list(self._fleet())
        except (BrokerError, redis.RedisError, OSError) as exc:
            log.debug("metrics: cannot read Redis: %s", exc)
            fleet = []
            up = 0
        else:
            up = 1
        yield GaugeMetricFamily("dpb_redis_up", "1 when this scrape could read Redis", value=up)
        yield from fleet
        if up:
            yield from self._tokens()

    # -- from this process's memory ---------------------------------------------------------------------

    def _local(self) -> Iterator[Metric]:
        if self.keeper is not None:
            stats = self.keeper.stats
            for name, value, doc in (
                ("heartbeats", stats.beats, "ReportTaskProgress beats the keeper made"),
                ("heartbeat_failures", stats.beat_failures, "Keeper beats that failed"),
                ("stretched_heartbeats", stats.stretched, "Keeper beats put off under budget pressure"),
                ("republished", stats.republished, "Queued leases re-published"),
                ("not_started", stats.not_started, "Leases failed BridgeNotStarted"),
                ("adopted", stats.adopted, "Leases adopted from dead bridge processes"),
                ("lost", stats.lost, "Leases written off as lost"),
                ("delivered", stats.delivered, "Outcomes the keeper delivered"),
                ("shutdown_failed", stats.shutdown_failed, "Queued leases failed BridgeShutdown"),
            ):
                yield CounterMetricFamily(f"dpb_keeper_{name}", doc, value=value)
            failed = CounterMetricFamily(
                "dpb_keeper_failed", "Leases the keeper failed, by errorId", labels=["error_id"]
            )
            for error_id, count in sorted(dict(stats.by_reason).items()):
                failed.add_metric([error_id], count)
            yield failed
            held = GaugeMetricFamily("dpb_keeper_leases", "Leases this process heartbeats itself", labels=["state"])
            counts = {state: 0 for state in (LeaseState.CLAIMED, LeaseState.QUEUED, LeaseState.REPORTING)}
            for lease in self.keeper.held():
                counts[lease.state] = counts.get(lease.state, 0) + 1
            for state, count in counts.items():
                held.add_metric([str(state)], count)
            yield held
        if self.is_leader is not None:
            leader = GaugeMetricFamily("dpb_leader", "1 while this process polls the group", labels=["worker_group"])
            for group in self.settings.worker_groups:
                leader.add_metric([group], 1 if self.is_leader(group) else 0)
            yield leader
        if self.admission is not None:
            bound = GaugeMetricFamily(
                "dpb_admission_bound", "1 for the bound that limited the last claim", labels=["worker_group", "bound"]
            )
            for group, current in sorted(dict(self.admission.bound).items()):
                for name in BOUNDS:
                    bound.add_metric([group, name], 1 if name == current else 0)
            yield bound
            if self.admission.budget_cap is not None:
                yield GaugeMetricFamily(
                    "dpb_admission_budget_cap",
                    "Leases the ReportTaskProgress budget keeps alive, fleet-wide",
                    value=self.admission.budget_cap,
                )
        if self.limiter is not None:
            yield from self._limiter_stats(self.limiter)

    def _limiter_stats(self, limiter: Limiter) -> Iterator[Metric]:
        if isinstance(limiter, RateLimiter):
            yield GaugeMetricFamily("dpb_api_budget_shared", "1: shared buckets in Redis", value=int(limiter.shared))
        burst = GaugeMetricFamily("dpb_api_budget_burst", "Size of the operation's bucket", labels=["operation"])
        for op in AWS_LIMITS:
            if math.isfinite(size := limiter.burst(op)):
                burst.add_metric([op], size)
        yield burst
        waits = CounterMetricFamily("dpb_api_budget_waits", "Token requests that waited", labels=["operation"])
        wait_s = CounterMetricFamily(
            "dpb_api_budget_wait_seconds", "Time spent waiting for tokens", labels=["operation"]
        )
        timeouts = CounterMetricFamily("dpb_api_budget_timeouts", "Token requests that gave up", labels=["operation"])
        for op, stats in sorted(limiter.wait_stats().items()):
            waits.add_metric([op], stats.waits)
            wait_s.add_metric([op], stats.wait_s)
            timeouts.add_metric([op], stats.timeouts)
        yield from (waits, wait_s, timeouts)

    # -- from Redis -------------------------------------------------------------------------------------

    def _fleet(self) -> Iterator[Metric]:
        """Raises: BrokerError or redis errors at the first failure (the caller drops what was read)."""
        now = time.time()
        leases = GaugeMetricFamily("dpb_leases", "Live leases by state", labels=["worker_group", "state"])
        nearest = GaugeMetricFamily(
            "dpb_lease_min_time_to_deadline_seconds",
            "Smallest time left before a live lease's heartbeat deadline",
            labels=["worker_group"],
        )
        slots = GaugeMetricFamily(
            "dpb_worker_slots", "Live worker slots on the group's queues", labels=["worker_group"]
        )
        consumers = GaugeMetricFamily("dpb_queue_consumers", "Live workers consuming the queue", labels=["queue"])
        seen_queues: set[str] = set()
        for group in self.settings.worker_groups:
            counts, left = self._leases(group, now)
            for state in sorted(LIVE):
                leases.add_metric([group, str(state)], counts.get(state, 0))
            if left is not None:
                nearest.add_metric([group], left)
            census = self.view.slots.census(self.view.queues(group))
            slots.add_metric([group], census.slots)
            for queue, count in census.consumers.items():
                if queue not in seen_queues:
                    seen_queues.add(queue)
                    consumers.add_metric([queue], count)
        yield from (leases, nearest, slots, consumers)

    def _leases(self, group: str, now: float) -> tuple[dict[str, int], float | None]:
        """Live leases of ``group`` by state, and the smallest time to a heartbeat deadline (read-only)."""
        keys = [str(k) for k in self.redis.zrange(LeaseStore.inflight_key(group), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(LeaseStore.lease_key(key), list(_LEASE_FIELDS))
        counts: dict[str, int] = {}
        left: float | None = None
        for row in pipe.execute() if keys else []:
            state, claimed_at, last_beat, deadline_s, acked = row
            if state not in LIVE:
                continue  # the record vanished (its index entry goes at the next sweep)
            counts[state] = counts.get(state, 0) + 1
            claimed, beaten = _float(claimed_at), _float(last_beat)
            if state == LeaseState.CLAIMED and acked != "1":
                deadline_at = claimed + ACK_LIMIT_S
            else:
                deadline_at = max(claimed, beaten) + (_float(deadline_s) or self.settings.progress_deadline_s)
            left = deadline_at - now if left is None else min(left, deadline_at - now)
        return counts, left

    def _tokens(self) -> Iterator[Metric]:
        if self.limiter is None:
            return
        tokens = GaugeMetricFamily("dpb_api_budget_tokens", "Tokens in the shared bucket", labels=["operation"])
        for op in AWS_LIMITS:
            value = self.limiter.tokens(op)
            if value is None:
                break  # no shared bucket in use, or Redis just failed: never wait on it again this scrape
            tokens.add_metric([op], value)
        yield tokens


def _float(value: object) -> float:
    try:
        return float(str(value)) if value not in (None, "") else 0.0
    except ValueError:
        return 0.0


# -- the process's metrics and their endpoint -----------------------------------------------------------


class BridgeMetrics:
    """One ``bridge start`` process's registry, with its API and claim counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.api = ApiMetrics(self.registry)
        self.claims = ClaimMetrics(self.registry)

    def watch(self, collector: Collector) -> None:
        """Add a scrape-time collector (``StateCollector``)."""
        self.registry.register(collector)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer would look the host up in DNS (getfqdn), which can hang where DNS is broken.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()


class MetricsServer:
    """A Prometheus endpoint for ``registry``: bound at construction (so a taken port fails at once), served
    from a daemon thread after ``start``.

    Args:
        host: Address to bind (``127.0.0.1`` keeps it local; ``0.0.0.0`` or ``::`` expose it).
        port: Port to bind (0: any free port, see ``port``).
        registry: What to serve.

    Raises:
        ConfigError: the address cannot be bound (in use, or not an address of this host).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
            self._server: WSGIServer = make_server(
                host, port, make_wsgi_app(registry), server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread (idempotent)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
            self._thread.start()
            log.info("serving Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent, safe before ``start``)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def close_inherited(self) -> None:
        """In a forked child: close this process's copy of the listening socket, leaving the parent's open."""
        if os.getpid() != self._pid:
            self._server.socket.close()
