"""AWS's per-operation call limits: one account-wide token bucket per operation.

The rates and bursts are the Developer Guide's "AWS Data Pipeline Limits" table. Operations the table
leaves out (EvaluateExpression, AddTags, RemoveTags, DeactivatePipeline) are not throttled unless a
``--rate`` names them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from emulator.service import OPERATIONS


@dataclass(frozen=True)
class Rate:
    """A bucket's refill rate (calls per second) and size (the burst)."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_s) and self.per_s >= 0):
            raise ValueError(f"the rate must be a number >= 0, not {self.per_s!r}")
        if self.burst < 0:
            raise ValueError(f"the burst must be an integer >= 0, not {self.burst!r}")


_AWS_BURST = 100
#: The "Web service call limits" table (per account; protocol reference §5).
AWS_RATES: Mapping[str, Rate] = MappingProxyType(
    {
        "ActivatePipeline": Rate(1, _AWS_BURST),
        "CreatePipeline": Rate(1, _AWS_BURST),
        "DeletePipeline": Rate(1, _AWS_BURST),
        "DescribeObjects": Rate(2, _AWS_BURST),
        "DescribePipelines": Rate(1, _AWS_BURST),
        "GetPipelineDefinition": Rate(1, _AWS_BURST),
        "PollForTask": Rate(2, _AWS_BURST),
        "ListPipelines": Rate(1, _AWS_BURST),
        "PutPipelineDefinition": Rate(1, _AWS_BURST),
        "QueryObjects": Rate(2, _AWS_BURST),
        "ReportTaskProgress": Rate(10, _AWS_BURST),
        "SetTaskStatus": Rate(10, _AWS_BURST),
        "SetStatus": Rate(1, _AWS_BURST),
        "ReportTaskRunnerHeartbeat": Rate(1, _AWS_BURST),
        "ValidatePipelineDefinition": Rate(1, _AWS_BURST),
    }
)


def check_operation(name: str) -> str:
    """``name`` if it is an operation of the API.

    Raises:
        ValueError: it is not (the message lists the operations).
    """
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
    return name


def parse_rate(spec: str) -> tuple[str, Rate]:
    """``Op=RATE/BURST`` (for example ``PollForTask=5/10``) as ``(operation, Rate)``.

    Raises:
        ValueError: not that form, an unknown operation, or a negative or non-numeric rate or burst.
    """
    name, sep, value = spec.strip().partition("=")
    rate_text, slash, burst_text = value.partition("/")
    if not sep or not slash:
        raise ValueError(f"{spec!r} is not OPERATION=RATE/BURST (for example PollForTask=5/10)")
    check_operation(name.strip())
    try:
        rate = Rate(float(rate_text), int(burst_text))
    except ValueError as exc:
        raise ValueError(f"{spec!r}: RATE must be a number >= 0 and BURST an integer >= 0 ({exc})") from None
    return name.strip(), rate


def parse_rates(specs: Iterable[str]) -> dict[str, Rate]:
    """Every ``Op=RATE/BURST`` of ``specs`` (each may hold several, comma-separated); later ones win.

    Raises:
        ValueError: one of them is bad (see ``parse_rate``).
    """
    return dict(parse_rate(item) for spec in specs for item in spec.split(",") if item.strip())


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled at ``per_s`` a second; a call takes one. Not thread-safe.

    Args:
        rate: The refill rate and the bucket's size.
        now: The current time in seconds (any monotonic origin); the bucket starts full.
    """

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self._tokens = float(rate.burst)
        self._at = now

    def tokens(self, now: float) -> float:
        """The tokens in the bucket at ``now``."""
        if now > self._at:
            self._tokens = min(float(self.rate.burst), self._tokens + (now - self._at) * self.rate.per_s)
            self._at = now
        return self._tokens

    def take(self, now: float) -> bool:
        """Take a token if there is one; ``False`` means the call is over the limit."""
        if self.tokens(now) < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Throttle:
    """The account's buckets, one per throttled operation.

    Args:
        rates: The throttled operations and their limits; any other operation is never refused.
        clock: Seconds from a monotonic origin (injected by tests).
    """

    def __init__(self, rates: Mapping[str, Rate], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._buckets = {name: TokenBucket(rate, now) for name, rate in rates.items()}

    @classmethod
    def aws(cls, overrides: Mapping[str, Rate] | None = None, clock: Callable[[], float] = time.monotonic) -> Throttle:
        """AWS's table, with ``overrides`` replacing (or adding) some operations' limits."""
        return cls({**AWS_RATES, **(overrides or {})}, clock)

    def admit(self, operation: str) -> bool:
        """Whether ``operation`` may run now (taking a token if it is throttled at all)."""
        bucket = self._buckets.get(operation)
        if bucket is None:
            return True
        with self._lock:
            return bucket.take(self._clock())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per throttled operation: ``tokens`` now, ``rate`` (calls/s) and ``burst``."""
        with self._lock:
            now = self._clock()
            return {
                name: {"tokens": round(bucket.tokens(now), 3), "rate": bucket.rate.per_s, "burst": bucket.rate.burst}
                for name, bucket in sorted(self._buckets.items())
            }
