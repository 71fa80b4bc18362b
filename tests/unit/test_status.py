"""``bridge status`` / ``check`` / ``pause`` / ``resume`` over a private redis-server seeded with lease records.

The model (``bridge.status``) is read in-process; the commands run as a user runs them, in a subprocess.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bridge import cli, opscli
from bridge.admission import Admission, SlotRegistry, paused_key
from bridge.errors import BrokerError, TaskGone, Unavailable
from bridge.leadership import LeaderLock, Liveness
from bridge.leases import LeaseState, LeaseStore
from bridge.masking import MASK, SECRETS
from bridge.settings import Settings
from bridge.status import (
    ERRORS_KEEP,
    ERRORS_TTL_S,
    ErrorRecordingApi,
    errors_key,
    pause_group,
    read_status,
    record_api_error,
    resume_group,
)
from tests.support import ROOT, RedisServer, child_env, free_port

NOW = 1_900_000_000.0


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_connect_timeout=1, socket_timeout=2)
    yield client
    client.close()


def seed_lease(
    store: LeaseStore,
    group: str,
    n: int,
    state: LeaseState,
    *,
    claimed_ago_s: float = 30.0,
    beat_ago_s: float | None = None,
    deadline_s: float = 300.0,
    queue: str | None = None,
) -> str:
    """A lease record as the poller writes it, moved to ``state`` (timestamps relative to NOW)."""
    key = f"df-{group}:@A_{n}_2024-01-01T00:00:00_Attempt=1:{n:012x}"
    store.claim(
        key,
        group,
        {
            "worker_group": group,
            "queue": queue or f"dp.{group}",
            "object_type": "ShellCommandActivity",
            "pipeline_id": f"df-{group}",
            "attempt_id": f"@A_{n}_Attempt=1",
            "owner": "host-a:1:aaaa",
            "heartbeat_owner": "poller",
            "progress_deadline_s": deadline_s,
            "task_object": {"taskId": "x" * 1500},
        },
    )
    fields: dict[str, Any] = {"claimed_at": NOW - claimed_ago_s}
    if beat_ago_s is not None:
        fields["last_beat"] = NOW - beat_ago_s
    to = None if state == LeaseState.CLAIMED else state
    assert store.transition(key, group, [LeaseState.CLAIMED], to, fields=fields).ok
    return key


def lease_store_counts(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Per group and state, what the ``dpb:lease:*`` records hold (read independently of bridge.status)."""
    counts: dict[str, dict[str, int]] = {}
    for key in client.scan_iter("dpb:lease:*"):
        group, state = client.hmget(key, ["worker_group", "state"])
        counts.setdefault(str(group), {}).setdefault(str(state), 0)
        counts[str(group)][str(state)] += 1
    return counts


def nonzero(by_state: dict[str, int]) -> dict[str, int]:
    return {state: n for state, n in by_state.items() if n}


# -- the model ------------------------------------------------------------------------------------------


def test_status_shows_pollers_standbys_slots_and_leases_by_state_with_age_and_deadline(client: redis.Redis) -> None:
    # given two bridge processes serving g1 (a holds its lock), one also serving g2; a worker on dp.g1
    # and a routed queue; leases of g1 in every state, and a paused g3 nobody serves
    Liveness(client, "host-a:1:aaaa", 60, hostname="host-a", worker_groups=["g1"]).beat()
    Liveness(client, "host-b:2:bbbb", 60, hostname="host-b", worker_groups=["g1", "g2"]).beat()
    assert LeaderLock(client, "g1", "host-a:1:aaaa", 10).try_acquire()
    assert LeaderLock(client, "g2", "host-b:2:bbbb", 10).try_acquire()
    SlotRegistry(client).register("w1@host-c", 3, ["dp.g1", "sql"], ttl_s=60)
    SlotRegistry(client).register("w2@host-c", 2, ["sql"], ttl_s=60)
    store = LeaseStore(client)
    seed_lease(store, "g1", 1, LeaseState.CLAIMED, claimed_ago_s=5)
    queued = seed_lease(store, "g1", 2, LeaseState.QUEUED, claimed_ago_s=100, beat_ago_s=20, deadline_s=120)
    overdue = seed_lease(store, "g1", 3, LeaseState.RUNNING, claimed_ago_s=400, beat_ago_s=350)
    seed_lease(store, "g1", 4, LeaseState.RUNNING, claimed_ago_s=50, beat_ago_s=5, queue="sql")
    for n, state in enumerate([LeaseState.DONE, LeaseState.DONE, LeaseState.LOST, LeaseState.RELEASED], start=5):
        seed_lease(store, "g1", n, state)
    pause_group(client, "g3", "alice@ops", "maintenance window")

    # when the status is read
    status = read_status(client, now=NOW)

    # then each group shows its poller, standbys, slots per queue, pause, and lease counts by state
    assert sorted(status.groups) == ["g1", "g2", "g3"]
    g1 = status.groups["g1"]
    assert (g1.active_poller, g1.active_poller_alive, g1.standbys) == ("host-a:1:aaaa", True, ["host-b:2:bbbb"])
    assert g1.lock_ttl_s is not None and 0 < g1.lock_ttl_s <= 10
    assert g1.slots == 5 and g1.queues == {"dp.g1": 1, "sql": 2}  # the lease's queue counts as the group's
    assert nonzero(g1.leases_by_state) == {"claimed": 1, "queued": 1, "running": 2, "done": 2, "lost": 1, "released": 1}
    assert set(g1.leases_by_state) == {str(s) for s in LeaseState}
    assert g1.in_flight == 4 and g1.paused is None
    assert (status.groups["g2"].active_poller, status.groups["g2"].standbys) == ("host-b:2:bbbb", [])
    g3 = status.groups["g3"]
    assert g3.paused is not None and (g3.paused.by, g3.paused.reason) == ("alice@ops", "maintenance window")
    assert (g3.active_poller, g3.standbys, nonzero(g3.leases_by_state)) == (None, [], {})

    # and live leases carry their age and time to deadline (last seen + deadline - now), soonest first
    assert [lease.state for lease in g1.leases] == ["running", "queued", "claimed", "running"]
    assert (g1.leases[0].task_key, g1.leases[0].deadline_in_s) == (overdue, -50.0)
    view = g1.leases[1]
    assert view.task_key == queued
    assert (view.age_s, view.last_beat_age_s, view.deadline_in_s) == (100.0, 20.0, 100.0)
    assert (view.owner, view.heartbeat_owner, view.queue, view.epoch) == ("host-a:1:aaaa", "poller", "dp.g1", 1)
    assert (g1.leases[2].last_beat_age_s, g1.leases[2].deadline_in_s) == (None, 295.0)

    # and the processes and workers are listed
    assert [(p.owner, p.hostname) for p in status.processes] == [
        ("host-a:1:aaaa", "host-a"),
        ("host-b:2:bbbb", "host-b"),
    ]
    assert [(w.worker_id, w.concurrency) for w in status.workers] == [("w1@host-c", 3), ("w2@host-c", 2)]


def test_status_counts_agree_with_the_lease_store(client: redis.Redis) -> None:
    # given leases of two groups in many states, one record's index entry left behind by a vanished record
    store = LeaseStore(client)
    states = list(LeaseState)
    for n in range(24):
        seed_lease(store, "ga" if n % 3 else "gb", n, states[n % len(states)], beat_ago_s=n)
    client.zadd(LeaseStore.inflight_key("ga"), {"df-ga:@gone:000000000000": NOW})

    # when the status is read, then its counts by state are exactly what the lease records hold
    status = read_status(client, now=NOW)
    assert {g: nonzero(s.leases_by_state) for g, s in status.groups.items()} == lease_store_counts(client)
    # and every live lease is listed (the dangling index entry is not a lease)
    for group in status.groups.values():
        live = sum(group.leases_by_state[str(s)] for s in ("claimed", "queued", "running", "reporting"))
        assert len(group.leases) == live


def test_a_group_filter_shows_only_those_groups_even_unknown_ones(client: redis.Redis) -> None:
    store = LeaseStore(client)
    seed_lease(store, "ga", 1, LeaseState.QUEUED)
    seed_lease(store, "gb", 2, LeaseState.QUEUED)
    status = read_status(client, worker_groups=["gb", "new"], now=NOW)
    assert sorted(status.groups) == ["gb", "new"]
    assert status.groups["new"].queues == {"dp.new": 0}


def test_routes_add_their_queues_to_every_group(client: redis.Redis) -> None:
    SlotRegistry(client).register("w1@h", 2, ["dp.g", "sql"], ttl_s=60)
    status = read_status(client, worker_groups=["g"], routes={"SqlActivity": "sql", "CopyActivity": "copy"})
    assert status.groups["g"].queues == {"copy": 0, "dp.g": 1, "sql": 1}
    assert status.groups["g"].slots == 2


def test_the_json_document_has_the_documented_schema(client: redis.Redis) -> None:
    Liveness(client, "host-a:1:aaaa", 60, hostname="host-a", worker_groups=["g1"]).beat()
    seed_lease(LeaseStore(client), "g1", 1, LeaseState.QUEUED, beat_ago_s=1)
    record_api_error(client, "host-a:1:aaaa", "PollForTask", "InternalServiceError", "boom")
    doc = json.loads(json.dumps(read_status(client, now=NOW).to_json()))
    assert doc["schema_version"] == 1
    assert set(doc) == {"schema_version", "generated_at", "groups", "processes", "workers", "api_errors"}
    group = doc["groups"]["g1"]
    assert set(group) == {
        "worker_group",
        "active_poller",
        "active_poller_alive",
        "lock_ttl_s",
        "standbys",
        "paused",
        "slots",
        "queues",
        "in_flight",
        "reservations",
        "leases_by_state",
        "leases",
    }
    assert set(group["leases"][0]) == {
        "task_key",
        "state",
        "epoch",
        "queue",
        "object_type",
        "pipeline_id",
        "attempt_id",
        "owner",
        "heartbeat_owner",
        "age_s",
        "last_beat_age_s",
        "deadline_in_s",
    }
    assert set(doc["processes"][0]) == {"owner", "hostname", "pid", "started", "worker_groups"}
    assert set(doc["api_errors"][0]) == {"at", "owner", "operation", "code", "message"}
    assert "task_object" not in json.dumps(doc)


# -- the API-error log ----------------------------------------------------------------------------------


def test_api_errors_keep_the_last_20_per_process_masked_and_expiring(client: redis.Redis) -> None:
    # given a secret the process has seen, and 25 errors, one of them quoting it
    SECRETS.add(["hunter2-status-test"])
    for n in range(25):
        record_api_error(client, "host-a:1:aaaa", "ReportTaskProgress", "InternalServiceError", f"error {n}")
    record_api_error(client, "host-b:2:bbbb", "SetTaskStatus", "InvalidRequestException", "bad hunter2-status-test")

    # then the list holds the last 20, it expires, and the secret never reached Redis
    assert client.llen(errors_key("host-a:1:aaaa")) == ERRORS_KEEP
    assert 0 < client.ttl(errors_key("host-a:1:aaaa")) <= ERRORS_TTL_S
    errors = read_status(client).api_errors
    assert errors[0].owner == "host-b:2:bbbb" and errors[0].message == f"bad {MASK}"
    assert [e.message for e in errors[1:4]] == ["error 24", "error 23", "error 22"]
    assert len(read_status(client, errors_limit=5).api_errors) == 5
    assert "hunter2-status-test" not in json.dumps([client.lrange(k, 0, -1) for k in client.scan_iter("dpb:errors:*")])


class FailingApi:
    """A TaskApi whose heartbeats fail with ``error`` and whose polls return nothing."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        return None

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        raise self.error


def test_the_recording_api_records_each_remote_error_and_reraises_it(client: redis.Redis) -> None:
    api = ErrorRecordingApi(
        FailingApi(TaskGone("ReportTaskProgress: TaskNotFoundException: gone", "TaskNotFoundException")), client, "me"
    )  # type: ignore[arg-type]
    assert api.poll_for_task("g", "h") is None
    with pytest.raises(TaskGone):
        api.report_task_progress("t")
    [error] = read_status(client).api_errors
    assert (error.owner, error.operation, error.code) == ("me", "ReportTaskProgress", "TaskNotFoundException")


def test_the_recording_api_never_waits_on_an_unreachable_redis() -> None:
    # given a Redis that refuses every command (counting how often it is asked)
    class Dead:
        asked = 0

        def __getattr__(self, name: str) -> Any:
            def refuse(*_a: Any, **_k: Any) -> Any:
                Dead.asked += 1
                raise redis.ConnectionError("Connection refused")

            return refuse

    api = ErrorRecordingApi(FailingApi(Unavailable("ReportTaskProgress: 500", "InternalServiceError")), Dead(), "me")  # type: ignore[arg-type]

    # when many calls fail, then each raises the API's error (not Redis's), and Redis is tried once per backoff
    for _ in range(50):
        with pytest.raises(Unavailable):
            api.report_task_progress("t")
    assert Dead.asked == 1


def test_record_api_error_raises_broker_error_without_redis() -> None:
    dead = LeaseStore.fast_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    with pytest.raises(BrokerError):
        record_api_error(dead, "me", "PollForTask", "X", "y")
    dead.close()


# -- pause in admission ---------------------------------------------------------------------------------


def test_a_paused_group_reserves_nothing_logs_once_and_claims_again_after_resume(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # given a group with free worker slots
    SlotRegistry(client).register("w1@h", 4, ["dp.g"], ttl_s=60)
    admission = Admission(client, Settings(worker_groups=("g",), max_in_flight=8))
    caplog.set_level(logging.INFO, logger="bridge.admission")

    # when an operator pauses it, then no reservation is granted, with one log line however often it is asked
    pause_group(client, "g", "alice@ops", "drain")
    assert [admission.reserve("g") for _ in range(5)] == [None] * 5
    assert admission.bound["g"] == "paused"
    paused_lines = [r.getMessage() for r in caplog.records if "is paused" in r.getMessage()]
    assert paused_lines == ["worker_group=g is paused by alice@ops (drain); not claiming"]

    # and another group is not affected
    SlotRegistry(client).register("w2@h", 1, ["dp.other"], ttl_s=60)
    assert admission.reserve("other") is not None

    # when it is resumed, then it reserves again, and says so once
    assert resume_group(client, "g") is True
    assert resume_group(client, "g") is False
    assert admission.reserve("g") is not None
    assert admission.reserve("g") is not None
    assert [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()] == [
        "worker_group=g resumed; claiming again"
    ]


def test_a_hand_written_pause_flag_also_stops_claims(client: redis.Redis) -> None:
    SlotRegistry(client).register("w1@h", 4, ["dp.g"], ttl_s=60)
    client.set(paused_key("g"), "yes")
    assert Admission(client, Settings(worker_groups=("g",))).reserve("g") is None
    assert read_status(client, worker_groups=["g"]).groups["g"].paused is not None


# -- the commands ---------------------------------------------------------------------------------------


def run_bridge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bridge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(**env), timeout=30, cwd=ROOT)


def test_exit_codes_are_the_cli_s() -> None:
    assert (opscli.EXIT_OK, opscli.EXIT_FAILED, opscli.EXIT_CONFIG, opscli.EXIT_UNAVAILABLE) == (
        cli.EXIT_OK,
        cli.EXIT_FAILED,
        cli.EXIT_CONFIG,
        cli.EXIT_UNAVAILABLE,
    )


def test_status_json_and_table_from_the_command(redis_server: RedisServer, client: redis.Redis) -> None:
    # given a live process polling g1 with a queued lease, and a paused g2
    Liveness(client, "host-a:1:aaaa", 60, hostname="host-a", worker_groups=["g1"]).beat()
    LeaderLock(client, "g1", "host-a:1:aaaa", 30).try_acquire()
    key = seed_lease(LeaseStore(client), "g1", 1, LeaseState.QUEUED, claimed_ago_s=0, beat_ago_s=0)
    record_api_error(client, "host-a:1:aaaa", "PollForTask", "ThrottlingException", "PollForTask: slow down")

    # when the operator pauses g2 and asks for the status (Redis from the environment)
    paused = run_bridge("pause", "-g", "g2", "--reason", "upgrade", "--by", "bob", BRIDGE_REDIS_URL=redis_server.url)
    as_json = run_bridge("status", "--json", BRIDGE_REDIS_URL=redis_server.url)
    as_table = run_bridge("status", "--redis-url", redis_server.url)

    # then the JSON shows it all, and the table too
    assert paused.returncode == 0, paused.stderr
    assert "paused worker_group=g2 (by bob)" in paused.stdout
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["groups"]["g1"]["active_poller"] == "host-a:1:aaaa"
    assert doc["groups"]["g1"]["leases"][0]["task_key"] == key
    assert doc["groups"]["g2"]["paused"]["reason"] == "upgrade"
    assert doc["api_errors"][0]["code"] == "ThrottlingException"
    assert as_table.returncode == 0, as_table.stderr
    lines = as_table.stdout.splitlines()
    assert lines[0].split()[:3] == ["GROUP", "ACTIVE", "POLLER"]
    assert any(line.split()[:2] == ["g1", "host-a:1:aaaa"] for line in lines)
    assert any(key in line and "queued" in line for line in lines)
    assert any(line.startswith("g2") and "bob" in line and "upgrade" in line for line in lines)
    assert "ThrottlingException" in as_table.stdout

    # when it resumes g2, then the flag is gone
    resumed = run_bridge("resume", "-g", "g2", "--redis-url", redis_server.url)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "resumed worker_group=g2")
    assert client.get(paused_key("g2")) is None
    again = run_bridge("resume", "-g", "g2", "--redis-url", redis_server.url)
    assert (again.returncode, again.stdout.strip()) == (0, "worker_group=g2 was not paused")


def test_check_passes_for_a_live_process_on_this_host_or_a_registered_worker(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    Liveness(client, "host-a:1:aaaa", 60, hostname="host-a", worker_groups=["g1"]).beat()
    SlotRegistry(client).register("w1@host-c", 2, ["dp.g1"], ttl_s=60)
    url = redis_server.url
    ok = [
        run_bridge("check", "--hostname", "host-a", "--redis-url", url),
        run_bridge("check", "--redis-url", url, BRIDGE_HOSTNAME="host-a"),
        run_bridge("check", "--owner", "host-a:1:aaaa", "--redis-url", url),
        run_bridge("check", "--worker", "w1@host-c", "--redis-url", url),
        run_bridge("check", "--worker", "w1", "--hostname", "host-c", "--redis-url", url),
    ]
    assert [r.returncode for r in ok] == [0] * len(ok), [r.stderr for r in ok]
    assert all(r.stdout.startswith("healthy: ") for r in ok)

    bad = [
        run_bridge("check", "--hostname", "host-b", "--redis-url", url),
        run_bridge("check", "--owner", "host-a:9:zzzz", "--redis-url", url),
        run_bridge("check", "--worker", "w2@host-c", "--redis-url", url),
    ]
    assert [r.returncode for r in bad] == [1] * len(bad)
    assert [len(r.stderr.strip().splitlines()) for r in bad] == [1] * len(bad)
    assert "no live bridge process on host host-b" in bad[0].stderr
    assert "w2@host-c is not registered" in bad[2].stderr


def test_without_redis_check_fails_fast_and_the_others_exit_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    checked = run_bridge("check", "--redis-url", url)
    assert checked.returncode == 1
    assert checked.stderr.startswith("bridge: unhealthy: Redis at") and len(checked.stderr.splitlines()) == 1
    for args in (["status"], ["status", "--json"], ["pause", "-g", "g"], ["resume", "-g", "g"]):
        result = run_bridge(*args, BRIDGE_REDIS_URL=url)
        assert result.returncode == 3, (args, result.stderr)
        assert result.stderr.startswith("bridge: Redis at") and len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_bad_urls_exit_2_and_passwords_are_not_shown() -> None:
    result = run_bridge("status", "--redis-url", "http://user:s3cret@example/0")
    assert result.returncode == 2 and "s3cret" not in result.stderr and "must be a redis://" in result.stderr
    refused = run_bridge("status", "--redis-url", f"redis://:pw-secret@127.0.0.1:{free_port()}/0")
    assert refused.returncode == 3 and "pw-secret" not in refused.stderr and ":****@" in refused.stderr
