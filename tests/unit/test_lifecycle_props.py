"""Property: random runner and operator behaviour never breaks the task lifecycle.

An in-process :class:`emulator.service.Service` (memory store, a hand-driven clock, timers fired
by the test) runs a small pipeline: an activity ``A``, and ``B`` that depends on ``A`` and is
guarded by a runner-side precondition ``P``. Random sequences of polls, acknowledgements,
progress reports, FINISHED / FAILED / FALSE, cancels, reruns and clock advances must only ever
raise :class:`ServiceError`, never leave two open hand-outs of one instance, and, once a runner
keeps finishing whatever it gets, bring every instance to a final status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.clock import Clock
from emulator.config import Rehandout, ServiceConfig
from emulator.definition import definition_file_to_api
from emulator.errors import ServiceError
from emulator.model import BLOCKING, FINAL, Instance, Status
from emulator.service import Service
from emulator.state import Key
from emulator.store import MemoryStore

START = 1_900_000_000.0


class ManualClock(Clock):
    """A clock that moves only when the test advances it; real time (deadlines) moves with it."""

    def __init__(self) -> None:
        super().__init__()
        self.t = START

    def now(self) -> float:
        return self.t

    def real_now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


class Harness:
    """One service, one pipeline, and a runner that remembers every task id it was given."""

    def __init__(self, rehandout: Rehandout, failure_mode: str, max_retries: int) -> None:
        config = ServiceConfig(
            poll_wait_s=0.001,
            ack_timeout_s=120,
            progress_timeout_s=300,
            rehandout=rehandout,
            default_retry_delay_s=120,
        )
        self.clock = ManualClock()
        self.service = Service(config, store=MemoryStore(), clock=self.clock)
        self.timer_errors: list[BaseException] = []
        self.handlers = {kind: self._recording(h) for kind, h in self.service.lifecycle.timer_handlers().items()}
        self.held: list[str] = []
        doc = {
            "objects": [
                {
                    "id": "Default",
                    "scheduleType": "ondemand",
                    "workerGroup": "wg",
                    "failureAndRerunMode": failure_mode,
                    "maximumRetries": str(max_retries),
                    "retryDelay": "2 minutes",
                    "attemptTimeout": "20 minutes",
                },
                {"id": "A", "type": "ShellCommandActivity", "command": "true"},
                {"id": "P", "type": "ShellCommandPrecondition", "command": "true", "preconditionTimeout": "7 minutes"},
                {"id": "B", "type": "ShellCommandActivity", "command": "true"}
                | {"dependsOn": {"ref": "A"}, "precondition": {"ref": "P"}},
            ]
        }
        objects, _, _ = definition_file_to_api(doc)
        self.pipeline_id = self.call("CreatePipeline", {"name": "p", "uniqueId": "u"})["pipelineId"]
        put = self.call("PutPipelineDefinition", {"pipelineId": self.pipeline_id, "pipelineObjects": objects})
        assert not put["errored"], put
        self.call("ActivatePipeline", {"pipelineId": self.pipeline_id})

    def _recording(self, handler: Callable[[Key], None]) -> Callable[[Key], None]:
        def run(key: Key) -> None:
            try:
                handler(key)
            except BaseException as exc:  # State swallows timer errors; the property must see them
                self.timer_errors.append(exc)
                raise

        return run

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.service.call(operation, params)

    def attempt(self, operation: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Call an operation; a ServiceError is an allowed answer (``None``), anything else fails."""
        try:
            return self.call(operation, params)
        except ServiceError:
            return None

    @property
    def instances(self) -> list[Instance]:
        return [i for (pid, _), i in self.service.state.instances.items() if pid == self.pipeline_id]

    # -- actions ---------------------------------------------------------------------------------

    def poll(self) -> str | None:
        reply = self.attempt("PollForTask", {"workerGroup": "wg", "hostname": "h"})
        task = (reply or {}).get("taskObject")
        if task:
            self.held.append(task["taskId"])
            return str(task["taskId"])
        return None

    def held_task(self, index: int) -> str | None:
        return self.held[index % len(self.held)] if self.held else None

    def report(self, index: int) -> None:
        task_id = self.held_task(index)
        if task_id is not None:
            self.attempt("ReportTaskProgress", {"taskId": task_id})

    def end(self, index: int, status: str) -> None:
        task_id = self.held_task(index)
        if task_id is not None:
            self.attempt(
                "SetTaskStatus", {"taskId": task_id, "taskStatus": status, "errorId": "E", "errorMessage": "m"}
            )

    def set_status(self, index: int, status: str) -> None:
        ids = sorted(i.instance_id for i in self.instances)
        if ids:
            self.attempt(
                "SetStatus", {"pipelineId": self.pipeline_id, "objectIds": [ids[index % len(ids)]]} | {"status": status}
            )

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        with self.service.state.lock:
            self.service.state.fire_due_timers(self.handlers)

    def apply(self, action: tuple[str, int]) -> None:
        name, arg = action
        if name == "poll":
            self.poll()
        elif name == "report":
            self.report(arg)
        elif name in ("FINISHED", "FAILED", "FALSE"):
            self.end(arg, name)
        elif name in ("TRY_CANCEL", "RERUN"):
            self.set_status(arg, name)
        else:
            self.advance(arg)

    # -- invariants ------------------------------------------------------------------------------

    def check(self) -> None:
        assert not self.timer_errors, self.timer_errors
        open_by_instance: dict[str, list[str]] = {}
        for (pid, _), attempt in self.service.state.attempts.items():
            if pid == self.pipeline_id and attempt.open:
                open_by_instance.setdefault(attempt.instance_id, []).append(attempt.attempt_id)
        for instance_id, open_attempts in open_by_instance.items():
            assert len(open_attempts) == 1, f"{instance_id} has open attempts {open_attempts}"
            instance = self.service.state.instances[(self.pipeline_id, instance_id)]
            assert instance.head_attempt == open_attempts[0]
            assert instance.status not in FINAL, f"{instance_id} is {instance.status} with {open_attempts} open"

    def settled(self, instance: Instance) -> bool:
        """Final, or waiting forever on a dependency that failed (failureAndRerunMode none)."""
        if instance.status in FINAL:
            return True
        deps = [self.service.state.instances[(self.pipeline_id, d)] for d in instance.depends_on]
        return instance.status == Status.WAITING_ON_DEPENDENCIES and any(d.status in BLOCKING for d in deps)

    def drain(self) -> None:
        """Be a good runner: finish everything held, take and finish new tasks, let time pass."""
        for _ in range(100):
            if all(self.settled(i) for i in self.instances):
                return
            for task_id in list(self.held):
                self.attempt("ReportTaskProgress", {"taskId": task_id})
                self.attempt("SetTaskStatus", {"taskId": task_id, "taskStatus": "FINISHED"})
            self.held.clear()
            if self.poll() is None:
                self.advance(61)
            self.check()
        raise AssertionError(f"not settled: {[(i.instance_id, i.status) for i in self.instances]}")


#: Seconds an ``advance`` moves the clock: around the retry delay (120 s), ack timeout (120 s),
#: progress timeout (300 s), preconditionTimeout (420 s) and attemptTimeout (1200 s).
ADVANCES = (1, 61, 121, 301, 421, 1201)
#: Action names, weighted by repetition so polls and clock advances (which open and close
#: hand-outs) come often enough to matter in 50 examples.
NAMES = ("poll", "poll", "poll", "report", "report", "FINISHED", "FAILED", "FAILED", "FALSE", "TRY_CANCEL", "RERUN")
ACTIONS = st.one_of(
    st.tuples(st.sampled_from(NAMES), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.sampled_from(ADVANCES)),
)


@settings(max_examples=50, deadline=None)
@given(
    rehandout=st.sampled_from(list(Rehandout)),
    failure_mode=st.sampled_from(["none", "cascade"]),
    max_retries=st.integers(0, 2),
    actions=st.lists(ACTIONS, min_size=10, max_size=60),
)
def test_random_runner_behaviour_keeps_the_lifecycle_sound(
    rehandout: Rehandout, failure_mode: str, max_retries: int, actions: list[tuple[str, int]]
) -> None:
    # Given a fresh service running the pipeline
    harness = Harness(rehandout, failure_mode, max_retries)

    # When runners and operators do random things (any non-ServiceError raises out of here)
    for action in actions:
        harness.apply(action)
        # Then no instance ever has two open hand-outs
        harness.check()

    # And once a runner keeps finishing its tasks, every instance settles
    harness.drain()
    assert all(harness.settled(i) for i in harness.instances)
