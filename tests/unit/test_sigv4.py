"""SigV4 verification against requests signed by botocore itself, offline and over real HTTP."""

from __future__ import annotations

import email.message
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from emulator.errors import InvalidRequestException, ServiceError
from emulator.sigv4 import Credentials, verify

KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
OTHER_KEY_ID = "AKIDOTHER"
OTHER_SECRET = "otherSecretValue0123456789"
CREDENTIALS = Credentials.parse(f"{KEY_ID}:{SECRET},{OTHER_KEY_ID}:{OTHER_SECRET}")
BODY = json.dumps({"workerGroup": "wg-1", "hostname": "worker-1"}).encode()
URL = "http://127.0.0.1:8123/"
MISMATCH = "The request signature we calculated does not match the signature you provided."


class Signed:
    """A request as the server would see it after botocore signed it."""

    def __init__(self, request: AWSRequest) -> None:
        parts = urlsplit(request.url)
        self.method = request.method
        self.path = parts.path
        self.query = parts.query
        # urllib3 sends Host from the URL; botocore signs it but does not put it in the headers.
        self.headers = {"Host": parts.netloc, **dict(request.headers.items())}
        self.body = request.body if isinstance(request.body, bytes) else request.body.encode()

    def verify(
        self,
        *,
        headers: dict[str, str] | email.message.Message | None = None,
        body: bytes | None = None,
        query: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """Run ``verify`` on this request as received, or with one part replaced."""
        return verify(
            self.method,
            self.path,
            self.query if query is None else query,
            self.headers if headers is None else headers,
            self.body if body is None else body,
            CREDENTIALS,
            now=now,
        )


def sign(
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    token: str | None = None,
    service: str = "datapipeline",
    url: str = URL,
    body: bytes = BODY,
    extra_headers: dict[str, str] | None = None,
) -> Signed:
    """Sign ``POST url`` the way boto3's datapipeline client does."""
    headers = {
        "X-Amz-Target": "DataPipeline.PollForTask",
        "Content-Type": "application/x-amz-json-1.1",
        **(extra_headers or {}),
    }
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(BotoCredentials(key_id, secret, token), service, "us-east-1").add_auth(request)
    return Signed(request)


def rejection(signed: Signed, *, body: bytes | None = None, now: datetime | None = None) -> str:
    """The message ``verify`` rejects the request with; the secret must never appear in it."""
    with pytest.raises(InvalidRequestException) as caught:
        signed.verify(body=body, now=now)
    assert SECRET not in caught.value.message
    assert OTHER_SECRET not in caught.value.message
    return caught.value.message


# --- verify, offline -------------------------------------------------------------------------------------------------


def test_correct_signature_returns_the_key_id() -> None:
    assert sign().verify() == KEY_ID
    assert sign(key_id=OTHER_KEY_ID, secret=OTHER_SECRET).verify() == OTHER_KEY_ID


def test_header_names_in_any_case_and_http_server_message_are_accepted() -> None:
    signed = sign()
    message = email.message.Message()
    for name, value in signed.headers.items():
        message[name.upper()] = value

    assert signed.verify(headers={k.lower(): v for k, v in signed.headers.items()}) == KEY_ID
    assert signed.verify(headers=message) == KEY_ID


def test_any_region_in_the_scope_is_accepted() -> None:
    request = AWSRequest(method="POST", url=URL, data=BODY, headers={"X-Amz-Target": "DataPipeline.PollForTask"})
    SigV4Auth(BotoCredentials(KEY_ID, SECRET), "datapipeline", "eu-west-3").add_auth(request)

    assert Signed(request).verify() == KEY_ID


def test_query_string_and_whitespace_in_header_values_are_canonicalised() -> None:
    signed = sign(url=URL + "?b=2&a=x%20y", extra_headers={"X-Custom": "  padded   value  "})

    assert signed.verify() == KEY_ID
    assert signed.verify(query="a=x%20y&b=2") == KEY_ID
    with pytest.raises(InvalidRequestException, match="does not match"):
        signed.verify(query="a=x%20y&b=3")


def test_session_token_request_passes_when_the_key_matches() -> None:
    signed = sign(token="FQoGZXIvYXdzEXAMPLETOKEN")

    assert "x-amz-security-token" in signed.headers["Authorization"]
    assert signed.verify() == KEY_ID


def test_tampered_body_is_rejected() -> None:
    assert rejection(sign(), body=BODY.replace(b"wg-1", b"wg-2")).startswith(MISMATCH)


def test_tampered_target_header_is_rejected() -> None:
    signed = sign()
    signed.headers["X-Amz-Target"] = "DataPipeline.SetTaskStatus"

    assert rejection(signed).startswith(MISMATCH)


def test_wrong_secret_is_rejected() -> None:
    assert rejection(sign(secret="not-the-secret")).startswith(MISMATCH)


def test_unknown_access_key_is_rejected() -> None:
    assert rejection(sign(key_id="AKIDUNKNOWN")) == "The security token included in the request is invalid."


def test_missing_authorization_is_rejected() -> None:
    signed = sign()
    del signed.headers["Authorization"]

    assert rejection(signed) == "Missing Authentication Token"


def test_signature_older_than_fifteen_minutes_is_rejected() -> None:
    message = rejection(sign(), now=datetime.now(UTC) + timedelta(minutes=20))

    assert message.startswith("Signature expired:")
    assert "earlier than" in message


def test_signature_from_the_future_is_rejected() -> None:
    assert "later than" in rejection(sign(), now=datetime.now(UTC) - timedelta(minutes=20))


def test_signature_within_the_skew_window_is_accepted() -> None:
    assert sign().verify(now=datetime.now(UTC) + timedelta(minutes=14)) == KEY_ID


def test_wrong_service_in_scope_is_rejected() -> None:
    assert "'datapipeline'" in rejection(sign(service="s3"))


def test_missing_or_malformed_date_is_rejected() -> None:
    signed = sign()
    signed.headers["X-Amz-Date"] = "yesterday"
    assert "X-Amz-Date" in rejection(signed)

    del signed.headers["X-Amz-Date"]
    assert "X-Amz-Date" in rejection(signed)


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("AWS AKIDEXAMPLE:c2lnbmF0dXJl", "Unsupported authorization type"),
        ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/datapipeline/aws4_request", "requires"),
        ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE, SignedHeaders=host, Signature=abc", "Credential must look like"),
    ],
)
def test_malformed_authorization_is_rejected(authorization: str, expected: str) -> None:
    signed = sign()
    signed.headers["Authorization"] = authorization

    assert expected in rejection(signed)


def test_unsigned_payload_is_accepted_as_declared() -> None:
    signed = sign(extra_headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})

    assert signed.verify(body=b"{}") == KEY_ID


def test_content_sha256_that_does_not_match_the_body_is_rejected() -> None:
    signed = sign(extra_headers={"X-Amz-Content-SHA256": "0" * 64})

    assert "x-amz-content-sha256" in rejection(signed)


def test_credentials_parse_rejects_bad_entries_without_echoing_secrets() -> None:
    for text in ["", "AKIDONLY", f"{KEY_ID}:{SECRET},:orphan-secret", f"{KEY_ID}:{SECRET}, {KEY_ID}:orphan-secret"]:
        with pytest.raises(ValueError) as caught:
            Credentials.parse(text)
        assert SECRET not in str(caught.value)
        assert "orphan-secret" not in str(caught.value)


def test_credentials_parse_trims_whitespace() -> None:
    parsed = Credentials.parse(f" {KEY_ID} : {SECRET} ,{OTHER_KEY_ID}:{OTHER_SECRET}")

    assert parsed.secret_for(KEY_ID) == SECRET
    assert parsed.secret_for(OTHER_KEY_ID) == OTHER_SECRET
    assert parsed.secret_for("AKIDUNKNOWN") is None


def test_credentials_repr_hides_secrets() -> None:
    assert SECRET not in repr(CREDENTIALS)
    assert KEY_ID in repr(CREDENTIALS)


# --- end to end: boto3 against a tiny verifying server ---------------------------------------------------------------


class VerifyingHandler(BaseHTTPRequestHandler):
    """Answers ``{}`` to correctly signed requests and InvalidRequestException (400) to the rest."""

    server: VerifyingServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path, _, query = self.path.partition("?")
        try:
            self.server.signers.append(verify("POST", path, query, self.headers, body, CREDENTIALS))
            status, answer = 200, b"{}"
        except ServiceError as exc:
            status, answer = exc.status, json.dumps(exc.body()).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class VerifyingServer(HTTPServer):
    signers: list[str]


@pytest.fixture
def endpoint() -> Iterator[tuple[str, VerifyingServer]]:
    server = VerifyingServer(("127.0.0.1", 0), VerifyingHandler)
    server.signers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def heartbeat(endpoint_url: str, key_id: str, secret: str, token: str | None = None) -> None:
    """Call ReportTaskRunnerHeartbeat through a real boto3 client, then close it."""
    client = boto3.client(
        "datapipeline",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}),
    )
    try:
        client.report_task_runner_heartbeat(taskrunnerId="x")
    finally:
        client.close()


def test_boto3_with_good_keys_is_accepted(endpoint: tuple[str, VerifyingServer]) -> None:
    url, server = endpoint

    heartbeat(url, KEY_ID, SECRET)
    heartbeat(url, OTHER_KEY_ID, OTHER_SECRET, token="FQoGZXIvYXdzEXAMPLETOKEN")

    assert server.signers == [KEY_ID, OTHER_KEY_ID]


@pytest.mark.parametrize(
    ("key_id", "secret", "expected"),
    [
        (KEY_ID, "not-the-secret", MISMATCH),
        ("AKIDUNKNOWN", SECRET, "The security token included in the request is invalid."),
    ],
)
def test_boto3_with_bad_keys_gets_invalid_request(
    endpoint: tuple[str, VerifyingServer], key_id: str, secret: str, expected: str
) -> None:
    url, server = endpoint

    with pytest.raises(ClientError) as caught:
        heartbeat(url, key_id, secret)

    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert caught.value.response["Error"]["Message"].startswith(expected)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert server.signers == []
