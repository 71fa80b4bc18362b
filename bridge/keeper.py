"""Keeps the poller's leases alive: heartbeats queued tasks until a worker takes them over."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge.api import TaskApi
from bridge.errors import BrokerError, RemoteError, TaskGone
from bridge.leases import Lease, LeaseState, LeaseStore
from bridge.poller import POLLER
from bridge.retry import backoff_s

log = logging.getLogger(__name__)

KEEPER_TICK_S = 0.5


class Keeper:
    """Beats ReportTaskProgress for every ``claimed``/``queued`` lease whose heartbeat owner is the poller.

    Args:
        worker_groups: Groups whose leases to keep.
        api: The Data Pipeline client.
        leases: The lease store.
        owner: This process's identity; only its own leases are kept.
    """

    def __init__(self, worker_groups: tuple[str, ...], api: TaskApi, leases: LeaseStore, owner: str) -> None:
        self.worker_groups = worker_groups
        self.api = api
        self.leases = leases
        self.owner = owner
        self.stopping = threading.Event()
        #: Consecutive failed beats per task key (for backoff).
        self._failures: dict[str, int] = {}

    def stop(self) -> None:
        """Stop beating. Idempotent."""
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.beat_due()
            except BrokerError as exc:
                log.warning("keeper cannot read leases: %s", exc)
            except Exception:
                log.critical("keeper error", exc_info=True)
            self.stopping.wait(KEEPER_TICK_S)

    def mine(self) -> list[Lease]:
        """Live leases of this process that the poller still heartbeats."""
        return [
            lease
            for group in self.worker_groups
            for lease in self.leases.live(group)
            if lease.owner == self.owner
            and lease.heartbeat_owner == POLLER
            and lease.state in (LeaseState.CLAIMED, LeaseState.QUEUED)
        ]

    def beat_due(self) -> None:
        now = time.time()
        for lease in self.mine():
            if lease.state == LeaseState.QUEUED and lease.next_beat <= now:
                self.beat(lease)

    def beat(self, lease: Lease) -> None:
        try:
            canceled = self.api.report_task_progress(lease.task_id)
        except TaskGone as exc:
            log.warning("lost worker_group=%s task_key=%s while queued: %s", lease.worker_group, lease.task_key, exc)
            self._end(lease, LeaseState.LOST)
            return
        except RemoteError as exc:
            # Back off per lease (never past one interval), or every failing lease is retried each tick and
            # the keeper alone overruns the account's ReportTaskProgress rate exactly when it is throttled.
            failures = self._failures[lease.task_key] = self._failures.get(lease.task_key, 0) + 1
            retry_in = min(lease.heartbeat_interval_s, backoff_s(failures, base_s=1.0, cap_s=30.0) + 0.5)
            log.warning(
                "heartbeat failed worker_group=%s task_key=%s: %s; next try in %.1f s",
                lease.worker_group,
                lease.task_key,
                exc,
                retry_in,
            )
            self._update(lease, next_beat=time.time() + retry_in)
            return
        self._failures.pop(lease.task_key, None)
        if canceled:
            log.info("canceled worker_group=%s task_key=%s while queued", lease.worker_group, lease.task_key)
            self._end(lease, LeaseState.CANCELED)
            return
        now = time.time()
        self._update(lease, last_beat=now, next_beat=now + lease.heartbeat_interval_s)

    def _update(self, lease: Lease, **fields: float) -> None:
        """Record beat times on a lease that is still queued with the same epoch."""
        self.leases.transition(
            lease.task_key, lease.worker_group, [LeaseState.QUEUED], None, epoch=lease.epoch, fields=fields
        )

    def _end(self, lease: Lease, state: LeaseState) -> None:
        self._failures.pop(lease.task_key, None)
        self.leases.transition(
            lease.task_key, lease.worker_group, [LeaseState.CLAIMED, LeaseState.QUEUED], state, epoch=lease.epoch
        )

    def pending(self) -> int:
        """How many leases this process still heartbeats (the drain waits for 0)."""
        return len(self.mine())


class RunnerHeartbeat:
    """ReportTaskRunnerHeartbeat at start and every interval; ``terminate: true`` calls ``on_terminate``."""

    def __init__(
        self,
        api: TaskApi,
        taskrunner_id: str,
        worker_groups: tuple[str, ...],
        hostname: str,
        interval_s: float,
        on_terminate: Callable[[], None],
    ) -> None:
        self.api = api
        self.taskrunner_id = taskrunner_id
        self.worker_groups = worker_groups
        self.hostname = hostname
        self.interval_s = interval_s
        self.on_terminate = on_terminate
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def beat_once(self) -> bool:
        """One heartbeat per worker group; returns whether the service asked us to terminate."""
        terminate = False
        for group in self.worker_groups:
            try:
                terminate |= self.api.report_task_runner_heartbeat(self.taskrunner_id, group, self.hostname)
            except RemoteError as exc:
                log.warning("runner heartbeat failed worker_group=%s: %s", group, exc)
        return terminate

    def beat_once_strict(self) -> bool:
        """Like ``beat_once`` but raising the first error (the start-up check).

        Raises:
            RemoteError: the heartbeat failed.
        """
        return any(
            [self.api.report_task_runner_heartbeat(self.taskrunner_id, g, self.hostname) for g in self.worker_groups]
        )

    def run(self) -> None:
        while not self.stopping.is_set():
            if self.beat_once():
                log.warning("Data Pipeline asked taskrunner_id=%s to terminate; draining", self.taskrunner_id)
                self.on_terminate()
                return
            self.stopping.wait(self.interval_s)
