"""Broker outage (DESIGN.md §4): while the broker is unreachable the bridge claims nothing new, the leases it
already holds keep being heartbeated, and publishing resumes when the broker returns. Both brokers.

Each test runs the whole stack: the local service (Periods scaled 3x, so ``reportProgressTimeout: 1 minute``
is a 20 s progress deadline), a private redis-server, one threads-pool worker, and ``bridge start``
heartbeating every 2 s with room for one queued lease beyond the worker's slots. The first commands to start
sleep long, the others briefly, so when the broker goes down there are running tasks, a queued lease waiting
for a busy slot, and tasks still pending in Data Pipeline; the poller is idle at its bound (no poll in
flight).

* RabbitMQ broker (a private node) with Redis for the leases: the node is stopped for longer than the
  progress deadline. Both running tasks end meanwhile, 6 s apart, freeing two slots. At most one claim may
  slip through while the bridge notices the outage (and it must then be held and beaten like any queued
  lease); the second freed slot must stay empty. Every queued lease is beaten all along (its ``last_beat``
  in Redis advances) and the service never times one out (every attempt count stays 1).
* Redis as broker and lease store: Redis is stopped for six heartbeat intervals (less than the deadline);
  the queued task's ``reportProgressTime`` at the service keeps advancing (the keeper beats from what it
  last read), and nothing is claimed.

After the broker returns, every instance ends FINISHED on its first attempt, each command started once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC
from pathlib import Path

import pytest
import redis

from bridge.leases import LeaseStore
from emulator.periods import parse_datetime
from tests.integration.bridge_stack import FINAL, Stack, instances, run_pipeline
from tests.rabbit import RabbitNode, restartable_port
from tests.support import RedisServer, shell_activity, wait_for

#: ``reportProgressTimeout: 1 minute`` divided by ``--time-scale 3``.
DEADLINE_S = 20.0
BEAT_S = 2.0
GROUP = "outage"
EMULATOR_ARGS = ["--poll-wait", "2", "--time-scale", "3"]


def stack_env(slots: int) -> dict[str, str]:
    return {
        "BRIDGE_HEARTBEAT_INTERVAL_S": str(BEAT_S),
        "BRIDGE_PROGRESS_DEADLINE_S": str(DEADLINE_S),
        # The worker's slots plus one queued lease, whichever bound the bridge applies (cap, slots + allowance).
        "BRIDGE_MAX_IN_FLIGHT": str(slots + 1),
        "BRIDGE_QUEUE_ALLOWANCE": "1",
        # A Redis outage shorter than this must not make a running command fence itself off.
        "BRIDGE_RUNNING_TTL_S": "60",
    }


@pytest.fixture
def rabbit() -> Iterator[RabbitNode]:
    node = RabbitNode()
    try:
        yield node.start()
    finally:
        node.cleanup()


def start_stack(slots: int, *, appendonly: bool = False) -> Stack:
    """The service and a private Redis on a port outside the ephemeral range (it may be restarted)."""
    stack = Stack(EMULATOR_ARGS, **stack_env(slots))
    stack.redis.cleanup()
    stack.redis = RedisServer(appendonly=appendonly)
    stack.redis.port = restartable_port()
    return stack.start()


# -- given -------------------------------------------------------------------------------------------------


def journaled_tasks(stack: Stack, count: int, long_sleeps_s: Sequence[float]) -> tuple[str, list[str], Path]:
    """``count`` activities; the n-th to start sleeps ``long_sleeps_s[n]``, any later one 1 s.

    Returns the pipeline id, the component names and the journal each command appends a START line to.
    """
    journal = stack.dir / "journal"
    sleeps = "".join(
        f"{'if' if n == 0 else 'elif'} mkdir {stack.dir}/long{n} 2>/dev/null; then sleep {seconds:g}; "
        for n, seconds in enumerate(long_sleeps_s)
    )
    command = f'echo "START $DP_OBJECT_ID $DP_ATTEMPT_ID" >> {journal}; {sleeps}else sleep 1; fi'
    names = [f"Task{n}" for n in range(1, count + 1)]
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        *(shell_activity(name, command=command) for name in names),
        reportProgressTimeout="1 minute",
    )
    return pipeline, names, journal


def starts(journal: Path) -> list[list[str]]:
    try:
        return [line.split() for line in journal.read_text().splitlines() if line.startswith("START")]
    except FileNotFoundError:
        return []


def leases(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Every lease record in Redis by task key."""
    prefix = LeaseStore.lease_key("")
    return {
        key.removeprefix(prefix): client.hgetall(key)
        for key in client.scan_iter(prefix + "*")
        if client.type(key) == "hash"
    }


def queued(client: redis.Redis) -> dict[str, dict[str, str]]:
    return {key: lease for key, lease in leases(client).items() if lease.get("state") == "queued"}


def busy_with_one_queued(stack: Stack, client: redis.Redis, journal: Path, running: int) -> tuple[str, dict[str, str]]:
    """Wait until ``running`` commands run and one lease is queued behind them, the poller idle at its bound."""
    wait_for(lambda: len(starts(journal)) == running, timeout=60, what=f"{running} command(s) to start")
    found: dict[str, dict[str, str]] = wait_for(
        lambda: len(q := queued(client)) == 1 and q, timeout=30, what="a queued lease"
    )
    # No poll in flight: with tasks pending, a poller that may claim calls PollForTask at once.
    wait_for(lambda: polls_steady(stack, 3.0), timeout=30, what="the poller to stop polling at its bound")
    return next(iter(found.items()))


def polls_steady(stack: Stack, window_s: float) -> bool:
    before = stack.counters("PollForTask")
    time.sleep(window_s)
    return stack.counters("PollForTask") == before


def show_output(stack: Stack) -> None:
    """Print the tail of every process's output (pytest shows it when the test fails)."""
    for proc in stack.processes:
        print(f"==== {' '.join(proc.cmd[:6])}\n" + "\n".join(proc.output.lines[-150:] if proc.output else []))


# -- then ----------------------------------------------------------------------------------------------------


def all_finished_once(stack: Stack, pipeline: str, names: list[str], journal: Path, timeout: float = 150.0) -> None:
    wait_for(
        lambda: (
            len(found := instances(stack.dp, pipeline)) == len(names)
            and all(i["@status"] in FINAL for i in found.values())
        ),
        timeout=timeout,
        interval=1,
        what="every task to end",
    )
    ended = instances(stack.dp, pipeline)
    assert {name: ended[name]["@status"] for name in names} == dict.fromkeys(names, "FINISHED")
    assert {name: ended[name]["@attemptCount"] for name in names} == dict.fromkeys(names, "1")
    started = Counter(words[1] for words in starts(journal))
    assert started == Counter(names), f"executions per task: {dict(started)}"
    assert all(words[2].endswith("_Attempt=1") for words in starts(journal))


def attempt_counts(stack: Stack, pipeline: str) -> dict[str, str]:
    return {name: fields["@attemptCount"] for name, fields in instances(stack.dp, pipeline).items()}


def progress_time(stack: Stack, pipeline: str, attempt_id: str) -> float:
    """When the service last heard ReportTaskProgress for ``attempt_id`` (epoch seconds, whole seconds)."""
    found = stack.dp.describe_objects(pipelineId=pipeline, objectIds=[attempt_id])["pipelineObjects"]
    fields = {f["key"]: f.get("stringValue") for f in found[0]["fields"]}
    stamp = fields.get("reportProgressTime")
    return parse_datetime(stamp).replace(tzinfo=UTC).timestamp() if stamp else 0.0


# -- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_rabbitmq_outage_stops_claims_and_keeps_queued_leases_alive(rabbit: RabbitNode) -> None:
    # given a RabbitMQ broker, Redis for leases, a worker with two busy slots and a lease queued behind them
    stack = start_stack(slots=2)
    try:
        env = {**stack.env, "BRIDGE_BROKER_URL": rabbit.url}
        stack.worker(f"dp.{GROUP}", concurrency=2, env=env)
        stack.bridge(GROUP, env=env)
        client = redis.Redis(port=stack.redis.port, decode_responses=True)
        pipeline, names, journal = journaled_tasks(stack, 6, long_sleeps_s=[10, 16])
        first_key, _lease = busy_with_one_queued(stack, client, journal, running=2)
        polls_before = stack.counters("PollForTask")

        # when the RabbitMQ node stops for longer than the progress deadline (both running tasks end meanwhile)
        rabbit.stop()
        stopped_at = time.time()
        outage_s = DEADLINE_S + 8
        beats: dict[str, set[float]] = {}
        while time.time() < stopped_at + outage_s:
            for key, lease in queued(client).items():
                beats.setdefault(key, set()).add(float(lease.get("last_beat") or 0))
            time.sleep(0.5)
        back_at = time.time()
        polls_during = stack.counters("PollForTask") - polls_before
        held = queued(client)
        counts_during = attempt_counts(stack, pipeline)
        ended_during = sorted(n for n, i in instances(stack.dp, pipeline).items() if i["@status"] == "FINISHED")
        rabbit.start()

        # then both slots freed up during the outage, yet at most one claim slipped through while the bridge
        # noticed the broker was gone (a poll it had as good as started); the second free slot stayed empty
        assert len(ended_during) == 2, f"the two running tasks should have ended during the outage: {ended_during}"
        assert polls_during <= 1, f"{polls_during} PollForTask calls while the broker was down"
        assert len(held) == 1 + polls_during, f"queued leases at the end of the outage: {sorted(held)}"
        # and every queued lease was beaten to the end of the outage, longer than the progress deadline,
        # without the service ever timing one out or handing it out again
        for key in held:
            last = max(beats[key])
            assert last >= back_at - 2 * BEAT_S - 1, f"{key}: last beat {back_at - last:.1f} s before the end"
        assert len([b for b in beats[first_key] if b > stopped_at]) >= outage_s / BEAT_S / 2
        assert set(counts_during.values()) == {"1"}, counts_during

        # and once the broker is back, publishing resumes: every task runs exactly once and finishes
        all_finished_once(stack, pipeline, names, journal)
    finally:
        show_output(stack)
        stack.stop()


@pytest.mark.timeout(300)
def test_redis_outage_keeps_beating_the_queued_lease_and_claims_nothing() -> None:
    # given Redis as broker and lease store (with an append-only file, so a restart keeps queues and leases),
    # a worker with one busy slot and a lease queued behind it
    stack = start_stack(slots=1, appendonly=True)
    try:
        stack.worker(f"dp.{GROUP}", concurrency=1)
        stack.bridge(GROUP)
        client = redis.Redis(port=stack.redis.port, decode_responses=True)
        outage_s = 6 * BEAT_S
        pipeline, names, journal = journaled_tasks(stack, 4, long_sleeps_s=[outage_s + 10])
        _key, lease = busy_with_one_queued(stack, client, journal, running=1)
        polls_before = stack.counters("PollForTask")
        progress_before = stack.counters("ReportTaskProgress")

        # when Redis stops for six heartbeat intervals (well inside the 20 s progress deadline)
        stack.redis.stop()
        stopped_at = time.time()
        heard: list[float] = []
        while time.time() < stopped_at + outage_s:
            heard.append(progress_time(stack, pipeline, lease["attempt_id"]))
            time.sleep(0.5)
        back_at = time.time()
        polls_during = stack.counters("PollForTask") - polls_before
        progress_during = stack.counters("ReportTaskProgress") - progress_before
        counts_during = attempt_counts(stack, pipeline)
        stack.redis.start()

        # then nothing was claimed while Redis was down
        assert polls_during == 0, f"{polls_during} PollForTask call(s) while Redis was down"
        # and the queued task was heartbeated throughout: the service heard from it late in the outage
        assert max(heard) >= back_at - 2 * BEAT_S - 1, (
            f"the queued task's last ReportTaskProgress came {back_at - max(heard):.0f} s before Redis returned"
            f" ({progress_during} ReportTaskProgress calls in all during the outage)"
        )
        assert set(counts_during.values()) == {"1"}, counts_during

        # and once Redis is back, every task runs exactly once and finishes
        all_finished_once(stack, pipeline, names, journal)
    finally:
        show_output(stack)
        stack.stop()
