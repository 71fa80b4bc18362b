"""Prometheus metrics during a real run: ``bridge start --metrics-port`` and the workers' endpoints (both pools).

The local service (periods scaled 60x, a 10 s progress timeout), a private Redis, a threads-pool worker and a
prefork worker (two slots each, each with its own metrics port) and ``bridge start`` with ``--metrics-port``.
The endpoints are scraped with plain HTTP while tasks run and after they end, and checked against what happened:
the tasks the service handed out, their final states, and the service's own call counters.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.bridge_stack import Stack, run_pipeline, wait_final
from tests.support import ROOT, child_env, free_port, shell_activity, wait_for

GROUP = "wm"
#: Four tasks for four slots (two per worker): with one message per slot, each worker runs two at once.
N = 4
OPERATIONS = ("PollForTask", "ReportTaskProgress", "SetTaskStatus", "ReportTaskRunnerHeartbeat")


@dataclass(frozen=True)
class Scrape:
    """One scrape of an endpoint: every sample by name and labels."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every sample whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return Scrape(
        {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
    )


def listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses something on this host listens on at ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def beaten(port: int) -> Scrape | None:
    """A worker's scrape, once both of its running tasks have made their first heartbeat."""
    found = scrape(port)
    return found if found.total("dpb_worker_heartbeats_total", outcome="accepted") >= 2 else None


@dataclass(frozen=True)
class Ports:
    bridge: int
    threads: int
    prefork: int


@pytest.fixture
def stack() -> Iterator[tuple[Stack, Ports]]:
    ports = Ports(free_port(), free_port(), free_port())
    stack = Stack(
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "10"],
        BRIDGE_PROGRESS_DEADLINE_S="10",
        BRIDGE_KILL_GRACE_S="2",
    )
    try:
        stack.start()
        for pool, port in (("threads", ports.threads), ("prefork", ports.prefork)):
            env = {**stack.env, "BRIDGE_WORKER_METRICS_PORT": str(port)}
            stack.worker(f"dp.{GROUP}", pool=pool, concurrency=2, env=env)
        stack.bridge(GROUP, extra=["--metrics-port", str(ports.bridge)])
        yield stack, ports
    finally:
        stack.stop()


def test_metrics_scraped_during_and_after_a_run_match_what_happened(stack: tuple[Stack, Ports]) -> None:
    run, ports = stack
    # given N tasks that hold until a gate file appears
    gate = run.dir / "gate"
    command = f"while [ ! -e {gate} ]; do sleep 0.2; done"
    pipeline = run_pipeline(run.dp, GROUP, *(shell_activity(f"T{i}", command=command) for i in range(N)))

    # when all of them run, the bridge's endpoint shows them in flight, each with time left before its deadline
    during = wait_for(
        lambda: (found := scrape(ports.bridge)).get("dpb_leases", worker_group=GROUP, state="running") == N and found,
        timeout=90,
        what=f"{N} running leases in the bridge's metrics",
    )
    assert during.get("dpb_redis_up") == 1
    assert during.get("dpb_leader", worker_group=GROUP) == 1
    assert during.get("dpb_worker_slots", worker_group=GROUP) == 4
    assert during.get("dpb_queue_consumers", queue=f"dp.{GROUP}") == 2
    assert 0 < (during.get("dpb_lease_min_time_to_deadline_seconds", worker_group=GROUP) or 0) <= 10
    assert during.get("dpb_admission_bound", worker_group=GROUP, bound="slots") == 1
    assert (during.get("dpb_api_budget_tokens", operation="ReportTaskProgress") or 0) > 0
    # and each worker shows its two running tasks and their heartbeats, the prefork pool's children included
    for port in (ports.threads, ports.prefork):
        worker = wait_for(partial(beaten, port), timeout=10, what="each running task's first beat")
        assert worker.get("dpb_worker_tasks_running", activity_type="ShellCommandActivity") == 2

    # when the gate opens and every task ends
    gate.touch()
    for i in range(N):
        assert wait_final(run.dp, pipeline, f"T{i}", timeout=60)["@status"] == "FINISHED"

    # then the bridge's leases are back to 0, and it claimed, acknowledged and enqueued each task once
    bridge = wait_for(
        lambda: (found := scrape(ports.bridge)).total("dpb_leases", worker_group=GROUP) == 0 and found,
        timeout=30,
        what="no live lease in the bridge's metrics",
    )
    assert bridge.get("dpb_lease_min_time_to_deadline_seconds", worker_group=GROUP) is None
    assert bridge.get("dpb_claims_total", worker_group=GROUP) == N
    assert bridge.get("dpb_polls_total", worker_group=GROUP, outcome="task") == N
    assert bridge.get("dpb_acknowledgements_total", worker_group=GROUP, outcome="acknowledged") == N
    assert bridge.get("dpb_enqueue_latency_seconds_count", worker_group=GROUP) == N
    assert bridge.get("dpb_keeper_lost_total") == 0
    assert bridge.total("dpb_api_errors_total") == bridge.total("dpb_api_throttles_total") == 0
    # and each worker finished two of them: N in all, none running (a task's lease ends just before it returns)
    finished = {"activity_type": "ShellCommandActivity", "worker_group": GROUP, "outcome": "finished"}
    workers = wait_for(
        lambda: (
            (found := [scrape(ports.threads), scrape(ports.prefork)])
            and sum(w.total("dpb_worker_task_duration_seconds_count") for w in found) == N
            and found
        ),
        timeout=10,
        what="the workers to count every delivery",
    )
    assert [w.get("dpb_worker_task_duration_seconds_count", **finished) for w in workers] == [2, 2]
    assert [w.total("dpb_worker_tasks_running") for w in workers] == [0, 0]
    assert sum(w.total("dpb_worker_cancellations_total") + w.total("dpb_worker_fenced_total") for w in workers) == 0

    # and the calls the processes counted are the calls the service received
    bridge = scrape(ports.bridge)  # (just before reading the service's counters: polls go on)
    service = {op: run.counters(op) for op in OPERATIONS}
    sent = {op: bridge.total("dpb_api_calls_total", operation=op) for op in OPERATIONS}
    held = {op: bridge.total("dpb_api_calls_in_flight", operation=op) for op in OPERATIONS}
    by_workers = {op: sum(w.total("dpb_api_calls_total", operation=op) for w in workers) for op in OPERATIONS}
    assert sent["SetTaskStatus"] == 0 and by_workers["SetTaskStatus"] == N == service["SetTaskStatus"]
    assert sent["ReportTaskProgress"] + by_workers["ReportTaskProgress"] == service["ReportTaskProgress"]
    assert by_workers["ReportTaskProgress"] == sum(w.total("dpb_worker_heartbeats_total") for w in workers)
    for op in ("PollForTask", "ReportTaskRunnerHeartbeat"):
        # (a call counted as sent may still be on its way; one more poll may start between the two reads)
        assert sent[op] - held[op] <= service[op] <= sent[op] + 1, (op, sent, held, service)
        assert by_workers[op] == 0

    # and every endpoint listens on localhost only (the default --metrics-host)
    for port in (ports.bridge, ports.threads, ports.prefork):
        assert listen_addresses(port) == {"127.0.0.1"}


def test_a_metrics_port_already_taken_fails_start_up_as_a_configuration_error() -> None:
    # given a port something else listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # when the bridge is asked to serve metrics there (no Redis or service needed to get that far)
        cmd = [sys.executable, "-m", "bridge", "start", "-g", GROUP, "--metrics-port", str(port)]
        env = child_env(BRIDGE_ENDPOINT_URL="http://127.0.0.1:1", BRIDGE_REDIS_URL="redis://127.0.0.1:1/0")
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT, check=False)
    # then it exits 2 (configuration) and says why
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
