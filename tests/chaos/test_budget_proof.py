"""Budget proof (DESIGN.md §4 "API budget"): with the local service throttling at AWS's own rates, the bridge
fleet never gets a task-runner call throttled, and every task still runs exactly once.

The fleet is what a user runs: two ``bridge start`` processes (one per worker group) and four
``celery -A workers worker`` processes (two per group's queue), sharing one Redis, so every process draws from
the one budget kept there (90 % of AWS's rates by default). The service counts, per operation, the calls it
refused with ThrottlingException; the tests read those counters.

* 300 short tasks: claims are bound by PollForTask's 2/s (the budget's 1.8/s once the burst is spent).
* 120 tasks of 60 s whose ``reportProgressTimeout`` (1 minute, scaled 2x: 30 s) would need 12 heartbeats a
  second at one beat per deadline / 3: more than ReportTaskProgress's 10/s, so the heartbeats must stretch.
* The first run again, shorter, with the budget turned off (``--no-rate-limit``, ``BRIDGE_RATE_LIMIT=false``):
  the service throttles, which shows the counters can catch a fleet that overspends.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bridge.admission import budget_cap
from bridge.keeper import stretched_period_s
from bridge.ratelimit import AWS_LIMITS
from tests.integration.bridge_stack import Stack, instances
from tests.support import ondemand_definition, put_definition, shell_activity, wait_for

GROUPS = ("budget-a", "budget-b")
#: The task-runner operations whose throttles the budget must prevent.
RUNNER_OPS = ("PollForTask", "ReportTaskProgress", "SetTaskStatus")
#: Activities per pipeline: AWS allows 100 objects per pipeline, ``Default`` included.
PER_PIPELINE = 75
WORKERS_PER_GROUP = 2


@pytest.fixture
def stack_factory() -> Iterator[Any]:
    """Start stacks (service with AWS's throttling, private Redis); all are stopped after the test."""
    started: list[Stack] = []

    def start(emulator_args: Sequence[str], **env: str) -> Stack:
        stack = Stack(["--throttle", *emulator_args], **env)
        started.append(stack)
        return stack.start()

    yield start
    for stack in started:
        show_output(stack)
        stack.stop()


def start_fleet(stack: Stack, concurrency: int, bridge_args: Sequence[str] = (), **env: str) -> None:
    """Four workers (two per group's queue, started side by side), then one ``bridge start`` per group."""
    fleet_env = {**stack.env, **env}
    queues = [f"dp.{group}" for group in GROUPS for _ in range(WORKERS_PER_GROUP)]
    with ThreadPoolExecutor(len(queues)) as pool:
        list(pool.map(lambda q: stack.worker(q, concurrency=concurrency, env=fleet_env), queues))
    for group in GROUPS:
        stack.bridge(group, extra=bridge_args, env=fleet_env)


def create_pipelines(stack: Stack, per_group: int, command: str, **default_fields: str) -> dict[str, str]:
    """``per_group`` activities for each group, in pipelines of at most ``PER_PIPELINE``; pipeline id -> group."""
    pipelines: dict[str, str] = {}
    for group in GROUPS:
        for first in range(0, per_group, PER_PIPELINE):
            names = [f"Task{n:03d}" for n in range(first + 1, min(per_group, first + PER_PIPELINE) + 1)]
            doc = ondemand_definition(
                *(shell_activity(name, command=command) for name in names),
                workerGroup=group,
                maximumRetries="0",
                **default_fields,
            )
            pipeline_id: str = stack.dp.create_pipeline(name="budget", uniqueId=str(uuid.uuid4()))["pipelineId"]
            result = put_definition(stack.dp, pipeline_id, doc)
            assert not result["errored"], result["validationErrors"]
            pipelines[pipeline_id] = group
    return pipelines


def activate(stack: Stack, pipelines: dict[str, str]) -> None:
    for pipeline_id in pipelines:
        stack.dp.activate_pipeline(pipelineId=pipeline_id)


def journal_command(journal: Path, then: str = "") -> str:
    return f'echo "START $DP_PIPELINE_ID $DP_OBJECT_ID $DP_ATTEMPT_ID" >> {journal}' + (f"; {then}" if then else "")


# -- reading the service --------------------------------------------------------------------------------------------


def counters(stack: Stack) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = stack.emulator.admin("counters")["counters"]
    return found


def throttled(stack: Stack) -> dict[str, int]:
    snapshot = counters(stack)
    return {op: snapshot.get(op, {}).get("throttled", 0) for op in RUNNER_OPS}


def any_throttled(stack: Stack) -> dict[str, int] | None:
    counts = throttled(stack)
    return counts if any(counts.values()) else None


def reported(stack: Stack) -> int:
    """SetTaskStatus calls the service ran (neither throttled nor failed)."""
    calls = counters(stack).get("SetTaskStatus", {})
    return calls.get("calls", 0) - calls.get("throttled", 0) - calls.get("errors", 0) - calls.get("faulted", 0)


def wait_reported(stack: Stack, total: int, timeout: float) -> None:
    wait_for(
        lambda: reported(stack) >= total,
        timeout=timeout,
        interval=2,
        what=f"{total} SetTaskStatus calls (throttles so far: {throttled(stack)})",
    )


def assert_each_finished_once(stack: Stack, pipelines: dict[str, str], journal: Path, total: int) -> None:
    """Every instance FINISHED on its first attempt, no attempt beyond the first, each command started once."""
    statuses: Counter[str] = Counter()
    attempt_counts: Counter[str] = Counter()
    for pipeline_id in pipelines:
        found = instances(stack.dp, pipeline_id)
        statuses.update(fields["@status"] for fields in found.values())
        attempt_counts.update(fields["@attemptCount"] for fields in found.values())
    assert statuses == Counter({"FINISHED": total}), dict(statuses)
    assert attempt_counts == Counter({"1": total}), dict(attempt_counts)
    assert stack.emulator.admin("stats")["attempts"] == total
    lines = [line.split() for line in journal.read_text().splitlines() if line.startswith("START")]
    starts = Counter((words[1], words[2]) for words in lines)
    assert len(starts) == total and set(starts.values()) == {1}, {k: v for k, v in starts.items() if v > 1}
    assert {words[1] for words in lines} == set(pipelines)


def show_output(stack: Stack) -> None:
    """Print the last lines of every process and the service's counters (pytest shows it on failure)."""
    for proc in stack.processes:
        print(f"==== {' '.join(proc.cmd[:6])}\n" + "\n".join(proc.output.lines[-40:] if proc.output else []))
    if stack.emulator.proc is not None:
        print(f"==== counters: {counters(stack)}")


# -- tests ------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_three_hundred_short_tasks_are_never_throttled(stack_factory: Any) -> None:
    # given the service throttling at AWS's rates and a fleet that may queue plenty ahead of its 64 slots
    stack = stack_factory(["--poll-wait", "10"], BRIDGE_MAX_IN_FLIGHT="200", BRIDGE_QUEUE_ALLOWANCE="64")
    start_fleet(stack, concurrency=16)
    journal = stack.dir / "journal"
    pipelines = create_pipelines(stack, 150, journal_command(journal))

    # when 300 short tasks are activated at once
    activate(stack, pipelines)
    wait_reported(stack, 300, timeout=300)

    # then the service throttled none of the fleet's task-runner calls
    assert throttled(stack) == dict.fromkeys(RUNNER_OPS, 0)
    # and every task ran exactly once and finished
    assert_each_finished_once(stack, pipelines, journal, 300)


@pytest.mark.timeout(420)
def test_hundred_twenty_long_tasks_stretch_their_heartbeats_within_budget(stack_factory: Any) -> None:
    # given 120 tasks of 60 s with a 30 s progress deadline ("1 minute" scaled 2x) on 120 worker slots:
    # one heartbeat per deadline / 3 would be 12 ReportTaskProgress a second, over AWS's 10 (and the budget's 9)
    stack = stack_factory(
        ["--poll-wait", "10", "--time-scale", "2"],
        BRIDGE_MAX_IN_FLIGHT="200",
        BRIDGE_QUEUE_ALLOWANCE="0",
        BRIDGE_PROGRESS_DEADLINE_S="30",
    )
    start_fleet(stack, concurrency=30)
    journal = stack.dir / "journal"
    pipelines = create_pipelines(stack, 60, journal_command(journal, "sleep 60"), reportProgressTimeout="1 minute")

    # when they all run
    activate(stack, pipelines)
    wait_reported(stack, 120, timeout=300)

    # then no task-runner call was throttled: the heartbeats stretched (admission may also have held claims back)
    assert throttled(stack) == dict.fromkeys(RUNNER_OPS, 0)
    # and no task was timed out and handed out again: each ran once and finished
    assert_each_finished_once(stack, pipelines, journal, 120)


def overlaps(journal: Path) -> int:
    """Most commands running at once, from the journal's ``START``/``END`` lines (``... <epoch seconds>``)."""
    events = []
    for line in journal.read_text().splitlines():
        words = line.split()
        if words and words[0] in ("START", "END"):
            events.append((float(words[-1]), 1 if words[0] == "START" else -1))
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an END before a START at the same instant
        running += step
        most = max(most, running)
    return most


@pytest.mark.timeout(420)
def test_leases_at_the_admission_cap_all_stay_alive(stack_factory: Any) -> None:
    # given a 10 s progress deadline ("1 minute" scaled 6x) on both sides: the budget (9 ReportTaskProgress/s)
    # keeps ⌊0.9 x 9/s x 7 s⌋ = 56 leases alive with every beat stretched to one per 7 s, and the fleet has
    # 80 slots, so the budget is what admission stops at
    deadline_s = 10.0
    cap = budget_cap(0.9 * AWS_LIMITS["ReportTaskProgress"][0], stretched_period_s(deadline_s))
    assert cap == 56
    stack = stack_factory(
        ["--poll-wait", "10", "--time-scale", "6"],
        BRIDGE_MAX_IN_FLIGHT="200",
        BRIDGE_QUEUE_ALLOWANCE="0",
        BRIDGE_PROGRESS_DEADLINE_S=str(deadline_s),
    )
    start_fleet(stack, concurrency=20)
    journal = stack.dir / "journal"
    stamp = '"$DP_PIPELINE_ID $DP_OBJECT_ID $DP_ATTEMPT_ID $(date +%s.%N)"'
    command = f"echo START {stamp} >> {journal}; sleep 30; echo END {stamp} >> {journal}"
    pipelines = create_pipelines(stack, 35, command, reportProgressTimeout="1 minute")

    # when 70 tasks of 30 s (three deadlines) are activated at once
    activate(stack, pipelines)
    wait_reported(stack, 70, timeout=300)

    # then admission ran the fleet at (or just under) the cap, never over it
    most = overlaps(journal)
    assert int(0.9 * cap) <= most <= cap, (most, cap)
    # and with every beat stretched that far nothing was throttled, and no deadline was missed: no attempt
    # was handed out again, each ran once and finished
    assert throttled(stack) == dict.fromkeys(RUNNER_OPS, 0)
    assert_each_finished_once(stack, pipelines, journal, 70)


@pytest.mark.timeout(240)
def test_without_the_budget_the_service_throttles(stack_factory: Any) -> None:
    # given the first run's fleet with its budget turned off (both flag and variable, for bridge and workers)
    stack = stack_factory(
        ["--poll-wait", "10"], BRIDGE_MAX_IN_FLIGHT="200", BRIDGE_QUEUE_ALLOWANCE="64", BRIDGE_RATE_LIMIT="false"
    )
    start_fleet(stack, concurrency=16, bridge_args=["--no-rate-limit"])
    journal = stack.dir / "journal"
    pipelines = create_pipelines(stack, 75, journal_command(journal))

    # when 150 short tasks are activated at once
    activate(stack, pipelines)

    # then the service throttles the fleet: the counters the other runs read do catch overspending
    found = wait_for(
        lambda: any_throttled(stack),
        timeout=120,
        interval=1,
        what="a throttled task-runner call",
    )
    assert sum(found.values()) > 0, found  # (PollForTask or the acknowledgements, whichever runs out first)
