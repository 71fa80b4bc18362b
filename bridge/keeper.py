"""Keeps the poller's leases alive and moving: heartbeats, re-publishing, reporting, adoption.

The keeper is the heartbeat owner of every lease of this process that no worker runs yet
(``claimed``, ``queued``) and of outcomes a worker handed over (``reporting`` with the poller as
heartbeat owner). It works from an in-memory copy of those leases, so heartbeats go on while
Redis is unreachable; Redis is reconciled with that copy whenever it answers.

On the active poller of a group it also sweeps the group's leases: a lease whose owner process
died (its liveness key expired) is adopted, and a lease past its heartbeat deadline becomes
``lost`` so it stops counting as in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.api import TaskApi
from bridge.errors import BrokerError, InvalidTask, RemoteError, TaskGone, Unavailable, refused_by_budget
from bridge.fencing import request_cancel
from bridge.leases import Lease, LeaseState, LeaseStore, TransitionResult
from bridge.messages import TaskMessage, argsrepr
from bridge.publisher import Publisher
from bridge.retry import backoff_s
from bridge.settings import Settings
from bridge.taskmodel import TaskObject, parse_task_object

log = logging.getLogger(__name__)

KEEPER_TICK_S = 0.5
#: The heartbeat owner recorded on leases the bridge process (not a worker) beats.
POLLER = "poller"
#: Data Pipeline re-hands out a task not acknowledged within 2 minutes.
ACK_LIMIT_S = 120.0
#: Extra time past a deadline before a silent lease is declared lost (clock skew between hosts).
LOST_GRACE_S = 5.0
CANCEL_KEY_TTL_S = 3600
#: While Redis is down, how often the keeper tries it again (in between it works from memory only).
REDIS_PROBE_S = 2.0
#: How long a restored lease waits before it is re-published (running workers claim theirs back meanwhile).
RESTORE_PUBLISH_DELAY_S = 3.0
#: After Redis comes back, how long the sweep waits before writing off silent leases (their owners catch up).
RECONNECT_GRACE_S = 15.0


def beat_margin_s(deadline_s: float) -> float:
    """How long before a progress deadline the last heartbeat must land, however stretched."""
    return max(2.0, 0.1 * deadline_s)


#: A stretched heartbeat is sent at the latest this long before ``deadline - margin`` (two keeper ticks: the
#: keeper and the workers' heartbeat loops wake at least this often), so one lease, fully stretched, beats once
#: per ``stretched_period_s(deadline)``.
STRETCH_SLACK_S = 2 * KEEPER_TICK_S


#: A failed beat's retry is sent at the latest this long before the progress deadline (and never sooner than
#: RETRY_MIN_S after the failure), so a stretched beat that fails still gets one more try in time.
RETRY_LEAD_S = 1.0
RETRY_MIN_S = 0.5


def retry_at(now: float, retry_in: float, last_ok: float, deadline_s: float) -> float:
    """When to retry a failed beat: after ``retry_in``, but not past the deadline minus ``RETRY_LEAD_S``."""
    return max(now + RETRY_MIN_S, min(now + retry_in, last_ok + deadline_s - RETRY_LEAD_S))


def stretched_period_s(deadline_s: float) -> float:
    """Seconds between two beats of one lease when the budget stretches them as far as they go."""
    return max(1.0, deadline_s - beat_margin_s(deadline_s) - STRETCH_SLACK_S)


class Budget(Protocol):
    """What the keeper asks of the rate limiter."""

    def pressure(self, op: str) -> bool:
        """Whether ``op``'s shared budget is running low (heartbeats should stretch)."""

    def starved(self, op: str) -> bool:
        """Whether a claim's call of ``op`` (a poll, an acknowledgement) would have to wait for a token."""


@dataclass
class Held:
    """The keeper's own copy of one lease it is responsible for."""

    task_key: str
    task_id: str
    worker_group: str
    epoch: int
    state: LeaseState
    queue: str
    object_type: str
    deadline_s: float
    interval_s: float
    task_object: dict[str, Any]
    last_beat: float = 0.0
    next_beat: float = 0.0
    queued_at: float = 0.0
    acked: bool = False
    republished: bool = False
    #: The poller is still working through the claim sequence for it (the keeper only beats).
    dispatching: bool = False
    #: A message for the current epoch still has to be sent.
    needs_publish: bool = False
    outcome: dict[str, Any] | None = None
    #: The state the lease ends in once the outcome is delivered (done; released for the bridge's own failures).
    final_state: LeaseState = LeaseState.DONE
    failures: int = 0
    next_try: float = 0.0
    #: The previous SetTaskStatus attempt failed in transport: it may have landed.
    maybe_delivered: bool = False
    stretched: bool = False

    @classmethod
    def from_lease(cls, lease: Lease) -> Held:
        outcome = lease.outcome
        return cls(
            task_key=lease.task_key,
            task_id=lease.task_id,
            worker_group=lease.worker_group,
            epoch=lease.epoch,
            state=lease.state,
            queue=lease.queue,
            object_type=lease.object_type,
            deadline_s=lease.progress_deadline_s or 300.0,
            interval_s=lease.heartbeat_interval_s or 60.0,
            task_object=lease.task_object,
            last_beat=lease.last_beat,
            next_beat=lease.next_beat or time.time(),
            queued_at=lease.queued_at or lease.updated_at,
            acked=lease.acked or lease.state != LeaseState.CLAIMED,
            republished=lease.republished,
            outcome=outcome,
            final_state=LeaseState(outcome.get("final_state", "done")) if outcome else LeaseState.DONE,
            maybe_delivered=bool(outcome and outcome.get("maybe_delivered")),
        )

    def lease_fields(self, task: TaskObject, owner: str) -> dict[str, Any]:
        """What the lease record of this hand-out holds (written at the claim, and again if Redis lost it)."""
        return {
            "task_id": self.task_id,
            "pipeline_id": task.pipeline_id,
            "attempt_id": task.attempt_id,
            "instance_id": task.instance_id,
            "worker_group": self.worker_group,
            "queue": self.queue,
            "object_type": self.object_type,
            "owner": owner,
            "heartbeat_owner": POLLER,
            "progress_deadline_s": self.deadline_s,
            "heartbeat_interval_s": self.interval_s,
            "task_object": self.task_object,
        }

    def message(self) -> TaskMessage:
        return TaskMessage(
            schema=1,
            task_key=self.task_key,
            epoch=self.epoch,
            worker_group=self.worker_group,
            queue=self.queue,
            object_type=self.object_type,
            heartbeat_interval_s=self.interval_s,
            progress_deadline_s=self.deadline_s,
            claimed_at=time.time(),
            task_object=self.task_object,
        )


@dataclass
class KeeperStats:
    """Counters for metrics and tests."""

    beats: int = 0
    beat_failures: int = 0
    stretched: int = 0
    republished: int = 0
    not_started: int = 0
    adopted: int = 0
    lost: int = 0
    delivered: int = 0
    shutdown_failed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Keeper:
    """Heartbeats, re-publishes, delivers and adopts leases for one bridge process.

    Args:
        settings: Bridge settings (queue wait, lock TTLs).
        api: The Data Pipeline client (rate limited).
        leases: The lease store.
        owner: This process's identity; leases carry it as their owner.
        publisher: Sends re-published and adopted messages.
        is_leader: Whether this process is the active poller of a group (only it sweeps the group).
        is_alive: Whether a bridge process (by owner id) still has its liveness key.
        has_consumer: Whether a queue has a live worker.
        budget: The rate limiter (``None``: never stretch).
        early_api: The same client, for beats sent before they must be: refused at once (``Throttled``,
            ``BUDGET_EXHAUSTED``) rather than take a token from below the pressure line (``None``: ``api``).
    """

    def __init__(
        self,
        settings: Settings,
        api: TaskApi,
        leases: LeaseStore,
        owner: str,
        publisher: Publisher | None = None,
        *,
        is_leader: Callable[[str], bool] = lambda group: True,
        is_alive: Callable[[str], bool] = lambda owner: True,
        has_consumer: Callable[[str], bool] = lambda queue: True,
        budget: Budget | None = None,
        early_api: TaskApi | None = None,
    ) -> None:
        self.settings = settings
        self.worker_groups = settings.worker_groups
        self.api = api
        self.early_api = early_api
        self.leases = leases
        self.owner = owner
        self.publisher = publisher
        self.is_leader = is_leader
        self.is_alive = is_alive
        self.has_consumer = has_consumer
        self.budget = budget
        self.stats = KeeperStats()
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self._held: dict[str, Held] = {}
        self._redis_down_since: float | None = None
        self._redis_back_at: float | None = None
        self._next_redis_probe = 0.0
        self._last_sweep = 0.0
        self._last_stretch_log = 0.0

    # -- the poller's side ----------------------------------------------------------------------------

    def track(self, held: Held) -> None:
        """Start keeping a lease (the poller calls this right after writing it; it replaces an older copy)."""
        with self._lock:
            self._held[held.task_key] = held

    def track_if_absent(self, held: Held) -> bool:
        """Keep a lease found in Redis unless a copy is already kept (the poller's wins); whether it was added."""
        with self._lock:
            return self._held.setdefault(held.task_key, held) is held

    def get(self, task_key: str) -> Held | None:
        with self._lock:
            return self._held.get(task_key)

    def forget(self, task_key: str, held: Held | None = None) -> None:
        """Stop keeping ``task_key`` (only if its copy is still ``held``, when given: not a newer hand-out's)."""
        with self._lock:
            if held is None or self._held.get(task_key) is held:
                self._held.pop(task_key, None)

    def held(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())

    def pending(self) -> int:
        """Leases this process still holds that no worker has taken (the drain waits for 0)."""
        return sum(1 for h in self.held() if h.state in (LeaseState.CLAIMED, LeaseState.QUEUED))

    def undelivered(self) -> int:
        """Outcomes this process must still deliver."""
        return sum(1 for h in self.held() if h.state == LeaseState.REPORTING)

    # -- the loop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the loop. Idempotent."""
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception:  # the loop's edge: never die on a bug, say so loudly
                log.critical("keeper error", exc_info=True)
            self.stopping.wait(KEEPER_TICK_S)

    def tick(self) -> None:
        """One round: beat what is due (first: it must not wait on Redis), reconcile with Redis, sweep led
        groups, then move each lease on. One lease's trouble never stops the others."""
        self.beat_due()
        if self._redis_down_since is None or time.monotonic() >= self._next_redis_probe:
            self.reconcile()
        now = time.time()
        if now - self._last_sweep >= 1.0 and self._redis_down_since is None:
            self._last_sweep = now
            for group in self.worker_groups:
                if self.is_leader(group):
                    self.sweep(group)
        for held in self.held():
            try:
                if held.state == LeaseState.REPORTING:
                    self.deliver(held)
                elif not held.dispatching:
                    self.advance(held)
                else:
                    self.enforce_wait(held)
            except BrokerError as exc:
                self._redis_down(exc)
            except Exception:  # a bug with one lease must not stall the rest
                log.critical(
                    "keeper error worker_group=%s task_key=%s", held.worker_group, held.task_key, exc_info=True
                )

    def _redis_ok(self) -> None:
        if self._redis_down_since is not None:
            self._redis_back_at = time.monotonic()
            log.info("Redis is back after %.0f s; leases reconciled", time.time() - self._redis_down_since)
            self._redis_down_since = None
            for held in self.held():  # the beats made from memory meanwhile, so no sweep declares them lost
                if held.acked:
                    self._record(held, last_beat=held.last_beat, next_beat=held.next_beat)

    def _redis_down(self, exc: Exception) -> None:
        self._next_redis_probe = time.monotonic() + REDIS_PROBE_S
        if self._redis_down_since is None:
            self._redis_down_since = time.time()
            log.warning("keeper cannot reach Redis (%s); heartbeating %d lease(s) from memory", exc, len(self._held))

    def reconcile(self) -> None:
        """Bring the in-memory copy in line with Redis (a worker took a lease over, a peer adopted it...)."""
        try:
            current: dict[str, Lease] = {}
            for group in self.worker_groups:
                for lease in self.leases.live(group):
                    current[lease.task_key] = lease
        except BrokerError as exc:
            self._redis_down(exc)
            return
        self._redis_ok()
        for held in self.held():
            found = current.get(held.task_key)
            if found is None and not held.dispatching:  # (the poller may be writing it right now)
                try:
                    found = self.leases.get(held.task_key)
                except BrokerError:
                    return
                if found is None:
                    self._recreate(held)
                    continue
            if found is None:
                continue
            lease = found
            if lease.owner != self.owner or lease.epoch > held.epoch:
                self.forget(held.task_key, held)  # a peer adopted it, or Data Pipeline handed it out again
            elif lease.heartbeat_owner != POLLER or lease.state not in (
                LeaseState.CLAIMED,
                LeaseState.QUEUED,
                LeaseState.REPORTING,
            ):
                self.forget(held.task_key, held)  # a worker runs it now
            elif lease.state == LeaseState.REPORTING and held.state != LeaseState.REPORTING and not held.dispatching:
                # A worker took it and handed its outcome back between two looks: deliver that outcome.
                log.info(
                    "delivering the outcome of worker_group=%s task_key=%s for its worker",
                    lease.worker_group,
                    lease.task_key,
                )
                self.forget(held.task_key, held)
                self.track_if_absent(Held.from_lease(lease))
        for lease in current.values():
            if lease.owner != self.owner or lease.heartbeat_owner != POLLER:
                continue
            # An unacknowledged claim is the poller's, in the middle of its claim sequence.
            keepable = lease.state in (LeaseState.QUEUED, LeaseState.REPORTING) or (
                lease.state == LeaseState.CLAIMED and lease.acked
            )
            if keepable and self.track_if_absent(Held.from_lease(lease)) and lease.state == LeaseState.REPORTING:
                log.info(
                    "delivering the outcome of worker_group=%s task_key=%s for its worker",
                    lease.worker_group,
                    lease.task_key,
                )

    def _recreate(self, held: Held) -> None:
        """Our lease vanished from Redis (restarted without persistence): write it again and re-publish.

        The record keeps its epoch, and the message waits a few seconds: if a worker had already taken the
        lease before the loss (this copy did not know yet), its next renewal claims the restored record back
        as running, and the re-published copy is then dropped as stale instead of running the task twice.
        """
        if held.state == LeaseState.REPORTING:
            return  # the outcome is in memory: delivery goes on without the record
        try:
            fields = held.lease_fields(parse_task_object(held.task_object), self.owner)
            fields.update(last_beat=held.last_beat, acked="1" if held.acked else "0")
            epoch = self.leases.claim(held.task_key, held.worker_group, fields)
        except (BrokerError, InvalidTask) as exc:
            log.warning(
                "cannot rewrite lost lease record worker_group=%s task_key=%s: %s",
                held.worker_group,
                held.task_key,
                exc,
            )
            return
        now = time.time()
        to = LeaseState.QUEUED if held.acked else None
        try:
            self.leases.transition(
                held.task_key,
                held.worker_group,
                [LeaseState.CLAIMED],
                to,
                epoch=epoch,
                fields={"epoch": held.epoch, "queued_at": now, "next_beat": held.next_beat},
            )
        except BrokerError as exc:
            log.warning(
                "cannot rewrite lost lease record worker_group=%s task_key=%s: %s",
                held.worker_group,
                held.task_key,
                exc,
            )
            return
        log.warning(
            "lease record vanished from Redis worker_group=%s task_key=%s; rewritten (epoch %d)",
            held.worker_group,
            held.task_key,
            held.epoch,
        )
        held.state = LeaseState.QUEUED if held.acked else LeaseState.CLAIMED
        held.queued_at = now
        held.needs_publish = held.acked
        held.next_try = now + RESTORE_PUBLISH_DELAY_S

    # -- heartbeats -------------------------------------------------------------------------------------

    def beat_due(self) -> None:
        """Beat every due lease, earliest deadline first; under budget pressure stretch what can wait."""
        now = time.time()
        due = [h for h in self.held() if h.next_beat <= now and h.acked]
        due.sort(key=lambda h: h.last_beat + h.deadline_s)
        for held in due:
            latest = held.last_beat + held.deadline_s - beat_margin_s(held.deadline_s) - STRETCH_SLACK_S
            urgent = now >= latest
            if urgent or self.budget is None:
                self.beat(held)
                continue
            # It could wait: sent only while the budget is above the pressure line, else stretched.
            if not self.budget.pressure("ReportTaskProgress") and self.beat(held, early=True):
                continue
            held.next_beat = min(now + 1.0, latest)
            self.stats.stretched += 1
            if not held.stretched:
                held.stretched = True
                if now - self._last_stretch_log > 10:
                    self._last_stretch_log = now
                    log.warning(
                        "budget pressure: stretching heartbeats worker_group=%s task_key=%s (deadline in %.0f s)",
                        held.worker_group,
                        held.task_key,
                        held.last_beat + held.deadline_s - now,
                    )

    def beat(self, held: Held, early: bool = False) -> bool:
        """One ReportTaskProgress for ``held``; ``False`` only when an early beat got no token (nothing was sent).

        Args:
            early: The beat could still wait: send it through ``early_api``, which refuses rather than take
                a token from below the budget's pressure line.
        """
        api = self.early_api if early and self.early_api is not None else self.api
        sent = time.time()  # Data Pipeline's deadline runs from when the beat reached it: never earlier
        try:
            canceled = api.report_task_progress(held.task_id)
        except TaskGone as exc:
            log.warning(
                "lost worker_group=%s task_key=%s while %s: %s", held.worker_group, held.task_key, held.state, exc
            )
            self._end(held, LeaseState.LOST, f"lost: {exc.code}")
            return True
        except RemoteError as exc:
            if early and refused_by_budget(exc):
                return False
            # Back off per lease (never past one interval), or every failing lease is retried each tick and
            # the keeper alone overruns the account's ReportTaskProgress rate exactly when it is throttled.
            held.failures += 1
            self.stats.beat_failures += 1
            retry_in = min(held.interval_s, backoff_s(held.failures, base_s=1.0, cap_s=30.0) + 0.5)
            log.warning(
                "heartbeat failed worker_group=%s task_key=%s: %s; next try in %.1f s",
                held.worker_group,
                held.task_key,
                exc,
                retry_in,
            )
            held.next_beat = retry_at(time.time(), retry_in, held.last_beat, held.deadline_s)
            return True
        held.failures = 0
        held.stretched = False
        self.stats.beats += 1
        if canceled and held.state != LeaseState.REPORTING:
            log.info("canceled worker_group=%s task_key=%s while %s", held.worker_group, held.task_key, held.state)
            self._end(held, LeaseState.CANCELED, "canceled by Data Pipeline")
            return True
        held.last_beat = sent
        held.next_beat = sent + held.interval_s
        self._record(held, last_beat=sent, next_beat=held.next_beat)
        return True

    def _record(self, held: Held, **fields: Any) -> None:
        """Best-effort write of beat times to a lease still in the state we know, with our epoch."""
        # Without Redis the in-memory copy goes on; the next beat writes again.
        if self._redis_down_since is not None:
            return
        with contextlib.suppress(BrokerError):
            self.leases.transition(
                held.task_key,
                held.worker_group,
                [LeaseState.CLAIMED, LeaseState.QUEUED, LeaseState.REPORTING],
                None,
                epoch=held.epoch,
                fields=fields,
            )

    def _end(self, held: Held, state: LeaseState, reason: str) -> None:
        """End a lease we hold; if a worker took it meanwhile, relay the news through its cancel key."""
        self.forget(held.task_key, held)
        if state == LeaseState.LOST:
            self.stats.lost += 1
        try:
            result = self.leases.transition(
                held.task_key,
                held.worker_group,
                [LeaseState.CLAIMED, LeaseState.QUEUED, LeaseState.REPORTING],
                state,
                epoch=held.epoch,
            )
            if not result.ok and result.state in (LeaseState.RUNNING, LeaseState.REPORTING):
                with contextlib.suppress(BrokerError):  # the task's own heartbeat hears the news too
                    request_cancel(self.leases.redis, held.task_key, reason, CANCEL_KEY_TTL_S)
        except BrokerError as exc:
            log.warning(
                "could not record %s worker_group=%s task_key=%s: %s", state, held.worker_group, held.task_key, exc
            )

    # -- moving leases on -----------------------------------------------------------------------------

    def advance(self, held: Held) -> None:
        """A lease the poller is not working on: finish its claim sequence, apply the not-started rule."""
        now = time.time()
        if held.next_try > now:
            return
        if held.state == LeaseState.CLAIMED:
            if not held.acked:
                self.beat(held)  # the acknowledgement (an adopted claim, or one the poller could not finish)
                if self.get(held.task_key) is None or held.failures:
                    return
                held.acked = True
            try:
                result = self.leases.transition(
                    held.task_key,
                    held.worker_group,
                    [LeaseState.CLAIMED],
                    LeaseState.QUEUED,
                    epoch=held.epoch,
                    fields={"queued_at": now, "acked": "1"},
                )
            except BrokerError:
                held.next_try = now + 1.0
                return
            if not result.ok:
                self.forget(held.task_key, held)
                return
            held.state = LeaseState.QUEUED
            held.queued_at = now
            held.needs_publish = True
        if held.state != LeaseState.QUEUED:
            return
        if held.needs_publish:
            self._publish(held)
        self.enforce_wait(held)

    def enforce_wait(self, held: Held) -> None:
        """The not-started rule: re-publish once after ``max_queue_wait_s``, fail after a second period."""
        if held.state != LeaseState.QUEUED or not held.queued_at:
            return
        waited = time.time() - held.queued_at
        if waited < self.settings.max_queue_wait_s:
            return
        if not self.has_consumer(held.queue):
            self.fail(held, "BridgeNotStarted", f"no live worker consumes queue {held.queue}")
        elif held.republished or held.dispatching:
            self.fail(
                held,
                "BridgeNotStarted",
                f"not started by any worker within {2 * self.settings.max_queue_wait_s:.0f} s of queue {held.queue}",
            )
        else:
            self._republish(held)

    def _republish(self, held: Held) -> None:
        try:
            epoch = self.leases.bump_epoch(held.task_key, held.epoch)
        except BrokerError:
            return
        if not epoch:
            self.forget(held.task_key, held)
            return
        log.warning(
            "not started worker_group=%s task_key=%s after %.0f s; re-publishing with epoch %d",
            held.worker_group,
            held.task_key,
            time.time() - held.queued_at,
            epoch,
        )
        self.stats.republished += 1
        held.epoch = epoch
        held.republished = True
        held.queued_at = time.time()
        held.needs_publish = True
        self._publish(held)

    def _publish(self, held: Held) -> None:
        """One publishing attempt (the keeper never blocks on the broker: it retries next tick)."""
        if self.publisher is None:
            return
        try:
            task = parse_task_object(held.task_object)
            celery_id = self.publisher.publish(held.message(), argsrepr(task))
        except BrokerError as exc:
            held.failures += 1
            held.next_try = time.time() + backoff_s(held.failures, 0.5, 10.0)
            log.warning(
                "publish failed worker_group=%s task_key=%s: %s; retrying", held.worker_group, held.task_key, exc
            )
            return
        except InvalidTask as exc:  # cannot happen for a lease the poller parsed; never loop on it
            self.fail(held, exc.error_id, f"Invalid task object: {exc}")
            return
        held.needs_publish = False
        held.failures = 0
        log.info(
            "enqueued worker_group=%s task_key=%s queue=%s celery_id=%s",
            held.worker_group,
            held.task_key,
            held.queue,
            celery_id,
        )

    def fail(self, held: Held, error_id: str, message: str, final_state: LeaseState = LeaseState.RELEASED) -> bool:
        """End a queued lease FAILED (the outcome is recorded first, then delivered). False if a worker won it."""
        outcome = {"status": "FAILED", "error_id": error_id, "error_message": message, "final_state": str(final_state)}
        try:
            result = self.leases.transition(
                held.task_key,
                held.worker_group,
                [LeaseState.CLAIMED, LeaseState.QUEUED],
                LeaseState.REPORTING,
                epoch=held.epoch,
                fields={"outcome": outcome, "heartbeat_owner": POLLER},
            )
        except BrokerError as exc:
            # Without Redis no worker can take the lease either (taking it is a Redis script): failing it from
            # memory is safe, and it must not wait (at shutdown there is no later).
            log.warning(
                "cannot record the outcome worker_group=%s task_key=%s: %s; reporting it anyway",
                held.worker_group,
                held.task_key,
                exc,
            )
            result = TransitionResult(True, str(LeaseState.REPORTING), held.epoch)
        if not result.ok:
            self.forget(held.task_key, held)
            return False
        log.warning("failing worker_group=%s task_key=%s %s: %s", held.worker_group, held.task_key, error_id, message)
        self.stats.by_reason[error_id] = self.stats.by_reason.get(error_id, 0) + 1
        if error_id == "BridgeNotStarted":
            self.stats.not_started += 1
        held.state = LeaseState.REPORTING
        held.outcome = outcome
        held.final_state = final_state
        held.next_try = 0.0
        self.deliver(held)
        return True

    def deliver(self, held: Held) -> None:
        """One SetTaskStatus attempt for a recorded outcome (retried next ticks, beating meanwhile)."""
        outcome = held.outcome
        if outcome is None:
            self.forget(held.task_key, held)
            return
        if held.next_try > time.time():
            return
        try:
            self.api.set_task_status(
                held.task_id,
                str(outcome.get("status", "FAILED")),
                outcome.get("error_id"),
                outcome.get("error_message"),
                outcome.get("error_stack_trace"),
            )
        except TaskGone as exc:
            if held.maybe_delivered:  # an earlier attempt landed and the task is finished on the service side
                self._delivered(held)
            else:
                log.warning(
                    "lost worker_group=%s task_key=%s before its outcome was delivered: %s",
                    held.worker_group,
                    held.task_key,
                    exc,
                )
                self._end(held, LeaseState.LOST, f"lost: {exc.code}")
            return
        except RemoteError as exc:
            if not exc.retryable:  # refused as invalid, or credentials: retrying forever would rot the lease
                log.error(
                    "SetTaskStatus refused worker_group=%s task_key=%s: %s; giving the outcome up",
                    held.worker_group,
                    held.task_key,
                    exc,
                )
                self._end(held, LeaseState.LOST, f"lost: outcome refused ({exc.code})")
                return
            held.maybe_delivered = held.maybe_delivered or isinstance(exc, Unavailable)
            held.failures += 1
            held.next_try = time.time() + backoff_s(held.failures, 1.0, 30.0)
            log.warning(
                "SetTaskStatus failed worker_group=%s task_key=%s: %s; retrying", held.worker_group, held.task_key, exc
            )
            return
        self._delivered(held)

    def _delivered(self, held: Held) -> None:
        self.forget(held.task_key, held)
        self.stats.delivered += 1
        outcome = held.outcome or {}
        log.info(
            "reported worker_group=%s task_key=%s status=%s error_id=%s",
            held.worker_group,
            held.task_key,
            outcome.get("status"),
            outcome.get("error_id") or "-",
        )
        try:
            self.leases.transition(
                held.task_key, held.worker_group, [LeaseState.REPORTING], held.final_state, epoch=held.epoch
            )
        except BrokerError as exc:
            log.warning(
                "could not record delivery worker_group=%s task_key=%s: %s", held.worker_group, held.task_key, exc
            )

    # -- the active poller's sweep ----------------------------------------------------------------------

    def sweep(self, group: str) -> None:
        """Adopt leases of dead owners; declare leases past their heartbeat deadline lost."""
        try:
            leases = self.leases.live(group)
        except BrokerError:
            return
        now = time.time()
        # Right after an outage, records lag behind beats made meanwhile: wait before writing anything off.
        settled = self._redis_back_at is None or time.monotonic() - self._redis_back_at > RECONNECT_GRACE_S
        alive: dict[str, bool] = {}
        for lease in leases:
            if lease.task_key in self._held:
                continue  # this process beats it (from memory if need be)
            if lease.heartbeat_owner == POLLER:
                # A bridge process beats it, from memory if Redis was away: never written off from Redis's
                # timestamps. Its owner keeps it while alive; else this process adopts it, and the first
                # heartbeat tells whether Data Pipeline still knows the task.
                if lease.owner == self.owner:
                    continue
                if lease.owner not in alive:
                    try:
                        alive[lease.owner] = self.is_alive(lease.owner)
                    except BrokerError:
                        return
                if not alive[lease.owner]:
                    self._adopt(lease)
                continue
            # A worker beats it: written off once silent past its deadline with its instance lock expired.
            if settled and self._stale(lease, now) and not self._worker_alive(lease):
                self._lose(lease, now)
                continue
            if lease.owner != self.owner and not alive.setdefault(lease.owner, self._alive_or_true(lease.owner)):
                self._adopt(lease)  # (so the lease names a live bridge process)

    def _alive_or_true(self, owner: str) -> bool:
        try:
            return self.is_alive(owner)
        except BrokerError:
            return True

    def _worker_alive(self, lease: Lease) -> bool:
        """Whether a worker still renews this lease's instance lock (liveness per task)."""
        if lease.state not in (LeaseState.RUNNING, LeaseState.REPORTING) or not lease.run_lock:
            return False
        try:
            return bool(self.leases.redis.exists(lease.run_lock))
        except Exception:  # redis errors: cannot tell, so do not write it off now
            return True

    @staticmethod
    def _stale(lease: Lease, now: float) -> bool:
        if lease.state == LeaseState.CLAIMED and not lease.acked:
            return now > lease.claimed_at + ACK_LIMIT_S + LOST_GRACE_S
        return now > lease.last_seen + (lease.progress_deadline_s or 300.0) + LOST_GRACE_S

    def _lose(self, lease: Lease, now: float) -> None:
        try:
            result = self.leases.transition(
                lease.task_key, lease.worker_group, [lease.state], LeaseState.LOST, epoch=lease.epoch
            )
        except BrokerError:
            return
        if result.ok:
            self.stats.lost += 1
            self.forget(lease.task_key)
            log.warning(
                "lost worker_group=%s task_key=%s: %s with no heartbeat for %.0f s (owner %s)",
                lease.worker_group,
                lease.task_key,
                lease.state,
                now - lease.last_seen,
                lease.heartbeat_owner or lease.owner,
            )

    def _adopt(self, lease: Lease) -> None:
        try:
            won = self.leases.adopt(lease, self.owner)
        except BrokerError:
            return
        if not won:
            return
        self.stats.adopted += 1
        log.warning(
            "adopted worker_group=%s task_key=%s (%s) from dead bridge process %s",
            lease.worker_group,
            lease.task_key,
            lease.state,
            lease.owner,
        )
        if lease.state in (LeaseState.CLAIMED, LeaseState.QUEUED) or (
            lease.state == LeaseState.REPORTING and lease.heartbeat_owner == POLLER
        ):
            held = Held.from_lease(lease)
            if lease.state == LeaseState.QUEUED and not lease.queued_at:
                held.queued_at = time.time()
            self.track(held)

    # -- shutdown -----------------------------------------------------------------------------------------

    def fail_unstarted(self, error_id: str = "BridgeShutdown", groups: set[str] | None = None) -> int:
        """Fail every lease (of ``groups``) no worker has taken, so Data Pipeline retries it promptly; how many."""
        count = 0
        for held in self.held():
            if (
                (groups is None or held.worker_group in groups)
                and held.state in (LeaseState.CLAIMED, LeaseState.QUEUED)
                and held.acked
                and self.fail(held, error_id, "the bridge shut down before a worker started this task")
            ):
                count += 1
                self.stats.shutdown_failed += 1
        return count

    def deliver_all(self, timeout_s: float) -> int:
        """Keep delivering recorded outcomes (and beating them) for up to ``timeout_s``; returns what is left."""
        deadline = time.monotonic() + timeout_s
        self.reconcile()  # (outcomes a worker handed over since the last tick)
        while self.undelivered() and time.monotonic() < deadline:
            self.reconcile()
            self.beat_due()
            for held in self.held():
                if held.state == LeaseState.REPORTING:
                    self.deliver(held)
            time.sleep(KEEPER_TICK_S)
        return self.undelivered()


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
