"""S3 for workers: scripts, staging, copies and logs, over boto3's default credential chain.

The endpoint is ``settings.s3_endpoint_url`` (``BRIDGE_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``; ``None``: AWS).
Every S3 failure becomes a :class:`~bridge.errors.TaskFailure` whose ``error_id`` says who must act:
``BridgeS3NotFound`` (no such key, prefix or bucket), ``BridgeS3AccessDenied``, ``BridgeS3Error`` (anything else,
with AWS's error code and message). Messages name the URI, never credentials.

Large objects stream: :func:`open_read` is botocore's ``StreamingBody`` and :func:`open_write` uploads in parts of
about 8 MB as they fill, so copying an object of any size holds at most a part or two in memory.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from bridge.errors import InvalidTask, TaskFailure
from bridge.settings import Settings

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

#: Size of each part :func:`open_write` uploads (S3's minimum is 5 MiB, except for the last part).
PART_SIZE = 8 * 1024 * 1024
#: S3 allows at most 10,000 parts: every this many parts, the part size doubles.
_PARTS_PER_SIZE = 1000
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"})
_DENIED = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled", "AccountProblem"})
_TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)

_clients: dict[tuple[int, str | None, str], Any] = {}
_clients_lock = threading.Lock()


class S3NotFound(TaskFailure):
    """The object, prefix or bucket does not exist."""

    error_id = "BridgeS3NotFound"


class S3AccessDenied(TaskFailure):
    """S3 refused the credentials boto3 found (or found none)."""

    error_id = "BridgeS3AccessDenied"


class S3Error(TaskFailure):
    """Any other S3 failure: throttling after retries, a timeout, an unreachable endpoint, a server error."""

    error_id = "BridgeS3Error"


# -- clients and URIs ---------------------------------------------------------------------------------


def s3_client(settings: Settings) -> Any:
    """The S3 client of this process for ``settings.s3_endpoint_url`` (built once per process and endpoint).

    Credentials come from boto3's default chain (environment, shared files, container or instance roles). A
    custom endpoint (moto, MinIO) gets path-style addressing.
    """
    key = (os.getpid(), settings.s3_endpoint_url, settings.region)  # a forked child builds its own connections
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(
                connect_timeout=10,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 5},
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            )
            # A session per client: sessions are not thread-safe, clients are.
            client = boto3.session.Session().client(
                "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.region or None, config=config
            )
            _clients[key] = client
        return client


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` into ``(bucket, key)``; the key may be empty (``s3://bucket`` or ``s3://bucket/``).

    Raises:
        InvalidTask: not an ``s3://`` URI with a bucket name.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in ("s3", "s3n", "s3a"):
        raise InvalidTask(f"{uri!r} is not an S3 URI (expected s3://bucket/key)")
    bucket, _, key = rest.partition("/")
    if not bucket or any(c.isspace() for c in bucket) or len(bucket) > 255:
        raise InvalidTask(f"{uri!r} is not an S3 URI: bad bucket name {bucket!r}")
    return bucket, key


def join_uri(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, one ``/`` between each (``join_uri("s3://b/logs/", "x")``: ``s3://b/logs/x``)."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def s3_failure(exc: Exception, uri: str, action: str) -> TaskFailure:
    """An S3 error of ``action`` on ``uri`` as a task failure with a clear error id (for ``raise ... from exc``)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        detail = str(error.get("Message") or "").strip()
        if code in _NOT_FOUND:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return S3NotFound(f"S3 {what} not found: {uri} ({code}{': ' + detail if detail else ''}, when {action})")
        if code in _DENIED:
            return S3AccessDenied(f"S3 access denied to {uri} when {action} ({code}{': ' + detail if detail else ''})")
        return S3Error(f"S3 error when {action} {uri}: {code}{': ' + detail if detail else ''}")
    if isinstance(exc, NoCredentialsError):
        return S3AccessDenied(f"no AWS credentials found (boto3's default chain) when {action} {uri}")
    return S3Error(f"S3 error when {action} {uri}: {type(exc).__name__}: {exc}")


# -- single objects -------------------------------------------------------------------------------------


def download(settings: Settings, uri: str, path: str | os.PathLike[str]) -> Path:
    """Download one object to ``path`` (parents created); returns the path.

    Raises:
        InvalidTask: ``uri`` is not an S3 object URI.
        S3NotFound, S3AccessDenied, S3Error: as their names say.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise InvalidTask(f"{uri!r} names no S3 object (it ends with '/')")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client(settings).download_file(bucket, key, str(target), Config=_TRANSFER)
    except (ClientError, BotoCoreError, RetriesExceededError) as exc:
        raise s3_failure(_cause(exc), uri, "downloading") from exc
    return target


def upload(settings: Settings, path: str | os.PathLike[str], uri: str) -> None:
    """Upload the file at ``path`` to ``uri`` (multipart for large files).

    Raises:
        InvalidTask: ``uri`` is not an S3 object URI.
        S3NotFound: the bucket does not exist.
        S3AccessDenied, S3Error: as their names say.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise InvalidTask(f"{uri!r} names no S3 object (it ends with '/')")
    try:
        s3_client(settings).upload_file(str(path), bucket, key, Config=_TRANSFER)
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise s3_failure(_cause(exc), uri, "uploading to") from exc


def exists(settings: Settings, uri: str) -> bool:
    """Whether ``uri`` names an object, or a non-empty "directory".

    A URI ending with ``/`` (or a bare bucket) is a prefix, true when any object lies under it. Otherwise the key
    is tried as an object, then as a directory (``key/``). A missing bucket is ``False``.

    Raises:
        InvalidTask: ``uri`` is not an S3 URI.
        S3AccessDenied, S3Error: S3 could not answer.
    """
    bucket, key = parse_s3_uri(uri)
    client = s3_client(settings)
    if key and not key.endswith("/"):
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise s3_failure(exc, uri, "checking") from exc
        except BotoCoreError as exc:
            raise s3_failure(exc, uri, "checking") from exc
        key += "/"
    try:
        reply = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except ClientError as exc:
        if _code(exc) in _NOT_FOUND:
            return False
        raise s3_failure(exc, uri, "listing") from exc
    except BotoCoreError as exc:
        raise s3_failure(exc, uri, "listing") from exc
    return bool(reply.get("KeyCount") or reply.get("Contents"))


# -- directories ----------------------------------------------------------------------------------------


def list_keys(settings: Settings, uri: str) -> Iterator[str]:
    """Every object key under the directory ``uri`` (``s3://b/dir`` and ``s3://b/dir/`` both mean ``dir/``).

    Raises:
        InvalidTask: ``uri`` is not an S3 URI.
        S3NotFound: the bucket does not exist.
        S3AccessDenied, S3Error: as their names say.
    """
    bucket, prefix = _directory(uri)
    pages = s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])
    except (ClientError, BotoCoreError) as exc:
        raise s3_failure(exc, uri, "listing") from exc


def download_prefix(settings: Settings, uri: str, directory: str | os.PathLike[str]) -> list[Path]:
    """Download every object under ``uri`` into ``directory``, keeping their relative paths; returns the files.

    Directory markers (keys ending with ``/``) are skipped.

    Raises:
        InvalidTask: ``uri`` is not an S3 URI, or a key would land outside ``directory``.
        S3NotFound: the bucket does not exist, or no object lies under ``uri``.
        S3AccessDenied, S3Error: as their names say.
    """
    bucket, prefix = _directory(uri)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for key in list_keys(settings, uri):
        relative = PurePosixPath(key[len(prefix) :])
        if key.endswith("/") or not relative.parts:
            continue
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidTask(f"S3 key {key!r} under {uri} would be written outside the staging directory")
        files.append(download(settings, f"s3://{bucket}/{key}", root.joinpath(*relative.parts)))
    if not files:
        raise S3NotFound(f"S3 directory not found: no objects under {uri}")
    return files


def upload_dir(settings: Settings, directory: str | os.PathLike[str], uri: str) -> list[str]:
    """Upload every file under ``directory`` to the directory ``uri``, keeping relative paths; returns their URIs.

    Raises:
        InvalidTask: ``uri`` is not an S3 URI.
        S3NotFound: the bucket does not exist.
        S3AccessDenied, S3Error: as their names say.
    """
    bucket, prefix = _directory(uri)
    root = Path(directory)
    uploaded: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        target = f"s3://{bucket}/{prefix}{path.relative_to(root).as_posix()}"
        upload(settings, path, target)
        uploaded.append(target)
    return uploaded


# -- streams --------------------------------------------------------------------------------------------


def open_read(settings: Settings, uri: str) -> Any:
    """The object at ``uri`` as a streaming binary file-like (botocore's ``StreamingBody``); close it when done.

    Raises:
        InvalidTask: ``uri`` is not an S3 object URI.
        S3NotFound, S3AccessDenied, S3Error: as their names say (when opening).
    """
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise InvalidTask(f"{uri!r} names no S3 object")
    try:
        return s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"]
    except (ClientError, BotoCoreError) as exc:
        raise s3_failure(exc, uri, "reading") from exc


def open_write(settings: Settings, uri: str, part_size: int = PART_SIZE) -> S3Writer:
    """A binary file-like that uploads to ``uri`` in parts of ``part_size`` bytes as they fill.

    Use it as a context manager: a clean exit completes the upload, an exception aborts it (nothing appears at
    ``uri``). ``close()`` completes; a writer garbage-collected unclosed is aborted, never completed.

    Raises:
        InvalidTask: ``uri`` is not an S3 object URI.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise InvalidTask(f"{uri!r} names no S3 object (it ends with '/')")
    return S3Writer(s3_client(settings), bucket, key, part_size)


class S3Writer(io.BufferedIOBase):
    """Streams writes to one S3 object as a multipart upload (a single PUT when it stays under one part).

    Args:
        client: A boto3 S3 client.
        bucket: Target bucket.
        key: Target key.
        part_size: Bytes per part (at least 5 MiB against AWS; the last part may be smaller).
    """

    def __init__(self, client: Any, bucket: str, key: str, part_size: int = PART_SIZE) -> None:
        super().__init__()
        self._client, self.bucket, self.key = client, bucket, key
        self.uri = f"s3://{bucket}/{key}"
        self.part_size = part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        """Buffer ``data``, uploading each full part.

        Raises:
            ValueError: the writer is closed.
            S3NotFound, S3AccessDenied, S3Error: a part could not be uploaded (the upload is then aborted).
        """
        if self.closed:
            raise ValueError(f"write to a closed S3 writer ({self.uri})")
        view = memoryview(data).cast("B")
        offset = 0
        while offset < len(view):  # never buffer more than one part, whatever the caller writes at once
            size = self._current_part_size()
            piece = view[offset : offset + size - len(self._buffer)]
            self._buffer += piece
            offset += len(piece)
            if len(self._buffer) >= size:
                chunk, self._buffer = bytes(self._buffer), bytearray()
                self._send_part(chunk)
        self.bytes_written += len(view)
        return len(view)

    def close(self) -> None:
        """Complete the upload (a single PUT if no part was sent yet). Idempotent.

        Raises:
            S3NotFound, S3AccessDenied, S3Error: the object could not be written (the upload is then aborted).
        """
        if self.closed:
            return
        try:
            if not self._done:
                self._complete()
        finally:
            self._done = True
            self._buffer = bytearray()
            super().close()

    def abort(self) -> None:
        """Drop everything written: abort the multipart upload (if one began) and close. Idempotent."""
        if self._upload_id is not None and not self._done:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not abort the multipart upload to %s: %s", self.uri, s3_failure(exc, self.uri, ""))
        self._done = True
        self._buffer = bytearray()
        if not self.closed:
            super().close()

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()

    # -- internals ------------------------------------------------------------------------------------

    def _current_part_size(self) -> int:
        doublings: int = len(self._parts) // _PARTS_PER_SIZE
        return self.part_size << doublings

    def _send_part(self, chunk: bytes) -> None:
        try:
            if self._upload_id is None:
                reply = self._client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
                self._upload_id = str(reply["UploadId"])
            number = len(self._parts) + 1
            reply = self._client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
            self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise s3_failure(exc, self.uri, "uploading to") from exc

    def _complete(self) -> None:
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer))
                return
            if self._buffer:
                self._send_part(bytes(self._buffer))
                self._buffer = bytearray()
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise s3_failure(exc, self.uri, "uploading to") from exc


def _cause(exc: Exception) -> Exception:
    """The botocore error behind boto3's transfer wrappers (``S3UploadFailedError``, ``RetriesExceededError``)."""
    inner = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
    return inner if isinstance(inner, ClientError | BotoCoreError) and not isinstance(exc, ClientError) else exc


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _directory(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of a directory URI, the prefix ending with ``/`` unless it is the bucket's root."""
    bucket, key = parse_s3_uri(uri)
    return bucket, key if not key or key.endswith("/") else key + "/"
