"""The service's in-memory state, its lock, its timers and write-through to the store."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from emulator.clock import Clock
from emulator.config import ServiceConfig
from emulator.model import (
    Attempt,
    FiredAction,
    Instance,
    Pipeline,
    Runner,
    attempt_from_json,
    fired_action_from_json,
    instance_from_json,
    pipeline_from_json,
    runner_from_json,
    to_json,
)
from emulator.store import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(pipeline_id, object_id): instance and attempt ids are unique only within a pipeline."""

Record = Pipeline | Instance | Attempt | Runner | FiredAction


def record_key(record: Record) -> tuple[str, str]:
    """The store's (kind, key) for a record."""
    if isinstance(record, Pipeline):
        return "pipeline", record.pipeline_id
    if isinstance(record, Instance):
        return "instance", f"{record.pipeline_id}/{record.instance_id}"
    if isinstance(record, Attempt):
        return "attempt", f"{record.pipeline_id}/{record.attempt_id}"
    if isinstance(record, FiredAction):
        return "action", f"{record.seq:09d}"
    return "runner", record.taskrunner_id


class State:
    """Every record the service holds, guarded by one lock.

    Every public operation takes ``lock``, changes records, calls ``touch`` on what it changed and
    ``flush`` before releasing, so the store always holds a state some operation left behind.
    """

    def __init__(self, config: ServiceConfig, clock: Clock, store: Store) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.lock = threading.RLock()
        self.pipelines: dict[str, Pipeline] = {}
        self.instances: dict[Key, Instance] = {}
        #: The same instances by (pipeline_id, component_id), in creation order (see ``add_instance``).
        self._by_component: dict[Key, list[Instance]] = {}
        #: Reverse of ``Instance.depends_on``: (pipeline_id, instance_id) -> ids of instances waiting on it.
        self._dependents: dict[Key, list[str]] = {}
        self.attempts: dict[Key, Attempt] = {}
        self.tasks: dict[str, Key] = {}
        self.runners: dict[str, Runner] = {}
        #: Actions fired (``onFail``, ``onSuccess``, ``onLateAction``), in order.
        self.fired_actions: list[FiredAction] = []
        #: Attempts ready to hand out, per worker group, in the order they became ready.
        self.queues: dict[str, deque[Key]] = {}
        self._conditions: dict[str, threading.Condition] = {}
        self._dirty: dict[tuple[str, str], Record | None] = {}
        #: Timers due at a real time (deadlines), and timers due at a service-clock time (schedules).
        self._timers: list[tuple[float, int, str, Key]] = []
        self._clock_timers: list[tuple[float, int, str, Key]] = []
        self._timer_seq = itertools.count()
        self._timer_wakeup = threading.Condition(self.lock)

    # -- persistence -------------------------------------------------------------------------

    def touch(self, *records: Record) -> None:
        """Mark records as changed; ``flush`` writes them."""
        for record in records:
            self._dirty[record_key(record)] = record

    def forget(self, record: Record) -> None:
        """Drop a record from the store at the next flush."""
        self._dirty[record_key(record)] = None

    def flush(self, *, clock: bool = False) -> None:
        """Write every changed record to the store in one transaction, with the service clock's reading.

        Args:
            clock: Write the clock's reading even when no record changed (at shutdown, after an advance).
        """
        if not self._dirty and not clock:
            return
        rows = [(kind, key, None if rec is None else to_json(rec)) for (kind, key), rec in self._dirty.items()]
        # Written with every change, so no stored time is ever ahead of the stored clock.
        rows.append(("clock", "service", {"now": self.clock.now()}))
        self._dirty.clear()
        self.store.write(rows)

    def load(self) -> None:
        """Read the stored records back (at start-up)."""
        data = self.store.load()
        for raw in data.get("clock", []):
            # A restart continues the service clock where it stopped (or at real time, if later).
            self.clock.resume(float(raw["now"]))
        for raw in data.get("pipeline", []):
            pipeline = pipeline_from_json(raw)
            self.pipelines[pipeline.pipeline_id] = pipeline
        for raw in data.get("instance", []):
            self.add_instance(instance_from_json(raw))
        for raw in data.get("attempt", []):
            attempt = attempt_from_json(raw)
            self.attempts[(attempt.pipeline_id, attempt.attempt_id)] = attempt
            if attempt.task_id:
                self.tasks[attempt.task_id] = (attempt.pipeline_id, attempt.attempt_id)
        for raw in data.get("runner", []):
            runner = runner_from_json(raw)
            self.runners[runner.taskrunner_id] = runner
        self.fired_actions = sorted(
            (fired_action_from_json(raw) for raw in data.get("action", [])), key=lambda a: a.seq
        )

    # -- instances -----------------------------------------------------------------------------

    def add_instance(self, instance: Instance) -> None:
        """Hold a new instance (the only way instances are added, so ``instances_of`` sees them all)."""
        self.instances[(instance.pipeline_id, instance.instance_id)] = instance
        self._by_component.setdefault((instance.pipeline_id, instance.component_id), []).append(instance)
        for dep_id in instance.depends_on:
            self._dependents.setdefault((instance.pipeline_id, dep_id), []).append(instance.instance_id)

    def add_dependency(self, instance: Instance, dep_id: str) -> None:
        """Make ``instance`` wait on ``dep_id`` (the only way dependencies are added, so the index stays whole)."""
        if dep_id in instance.depends_on:
            return
        instance.depends_on.append(dep_id)
        self._dependents.setdefault((instance.pipeline_id, dep_id), []).append(instance.instance_id)

    def dependents_of(self, pipeline_id: str, instance_id: str) -> list[Instance]:
        """Instances that wait on ``instance_id``, in the order they were linked."""
        ids = self._dependents.get((pipeline_id, instance_id), [])
        return [self.instances[(pipeline_id, i)] for i in ids if (pipeline_id, i) in self.instances]

    def instances_of(self, pipeline_id: str, component_id: str) -> list[Instance]:
        """Every instance of one component, in creation order."""
        return self._by_component.get((pipeline_id, component_id), [])

    # -- worker-group queues -------------------------------------------------------------------

    def condition(self, worker_group: str) -> threading.Condition:
        """The condition held polls of ``worker_group`` wait on (shares the state lock)."""
        cond = self._conditions.get(worker_group)
        if cond is None:
            cond = self._conditions[worker_group] = threading.Condition(self.lock)
        return cond

    def enqueue(self, worker_group: str, key: Key, *, front: bool = False) -> None:
        """Make an attempt available to ``worker_group`` and wake a held poll."""
        queue = self.queues.setdefault(worker_group, deque())
        if front:
            queue.appendleft(key)
        else:
            queue.append(key)
        self.condition(worker_group).notify()

    # -- timers --------------------------------------------------------------------------------

    def real_now(self) -> float:
        """Real time in epoch seconds: what every runner-facing deadline is measured in."""
        return self.clock.real_now()

    def add_timer(self, due: float, kind: str, key: Key) -> None:
        """Call the handler for ``kind`` with ``key`` at real time ``due`` (handlers re-check state)."""
        heapq.heappush(self._timers, (due, next(self._timer_seq), kind, key))
        self._timer_wakeup.notify()

    def add_clock_timer(self, clock_due: float, kind: str, key: Key) -> None:
        """Like ``add_timer``, at service-clock time ``clock_due`` (a schedule's next run).

        It fires once the clock reaches ``clock_due``: sooner when the clock is advanced (call
        ``wake_timers`` after advancing it).
        """
        heapq.heappush(self._clock_timers, (clock_due, next(self._timer_seq), kind, key))
        self._timer_wakeup.notify()

    def wake_timers(self) -> None:
        """Re-evaluate the next due timer (after the clock was advanced)."""
        with self.lock:
            self._timer_wakeup.notify()

    def run_timers(self, handlers: dict[str, Callable[[Key], None]], stop: threading.Event) -> None:
        """The timer loop: fire due timers under the lock until ``stop`` is set."""
        with self.lock:
            while not stop.is_set():
                now = self.fire_due_timers(handlers)
                wait = 1.0
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                if self._clock_timers:
                    wait = min(wait, self.clock.real_due(self._clock_timers[0][0]) - now)
                self._timer_wakeup.wait(max(0.0, wait))

    def fire_due_timers(self, handlers: dict[str, Callable[[Key], None]]) -> float:
        """Fire every timer due by now (call with ``lock`` held); returns the real time it checked at.

        Real-time timers are due by ``real_now``, clock timers by ``clock.now()``.
        """
        now = self.real_now()
        while True:
            if self._timers and self._timers[0][0] <= now:
                _, _, kind, key = heapq.heappop(self._timers)
            elif self._clock_timers and self._clock_timers[0][0] <= self.clock.now():
                _, _, kind, key = heapq.heappop(self._clock_timers)
            else:
                return now
            try:
                handlers[kind](key)
            except Exception:  # a bug in one handler must not stop every timer
                log.critical("timer %s for %s failed", kind, key, exc_info=True)
            self.flush()

    def stats(self) -> dict[str, Any]:
        """Sizes for the admin API."""
        return {
            "pipelines": len(self.pipelines),
            "instances": len(self.instances),
            "attempts": len(self.attempts),
            "queued": {group: len(q) for group, q in self.queues.items()},
            "timers": len(self._timers) + len(self._clock_timers),
        }
