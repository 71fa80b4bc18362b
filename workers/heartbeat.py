"""A running task's own loops: the Data Pipeline heartbeat, and the lease guard that keeps its instance fenced.

Both stop the task through one :class:`CancelSignal`, which remembers the first reason given:

- :class:`Heartbeat` beats ReportTaskProgress every interval; ``canceled: true`` or TaskNotFound cancels.
- :class:`LeaseGuard` ticks every second, independent of the heartbeat interval: it renews the instance's running
  lock and polls the keeper's cancel relay. A renewal that finds the lease or lock superseded, or that has been
  impossible (Redis unreachable) for nearly a lock TTL, cancels the task before its lock can expire: the worker
  kills its own command rather than risk two attempts of one instance running at once (self-fencing).

Each loop runs on a thread of its own (:class:`LoopThread`), taken from daemon threads the process reuses.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from bridge.api import TaskApi
from bridge.errors import BrokerError, RemoteError, TaskGone, refused_by_budget
from bridge.fencing import Fence, RunningLock
from bridge.keeper import STRETCH_SLACK_S, Budget, beat_margin_s, retry_at

log = logging.getLogger(__name__)

#: The reason a task is stopped when its lease or running lock now belongs to another hand-out.
FENCED_SUPERSEDED = "fenced: superseded"
#: The reason a task is stopped when its running lock could not be renewed for nearly its TTL.
FENCED_UNRENEWABLE = "fenced: cannot renew running lease"
#: How long before the lock's expiry a worker that cannot renew it stops its command.
FENCE_MARGIN_S = 2.0
#: How soon a failed heartbeat is tried again (at most one interval).
RETRY_S = 5.0
GUARD_TICK_S = 1.0
#: The clock skew allowed between hosts: a beat time another host recorded may lie this far in the future and
#: still be carried on from, and it is taken as this much older than it says (so a clock behind by up to this
#: much cannot make a stretched beat late).
CLOCK_SKEW_S = 2.0


class CancelSignal(threading.Event):
    """The cancel ``Event`` handlers watch, plus the reason it was first set for."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self._lock = threading.Lock()

    def request(self, reason: str) -> bool:
        """Set the signal with ``reason``; returns False (keeping the first reason) if it was already set."""
        with self._lock:
            if self.is_set():
                return False
            self.reason = reason
            self.set()
            return True


def fenced(reason: str) -> bool:
    """Whether a cancel reason is self-fencing (nothing may be reported, the lease is someone else's)."""
    return reason.startswith("fenced")


class LoopThread:
    """One per-task loop (a heartbeat, a lease guard, a progress reporter) on a reused daemon thread.

    It offers the part of ``threading.Thread`` the loops use. Starting a new thread makes the caller wait until that
    thread holds the GIL, which on a busy worker takes up to the interpreter's switch interval (5 ms), and every
    task starts three loops on its way to the handler. Handing a loop to an idle thread of this process is a queue
    put; a thread is started only when none is idle, so a process keeps as many as it ever ran loops at once.

    Args:
        target: The loop; it returns once told to stop.
        name: The thread's name while it runs the loop (log records and thread dumps show it).
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.target = target
        self.name = name
        self._started = False
        self._ident: int | None = None
        self._done = threading.Event()

    def start(self) -> None:
        """Hand the loop to a thread; it may begin a moment later.

        Raises:
            RuntimeError: Started twice.
        """
        if self._started:
            raise RuntimeError(f"loop {self.name} started twice")
        self._started = True
        try:
            _loop_threads(os.getpid()).run(self)
        except BaseException:  # no thread runs it: never "alive", so nobody waits on it
            self._done.set()
            raise

    def run_here(self) -> None:
        """Run the loop on the calling thread (the pool's), then mark it done."""
        self._ident = threading.get_ident()
        try:
            self.target()
        except Exception:  # the thread's edge: the loop is over either way, and the thread serves the next one
            log.critical("loop %s ended with an error", self.name, exc_info=True)
        finally:
            self._done.set()

    def is_alive(self) -> bool:
        """Started and not yet returned (also while it waits for its thread)."""
        return self._started and not self._done.is_set()

    def is_current(self) -> bool:
        """Whether the caller is the thread running this loop."""
        return self.is_alive() and self._ident == threading.get_ident()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)


class _LoopThreads:
    """The daemon threads of one process that run :class:`LoopThread` loops, each idle one waiting on its inbox."""

    def __init__(self) -> None:
        self._idle: queue.SimpleQueue[queue.SimpleQueue[LoopThread]] = queue.SimpleQueue()

    def run(self, loop: LoopThread) -> None:
        try:
            inbox = self._idle.get_nowait()
        except queue.Empty:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name=loop.name, daemon=True).start()
        inbox.put(loop)

    def _serve(self, inbox: queue.SimpleQueue[LoopThread]) -> None:
        thread = threading.current_thread()
        while True:
            loop = inbox.get()
            thread.name = loop.name
            loop.run_here()
            del loop  # an idle thread must not keep the last task's heartbeat (its clients, its closures) alive
            thread.name = "loop-idle"
            self._idle.put(inbox)


@functools.cache
def _loop_threads(pid: int) -> _LoopThreads:
    """This process's loop threads (keyed by pid: a prefork child has none of its parent's threads)."""
    return _LoopThreads()


class Heartbeat:
    """Beats one task until stopped; cancels it when Data Pipeline says canceled or the task is gone.

    Args:
        api: The Data Pipeline client.
        task_id: The opaque task id.
        task_key: For log lines.
        interval_s: Seconds between beats.
        cancel: Set on ``canceled: true`` or TaskNotFound / PipelineNotFound / PipelineDeleted.
        on_beat: Called after each successful beat (records it on the lease).
        deadline_s: The task's progress deadline (stretched beats still land a margin before it).
        budget: Tells whether the shared ReportTaskProgress budget runs low; ``None``: never stretch.
        worker_group: For log lines.
        early_api: The same client for beats that could still wait: it refuses at once (``Throttled``,
            ``BUDGET_EXHAUSTED``) rather than take a token from below the budget's pressure line; ``None``: ``api``.
    """

    def __init__(
        self,
        api: TaskApi,
        task_id: str,
        task_key: str,
        interval_s: float,
        cancel: CancelSignal,
        on_beat: Callable[[float], None] | None = None,
        deadline_s: float | None = None,
        budget: Budget | None = None,
        worker_group: str = "",
        early_api: TaskApi | None = None,
    ) -> None:
        self.api = api
        self.early_api = early_api
        self.worker_group = worker_group
        self.deadline_s = deadline_s or 3 * interval_s
        self.budget = budget
        self.stretched = 0
        self._last_ok = time.time()
        self._next_beat = self._last_ok + interval_s
        self.task_id = task_id
        self.task_key = task_key
        self.interval_s = interval_s
        self.cancel = cancel
        self.on_beat = on_beat
        self.beats = 0
        self.last_beat = 0.0
        self._stop = threading.Event()
        self._thread = LoopThread(self._run, f"heartbeat-{task_key[-12:]}")

    @property
    def reason(self) -> str:
        return self.cancel.reason

    def accepted_at(self) -> float:
        """When Data Pipeline last accepted a beat (before the first one: as :meth:`continue_from` set it, else the
        start)."""
        return self._last_ok

    def continue_from(self, last_accepted: float) -> bool:
        """Take over from the beat Data Pipeline last accepted before this task (the poller's acknowledgement or the
        keeper's last beat, as the lease records it): whether the caller may leave the first beat to the loop.

        A known time becomes :attr:`last_beat` and, taken as ``CLOCK_SKEW_S`` older than it says (another host's
        clock wrote it), this loop's last accepted beat: what :meth:`accepted_at` reports (self-fencing counts from
        it) and what the next beat, stretched or not, is timed from. If it is
        younger than one interval the next beat is due an interval after it; if older, at once, from the loop,
        which sends it as any other beat (stretched under budget pressure while the deadline allows). An unknown
        time, or one further in the future than the skew allows, changes nothing: the caller must beat now.

        Args:
            last_accepted: Wall-clock time the accepted call was sent; 0 when unknown.
        """
        now = time.time()
        if last_accepted <= 0 or last_accepted > now + CLOCK_SKEW_S:
            return False
        at = min(last_accepted, now)
        self.last_beat = at  # (what the lease records, unchanged)
        self._last_ok = at - CLOCK_SKEW_S
        self._next_beat = max(now, self._last_ok + self.interval_s)
        return True

    def beat(self, early: bool = False) -> bool:
        """One ReportTaskProgress; failures other than cancellation are logged and retried next time.

        Args:
            early: The beat could still wait: send it through ``early_api`` (see the class).

        Returns:
            ``False`` only when an early beat got no token from the budget (nothing was sent).
        """
        api = self.early_api if early and self.early_api is not None else self.api
        # Data Pipeline's deadline runs from when the beat reached it, never earlier than it was sent.
        sent = time.time()
        try:
            canceled = api.report_task_progress(self.task_id)
        except TaskGone as exc:
            self._cancel(f"lost: {exc.code}")
            return True
        except RemoteError as exc:
            if early and refused_by_budget(exc):
                return False
            retry_in = min(self.interval_s, RETRY_S)
            self._next_beat = retry_at(time.time(), retry_in, self._last_ok, self.deadline_s)
            log.warning(
                "heartbeat failed worker_group=%s task_key=%s: %s; next try in %.1f s",
                self.worker_group,
                self.task_key,
                exc,
                retry_in,
            )
            return True
        if canceled:
            self._cancel("canceled by Data Pipeline")
            return True
        self.beats += 1
        self.last_beat = self._last_ok = sent
        self._next_beat = self._last_ok + self.interval_s
        if self.on_beat is not None:
            try:
                self.on_beat(self.last_beat)
            except BrokerError as exc:
                log.warning(
                    "could not record heartbeat worker_group=%s task_key=%s: %s", self.worker_group, self.task_key, exc
                )
        return True

    def _cancel(self, reason: str) -> None:
        if self.cancel.request(reason):
            # The run's end is logged once its command has stopped (``canceled worker_group=...``).
            log.info("cancel requested worker_group=%s task_key=%s: %s", self.worker_group, self.task_key, reason)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, min(1.0, self._next_beat - time.time()))):
            if self.cancel.is_set():
                return
            if time.time() >= self._next_beat:
                self.beat_when_due()

    def beat_when_due(self) -> None:
        """Beat now, or, when the budget runs low and the deadline is still far, stretch this interval."""
        now = time.time()
        latest = self._last_ok + self.deadline_s - beat_margin_s(self.deadline_s) - STRETCH_SLACK_S
        if self.budget is None or now >= latest:
            self.beat()
            return
        # It could wait: sent only while the budget is above the pressure line, else stretched.
        if not self.budget.pressure("ReportTaskProgress") and self.beat(early=True):
            return
        self._next_beat = min(now + 1.0, latest)
        if not self.stretched % 30:
            log.warning(
                "API budget pressure: stretching heartbeats of worker_group=%s task_key=%s (deadline in %.0f s)",
                self.worker_group,
                self.task_key,
                self._last_ok + self.deadline_s - now,
            )
        self.stretched += 1

    def stop(self) -> None:
        """Stop beating (idempotent); the thread ends within one interval at most."""
        self._stop.set()
        if self._thread.is_alive() and not self._thread.is_current():
            self._thread.join(timeout=self.interval_s + 1)


class LeaseGuard:
    """Keeps one attempt's running lock alive and watches its cancel relay, every ``tick_s``.

    While the command runs, any of these cancels the task: a cancel relay (its reason), a renewal that finds the
    lease or the lock held by another hand-out (``fenced: superseded``), or no successful renewal for
    ``running_ttl_s - kill_grace_s - 2`` s (``fenced: cannot renew running lease``). A shorter Redis outage only
    logs. Once the command has ended (:meth:`command_ended`) only a lease that is no longer ours stops the task:
    its outcome is real, and delivering it never waits on Redis.

    Args:
        fence: The running-lock scripts.
        lock: The lock ``take_running`` won.
        running_ttl_s: The lock's TTL, renewed on every tick.
        cancel: The task's cancel signal.
        renewed_at: ``time.monotonic()`` when the lock was taken (the last time it was known to be ours).
        tick_s: Seconds between ticks.
        kill_grace_s: Time the command is given between SIGTERM and SIGKILL (fencing starts that much earlier).
        worker_group: For log lines.
    """

    def __init__(
        self,
        fence: Fence,
        lock: RunningLock,
        running_ttl_s: float,
        cancel: CancelSignal,
        renewed_at: float,
        tick_s: float = GUARD_TICK_S,
        kill_grace_s: float = 0.0,
        deadline_s: float | None = None,
        worker_group: str = "",
    ) -> None:
        self.fence = fence
        self.worker_group = worker_group
        self.kill_grace_s = kill_grace_s
        self.deadline_s = deadline_s
        #: When Data Pipeline last accepted a heartbeat of this task (wall clock); set once the heartbeat exists.
        self.accepted_at: Callable[[], float] | None = None
        #: Recorded as the heartbeat owner if the lease record has to be restored.
        self.worker_id = "worker"
        self.lock = lock
        self.running_ttl_s = running_ttl_s
        self.cancel = cancel
        self.tick_s = tick_s
        #: The lease (or, while the command ran, the lock) belongs to another hand-out: report nothing.
        self.superseded = False
        self._renewed_at = renewed_at
        self._command_running = True
        self._unreachable_logged = False
        self._stop = threading.Event()
        self._thread = LoopThread(self._run, f"lease-guard-{lock.task_key[-12:]}")

    @property
    def fence_after_s(self) -> float:
        """How long renewals may fail before the command is stopped (ahead of the lock's expiry)."""
        # The command gets SIGTERM, then SIGKILL after the kill grace: all of that must fit before the lock expires.
        return max(self.running_ttl_s - self.kill_grace_s - FENCE_MARGIN_S, self.running_ttl_s / 4)

    def start(self) -> None:
        self._thread.start()

    def command_ended(self) -> None:
        """The command is over: from now on, only a lease that is no longer ours stops the task."""
        self._command_running = False

    def supersede(self, found: str) -> None:
        """The lease now belongs to another hand-out (found by a renewal or a lease update): fence this one out."""
        self.superseded = True
        if self.cancel.request(FENCED_SUPERSEDED):
            # The run's end is logged once its command has stopped (``fenced worker_group=...``).
            log.warning(
                "fencing worker_group=%s task_key=%s epoch=%d: %s",
                self.worker_group,
                self.lock.task_key,
                self.lock.epoch,
                found,
            )

    def tick(self) -> None:
        """One renewal and, while the command runs, one look at the cancel relay (one round trip for both)."""
        attempt_at = time.monotonic()
        try:
            accepted = self.accepted_at() if self.accepted_at is not None else None
            renewed = self.fence.renew(
                self.lock,
                self.running_ttl_s,
                last_beat=accepted,
                worker_id=self.worker_id,
                read_cancel=self._command_running,
            )
        except BrokerError as exc:
            self._unreachable(exc)
            return
        reason = renewed.cancel_reason
        self._renewed_at = attempt_at
        if self._unreachable_logged:
            log.info(
                "renewed the running lock again worker_group=%s task_key=%s", self.worker_group, self.lock.task_key
            )
            self._unreachable_logged = False
        if reason is not None and self.cancel.request(reason):
            log.info("cancel relayed worker_group=%s task_key=%s: %s", self.worker_group, self.lock.task_key, reason)
        if renewed.ok:
            return
        if self._command_running or not renewed.lease_ours:
            self.supersede(renewed.describe())

    def _must_fence(self, down_s: float) -> bool:
        """Whether Redis being unreachable for ``down_s`` means the command must stop.

        While Data Pipeline keeps accepting this task's heartbeats it hands the attempt to no one else, and no
        other copy can take the instance lock without Redis: the command goes on, and the lock is taken again
        when Redis answers. Only when heartbeats have also failed for nearly the progress deadline (Data Pipeline
        may hand the attempt out again) is the command stopped, early enough to be gone before that.
        """
        if not self._command_running:
            return False
        if self.accepted_at is None or self.deadline_s is None:
            return down_s >= self.fence_after_s
        silent_s = time.time() - self.accepted_at()
        return silent_s >= self.deadline_s - beat_margin_s(self.deadline_s) - self.kill_grace_s - FENCE_MARGIN_S

    def _unreachable(self, exc: BrokerError) -> None:
        down_s = time.monotonic() - self._renewed_at
        if self._must_fence(down_s):
            if self.cancel.request(FENCED_UNRENEWABLE):
                log.error(
                    "fencing worker_group=%s task_key=%s epoch=%d: no renewal of its running lock for %.1f s (%s); "
                    "stopping its command",
                    self.worker_group,
                    self.lock.task_key,
                    self.lock.epoch,
                    down_s,
                    exc,
                )
        elif not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning(
                "cannot renew the running lock worker_group=%s task_key=%s: %s; the command goes on while Data "
                "Pipeline accepts its heartbeats",
                self.worker_group,
                self.lock.task_key,
                exc,
            )

    def _run(self) -> None:
        # The first tick comes one tick after the start: the take has just set the lock's TTL, so a task shorter
        # than a tick costs no renewal at all. Still ticking after a cancel: the lock must hold until the stopped
        # command has really ended.
        while not self._stop.wait(self.tick_s):
            self.tick()

    def stop(self) -> None:
        """Stop ticking (idempotent); the thread ends within one tick (plus a Redis call) at most."""
        self._stop.set()
        if self._thread.is_alive() and not self._thread.is_current():
            self._thread.join(timeout=self.tick_s + 5)
