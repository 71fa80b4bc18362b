"""A worker carries heartbeating on from the bridge's acknowledgement instead of beating before its handler.

The local service (periods scaled 60x, a 9 s progress timeout), a private Redis, one threads-pool worker and
``bridge start`` with a 9 s progress deadline, so leases are beaten every 3 s. One task runs at a time, so every
ReportTaskProgress the service counts is that task's: the poller's acknowledgement, then the worker's beats.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.bridge_stack import Stack, attempts, run_pipeline, running_stack, wait_final
from tests.support import shell_activity
from workers.heartbeat import CLOCK_SKEW_S

GROUP = "wg"
DEADLINE_S = 9.0
#: The beat interval: min(--heartbeat-interval-s, deadline / 3).
INTERVAL_S = DEADLINE_S / 3
#: How late a beat may be seen: the worker's loop wakes at least every second, the counters are read every 0.1 s.
SLACK_S = 1.2


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(
        GROUP,
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", str(int(DEADLINE_S))],
        BRIDGE_PROGRESS_DEADLINE_S=str(DEADLINE_S),
        BRIDGE_KILL_GRACE_S="2",
    ) as stack:
        yield stack


class Beats:
    """When the service's ReportTaskProgress counter went up, read every 0.1 s until stopped."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.start_count = stack.counters("ReportTaskProgress")
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Beats:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        seen = self.start_count
        while not self._stop.wait(0.1):
            count = self.stack.counters("ReportTaskProgress")
            now = time.monotonic()
            self.times += [now] * (count - seen)  # two calls between reads count twice at the same time
            seen = count

    @property
    def count(self) -> int:
        return self.stack.counters("ReportTaskProgress") - self.start_count


def test_a_short_task_gets_only_the_acknowledgement(stack: Stack) -> None:
    # given no task in flight
    beats_before = stack.counters("ReportTaskProgress")
    status_before = stack.counters("SetTaskStatus")
    # when a task that ends at once runs
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Short", command="true"))
    # then it finishes, and Data Pipeline got one ReportTaskProgress for it (the poller's acknowledgement): the
    # worker started it within an interval of that, so it sent none of its own
    assert wait_final(stack.dp, pipeline, "Short")["@status"] == "FINISHED"
    assert stack.counters("SetTaskStatus") - status_before == 1
    assert stack.counters("ReportTaskProgress") - beats_before == 1


def test_a_long_task_is_beaten_every_interval_from_the_acknowledgement_and_runs_once(stack: Stack) -> None:
    # given a task that runs for longer than the progress deadline (four intervals)
    with Beats(stack) as beats:
        pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Long", command="sleep 12"))
        # when it runs to the end
        assert wait_final(stack.dp, pipeline, "Long", timeout=90)["@status"] == "FINISHED"
    # then it was never handed out again: one attempt, finished
    assert [a["@status"] for a in attempts(stack.dp, pipeline, "Long")] == ["FINISHED"]
    # and after the acknowledgement its worker beat it every interval: the first beat one interval after the
    # acknowledgement less the clock skew allowed between hosts (not at once when it started), none of the gaps
    # longer than an interval
    times = beats.times
    assert len(times) >= 1 + 3, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    first = INTERVAL_S - CLOCK_SKEW_S
    assert first - 0.5 <= gaps[0] <= first + SLACK_S, gaps
    assert max(gaps) <= INTERVAL_S + SLACK_S, gaps
