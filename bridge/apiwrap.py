"""A base for ``TaskApi`` wrappers (metrics, API budget, error records): each overrides only ``_call``.

Imports nothing heavy (``bridge.api`` pulls in boto3), so light commands such as ``bridge check`` can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bridge.api import TaskApi

T = TypeVar("T")


class DelegatingApi:
    """A ``TaskApi`` that passes every call to ``inner`` through ``_call``: the one method a wrapper (metrics,
    API budget, error records) overrides to add what it does around a call.

    Args:
        inner: The API to call.
    """

    def __init__(self, inner: TaskApi) -> None:
        self.inner = inner

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        return fn()

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        return self._call("PollForTask", lambda: self.inner.poll_for_task(worker_group, hostname))

    def report_task_progress(self, task_id: str, fields: Mapping[str, str] | None = None) -> bool:
        return self._call("ReportTaskProgress", lambda: self.inner.report_task_progress(task_id, fields))

    def set_task_status(
        self,
        task_id: str,
        status: str,
        error_id: str | None = None,
        error_message: str | None = None,
        error_stack_trace: str | None = None,
    ) -> None:
        self._call(
            "SetTaskStatus",
            lambda: self.inner.set_task_status(task_id, status, error_id, error_message, error_stack_trace),
        )

    def report_task_runner_heartbeat(self, taskrunner_id: str, worker_group: str, hostname: str) -> bool:
        return self._call(
            "ReportTaskRunnerHeartbeat",
            lambda: self.inner.report_task_runner_heartbeat(taskrunner_id, worker_group, hostname),
        )

    def describe_objects(
        self, pipeline_id: str, object_ids: Sequence[str], evaluate_expressions: bool = True
    ) -> list[dict[str, Any]]:
        return self._call(
            "DescribeObjects", lambda: self.inner.describe_objects(pipeline_id, object_ids, evaluate_expressions)
        )

    def evaluate_expression(self, pipeline_id: str, object_id: str, expression: str) -> str:
        return self._call(
            "EvaluateExpression", lambda: self.inner.evaluate_expression(pipeline_id, object_id, expression)
        )
