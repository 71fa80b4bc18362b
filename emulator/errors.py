"""Errors the service returns, in AWS's JSON 1.1 error shape."""

from __future__ import annotations

from typing import ClassVar

#: The namespace the real service puts in ``__type`` (API Reference examples).
ERROR_NAMESPACE = "com.amazon.setl.webservice"


class ServiceError(Exception):
    """An error answered to the client as ``{"__type": ..., "message": ...}``."""

    code: ClassVar[str] = "InternalServiceError"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON body botocore parses (it strips everything up to ``#``)."""
        return {"__type": f"{ERROR_NAMESPACE}#{self.code}", "message": self.message}


class InternalServiceError(ServiceError):
    code = "InternalServiceError"
    status = 500


class InvalidRequestException(ServiceError):
    code = "InvalidRequestException"
    status = 400


class TaskNotFoundException(ServiceError):
    code = "TaskNotFoundException"
    status = 400


class PipelineNotFoundException(ServiceError):
    code = "PipelineNotFoundException"
    status = 400


class PipelineDeletedException(ServiceError):
    code = "PipelineDeletedException"
    status = 400


class ThrottlingException(ServiceError):
    """Over an operation's rate; botocore retries ``ThrottlingException`` (HTTP 400) as throttling."""

    code = "ThrottlingException"
    status = 400


class UnknownOperationException(ServiceError):
    code = "UnknownOperationException"
    status = 400


class SerializationException(ServiceError):
    """The body is not JSON or not an object (AWS's JSON-protocol code for it)."""

    code = "SerializationException"
    status = 400
