"""The bridge's errors, grouped by who must react to them."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing or invalid; the operator must fix the configuration."""


# -- the remote API -------------------------------------------------------------------------------


class RemoteError(BridgeError):
    """A Data Pipeline call failed.

    Attributes:
        code: AWS's error code (``TaskNotFoundException``...) or a transport description.
        retryable: Whether trying the same call again may succeed.
    """

    retryable = False

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class Throttled(RemoteError):
    """Over the account's call rate (ThrottlingException, HTTP 429)."""

    retryable = True


#: ``Throttled.code`` when the fleet's own API budget refused the call (it was never sent).
BUDGET_EXHAUSTED = "LocalBudgetExhausted"


def refused_by_budget(exc: BaseException) -> bool:
    """Whether ``exc`` is the fleet's own API budget refusing a call, which was therefore never sent."""
    return isinstance(exc, Throttled) and exc.code == BUDGET_EXHAUSTED


class Unavailable(RemoteError):
    """The service answered 5xx, or the connection failed or timed out."""

    retryable = True


class InvalidRequest(RemoteError):
    """The service refused the request as invalid; retrying the same call will not help."""


class AuthError(RemoteError):
    """Credentials are missing or rejected."""


class TaskGone(RemoteError):
    """The task no longer belongs to us: TaskNotFound, or its pipeline was deleted or is unknown."""


# -- the broker and the lease store -----------------------------------------------------------------


class BrokerError(BridgeError):
    """The Celery broker or the Redis lease store cannot be reached."""


# -- executing a task -----------------------------------------------------------------------------


class TaskFailure(BridgeError):
    """A task must end FAILED with this ``error_id`` (sent to Data Pipeline as ``errorId``)."""

    error_id = "BridgeTaskFailed"

    def __init__(self, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        if error_id is not None:
            self.error_id = error_id


class InvalidTask(TaskFailure):
    """The task object is malformed or lacks what its activity needs."""

    error_id = "BridgeInvalidTask"


class UnsupportedActivity(TaskFailure):
    """No handler is registered for the object's type."""

    error_id = "BridgeUnsupportedActivity"


class Canceled(BridgeError):
    """Data Pipeline canceled the task, or it is no longer ours: stop, and send no SetTaskStatus."""
