"""How botocore errors map to the bridge's error kinds (which decide retry, loss and failure)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from bridge.api import translate
from bridge.errors import AuthError, InvalidRequest, TaskGone, Throttled, Unavailable


def client_error(code: str, message: str = "", status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("ThrottlingException", "Rate exceeded"), Throttled),
        (client_error("Whatever", "", 429), Throttled),
        (client_error("InvalidRequestException", "Rate exceeded"), Throttled),
        (client_error("InvalidRequestException", "Web service limit exceeded for PollForTask"), Throttled),
        (client_error("InvalidRequestException", "field 'taskId' is too long"), InvalidRequest),
        (client_error("TaskNotFoundException", "no such task"), TaskGone),
        (client_error("PipelineDeletedException"), TaskGone),
        (client_error("InternalServiceError", "", 500), Unavailable),
        (client_error("UnrecognizedClientException", "", 400), AuthError),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), Unavailable),
    ],
)
def test_each_error_maps_to_the_kind_that_decides_what_happens_next(error: Exception, kind: type) -> None:
    assert type(translate(error, "Op")) is kind


def test_only_throttling_and_transport_errors_are_retried() -> None:
    assert translate(client_error("InvalidRequestException", "Rate exceeded"), "Op").retryable
    assert not translate(client_error("InvalidRequestException", "bad"), "Op").retryable
    assert not translate(client_error("TaskNotFoundException"), "Op").retryable
