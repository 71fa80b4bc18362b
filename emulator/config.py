"""The service's settings, one frozen value built by the CLI (or by tests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Rehandout(StrEnum):
    """What a missed acknowledgement or progress deadline does (AWS's behaviour is unconfirmed)."""

    NEW_ATTEMPT = "new-attempt"
    SAME_TASK = "same-task"


class TaskObjects(StrEnum):
    """What a handed-out task's ``objects`` map holds."""

    FULL = "full"
    ATTEMPT_ONLY = "attempt-only"


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of the local Data Pipeline service.

    Durations are in real seconds; ``time_scale`` divides Period-valued fields of definitions
    (after validation), never these options. ``clock_speed`` speeds up the service clock
    (schedules, displayed times), never deadlines.
    """

    poll_wait_s: float = 90.0
    ack_timeout_s: float = 120.0
    progress_timeout_s: float = 900.0
    rehandout: Rehandout = Rehandout.NEW_ATTEMPT
    task_objects: TaskObjects = TaskObjects.FULL
    time_scale: float = 1.0
    clock_speed: float = 1.0
    #: Activate schedules that start more than a day in the past (AWS refuses them).
    allow_old_start: bool = False
    #: Defaults for fields a definition leaves out (AWS's are unconfirmed; see docs/emulator.md).
    default_maximum_retries: int = 2
    default_retry_delay_s: float = 600.0
    state_path: str | None = None
    require_auth: bool = False
    #: access key id -> secret, checked when ``require_auth`` is on.
    credentials: dict[str, str] = field(default_factory=dict)
    account_id: str = "123456789012"
    #: Page sizes of ListPipelines / QueryObjects default.
    list_page_size: int = 25
    #: AWS's limits changed by ``--limit``, by name (see :data:`LIMIT_DEFAULTS`).
    limits: dict[str, int] = field(default_factory=dict)
    #: Where system-managed preconditions look for S3 objects (``None``: boto3's default endpoint).
    s3_endpoint_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("poll_wait_s", "ack_timeout_s", "progress_timeout_s", "time_scale", "clock_speed"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name, value in self.limits.items():
            if name not in LIMIT_DEFAULTS:
                raise ValueError(f"unknown limit {name!r}; known: {', '.join(LIMIT_DEFAULTS)}")
            if value < 0:
                raise ValueError(f"limit {name} must not be negative")

    def limit(self, name: str) -> int:
        """The limit called ``name`` in force (AWS's unless ``--limit`` changed it)."""
        return self.limits.get(name, LIMIT_DEFAULTS[name])


#: AWS's limits ("AWS Data Pipeline Limits"), by their ``--limit`` names.
LIMIT_DEFAULTS: Mapping[str, int] = MappingProxyType(
    {
        "pipelines": 100,
        "objects-per-pipeline": 100,
        "fields-per-object": 50,
        "bytes-per-field": 10240,
        "bytes-per-object": 15360,
        "bytes-per-name": 256,
        "retries": 5,
        "parameters": 50,
    }
)


def parse_limits(values: Iterable[str]) -> dict[str, int]:
    """``NAME=N`` pairs (``--limit``, repeatable; one value may hold several, comma- or space-separated).

    Raises:
        ValueError: an unknown name or a value that is not a non-negative integer.
    """
    out: dict[str, int] = {}
    for value in values:
        for item in value.replace(",", " ").split():
            name, sep, number = item.partition("=")
            name = name.strip().lower().replace("_", "-")
            if not sep or name not in LIMIT_DEFAULTS:
                raise ValueError(f"{item!r}: expected NAME=N with NAME one of {', '.join(LIMIT_DEFAULTS)}")
            try:
                out[name] = int(number)
            except ValueError:
                raise ValueError(f"{item!r}: N must be an integer") from None
            if out[name] < 0:
                raise ValueError(f"{item!r}: N must not be negative")
    return out
