"""``bridge start``: the pollers, the keeper and the runner heartbeat of one bridge process."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis

from bridge.admission import Admission, budget_cap
from bridge.api import Boto3TaskApi, TaskApi
from bridge.errors import AuthError, BrokerError, ConfigError, RemoteError, Throttled, Unavailable
from bridge.keeper import Keeper, RunnerHeartbeat, stretched_period_s
from bridge.leadership import Leadership, Liveness
from bridge.leases import LeaseState, LeaseStore
from bridge.metrics import BridgeMetrics, CountingApi, MetricsServer, StateCollector
from bridge.poller import Poller
from bridge.publisher import Publisher
from bridge.ratelimit import BudgetPressure, RateLimitedApi, build_limiter
from bridge.retry import backoff_s
from bridge.settings import Settings
from bridge.status import ErrorRecordingApi

log = logging.getLogger(__name__)


def process_identity(hostname: str) -> str:
    """A unique id for this process: host, pid and a random suffix (pids are reused)."""
    return f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


#: How long the start-up check retries a service that answers, but with throttling or a 5xx.
STARTUP_RETRY_S = 30.0


class BridgeProcess:
    """Everything ``bridge start`` runs, with one ordered shutdown.

    Args:
        settings: Validated settings with at least one worker group.
        api: The Data Pipeline client (default: boto3).
        leases: The lease store (default: from ``settings.redis_url``).
        publisher: The Celery publisher (default: from ``settings.broker_url``).
    """

    def __init__(
        self,
        settings: Settings,
        api: TaskApi | None = None,
        leases: LeaseStore | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.owner = process_identity(settings.hostname or socket.gethostname())
        self.leases = leases or LeaseStore.from_url(settings.redis_url)
        # The budget has its own quick client: a hung Redis must not hold up heartbeats or SetTaskStatus.
        self.limiter = build_limiter(settings, LeaseStore.fast_client(settings.redis_url))
        self.metrics = BridgeMetrics()
        # Calls are counted below the budget: what the service receives, not what waits for a token.
        counted = CountingApi(api or Boto3TaskApi(settings.endpoint_url, settings.region), self.metrics.api)
        # API errors are kept in Redis for `bridge status` (never waiting on Redis to do so).
        recorded = ErrorRecordingApi(counted, LeaseStore.fast_client(settings.redis_url), self.owner)
        self.api = RateLimitedApi(recorded, self.limiter)
        self.publisher = publisher or Publisher(settings.broker_url)
        self.leadership = Leadership(
            self.leases.redis,
            self.owner,
            settings.worker_groups,
            settings.leader_ttl_s,
            settings.liveness_ttl_s,
            hostname=settings.hostname,
        )
        self.admission = Admission(self.leases.redis, settings)
        progress_rate = self.limiter.rate("ReportTaskProgress")
        if progress_rate > 0:  # (with --no-rate-limit too: what the account's budget keeps alive stays the bound)
            # With heartbeats stretched as far as they go, what the budget keeps alive.
            self.admission.set_budget_cap(budget_cap(progress_rate, stretched_period_s(settings.progress_deadline_s)))
        self.pressure = BudgetPressure(self.limiter) if settings.rate_limit else None
        self.keeper = Keeper(
            settings,
            self.api,
            self.leases,
            self.owner,
            self.publisher,
            is_leader=self.leadership.is_leader,
            is_alive=lambda owner: Liveness.is_alive(self.leases.redis, owner),
            has_consumer=self._has_consumer,
            budget=self.pressure,
            early_api=self.api.early(),
        )
        self.pollers = [
            Poller(
                settings,
                group,
                self.api.claiming(),
                self.leases,
                self.publisher,
                self.owner,
                keeper=self.keeper,
                gate=self.admission,
                is_leader=self.leadership.is_leader,
                budget=self.pressure,
                metrics=self.metrics.claims,
            )
            for group in settings.worker_groups
        ]
        self.runner_heartbeat = RunnerHeartbeat(
            self.api,
            settings.taskrunner_id,
            settings.worker_groups,
            settings.hostname,
            settings.runner_heartbeat_interval_s,
            self.request_stop,
        )
        self.metrics.watch(
            StateCollector(
                settings,
                # Scrapes read Redis on their own quick client: a dead Redis must never hang a scrape.
                LeaseStore.fast_client(settings.redis_url),
                keeper=self.keeper,
                admission=self.admission,
                limiter=self.limiter,
                is_leader=self.leadership.is_leader,
            )
        )
        # Bound now, so a taken port fails start-up (a configuration error); served from ``start``.
        self.metrics_server = (
            MetricsServer(settings.metrics_host, settings.metrics_port, self.metrics.registry)
            if settings.metrics_port
            else None
        )
        self._threads: list[threading.Thread] = []
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()

    def _has_consumer(self, queue: str) -> bool:
        """Whether a live worker consumes ``queue`` (unknown while Redis is down: then assume one does)."""
        try:
            return self.admission.slots.consumers(queue) > 0
        except BrokerError:
            return True

    def check(self) -> None:
        """Fail fast on what would make every poll fail.

        Raises:
            BrokerError: Redis or the broker is unreachable.
            ConfigError: credentials are missing or rejected, or the endpoint does not answer.
        """
        self.leases.ping()
        self.publisher.check()
        terminate = False
        try:
            terminate = self._first_heartbeat()
        except AuthError as exc:
            raise ConfigError(f"Data Pipeline rejected the credentials: {exc}") from exc
        except RemoteError as exc:
            raise ConfigError(f"cannot reach Data Pipeline at {self.settings.endpoint_url or 'AWS'}: {exc}") from exc
        if terminate:
            log.warning("Data Pipeline asked taskrunner_id=%s to terminate at start", self.settings.taskrunner_id)
            self.request_stop()

    def _first_heartbeat(self) -> bool:
        """The start-up heartbeat, retried through throttling and 5xx answers (not through a dead endpoint)."""
        deadline = time.monotonic() + STARTUP_RETRY_S
        attempt = 0
        while True:
            try:
                return self.runner_heartbeat.beat_once_strict()
            except (Throttled, Unavailable) as exc:
                answered = isinstance(exc, Throttled) or exc.code in ("InternalServiceError", "ServiceUnavailable")
                wait = backoff_s(attempt, 0.5, 5.0)
                if not answered or time.monotonic() + wait > deadline:
                    raise
                log.warning("start-up heartbeat failed (%s); retrying in %.1f s", exc.code or exc, wait)
                attempt += 1
                time.sleep(wait)

    def start(self) -> None:
        """Start the keeper, the runner heartbeat and one poller per worker group."""
        log.info(
            "bridge starting taskrunner_id=%s worker_groups=%s max_in_flight=%d owner=%s",
            self.settings.taskrunner_id,
            ",".join(self.settings.worker_groups),
            self.settings.max_in_flight,
            self.owner,
        )
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.leadership.start()
        self._spawn("keeper", self.keeper.run)
        self._spawn("runner-heartbeat", self.runner_heartbeat.run)
        for poller in self.pollers:
            if not self._stop_requested.is_set():
                self._spawn(f"poller-{poller.worker_group}", poller.run)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def request_stop(self) -> None:
        """Begin a graceful stop (first SIGTERM, or ``terminate: true``). Idempotent, safe before ``start``."""
        if not self._stop_requested.is_set():
            log.info("stop requested: no new polls; a poll in flight is still enqueued")
        self._stop_requested.set()
        for poller in self.pollers:
            poller.stop()

    def wait(self) -> None:
        """Block until a stop is requested, then shut down in order."""
        while not self._stop_requested.wait(0.5):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """The shutdown sequence (call after ``request_stop``)."""
        self.request_stop()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        # 1. Let polls in flight return (up to 90 s): what they bring is leased, acked and enqueued.
        for thread in self._threads:
            if thread.name.startswith("poller-"):
                thread.join(timeout=max(0.0, deadline - time.monotonic()) + 100)
        # 2. Another process may poll now; keep heartbeating queued leases until workers take them over.
        self.leadership.step_down()
        last_log = 0.0
        while time.monotonic() < deadline:
            waiting = self.keeper.pending()
            if waiting == 0:
                break
            if time.monotonic() - last_log >= 5:
                last_log = time.monotonic()
                log.info("draining: %d queued task(s) not yet started by a worker", waiting)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        # 3. What no worker took: a live peer adopts it once our liveness key is gone, else it ends FAILED
        #    BridgeShutdown so Data Pipeline retries it promptly.
        pending = [h for h in self.keeper.held() if h.state in (LeaseState.CLAIMED, LeaseState.QUEUED)]
        if pending:
            peers = self._peers()
            orphaned = {h.worker_group for h in pending} - {g for g, owners in peers.items() if owners}
            handed = [h for h in pending if h.worker_group not in orphaned]
            if handed:
                names = sorted({o for owners in peers.values() for o in owners})
                log.info("handing %d queued task(s) to live bridge process(es) %s", len(handed), ", ".join(names))
            if orphaned:
                failed = self.keeper.fail_unstarted("BridgeShutdown", orphaned)
                log.warning("failed %d queued task(s) BridgeShutdown: no live bridge process to take them", failed)
        # 4. Deliver outcomes still held (bounded), then stop beating and close.
        self.keeper.stop()
        for thread in self._threads:
            if thread.name == "keeper":
                thread.join(timeout=5)
        left = self.keeper.deliver_all(timeout_s=max(10.0, deadline - time.monotonic()))
        if left:
            log.error("%d outcome(s) undelivered at exit: Data Pipeline will time those tasks out and retry", left)
        self.runner_heartbeat.stop()
        self.leadership.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.publisher.close()
        self.limiter.close()
        # 5. Last: the endpoint served the drain to the end.
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._stopped.set()
        log.info("bridge stopped")

    def _peers(self) -> dict[str, list[str]]:
        """Per group of this process, the other live bridge processes serving it."""
        peers: dict[str, list[str]] = {group: [] for group in self.settings.worker_groups}
        try:
            for owner in Liveness.live_owners(self.leases.redis):
                if owner == self.owner:
                    continue
                raw = self.leases.redis.get(Liveness.alive_key(owner))
                for group in json.loads(raw).get("worker_groups", []) if raw else []:
                    if group in peers:
                        peers[group].append(owner)
        except (BrokerError, ValueError, redis.RedisError) as exc:
            log.warning("cannot look for peers: %s", exc)
        return peers
