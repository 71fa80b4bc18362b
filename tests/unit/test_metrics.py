"""Metrics: the scrape-time collector on a real redis-server, API call counting, the endpoint, worker outcomes."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from bridge.admission import Admission, SlotRegistry
from bridge.errors import ConfigError, TaskGone, Throttled, Unavailable
from bridge.keeper import Keeper
from bridge.leases import LeaseState, LeaseStore
from bridge.metrics import ApiMetrics, BridgeMetrics, CountingApi, MetricsServer, StateCollector
from bridge.ratelimit import RateLimiter
from bridge.settings import Settings
from tests.support import ROOT, RedisServer, free_port
from workers.metrics import outcome_of

GROUP = "wg"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = LeaseStore.fast_client(redis_server.url)
    yield client
    client.close()


def lease_fields(**extra: Any) -> dict[str, Any]:
    return {"task_id": "t", "worker_group": GROUP, "queue": f"dp.{GROUP}", "progress_deadline_s": 60.0, **extra}


def scrape(collector: StateCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


# -- the collector ------------------------------------------------------------------------------------


def test_the_collector_reports_leases_by_state_slots_and_the_nearest_deadline(client: redis.Redis) -> None:
    # given an unacknowledged claim, a queued lease beaten 10 s ago (deadline 60 s), a running one, one ended
    store = LeaseStore(client)
    now = time.time()
    store.claim("k-claimed", GROUP, lease_fields())
    store.claim("k-queued", GROUP, lease_fields())
    beaten = {"claimed_at": now - 20, "last_beat": now - 10, "acked": "1"}
    store.transition("k-queued", GROUP, [LeaseState.CLAIMED], LeaseState.QUEUED, fields=beaten)
    store.claim("k-running", GROUP, lease_fields())
    store.transition("k-running", GROUP, [LeaseState.CLAIMED], LeaseState.RUNNING, fields={"last_beat": now})
    store.claim("k-done", GROUP, lease_fields())
    store.transition("k-done", GROUP, [LeaseState.CLAIMED], LeaseState.DONE)
    # and two live workers with 3 slots in all on the group's queue
    SlotRegistry(client).register("w1", 2, [f"dp.{GROUP}"])
    SlotRegistry(client).register("w2", 1, [f"dp.{GROUP}", "dp.other"])

    # when the collector is scraped
    registry = scrape(StateCollector(Settings(worker_groups=(GROUP,)), client))

    # then it shows the live leases by state, the nearest deadline, the slots and consumers
    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("dpb_redis_up") == 1
    states = ("claimed", "queued", "running", "reporting")
    assert [value("dpb_leases", worker_group=GROUP, state=s) for s in states] == [1, 1, 1, 0]
    assert 49 < (value("dpb_lease_min_time_to_deadline_seconds", worker_group=GROUP) or 0) <= 50
    assert value("dpb_worker_slots", worker_group=GROUP) == 3
    assert value("dpb_queue_consumers", queue=f"dp.{GROUP}") == 2


def test_a_group_without_leases_has_zero_leases_and_no_deadline(client: redis.Redis) -> None:
    registry = scrape(StateCollector(Settings(worker_groups=(GROUP,)), client))
    assert registry.get_sample_value("dpb_leases", {"worker_group": GROUP, "state": "running"}) == 0
    assert registry.get_sample_value("dpb_lease_min_time_to_deadline_seconds", {"worker_group": GROUP}) is None


def test_the_collector_reports_budget_tokens_keeper_stats_and_the_admission_bound(client: redis.Redis) -> None:
    # given a limiter on the shared buckets, a keeper with history and an admission that was bound by slots
    settings = Settings(worker_groups=(GROUP,), endpoint_url="http://127.0.0.1:1")
    limiter = RateLimiter(client, "us-east-1", "local")
    keeper = Keeper(settings, None, LeaseStore(client), "me")  # type: ignore[arg-type]
    keeper.stats.stretched = 3
    keeper.stats.by_reason["BridgeNotStarted"] = 2
    admission = Admission(client, settings, budget_cap=40)
    admission.bound[GROUP] = "slots"

    # when scraped
    registry = scrape(
        StateCollector(settings, client, keeper=keeper, admission=admission, limiter=limiter, is_leader=lambda g: True)
    )

    # then
    assert registry.get_sample_value("dpb_api_budget_tokens", {"operation": "PollForTask"}) == pytest.approx(90)
    assert registry.get_sample_value("dpb_api_budget_shared") == 1
    assert registry.get_sample_value("dpb_keeper_stretched_heartbeats_total") == 3
    assert registry.get_sample_value("dpb_keeper_failed_total", {"error_id": "BridgeNotStarted"}) == 2
    assert registry.get_sample_value("dpb_admission_bound", {"worker_group": GROUP, "bound": "slots"}) == 1
    assert registry.get_sample_value("dpb_admission_bound", {"worker_group": GROUP, "bound": "budget"}) == 0
    assert registry.get_sample_value("dpb_admission_budget_cap") == 40
    assert registry.get_sample_value("dpb_leader", {"worker_group": GROUP}) == 1
    limiter.close()


def test_a_scrape_with_redis_gone_answers_at_once_with_redis_down(redis_server: RedisServer) -> None:
    # given a collector whose Redis was stopped, with a keeper (its stats come from memory)
    client = LeaseStore.fast_client(redis_server.url)
    settings = Settings(worker_groups=(GROUP,))
    keeper = Keeper(settings, None, LeaseStore(client), "me")  # type: ignore[arg-type]
    limiter = RateLimiter(client, "us-east-1", "local")
    collector = StateCollector(settings, client, keeper=keeper, limiter=limiter)
    redis_server.stop()

    # when scraped
    registry = scrape(collector)

    # then it answers (a hang would trip the test's own timeout), says Redis is down, leaves out what
    # Redis would tell, and keeps the rest
    assert registry.get_sample_value("dpb_redis_up") == 0
    assert registry.get_sample_value("dpb_leases", {"worker_group": GROUP, "state": "queued"}) is None
    assert registry.get_sample_value("dpb_api_budget_tokens", {"operation": "PollForTask"}) is None
    assert registry.get_sample_value("dpb_keeper_lost_total") == 0
    limiter.close()
    client.close()


def test_a_scrape_never_hangs_on_a_redis_that_accepts_but_never_answers() -> None:
    # given a "Redis" that accepts connections and never replies
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = LeaseStore.fast_client(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
    try:
        # when scraped twice (a hang would trip the test's own timeout)
        for _ in range(2):
            registry = scrape(StateCollector(Settings(worker_groups=(GROUP, "other")), client))
            # then each scrape gives up on Redis within its timeout
            assert registry.get_sample_value("dpb_redis_up") == 0
    finally:
        stop.set()
        thread.join(5)
        client.close()
        for conn in accepted:
            conn.close()
        listener.close()


# -- API calls ------------------------------------------------------------------------------------------


class Api:
    """A TaskApi whose calls succeed, or raise the next queued error."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    def _next(self) -> None:
        if self.errors:
            raise self.errors.pop(0)

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        self._next()
        return None

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self._next()
        return False


def test_calls_errors_and_throttles_are_counted_per_operation() -> None:
    # given a counted API whose polls fail with a throttle, a 500, then succeed
    metrics = ApiMetrics(CollectorRegistry())
    api = CountingApi(Api(Throttled("slow down"), Unavailable("500"), TaskGone("gone")), metrics)  # type: ignore[arg-type]

    # when it is called
    for call in (
        lambda: api.poll_for_task(GROUP, "h"),
        lambda: api.poll_for_task(GROUP, "h"),
        lambda: api.report_task_progress("t"),
        lambda: api.poll_for_task(GROUP, "h"),
    ):
        with contextlib.suppress(Throttled, Unavailable, TaskGone):
            call()

    # then every call is counted, failures by kind, throttles apart, and nothing is left in flight
    assert metrics.calls.labels("PollForTask")._value.get() == 3
    assert metrics.throttles.labels("PollForTask")._value.get() == 1
    assert metrics.errors.labels("PollForTask", "unavailable")._value.get() == 1
    assert metrics.errors.labels("ReportTaskProgress", "gone")._value.get() == 1
    assert metrics.in_flight.labels("PollForTask")._value.get() == 0


# -- the endpoint -----------------------------------------------------------------------------------------


def test_the_endpoint_binds_localhost_by_default_and_serves_the_registry() -> None:
    # given the default settings and a registry with a counted poll
    metrics = BridgeMetrics()
    metrics.claims.polled(GROUP, "task")
    server = MetricsServer(Settings().metrics_host, 0, metrics.registry)
    server.start()
    try:
        # then it listens on 127.0.0.1 only, and serves the text format
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'dpb_polls_total{outcome="task",worker_group="wg"} 1.0' in text
    finally:
        server.stop()
    server.stop()  # idempotent


def test_a_taken_port_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            MetricsServer("127.0.0.1", taken.getsockname()[1], CollectorRegistry())


def test_metrics_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"BRIDGE_METRICS_PORT": "9464", "BRIDGE_METRICS_HOST": "0.0.0.0"})
    assert (settings.metrics_port, settings.metrics_host) == (9464, "0.0.0.0")
    assert (Settings().metrics_port, Settings().metrics_host) == (0, "127.0.0.1")
    with pytest.raises(ConfigError, match="metrics_port"):
        Settings(metrics_port=70000).validate()


# -- workers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retval", "state", "outcome"),
    [
        ("finished", "SUCCESS", "finished"),
        ("handed off", "SUCCESS", "handed_off"),
        (None, "REJECTED", "requeued"),
        (None, "FAILURE", "error"),
    ],
)
def test_a_delivery_outcome_is_the_word_the_execution_returned(retval: object, state: str, outcome: str) -> None:
    assert outcome_of(retval, state) == outcome


def test_a_worker_sums_its_forked_childrens_values_and_drops_dead_childrens_gauges(tmp_path: Any) -> None:
    # given a worker process (its own interpreter: multiprocess mode is process-wide) that enables metrics,
    # then forks a child that runs a task and one that is killed while running one
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from celery import Celery
        from prometheus_client import CollectorRegistry
        from bridge.settings import Settings
        from workers.metrics import LiveCollector, WorkerMonitor

        monitor = WorkerMonitor(Celery("t"))
        assert monitor.enable(Settings(worker_metrics_port={free_port()}))
        registry = CollectorRegistry()
        registry.register(LiveCollector(monitor.path))

        def child(kill_self):
            pid = os.fork()
            if pid == 0:
                monitor.task_started("id", "dp.ShellCommandActivity", {{"worker_group": "wg"}})
                monitor.started("ReportTaskProgress")
                monitor.ended("ReportTaskProgress", None, False)
                if kill_self:
                    os.kill(os.getpid(), signal.SIGKILL)
                monitor.task_ended("id", "finished", "SUCCESS")
                os._exit(0)
            os.waitpid(pid, 0)

        child(False)
        child(True)
        labels = {{"activity_type": "ShellCommandActivity", "worker_group": "wg", "outcome": "finished"}}
        print(registry.get_sample_value("dpb_worker_task_duration_seconds_count", labels))
        print(registry.get_sample_value("dpb_worker_heartbeats_total", {{"outcome": "accepted"}}))
        print(registry.get_sample_value("dpb_worker_tasks_running", {{"activity_type": "ShellCommandActivity"}}))
        monitor.close()
        print(os.path.exists(monitor.path))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    # then the finished task and both heartbeats count; no running task is left from the exited children (the
    # killed one never ended its own); the directory is gone after the shutdown
    assert result.stdout.split() == ["1.0", "2.0", "None", "False"]
