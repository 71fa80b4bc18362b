"""The token buckets behind throttling, and the parsing of ``--rate`` and the fault options (no I/O)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from emulator.cli import emulator
from emulator.faults import Decision, FaultConfig, Faults, PerOperation
from emulator.service import OPERATIONS
from emulator.throttle import AWS_RATES, Rate, Throttle, TokenBucket, parse_rate, parse_rates


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bucket ---------------------------------------------------------------------------------


def test_a_full_bucket_lets_the_burst_through_then_refuses() -> None:
    # given a bucket of 5 refilled at 2 a second
    bucket = TokenBucket(Rate(2, 5), now=0.0)

    # when 6 calls arrive at once
    admitted = [bucket.take(0.0) for _ in range(6)]

    # then the burst passes and the 6th is refused
    assert admitted == [True] * 5 + [False]


def test_the_bucket_refills_at_its_rate() -> None:
    # given an empty bucket refilled at 2 a second
    bucket = TokenBucket(Rate(2, 5), now=0.0)
    while bucket.take(0.0):
        pass

    # then a token is back after half a second, not before
    assert not bucket.take(0.49)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    # and three seconds later, three seconds' worth (6) are capped at the burst (5)
    assert bucket.tokens(3.5) == 5.0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    # given a bucket left alone for an hour
    bucket = TokenBucket(Rate(10, 3), now=0.0)

    # then it lets exactly its burst through
    assert [bucket.take(3600.0) for _ in range(4)] == [True, True, True, False]


def test_a_zero_burst_refuses_everything() -> None:
    bucket = TokenBucket(Rate(100, 0), now=0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(60.0)


@given(
    rate=st.floats(min_value=0.1, max_value=50),
    burst=st.integers(min_value=0, max_value=20),
    gaps=st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    # given calls at arbitrary times
    bucket = TokenBucket(Rate(rate, burst), now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)

    # then no more got through than the bucket allows over that time
    assert admitted <= burst + rate * now + 1e-6


# -- the account's buckets ----------------------------------------------------------------------


def test_the_default_rates_are_aws_table() -> None:
    # given AWS's buckets
    snapshot = Throttle.aws(clock=FakeClock()).snapshot()

    # then the task-runner operations have the documented rates, every bucket a burst of 100
    assert {op: b["rate"] for op, b in snapshot.items() if op in AWS_RATES} == {
        "ActivatePipeline": 1,
        "CreatePipeline": 1,
        "DeletePipeline": 1,
        "DescribeObjects": 2,
        "DescribePipelines": 1,
        "GetPipelineDefinition": 1,
        "PollForTask": 2,
        "ListPipelines": 1,
        "PutPipelineDefinition": 1,
        "QueryObjects": 2,
        "ReportTaskProgress": 10,
        "SetTaskStatus": 10,
        "SetStatus": 1,
        "ReportTaskRunnerHeartbeat": 1,
        "ValidatePipelineDefinition": 1,
    }
    assert {b["burst"] for b in snapshot.values()} == {100}
    assert {b["tokens"] for b in snapshot.values()} == {100}
    # and the operations missing from AWS's table are never throttled
    assert set(OPERATIONS) - set(snapshot) == {"EvaluateExpression", "AddTags", "RemoveTags", "DeactivatePipeline"}


def test_operations_have_their_own_buckets() -> None:
    # given one operation with a tiny bucket
    clock = FakeClock()
    throttle = Throttle.aws({"ListPipelines": Rate(1, 1)}, clock=clock)

    # when it is exhausted
    assert throttle.admit("ListPipelines")
    assert not throttle.admit("ListPipelines")

    # then others still pass, unthrottled operations always pass, and a second later it passes again
    assert throttle.admit("DescribePipelines")
    assert all(throttle.admit("AddTags") for _ in range(1000))
    clock.now += 1.0
    assert throttle.admit("ListPipelines")


# -- parsing ------------------------------------------------------------------------------------


def test_parse_rate_reads_operation_rate_and_burst() -> None:
    assert parse_rate("PollForTask=5/10") == ("PollForTask", Rate(5.0, 10))
    assert parse_rate(" ReportTaskProgress=0.5/1 ") == ("ReportTaskProgress", Rate(0.5, 1))
    # several per value (as BRIDGE_EMULATOR_RATES may hold them); later ones win; untabled ones allowed
    assert parse_rates(["PollForTask=5/10,SetStatus=1/2", "PollForTask=3/4", "AddTags=1/1"]) == {
        "PollForTask": Rate(3.0, 4),
        "SetStatus": Rate(1.0, 2),
        "AddTags": Rate(1.0, 1),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("PollForTask", "is not OPERATION=RATE/BURST"),
        ("PollForTask=5", "is not OPERATION=RATE/BURST"),
        ("PollForTasks=5/10", "unknown operation 'PollForTasks'"),
        ("PollForTask=fast/10", "RATE must be a number"),
        ("PollForTask=5/1.5", "BURST an integer"),
        ("PollForTask=-1/10", "RATE must be a number >= 0"),
        ("PollForTask=1/-10", "BURST an integer >= 0"),
        ("PollForTask=nan/10", "RATE must be a number"),
    ],
)
def test_bad_rates_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(spec)


def test_the_cli_refuses_a_bad_rate_with_a_clear_error() -> None:
    # when the service is started with a bad --rate
    result = CliRunner().invoke(emulator, ["--port", "0", "--rate", "PollForTask=fast"])

    # then it exits with a usage error naming the option and the expected form, before serving
    assert result.exit_code == 2
    assert "Invalid value for '--rate'" in result.output
    assert "OPERATION=RATE/BURST" in result.output


def test_the_cli_refuses_a_bad_fault_rate() -> None:
    result = CliRunner().invoke(emulator, ["--port", "0", "--drop-rate", "PollForTask=2"])
    assert result.exit_code == 2
    assert "Invalid value for '--drop-rate'" in result.output


def test_fault_options_combine_a_default_with_overrides() -> None:
    # given a default and an override, in either order
    rates = PerOperation.parse(["PollForTask=0.5", "0.1"], fraction=True)

    # then the override applies to its operation and the default to the rest
    assert rates.of("PollForTask") == 0.5
    assert rates.of("SetTaskStatus") == 0.1
    assert PerOperation.parse(["250"], fraction=False).of("ListPipelines") == 250.0


@pytest.mark.parametrize("spec", ["1.5", "-0.1", "nope", "Poll=0.5", "PollForTask=", "inf"])
def test_bad_fault_rates_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        PerOperation.parse([spec], fraction=True)


# -- fault decisions ----------------------------------------------------------------------------


def test_faults_are_off_by_default() -> None:
    faults = Faults(FaultConfig())
    assert not faults.config.active
    assert faults.decide("PollForTask") == Decision()


def test_a_seed_makes_the_draws_reproducible() -> None:
    # given a 50 % drop rate and a seed
    config = FaultConfig(drop_rate=PerOperation.parse(["0.5"], fraction=True), seed=7)

    # when two services with that configuration take the same calls
    def drops() -> list[bool]:
        faults = Faults(config)
        return [faults.decide("PollForTask").drop for _ in range(200)]

    # then they drop the same ones, about half of them
    first = drops()
    assert first == drops()
    assert 50 < sum(first) < 150


def test_a_faulted_call_is_never_also_dropped() -> None:
    faults = Faults(FaultConfig(fault_rate=PerOperation(1.0), drop_rate=PerOperation(1.0), latency_ms=PerOperation(5)))
    decision = faults.decide("SetTaskStatus")
    assert (decision.fault, decision.drop, decision.latency_s) == (True, False, 0.005)


def test_the_admin_api_replaces_only_the_kinds_it_names() -> None:
    # given an error rate on one operation and a latency
    config = FaultConfig(
        fault_rate=PerOperation.parse(["ReportTaskProgress=0.5"], fraction=True),
        latency_ms=PerOperation.parse(["20"], fraction=False),
    )

    # when the drop rate is set and the error rate cleared
    updated = config.updated({"dropRate": ["PollForTask=1"], "faultRate": []})

    # then the latency is kept
    assert updated.drop_rate.of("PollForTask") == 1.0
    assert not updated.fault_rate.active
    assert updated.latency_ms.of("AddTags") == 20.0
    with pytest.raises(ValueError, match="unknown keys"):
        config.updated({"dropRates": ["1"]})
    with pytest.raises(ValueError, match="list of values"):
        config.updated({"dropRate": "1"})
