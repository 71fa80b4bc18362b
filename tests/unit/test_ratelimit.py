"""The fleet-wide API budget: token buckets in a real Redis, priorities, the local fallback, the API wrapper."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import botocore.exceptions
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.errors import BUDGET_EXHAUSTED, BrokerError, ConfigError, Throttled, Unavailable
from bridge.ratelimit import (
    AWS_LIMITS,
    BudgetPressure,
    NullLimiter,
    Priority,
    RateLimitedApi,
    RateLimiter,
    build_limiter,
    resolve_account,
)
from bridge.retry import retry_call
from bridge.settings import Settings
from tests.support import RedisServer, wait_for

ACCOUNT = "123456789012"

MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture
def make_limiter(redis_server: RedisServer) -> Iterator[MakeLimiter]:
    """Build limiters on the private Redis, each with its own fail-fast client; all closed after the test."""
    made: list[tuple[RateLimiter, redis.Redis]] = []

    def make(limits: Mapping[str, tuple[float, float]], account: str = ACCOUNT, **kw: Any) -> RateLimiter:
        client = redis.Redis(
            port=redis_server.port,
            decode_responses=True,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        kw.setdefault("fraction", 1.0)
        limiter = RateLimiter(client, "us-east-1", account, limits=limits, **kw)
        made.append((limiter, client))
        return limiter

    yield make
    for limiter, client in made:
        limiter.close()
        client.close()


def take(limiter: RateLimiter, op: str, priority: Priority, count: int) -> list[bool]:
    return [limiter.acquire(op, priority, timeout_s=30) for _ in range(count)]


# -- the shared bucket ----------------------------------------------------------------------------


def test_calls_beyond_the_burst_are_paced_at_the_rate(make_limiter: MakeLimiter) -> None:
    # given a budget of 20 calls a second in bursts of 5
    limiter = make_limiter({"SetTaskStatus": (20.0, 5.0)})

    # when 45 calls ask for a token
    start = time.monotonic()
    granted = take(limiter, "SetTaskStatus", Priority.REPORT, 45)
    elapsed = time.monotonic() - start

    # then all pass, the 40 beyond the burst no faster than 20 a second, and the waits are counted
    assert all(granted)
    assert elapsed >= (45 - 5) / 20 * 0.9
    stats = limiter.wait_stats()["SetTaskStatus"]
    assert stats.acquires == 45
    assert stats.waits >= 30
    assert stats.wait_s > 0


def test_two_processes_draw_from_one_bucket(make_limiter: MakeLimiter) -> None:
    # given two limiters on separate connections, for the same account and region
    first = make_limiter({"ReportTaskProgress": (0.5, 5.0)})
    second = make_limiter({"ReportTaskProgress": (0.5, 5.0)})
    other_account = make_limiter({"ReportTaskProgress": (0.5, 5.0)}, account="210987654321")

    # when the first spends the whole burst
    assert all(take(first, "ReportTaskProgress", Priority.REPORT, 5))

    # then the second finds the bucket empty; another account's bucket is untouched
    tokens = second.tokens("ReportTaskProgress")
    assert tokens is not None and tokens < 1
    assert not second.acquire("ReportTaskProgress", Priority.REPORT, timeout_s=0.5)
    assert other_account.acquire("ReportTaskProgress", Priority.REPORT, timeout_s=0)


def test_threads_of_two_processes_share_the_rate(make_limiter: MakeLimiter) -> None:
    # given two limiters sharing a budget of 20 a second in bursts of 5, each used by its own thread
    limiters = [make_limiter({"SetTaskStatus": (20.0, 5.0)}) for _ in range(2)]
    results: list[list[bool]] = []

    def run(limiter: RateLimiter) -> None:
        results.append(take(limiter, "SetTaskStatus", Priority.REPORT, 20))

    # when each asks for 20 tokens at the same time
    threads = [threading.Thread(target=run, args=(limiter,)) for limiter in limiters]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - start

    # then together they get no more than the one budget (alone, each would need only 0.75 s)
    assert [all(r) for r in results] == [True, True]
    assert elapsed >= (40 - 5) / 20 * 0.9


def test_lower_priorities_leave_a_reserve_for_higher_ones(make_limiter: MakeLimiter) -> None:
    # given a slowly refilled bucket of 10 (claims leave 3, heartbeats leave 1), drained down to 3 tokens
    limiter = make_limiter({"ReportTaskProgress": (0.2, 10.0)})
    assert all(take(limiter, "ReportTaskProgress", Priority.REPORT, 7))

    # then a claim is refused, heartbeats get two more tokens, and only SetTaskStatus-level calls the last
    assert not limiter.acquire("ReportTaskProgress", Priority.CLAIM, timeout_s=0.2)
    assert limiter.acquire("ReportTaskProgress", Priority.HEARTBEAT, timeout_s=0)
    assert limiter.acquire("ReportTaskProgress", Priority.HEARTBEAT, timeout_s=0)
    assert not limiter.acquire("ReportTaskProgress", Priority.HEARTBEAT, timeout_s=0.2)
    assert limiter.acquire("ReportTaskProgress", Priority.REPORT, timeout_s=0)
    assert not limiter.acquire("ReportTaskProgress", Priority.REPORT, timeout_s=0.2)
    assert limiter.wait_stats()["ReportTaskProgress"].timeouts == 3


def test_beats_that_can_wait_stretch_before_claims_stop(make_limiter: MakeLimiter) -> None:
    # given a slowly refilled bucket of 100 with no pressure yet
    limiter = make_limiter({"ReportTaskProgress": (0.01, 100.0)})
    levels = []
    for spend in (45, 10, 20):  # down to 55, 45, 25 tokens
        assert all(take(limiter, "ReportTaskProgress", Priority.REPORT, spend))
        gauge = BudgetPressure(limiter)  # (a fresh one per level: readings are cached for half a second)
        levels.append((gauge.pressure("ReportTaskProgress"), gauge.starved("ReportTaskProgress")))

    # then above half the burst nothing waits; between half and a claim's reserve (30 + 1) beats that can wait
    # stretch while claims go on; below it, claims stop too
    assert levels == [(False, False), (True, False), (True, True)]
    # and an operation without a limit is never under pressure
    assert not BudgetPressure(limiter).starved("PollForTask")
    assert not BudgetPressure(limiter).pressure("PollForTask")


def test_an_early_beat_takes_only_from_above_the_pressure_line_and_never_waits(make_limiter: MakeLimiter) -> None:
    # given a slowly refilled bucket of 100 (the pressure line: 50)
    limiter = make_limiter({"ReportTaskProgress": (0.01, 100.0)})
    assert all(take(limiter, "ReportTaskProgress", Priority.REPORT, 45))  # 55 left

    # then early beats take tokens down to the line and are refused at once below it, counting no shortage
    granted = [limiter.acquire("ReportTaskProgress", Priority.EARLY, timeout_s=0) for _ in range(8)]
    assert granted == [True] * 5 + [False] * 3
    assert limiter.wait_stats()["ReportTaskProgress"].timeouts == 0
    # while claims and heartbeats due now still get theirs
    assert limiter.acquire("ReportTaskProgress", Priority.CLAIM, timeout_s=0)
    assert limiter.acquire("ReportTaskProgress", Priority.HEARTBEAT, timeout_s=0)


def test_the_early_view_refuses_without_sending(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter({"ReportTaskProgress": (0.01, 10.0)})
    assert all(take(limiter, "ReportTaskProgress", Priority.REPORT, 6))  # 4 left, under the line of 5
    inner = FakeApi()
    with pytest.raises(Throttled) as refused:
        RateLimitedApi(inner, limiter).early().report_task_progress("t")
    assert refused.value.code == BUDGET_EXHAUSTED
    assert inner.calls == []
    assert RateLimitedApi(inner, limiter).report_task_progress("t") is False  # a beat due now goes through
    assert len(inner.calls) == 1


def test_an_idle_bucket_expires(make_limiter: MakeLimiter, redis_server: RedisServer) -> None:
    # given a bucket of 100 refilled at 2 a second
    limiter = make_limiter({"PollForTask": (2.0, 100.0)})

    # when a token is taken
    assert limiter.acquire("PollForTask", Priority.CLAIM)

    # then the bucket's key lives no longer than twice the time it takes to fill
    client = redis.Redis(port=redis_server.port)
    try:
        ttl_ms = client.pttl(f"dpb:rl:us-east-1:{ACCOUNT}:PollForTask")
    finally:
        client.close()
    assert 0 < ttl_ms <= 100_000


def test_operations_without_a_limit_pass(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter({"SetTaskStatus": (1.0, 1.0)})

    assert all(limiter.acquire("ListPipelines", Priority.CLAIM, timeout_s=0) for _ in range(100))
    assert limiter.tokens("ListPipelines") is None
    assert limiter.rate("ListPipelines") == float("inf")


def test_the_default_budget_is_ninety_percent_of_aws_limits() -> None:
    limiter = RateLimiter(None, "us-east-1", ACCOUNT)

    assert limiter.rate("PollForTask") == pytest.approx(1.8)
    assert limiter.rate("SetTaskStatus") == pytest.approx(9.0)
    assert limiter.burst("ReportTaskProgress") == pytest.approx(90.0)
    assert set(AWS_LIMITS) >= {"PollForTask", "ReportTaskProgress", "SetTaskStatus", "ReportTaskRunnerHeartbeat"}


def test_a_fraction_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ConfigError):
        RateLimiter(None, "us-east-1", ACCOUNT, fraction=0)
    with pytest.raises(ConfigError):
        RateLimiter(None, "us-east-1", ACCOUNT, local_fraction=1.5)


# -- Redis away ------------------------------------------------------------------------------------


def test_without_redis_heartbeats_and_reports_go_on_locally_and_polls_stop(
    make_limiter: MakeLimiter, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # given a budget of 10 a second in bursts of 2, of which a process uses half on its own
    caplog.set_level(logging.INFO, logger="bridge.ratelimit")
    limits = {"ReportTaskProgress": (10.0, 2.0), "SetTaskStatus": (10.0, 2.0), "PollForTask": (10.0, 2.0)}
    limiter = make_limiter(limits, local_fraction=0.5, recheck_s=0.1)
    assert limiter.acquire("PollForTask", Priority.CLAIM)

    # when Redis stops
    redis_server.stop()
    start = time.monotonic()
    heartbeats = take(limiter, "ReportTaskProgress", Priority.HEARTBEAT, 8)
    elapsed = time.monotonic() - start
    reports = take(limiter, "SetTaskStatus", Priority.REPORT, 2)

    # then heartbeats and reports are still granted, at the local rate (5 a second, bursts of 1)
    assert all(heartbeats) and all(reports)
    assert elapsed >= (8 - 1) / 5 * 0.9
    assert limiter.tokens("ReportTaskProgress") is None
    # and polls stop
    with pytest.raises(BrokerError):
        limiter.acquire("PollForTask", Priority.CLAIM, timeout_s=1)
    # and the switch is logged once, not per call
    assert sum("Redis is unreachable" in r.getMessage() for r in caplog.records) == 1

    # when Redis comes back
    redis_server.start()

    # then the limiter returns to the shared buckets, and says so once
    wait_for(lambda: limiter.shared, timeout=10, what="the limiter to use Redis again")
    assert limiter.acquire("PollForTask", Priority.CLAIM, timeout_s=1)
    assert limiter.tokens("PollForTask") is not None
    assert sum("Redis is back" in r.getMessage() for r in caplog.records) == 1


def test_without_a_client_every_priority_uses_the_local_bucket() -> None:
    limiter = RateLimiter(None, "us-east-1", ACCOUNT, limits={"PollForTask": (10.0, 10.0)})

    assert limiter.acquire("PollForTask", Priority.CLAIM, timeout_s=0)
    assert limiter.tokens("PollForTask") is None


# -- the API wrapper --------------------------------------------------------------------------------


class FakeApi:
    """A TaskApi that records calls; its first ``failures`` calls raise Unavailable."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures

    def _called(self, op: str) -> None:
        self.calls.append(op)
        if self.failures > 0:
            self.failures -= 1
            raise Unavailable(f"{op}: connection reset", "ConnectionResetError")

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        self._called("PollForTask")
        return None

    def report_task_progress(self, task_id: str, fields: Mapping[str, str] | None = None) -> bool:
        self._called("ReportTaskProgress")
        return False

    def set_task_status(
        self,
        task_id: str,
        status: str,
        error_id: str | None = None,
        error_message: str | None = None,
        error_stack_trace: str | None = None,
    ) -> None:
        self._called("SetTaskStatus")

    def report_task_runner_heartbeat(self, taskrunner_id: str, worker_group: str, hostname: str) -> bool:
        self._called("ReportTaskRunnerHeartbeat")
        return False

    def describe_objects(
        self, pipeline_id: str, object_ids: Sequence[str], evaluate_expressions: bool = True
    ) -> list[dict[str, Any]]:
        self._called("DescribeObjects")
        return []

    def evaluate_expression(self, pipeline_id: str, object_id: str, expression: str) -> str:
        self._called("EvaluateExpression")
        return ""


class RecordingLimiter(NullLimiter):
    """Grants (or refuses) every token, recording who asked."""

    def __init__(self, grant: bool = True) -> None:
        super().__init__()
        self.grant = grant
        self.asked: list[tuple[str, Priority, float | None]] = []

    def acquire(self, op: str, priority: Priority, timeout_s: float | None = None) -> bool:
        self.asked.append((op, priority, timeout_s))
        return self.grant


def test_every_attempt_of_a_retried_call_takes_a_token(make_limiter: MakeLimiter) -> None:
    # given a bucket of 10 that barely refills, and an API whose first two calls fail
    limiter = make_limiter({"SetTaskStatus": (0.01, 10.0)})
    inner = FakeApi(failures=2)
    api = RateLimitedApi(inner, limiter)

    # when SetTaskStatus is retried until it goes through
    retry_call(lambda: api.set_task_status("t-1", "FINISHED"), what="SetTaskStatus", deadline_s=10, base_s=0.01)

    # then three calls were made and three tokens taken
    assert inner.calls == ["SetTaskStatus"] * 3
    tokens = limiter.tokens("SetTaskStatus")
    assert tokens is not None and 7.0 <= tokens < 7.5


def test_each_call_asks_at_its_priority() -> None:
    # given an API behind a recording limiter, and its claiming view
    limiter = RecordingLimiter()
    inner = FakeApi()
    api = RateLimitedApi(inner, limiter)
    claiming = api.claiming()

    # when every operation is called once, and an acknowledgement through the claiming view
    api.poll_for_task("wg", "host")
    api.report_task_progress("t-1")
    claiming.report_task_progress("t-1")
    api.set_task_status("t-1", "FINISHED")
    api.report_task_runner_heartbeat("runner", "wg", "host")
    api.describe_objects("df-1", ["A"])
    api.evaluate_expression("df-1", "A", "#{1}")

    # then each took a token at its priority, polls and acknowledgements last, before the call went out
    assert [(op, p) for op, p, _ in limiter.asked] == [
        ("PollForTask", Priority.CLAIM),
        ("ReportTaskProgress", Priority.HEARTBEAT),
        ("ReportTaskProgress", Priority.CLAIM),
        ("SetTaskStatus", Priority.REPORT),
        ("ReportTaskRunnerHeartbeat", Priority.HEARTBEAT),
        ("DescribeObjects", Priority.HEARTBEAT),
        ("EvaluateExpression", Priority.HEARTBEAT),
    ]
    assert inner.calls == [op for op, _, _ in limiter.asked]
    assert limiter.asked[0][2] == 30.0 and limiter.asked[3][2] == 60.0


def test_a_call_that_gets_no_token_in_time_is_throttled_and_not_sent() -> None:
    # given a budget that never grants
    inner = FakeApi()
    api = RateLimitedApi(inner, RecordingLimiter(grant=False))

    # when a poll is attempted
    with pytest.raises(Throttled, match="local API budget exhausted for PollForTask") as caught:
        api.poll_for_task("wg", "host")

    # then it fails as a retryable throttle, and Data Pipeline never saw it
    assert caught.value.retryable
    assert inner.calls == []


def test_a_drained_shared_bucket_throttles_the_wrapped_call(make_limiter: MakeLimiter) -> None:
    # given an empty bucket and short waits
    limiter = make_limiter({"ReportTaskRunnerHeartbeat": (0.1, 1.0)})
    assert limiter.acquire("ReportTaskRunnerHeartbeat", Priority.REPORT)
    api = RateLimitedApi(FakeApi(), limiter, timeouts_s={p: 0.2 for p in Priority})

    # then a runner heartbeat is throttled locally
    with pytest.raises(Throttled, match="ReportTaskRunnerHeartbeat"):
        api.report_task_runner_heartbeat("runner", "wg", "host")


def test_the_null_limiter_never_waits() -> None:
    limiter = NullLimiter()

    assert all(limiter.acquire("PollForTask", Priority.CLAIM, timeout_s=0) for _ in range(10_000))
    assert limiter.wait_stats() == {}
    assert limiter.tokens("PollForTask") is None
    assert limiter.rate("PollForTask") == pytest.approx(1.8)


# -- the account and building -----------------------------------------------------------------------


class FakeSession:
    """A boto3 session whose STS client answers ``account`` or raises ``error``."""

    def __init__(self, account: str = "", error: Exception | None = None) -> None:
        self.account = account
        self.error = error
        self.clients: list[str] = []

    def client(self, service: str, **_: Any) -> FakeSession:
        self.clients.append(service)
        return self

    def get_caller_identity(self) -> dict[str, str]:
        if self.error is not None:
            raise self.error
        return {"Account": self.account, "Arn": "arn:aws:iam::x:user/y"}


def test_an_explicit_account_wins() -> None:
    session = FakeSession(account="999")

    assert resolve_account(ACCOUNT, None, "us-east-1", session) == ACCOUNT
    assert session.clients == []


def test_a_custom_endpoint_is_the_local_account() -> None:
    session = FakeSession(account="999")

    assert resolve_account("", "http://127.0.0.1:9999", "us-east-1", session) == "local"
    assert session.clients == []


def test_the_account_comes_from_sts_and_falls_back_to_local(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_account("", None, "eu-west-1", FakeSession(account="999")) == "999"

    failing = FakeSession(error=botocore.exceptions.NoCredentialsError())
    assert resolve_account("", None, "eu-west-1", failing) == "local"
    assert "cannot find the AWS account" in caplog.text


def test_build_limiter_follows_the_settings(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        off = build_limiter(Settings(rate_limit=False), client)
        on = build_limiter(Settings(account_id=ACCOUNT, api_budget_fraction=0.5, region="eu-west-1"), client)
        local = build_limiter(Settings(endpoint_url="http://127.0.0.1:9999"), client)
    finally:
        client.close()

    assert isinstance(off, NullLimiter)
    assert isinstance(on, RateLimiter)
    assert on.rate("SetTaskStatus") == pytest.approx(5.0)
    assert on.key("SetTaskStatus") == f"dpb:rl:eu-west-1:{ACCOUNT}:SetTaskStatus"
    assert isinstance(local, RateLimiter)
    assert local.key("PollForTask") == "dpb:rl:us-east-1:local:PollForTask"
