"""The Data Pipeline task-runner API: the ``TaskApi`` protocol and its boto3 implementation."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import boto3
import botocore.exceptions
from botocore.config import Config

from bridge import masking
from bridge.errors import AuthError, ConfigError, InvalidRequest, RemoteError, TaskGone, Throttled, Unavailable

log = logging.getLogger(__name__)

#: PollForTask holds up to 90 s: the read timeout must exceed it.
POLL_READ_TIMEOUT_S = 100.0
CALL_READ_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
STACK_TRACE_LIMIT = 1024
ERROR_ID_LIMIT = 1024

_THROTTLING = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
#: Some AWS services signal a rate limit as InvalidRequestException with this kind of text: retry those.
_LIMIT_TEXT = re.compile(r"rate exceeded|limit exceeded|too many requests|throttl", re.IGNORECASE)
_GONE = {"TaskNotFoundException", "PipelineNotFoundException", "PipelineDeletedException"}
_AUTH = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "AccessDeniedException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
}


class TaskApi(Protocol):
    """What the bridge needs from Data Pipeline. Every method raises ``RemoteError`` subclasses."""

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        """Long-poll for a task; ``None`` when none arrived."""

    def report_task_progress(self, task_id: str, fields: Mapping[str, str] | None = None) -> bool:
        """Acknowledge or heartbeat a task; returns ``canceled``."""

    def set_task_status(
        self,
        task_id: str,
        status: str,
        error_id: str | None = None,
        error_message: str | None = None,
        error_stack_trace: str | None = None,
    ) -> None:
        """End a task FINISHED, FAILED or FALSE."""

    def report_task_runner_heartbeat(self, taskrunner_id: str, worker_group: str, hostname: str) -> bool:
        """Say this runner is alive; returns ``terminate``."""

    def describe_objects(
        self, pipeline_id: str, object_ids: Sequence[str], evaluate_expressions: bool = True
    ) -> list[dict[str, Any]]:
        """Fetch objects (for refs a task object did not include)."""

    def evaluate_expression(self, pipeline_id: str, object_id: str, expression: str) -> str:
        """Evaluate ``#{...}`` in ``expression`` in the context of ``object_id``."""


#: Characters the API's string pattern forbids (C0 controls but tab/newline/return, surrogates, U+FFFE/F):
#: a command's coloured stderr would otherwise make SetTaskStatus fail, and the task run again forever.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """``text`` with characters the Data Pipeline API refuses replaced by ``?``."""
    return _FORBIDDEN.sub("?", text)


def register_reply_secrets(response_dict: Mapping[str, Any] | None = None, **_: Any) -> None:
    """Register the ``*`` field values of a reply before botocore parses it (and logs its body at DEBUG)."""
    body = (response_dict or {}).get("body")
    if not isinstance(body, bytes) or b'"*' not in body:
        return
    try:
        document = json.loads(body)
    except ValueError:
        return
    masking.SECRETS.add(masking.field_secrets(document))


def translate(exc: Exception, operation: str) -> RemoteError:
    """Map a botocore exception to the bridge's error kinds."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = f"{operation}: {code}: {error.get('Message', '')}"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _THROTTLING or status == 429 or (code == "InvalidRequestException" and _LIMIT_TEXT.search(message)):
            return Throttled(message, code)
        if code in _GONE:
            return TaskGone(message, code)
        if code in _AUTH or status == 403:
            return AuthError(message, code)
        if status >= 500 or code == "InternalServiceError":
            return Unavailable(message, code)
        return InvalidRequest(message, code)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AuthError(f"{operation}: {exc}", "NoCredentials")
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return Unavailable(f"{operation}: {type(exc).__name__}: {exc}", type(exc).__name__)
    return Unavailable(f"{operation}: unexpected {type(exc).__name__}: {exc}", type(exc).__name__)


class Boto3TaskApi:
    """``TaskApi`` over boto3, with botocore's own retries off (the bridge retries, and budgets, itself).

    Args:
        endpoint_url: A custom endpoint (the local service); ``None`` for AWS.
        region: The AWS region (worker groups are per region).
    """

    def __init__(self, endpoint_url: str | None, region: str, session: boto3.session.Session | None = None) -> None:
        session = session or boto3.session.Session()
        common: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            common["endpoint_url"] = endpoint_url
        # One attempt in all: botocore's "max_attempts" counts retries after the first (so 1 would re-send once).
        retries = {"total_max_attempts": 1, "mode": "standard"}
        try:
            self._poll_client = session.client(
                "datapipeline",
                config=Config(read_timeout=POLL_READ_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S, retries=retries),
                **common,
            )
            self._client = session.client(
                "datapipeline",
                config=Config(
                    read_timeout=CALL_READ_TIMEOUT_S,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    retries=retries,
                    max_pool_connections=50,
                ),
                **common,
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot build a Data Pipeline client: {exc}") from exc
        # Task objects carry `*` fields; botocore logs reply bodies at DEBUG before anyone has parsed them.
        for client in (self._poll_client, self._client):
            client.meta.events.register("before-parse.data-pipeline", register_reply_secrets)

    def _call(self, operation: str, fn: Any, **params: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = fn(**params)
            return result
        except Exception as exc:
            raise translate(exc, operation) from exc

    def poll_for_task(self, worker_group: str, hostname: str) -> dict[str, Any] | None:
        reply = self._call(
            "PollForTask", self._poll_client.poll_for_task, workerGroup=worker_group, hostname=hostname[:1024]
        )
        task = reply.get("taskObject")
        return task if isinstance(task, dict) and task.get("taskId") else None

    def report_task_progress(self, task_id: str, fields: Mapping[str, str] | None = None) -> bool:
        params: dict[str, Any] = {"taskId": task_id}
        if fields:
            params["fields"] = [{"key": k, "stringValue": v} for k, v in fields.items()]
        return bool(self._call("ReportTaskProgress", self._client.report_task_progress, **params).get("canceled"))

    def set_task_status(
        self,
        task_id: str,
        status: str,
        error_id: str | None = None,
        error_message: str | None = None,
        error_stack_trace: str | None = None,
    ) -> None:
        params: dict[str, Any] = {"taskId": task_id, "taskStatus": status}
        if error_id:
            error_id = clean_text(error_id)
            params["errorId"] = ("Bridge_" + error_id if error_id.startswith("Service_") else error_id)[:ERROR_ID_LIMIT]
        if error_message:
            params["errorMessage"] = clean_text(error_message)
        if error_stack_trace:
            params["errorStackTrace"] = clean_text(error_stack_trace)[-STACK_TRACE_LIMIT:]
        self._call("SetTaskStatus", self._client.set_task_status, **params)

    def report_task_runner_heartbeat(self, taskrunner_id: str, worker_group: str, hostname: str) -> bool:
        reply = self._call(
            "ReportTaskRunnerHeartbeat",
            self._client.report_task_runner_heartbeat,
            taskrunnerId=taskrunner_id,
            workerGroup=worker_group,
            hostname=hostname[:1024],
        )
        return bool(reply.get("terminate"))

    def describe_objects(
        self, pipeline_id: str, object_ids: Sequence[str], evaluate_expressions: bool = True
    ) -> list[dict[str, Any]]:
        reply = self._call(
            "DescribeObjects",
            self._client.describe_objects,
            pipelineId=pipeline_id,
            objectIds=list(object_ids),
            evaluateExpressions=evaluate_expressions,
        )
        return list(reply.get("pipelineObjects", []))

    def evaluate_expression(self, pipeline_id: str, object_id: str, expression: str) -> str:
        reply = self._call(
            "EvaluateExpression",
            self._client.evaluate_expression,
            pipelineId=pipeline_id,
            objectId=object_id,
            expression=expression,
        )
        return str(reply.get("evaluatedExpression", ""))
