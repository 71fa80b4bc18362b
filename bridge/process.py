"""``bridge start``: the pollers, the keeper and the runner heartbeat of one bridge process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from bridge.api import Boto3TaskApi, TaskApi
from bridge.errors import AuthError, BrokerError, ConfigError, RemoteError
from bridge.keeper import Keeper, RunnerHeartbeat
from bridge.leases import LeaseStore
from bridge.poller import Poller
from bridge.publisher import Publisher
from bridge.settings import Settings

log = logging.getLogger(__name__)


def process_identity(hostname: str) -> str:
    """A unique id for this process: host, pid and a random suffix (pids are reused)."""
    return f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        self.api = api or Boto3TaskApi(settings.endpoint_url, settings.region)
        self.leases = leases or LeaseStore.from_url(settings.redis_url)
        self.publisher = publisher or Publisher(settings.broker_url)
        self.pollers = [
            Poller(settings, group, self.api, self.leases, self.publisher, self.owner)
            for group in settings.worker_groups
        ]
        self.keeper = Keeper(settings.worker_groups, self.api, self.leases, self.owner)
        self.runner_heartbeat = RunnerHeartbeat(
            self.api,
            settings.taskrunner_id,
            settings.worker_groups,
            settings.hostname,
            settings.runner_heartbeat_interval_s,
            self.request_stop,
        )
        self._threads: list[threading.Thread] = []
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()

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
            terminate = self.runner_heartbeat.beat_once_strict()
        except AuthError as exc:
            raise ConfigError(f"Data Pipeline rejected the credentials: {exc}") from exc
        except RemoteError as exc:
            raise ConfigError(f"cannot reach Data Pipeline at {self.settings.endpoint_url or 'AWS'}: {exc}") from exc
        if terminate:
            log.warning("Data Pipeline asked taskrunner_id=%s to terminate at start", self.settings.taskrunner_id)
            self.request_stop()

    def start(self) -> None:
        """Start the keeper, the runner heartbeat and one poller per worker group."""
        log.info(
            "bridge starting taskrunner_id=%s worker_groups=%s max_in_flight=%d owner=%s",
            self.settings.taskrunner_id,
            ",".join(self.settings.worker_groups),
            self.settings.max_in_flight,
            self.owner,
        )
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
        # 2. Keep heartbeating queued leases until workers take them over, or the drain timeout passes.
        while time.monotonic() < deadline:
            try:
                pending = self.keeper.pending()
            except BrokerError as exc:
                log.warning("cannot read leases while draining: %s", exc)
                pending = 1
            if pending == 0:
                break
            log.info("draining: %d queued task(s) not yet started by a worker", pending)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        # 3. Stop the keeper and the runner heartbeat, then close connections.
        self.keeper.stop()
        self.runner_heartbeat.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.publisher.close()
        self._stopped.set()
        log.info("bridge stopped")
