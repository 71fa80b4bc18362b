"""The service's settings, one frozen value built by the CLI (or by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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

    Durations are in clock seconds; ``time_scale`` divides Period-valued fields of definitions
    (after validation), never these options.
    """

    poll_wait_s: float = 90.0
    ack_timeout_s: float = 120.0
    progress_timeout_s: float = 900.0
    rehandout: Rehandout = Rehandout.NEW_ATTEMPT
    task_objects: TaskObjects = TaskObjects.FULL
    time_scale: float = 1.0
    clock_speed: float = 1.0
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

    def __post_init__(self) -> None:
        for name in ("poll_wait_s", "ack_timeout_s", "progress_timeout_s", "time_scale", "clock_speed"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
