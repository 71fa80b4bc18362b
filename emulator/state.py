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
    Instance,
    Pipeline,
    Runner,
    attempt_from_json,
    instance_from_json,
    pipeline_from_json,
    runner_from_json,
    to_json,
)
from emulator.store import Store

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(pipeline_id, object_id): instance and attempt ids are unique only within a pipeline."""

Record = Pipeline | Instance | Attempt | Runner


def record_key(record: Record) -> tuple[str, str]:
    """The store's (kind, key) for a record."""
    if isinstance(record, Pipeline):
        return "pipeline", record.pipeline_id
    if isinstance(record, Instance):
        return "instance", f"{record.pipeline_id}/{record.instance_id}"
    if isinstance(record, Attempt):
        return "attempt", f"{record.pipeline_id}/{record.attempt_id}"
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
        self.attempts: dict[Key, Attempt] = {}
        self.tasks: dict[str, Key] = {}
        self.runners: dict[str, Runner] = {}
        #: Attempts ready to hand out, per worker group, in the order they became ready.
        self.queues: dict[str, deque[Key]] = {}
        self._conditions: dict[str, threading.Condition] = {}
        self._dirty: dict[tuple[str, str], Record | None] = {}
        self._timers: list[tuple[float, int, str, Key]] = []
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

    def flush(self) -> None:
        """Write every changed record to the store in one transaction."""
        if not self._dirty:
            return
        rows = [(kind, key, None if rec is None else to_json(rec)) for (kind, key), rec in self._dirty.items()]
        self._dirty.clear()
        self.store.write(rows)

    def load(self) -> None:
        """Read the stored records back (at start-up)."""
        data = self.store.load()
        for raw in data.get("pipeline", []):
            pipeline = pipeline_from_json(raw)
            self.pipelines[pipeline.pipeline_id] = pipeline
        for raw in data.get("instance", []):
            instance = instance_from_json(raw)
            self.instances[(instance.pipeline_id, instance.instance_id)] = instance
        for raw in data.get("attempt", []):
            attempt = attempt_from_json(raw)
            self.attempts[(attempt.pipeline_id, attempt.attempt_id)] = attempt
            if attempt.task_id:
                self.tasks[attempt.task_id] = (attempt.pipeline_id, attempt.attempt_id)
        for raw in data.get("runner", []):
            runner = runner_from_json(raw)
            self.runners[runner.taskrunner_id] = runner

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

    def add_timer(self, due: float, kind: str, key: Key) -> None:
        """Call the handler for ``kind`` with ``key`` at clock time ``due`` (handlers re-check state)."""
        heapq.heappush(self._timers, (due, next(self._timer_seq), kind, key))
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
                wait = self.clock.real_seconds(self._timers[0][0] - now) if self._timers else 1.0
                self._timer_wakeup.wait(min(wait, 1.0))

    def fire_due_timers(self, handlers: dict[str, Callable[[Key], None]]) -> float:
        """Fire every timer due by the clock's current time (call with ``lock`` held); returns that time."""
        now = self.clock.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._timers)
            try:
                handlers[kind](key)
            except Exception:  # a bug in one handler must not stop every timer
                log.critical("timer %s for %s failed", kind, key, exc_info=True)
            self.flush()
        return now

    def stats(self) -> dict[str, Any]:
        """Sizes for the admin API."""
        return {
            "pipelines": len(self.pipelines),
            "instances": len(self.instances),
            "attempts": len(self.attempts),
            "queued": {group: len(q) for group, q in self.queues.items()},
            "timers": len(self._timers),
        }
