"""The claiming loop: one poll in flight per worker group; every task received is enqueued."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol, TypeVar

from bridge.admission import reservation_key
from bridge.api import TaskApi
from bridge.errors import BrokerError, InvalidTask, RemoteError, TaskGone
from bridge.keeper import Budget, Held, Keeper
from bridge.leases import LeaseState, LeaseStore
from bridge.masking import SECRETS
from bridge.messages import TaskMessage, argsrepr
from bridge.metrics import ClaimMetrics
from bridge.publisher import Publisher
from bridge.retry import backoff_s, retry_call
from bridge.settings import Settings
from bridge.taskmodel import TaskObject, parse_task_object

log = logging.getLogger(__name__)

#: Test-only: ``BRIDGE_TEST_CRASH_AT=<point>`` makes the process exit at once (as kill -9) at that point.
CRASH_POINTS = ("after-poll", "after-lease", "after-ack", "after-publish", "during-poll")
CRASH_ENV = "BRIDGE_TEST_CRASH_AT"
#: How long into a held poll the ``during-poll`` crash happens.
DURING_POLL_CRASH_S = 1.0
#: How often the poller checks the broker is reachable before claiming (0: before every poll, so no task is
#: claimed into an outage; the check is one round trip on a connection the publisher keeps).
BROKER_CHECK_S = 0.0
#: Longest wait for a free place before asking admission again (workers and their slots come and go too).
ROOM_WAIT_S = 0.2
#: Lease-store retries per write (about 20 s at most, well inside the acknowledgement window).
REDIS_RETRIES = 20
T = TypeVar("T")


def crash_point(name: str) -> None:
    """Exit at once, with no cleanup, if the test hook names this point."""
    if os.environ.get(CRASH_ENV) == name:
        log.critical("test crash point %s reached: exiting now", name)
        logging.shutdown()
        os._exit(137)


class Gate(Protocol):
    """Admission: whether (and how much) this poller may claim."""

    def reserve(self, worker_group: str) -> str | None:
        """Reserve a slot for one poll; ``None`` when in flight is at the limit (or nobody consumes)."""

    def release(self, worker_group: str, reservation: str) -> None:
        """Give back a slot an empty poll did not use."""


class MaxInFlightGate:
    """Admission by ``max_in_flight`` alone (no worker slot registry): for tests and single-process use."""

    def __init__(self, leases: LeaseStore, max_in_flight: int) -> None:
        self.leases = leases
        self.max_in_flight = max_in_flight

    def reserve(self, worker_group: str) -> str | None:
        return uuid.uuid4().hex if self.leases.in_flight(worker_group) < self.max_in_flight else None

    def release(self, worker_group: str, reservation: str) -> None:
        pass


class Poller:
    """Claims tasks for one worker group and publishes them as Celery messages.

    Args:
        settings: Bridge settings.
        worker_group: The group this poller serves.
        api: The Data Pipeline client.
        leases: The lease store.
        publisher: The Celery publisher.
        owner: This process's identity (recorded as the leases' owner).
        metrics: Where polls, claims, acknowledgements and enqueue latency are counted.
    """

    def __init__(
        self,
        settings: Settings,
        worker_group: str,
        api: TaskApi,
        leases: LeaseStore,
        publisher: Publisher,
        owner: str,
        keeper: Keeper | None = None,
        gate: Gate | None = None,
        is_leader: Callable[[str], bool] = lambda group: True,
        budget: Budget | None = None,
        metrics: ClaimMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.metrics = metrics or ClaimMetrics()
        self.worker_group = worker_group
        self.api = api
        self.leases = leases
        self.publisher = publisher
        self.owner = owner
        self.keeper = keeper or Keeper(settings, api, leases, owner, publisher)
        self.gate: Gate = gate or MaxInFlightGate(leases, settings.max_in_flight)
        self.is_leader = is_leader
        self.stopping = threading.Event()
        self.polling = threading.Event()
        self._failures = 0
        self._broker_healthy = True
        self._broker_checked = 0.0

    def stop(self) -> None:
        """Stop claiming; a poll in flight still completes and its task is still enqueued. Idempotent."""
        self.stopping.set()

    def run(self) -> None:
        """Poll until stopped. Retryable errors back off; unexpected ones are logged and the loop goes on."""
        log.info("polling worker_group=%s", self.worker_group)
        while not self.stopping.is_set():
            try:
                if not self.is_leader(self.worker_group):
                    self.stopping.wait(0.2)
                    continue
                if self.budget is not None and self.budget.starved("ReportTaskProgress"):
                    # Its acknowledgement could not get a token now: leave the budget to the leases held.
                    self.stopping.wait(0.5)
                    continue
                if not self._broker_ok():
                    self.stopping.wait(1.0)
                    continue
                reservation = self.gate.reserve(self.worker_group)
                if reservation is None:
                    self._wait_for_room()
                    continue
                self.poll_once(reservation)
                self._failures = 0
            except (RemoteError, BrokerError) as exc:
                self._back_off(exc, logging.WARNING)
            except Exception as exc:  # the loop's edge: never die on a bug, say so loudly
                log.critical("poll loop error worker_group=%s", self.worker_group, exc_info=True)
                self._back_off(exc, logging.CRITICAL)
        log.info("stopped polling worker_group=%s", self.worker_group)

    def _wait_for_room(self) -> None:
        """Full: wait until one of the group's leases ends (at most ``ROOM_WAIT_S``; the limit may change too)."""
        try:
            self.leases.wait_freed(self.worker_group, ROOM_WAIT_S)
        except BrokerError:
            self.stopping.wait(ROOM_WAIT_S)

    def _back_off(self, exc: Exception, level: int) -> None:
        wait = backoff_s(self._failures, base_s=1.0, cap_s=30.0)
        self._failures += 1
        log.log(level, "poll failed worker_group=%s: %s; next poll in %.1f s", self.worker_group, exc, wait)
        self.stopping.wait(wait)

    def _broker_ok(self) -> bool:
        """No claims while the broker is unreachable (checked before each poll, every BROKER_CHECK_S at most)."""
        now = time.monotonic()
        if self._broker_healthy and now - self._broker_checked < BROKER_CHECK_S:
            return True
        self._broker_checked = now
        try:
            self.publisher.ping(timeout_s=2.0)
        except BrokerError as exc:
            if self._broker_healthy:
                log.warning("broker unreachable: %s; no new claims for worker_group=%s", exc, self.worker_group)
            self._broker_healthy = False
            return False
        if not self._broker_healthy:
            log.info("broker reachable again; claiming for worker_group=%s", self.worker_group)
        self._broker_healthy = True
        return True

    def poll_once(self, reservation: str | None = None) -> bool:
        """One PollForTask; returns whether a task arrived (and was dispatched)."""
        self.polling.set()
        crash_timer = None
        if os.environ.get(CRASH_ENV) == "during-poll":
            crash_timer = threading.Timer(DURING_POLL_CRASH_S, crash_point, ["during-poll"])
            crash_timer.daemon = True
            crash_timer.start()
        try:
            raw = self.api.poll_for_task(self.worker_group, self.settings.hostname)
        except BaseException:
            self.metrics.polled(self.worker_group, "error")
            if reservation is not None:
                self._release(reservation)
            raise
        finally:
            self.polling.clear()
            if crash_timer is not None:
                crash_timer.cancel()
        self.metrics.polled(self.worker_group, "empty" if raw is None else "task")
        if raw is None:
            if reservation is not None:
                self._release(reservation)
            return False
        received_at = time.monotonic()
        crash_point("after-poll")
        self.dispatch(raw, received_at, reservation)
        return True

    def _release(self, reservation: str) -> None:
        with contextlib.suppress(BrokerError):  # reservations expire on their own
            self.gate.release(self.worker_group, reservation)

    def dispatch(self, raw: dict[str, object], received_at: float, reservation: str | None = None) -> None:
        """Lease, acknowledge and publish one task. Runs to the end even while stopping."""
        try:
            task = parse_task_object(raw)
        except InvalidTask as exc:
            if reservation is not None:
                self._release(reservation)
            self._refuse(raw, exc)
            return
        SECRETS.add(task.secrets)
        key = task.key  # a hash of the 1-2 KB taskId: computed once per claim, not at each use
        log.info("received worker_group=%s task_key=%s type=%s", self.worker_group, key, task.object_type)
        log.debug("task id worker_group=%s task_key=%s task_id=%s", self.worker_group, key, task.task_id)
        deadline_s = task.progress_deadline_s or self.settings.progress_deadline_s
        interval_s = self.settings.beat_interval_for(deadline_s)
        queue = self.settings.queue_for(self.worker_group, task.object_type)
        held = Held(
            task_key=key,
            task_id=task.task_id,
            worker_group=self.worker_group,
            epoch=0,
            state=LeaseState.CLAIMED,
            queue=queue,
            object_type=task.object_type,
            deadline_s=deadline_s,
            interval_s=interval_s,
            task_object=dict(raw),
            dispatching=True,
        )
        try:
            self._dispatch(task, held, received_at, reservation)
        finally:
            held.dispatching = False  # whatever is left of the claim sequence, the keeper finishes

    def _dispatch(self, task: TaskObject, held: Held, received_at: float, reservation: str | None) -> None:
        interval_s = held.interval_s
        key = held.task_key
        epoch = self._claim(task, held, reservation)
        self.metrics.claimed(self.worker_group)
        held.epoch = epoch
        self.keeper.track(held)
        crash_point("after-lease")
        acked_at = self._acknowledge(task, epoch, received_at)
        if acked_at is None:
            self.keeper.forget(key)
            return
        now = acked_at
        held.acked = True
        held.last_beat = now
        held.next_beat = now + interval_s
        crash_point("after-ack")
        self._with_redis(
            f"queuing lease {key}",
            lambda: self.leases.transition(
                key,
                self.worker_group,
                [LeaseState.CLAIMED],
                LeaseState.QUEUED,
                epoch=epoch,
                fields={"last_beat": now, "next_beat": now + interval_s, "queued_at": now, "acked": "1"},
            ),
        )
        held.state = LeaseState.QUEUED
        held.queued_at = now
        self._publish(held.message(), task, received_at)
        crash_point("after-publish")

    def _claim(self, task: TaskObject, held: Held, reservation: str | None) -> int:
        fields = held.lease_fields(task, self.owner)
        resv = None if reservation is None else (reservation_key(self.worker_group), reservation)
        key = held.task_key
        return self._with_redis(f"writing lease {key}", lambda: self.leases.claim(key, self.worker_group, fields, resv))

    def _with_redis(self, what: str, fn: Callable[[], T]) -> T:
        """Retry a lease-store write through a short Redis outage (the task is ours only once leased)."""
        attempt = 0
        while True:
            try:
                return fn()
            except BrokerError as exc:
                attempt += 1
                if attempt > REDIS_RETRIES:
                    raise
                log.warning("%s failed worker_group=%s: %s; retrying", what, self.worker_group, exc)
                time.sleep(backoff_s(attempt, 0.2, 2.0))

    def _acknowledge(self, task: TaskObject, epoch: int, received_at: float) -> float | None:
        """ReportTaskProgress at once, retried until ~90 s after the hand-out.

        Returns:
            When the accepted call was sent (its progress deadline runs from no earlier), or ``None`` when the
            task is not ours to run (lost, canceled, or never acknowledged).
        """
        window = max(1.0, self.settings.ack_window_s - (time.monotonic() - received_at))
        sent = [0.0]

        def ack() -> bool:
            sent[0] = time.time()
            return self.api.report_task_progress(task.task_id)

        try:
            canceled = retry_call(
                ack,
                what=f"acknowledging {task.key}",
                deadline_s=window,
            )
        except TaskGone as exc:
            log.warning("lost worker_group=%s task_key=%s before acknowledging: %s", self.worker_group, task.key, exc)
            self.metrics.acknowledged(self.worker_group, "lost")
            self.leases.transition(task.key, self.worker_group, [LeaseState.CLAIMED], LeaseState.LOST, epoch=epoch)
            return None
        except RemoteError as exc:
            log.error(
                "could not acknowledge worker_group=%s task_key=%s: %s; Data Pipeline will hand it out again",
                self.worker_group,
                task.key,
                exc,
            )
            self.metrics.acknowledged(self.worker_group, "failed")
            self.leases.transition(task.key, self.worker_group, [LeaseState.CLAIMED], LeaseState.RELEASED, epoch=epoch)
            return None
        if canceled:
            log.info("canceled worker_group=%s task_key=%s before it was enqueued", self.worker_group, task.key)
            self.metrics.acknowledged(self.worker_group, "canceled")
            self.leases.transition(task.key, self.worker_group, [LeaseState.CLAIMED], LeaseState.CANCELED, epoch=epoch)
            return None
        log.info("acknowledged worker_group=%s task_key=%s", self.worker_group, task.key)
        self.metrics.acknowledged(self.worker_group, "acknowledged")
        return sent[0]

    def _publish(self, message: TaskMessage, task: TaskObject, received_at: float) -> None:
        key = message.task_key
        attempt = 0
        while True:
            held = self.keeper.get(key) if attempt else None
            if attempt and (held is None or held.epoch != message.epoch or held.state != LeaseState.QUEUED):
                log.info(
                    "not publishing worker_group=%s task_key=%s epoch=%d: its lease moved on",
                    self.worker_group,
                    key,
                    message.epoch,
                )
                return
            try:
                celery_task_id = self.publisher.publish(message, argsrepr(task))
                self.metrics.enqueued(self.worker_group, time.monotonic() - received_at)
                log.info(
                    "enqueued worker_group=%s task_key=%s queue=%s celery_id=%s",
                    self.worker_group,
                    key,
                    message.queue,
                    celery_task_id,
                )
                return
            except BrokerError as exc:
                # The keeper goes on heartbeating the queued lease meanwhile, so nothing is lost.
                self._broker_healthy = False
                wait = backoff_s(attempt, 0.5, 10.0)
                attempt += 1
                log.warning(
                    "publish failed worker_group=%s task_key=%s: %s; retrying in %.1f s",
                    self.worker_group,
                    key,
                    exc,
                    wait,
                )
                time.sleep(wait)

    def _refuse(self, raw: dict[str, object], exc: InvalidTask) -> None:
        """A malformed task: end it FAILED with a clear error, if it can be addressed at all."""
        task_id = raw.get("taskId") if isinstance(raw, dict) else None
        log.error("invalid task worker_group=%s: %s", self.worker_group, exc)
        if not isinstance(task_id, str) or not task_id:
            return
        try:
            retry_call(
                lambda: self.api.set_task_status(task_id, "FAILED", exc.error_id, f"Invalid task object: {exc}"),
                what="failing an invalid task",
                deadline_s=30,
            )
        except RemoteError as err:
            log.error("could not fail the invalid task worker_group=%s: %s", self.worker_group, err)
