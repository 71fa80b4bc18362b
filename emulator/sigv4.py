"""Verify AWS Signature Version 4 on incoming requests (canonical request → string to sign → HMAC chain)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from urllib.parse import quote, unquote

from emulator.errors import InvalidRequestException

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: How far ``X-Amz-Date`` may be from the server's clock (AWS's limit).
MAX_SKEW = timedelta(minutes=15)
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTH_PARAM = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]*)")
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


@dataclass(frozen=True)
class Credentials:
    """The access keys the service accepts: access key id → secret access key."""

    secrets: Mapping[str, str] = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """Build from ``"AKID:SECRET,AKID2:SECRET2"``.

        Raises:
            ValueError: An entry is not ``id:secret``, a key id repeats, or none is given (never echoing a secret).
        """
        secrets: dict[str, str] = {}
        for position, entry in enumerate((e.strip() for e in text.split(",")), start=1):
            key_id, _, secret = entry.partition(":")
            if not key_id.strip() or not secret.strip():
                raise ValueError(f"credential entry {position} must look like ACCESS_KEY_ID:SECRET_ACCESS_KEY")
            if key_id.strip() in secrets:
                raise ValueError(f"access key id {key_id.strip()!r} is listed twice")
            secrets[key_id.strip()] = secret.strip()
        return cls(secrets)

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret for ``access_key_id``, or ``None`` if the key is unknown."""
        return self.secrets.get(access_key_id)

    def __repr__(self) -> str:
        return f"Credentials(access_key_ids={sorted(self.secrets)!r})"


def verify(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str] | Message,
    body: bytes,
    credentials: Credentials,
    *,
    now: datetime | None = None,
    service: str = "datapipeline",
) -> str:
    """Check a request's SigV4 signature against ``credentials``, using the headers the client says it signed.

    Args:
        method: HTTP method as received.
        path: Request path without the query string, as received.
        query: Raw query string (without ``?``), possibly empty.
        headers: Request headers in any case (a dict, or http.server's ``Message``); repeats are joined with ``,``.
        body: Raw request body.
        credentials: The accepted access keys.
        now: The server's clock (aware, or naive UTC); defaults to the current time.
        service: The service name the credential scope must name.

    Returns:
        The access key id that signed the request.

    Raises:
        InvalidRequestException: The request is unsigned, malformed, expired, or signed with an unknown or wrong key.
    """
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else str(value)
    auth = _parse_authorization(lowered.get("authorization", "").strip())
    secret = credentials.secret_for(auth.access_key_id)
    if secret is None:
        raise InvalidRequestException("The security token included in the request is invalid.")
    if auth.service != service:
        raise InvalidRequestException(f"Credential should be scoped to correct service: '{service}'.")
    amz_date = lowered.get("x-amz-date", "").strip()
    _check_date(amz_date, auth.date, now or datetime.now(UTC))
    canonical_request = "\n".join(
        (
            method.upper(),
            path or "/",
            _canonical_query(query),
            _canonical_headers(lowered, auth.signed_headers),
            auth.signed_headers,
            _payload_hash(lowered, body),
        )
    )
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    signing_key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise InvalidRequestException(_MISMATCH)
    return auth.access_key_id


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: str
    signature: str = field(repr=False)


def _parse_authorization(value: str) -> _Authorization:
    """Split ``AWS4-HMAC-SHA256 Credential=.../aws4_request, SignedHeaders=a;b, Signature=hex``."""
    if not value:
        raise InvalidRequestException("Missing Authentication Token")
    scheme, _, rest = value.partition(" ")
    if scheme != ALGORITHM:
        raise InvalidRequestException(f"Unsupported authorization type {scheme[:32]!r}; only {ALGORITHM} is accepted.")
    params: dict[str, str] = dict(_AUTH_PARAM.findall(rest))
    if set(params) != {"Credential", "SignedHeaders", "Signature"} or not all(params.values()):
        raise InvalidRequestException(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters."
        )
    scope = params["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise InvalidRequestException("Credential must look like ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request.")
    key_id, date, region, service, _ = scope
    return _Authorization(key_id, date, region, service, params["SignedHeaders"], params["Signature"])


def _check_date(amz_date: str, scope_date: str, now: datetime) -> None:
    """Require a well-formed ``X-Amz-Date`` that matches the scope and is within ``MAX_SKEW`` of ``now``."""
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequestException("Missing or malformed X-Amz-Date header (expected YYYYMMDDTHHMMSSZ).") from None
    if scope_date != amz_date[:8]:
        raise InvalidRequestException(f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date {amz_date}.")
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if abs(signed_at - now) > MAX_SKEW:
        # AWS's wording, so a skewed client clock is recognisable.
        relation, bound, sign = ("earlier", now - MAX_SKEW, "-") if signed_at < now else ("later", now + MAX_SKEW, "+")
        raise InvalidRequestException(
            f"Signature expired: {amz_date} is now {relation} than {bound:{_AMZ_DATE_FORMAT}} "
            f"({now:{_AMZ_DATE_FORMAT}} {sign} 15 min.)"
        )


def _canonical_headers(lowered: Mapping[str, str], signed_headers: str) -> str:
    """The signed headers in the client's order, values trimmed with inner whitespace runs collapsed."""
    names = signed_headers.split(";")
    if "host" not in names:
        raise InvalidRequestException("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    if missing := [n for n in names if n not in lowered]:
        raise InvalidRequestException(f"Signed header(s) missing from the request: {', '.join(missing)}.")
    return "".join(f"{n}:{' '.join(lowered[n].split())}\n" for n in names)


def _payload_hash(lowered: Mapping[str, str], body: bytes) -> str:
    """The body's SHA-256, unless the client declared ``UNSIGNED-PAYLOAD``."""
    computed = hashlib.sha256(body).hexdigest()
    declared = lowered.get("x-amz-content-sha256", "").strip()
    if declared == UNSIGNED_PAYLOAD:
        return UNSIGNED_PAYLOAD
    if declared and declared != computed:
        raise InvalidRequestException("The provided 'x-amz-content-sha256' header does not match what was computed.")
    return computed


def _canonical_query(query: str) -> str:
    """Re-encode each ``name=value`` pair the SigV4 way and sort them."""
    pairs = (pair.partition("=") for pair in query.split("&") if pair)
    encoded = sorted((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")) for k, _, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)
