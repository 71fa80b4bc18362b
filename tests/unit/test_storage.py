"""workers.storage against moto's S3 server over real HTTP: round trips, directories, exists, errors, streaming."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bridge.errors import InvalidTask, TaskFailure
from bridge.settings import Settings
from tests.moto_server import CREDENTIALS, MotoServer
from tests.support import free_port
from workers import storage

MB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    moto = MotoServer().start()
    yield moto
    moto.stop()


@pytest.fixture
def settings(server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Worker settings for the moto server; credentials come from the environment, as boto3's chain finds them."""
    for name, value in {
        **CREDENTIALS,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return Settings(s3_endpoint_url=server.url)


@pytest.fixture
def bucket(server: MotoServer) -> str:
    return server.bucket()


@pytest.fixture
def s3(server: MotoServer) -> Any:
    return server.client()


def test_a_file_round_trips_through_s3(settings: Settings, bucket: str, tmp_path: Path, s3: Any) -> None:
    # given a local file
    source = tmp_path / "in.bin"
    source.write_bytes(b"hello\x00world\n" * 1000)

    # when it is uploaded, then downloaded into a directory that does not exist yet
    storage.upload(settings, source, f"s3://{bucket}/a/b/in.bin")
    got = storage.download(settings, f"s3://{bucket}/a/b/in.bin", tmp_path / "new" / "dir" / "out.bin")

    # then S3 and the downloaded copy hold the same bytes
    assert s3.get_object(Bucket=bucket, Key="a/b/in.bin")["Body"].read() == source.read_bytes()
    assert got == tmp_path / "new" / "dir" / "out.bin"
    assert got.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_directory_round_trips_with_its_relative_paths(
    settings: Settings, bucket: str, tmp_path: Path, s3: Any, suffix: str
) -> None:
    # given a local tree, uploaded to a directory URI (with or without the trailing slash)
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "mid.csv").write_text("1,2\n")
    (tree / "sub" / "deeper" / "leaf").write_bytes(b"\xff")
    uploaded = storage.upload_dir(settings, tree, f"s3://{bucket}/stage/in{suffix}")
    s3.put_object(Bucket=bucket, Key="stage/in/marker/", Body=b"")  # a console-made "folder": not a file
    s3.put_object(Bucket=bucket, Key="stage/input-sibling.txt", Body=b"not under in/")

    # when the prefix is downloaded elsewhere
    files = storage.download_prefix(settings, f"s3://{bucket}/stage/in{suffix}", tmp_path / "copy")

    # then the same files came back under the same relative paths, and nothing beside the prefix
    assert sorted(uploaded) == [
        f"s3://{bucket}/stage/in/sub/deeper/leaf",
        f"s3://{bucket}/stage/in/sub/mid.csv",
        f"s3://{bucket}/stage/in/top.txt",
    ]
    copy = tmp_path / "copy"
    assert sorted(p.relative_to(copy).as_posix() for p in files) == ["sub/deeper/leaf", "sub/mid.csv", "top.txt"]
    assert (copy / "top.txt").read_text() == "top"
    assert (copy / "sub" / "deeper" / "leaf").read_bytes() == b"\xff"
    assert not (copy / "marker").exists()


def test_exists_knows_keys_prefixes_and_directories(settings: Settings, bucket: str, s3: Any) -> None:
    # given one object in a "directory"
    s3.put_object(Bucket=bucket, Key="data/2024/part-0", Body=b"x")
    uri = f"s3://{bucket}"

    # then the key exists, as do its "directories" (with or without the slash) and the bucket's root;
    # a missing key, an empty prefix, a partial name and a missing bucket do not
    assert storage.exists(settings, f"{uri}/data/2024/part-0")
    assert storage.exists(settings, f"{uri}/data/2024/")
    assert storage.exists(settings, f"{uri}/data/2024")
    assert storage.exists(settings, f"{uri}/data")
    assert storage.exists(settings, uri)
    assert not storage.exists(settings, f"{uri}/data/2024/part-1")
    assert not storage.exists(settings, f"{uri}/data/2025/")
    assert not storage.exists(settings, f"{uri}/data/20")
    assert not storage.exists(settings, "s3://no-such-bucket-here/x")


def test_missing_objects_fail_not_found_naming_the_uri(settings: Settings, bucket: str, tmp_path: Path) -> None:
    missing = f"s3://{bucket}/no/such/key.sh"

    # when a missing key, an empty prefix or a missing bucket is read, each is BridgeS3NotFound naming the URI
    with pytest.raises(TaskFailure) as download:
        storage.download(settings, missing, tmp_path / "x")
    with pytest.raises(TaskFailure) as stream:
        storage.open_read(settings, missing)
    with pytest.raises(TaskFailure) as prefix:
        storage.download_prefix(settings, f"s3://{bucket}/empty/", tmp_path / "y")
    with pytest.raises(TaskFailure) as no_bucket:
        storage.download_prefix(settings, "s3://no-such-bucket-here/in/", tmp_path / "z")
    with pytest.raises(TaskFailure) as upload_to_nowhere:
        (tmp_path / "f").write_text("f")
        storage.upload(settings, tmp_path / "f", "s3://no-such-bucket-here/f")

    for caught, uri in [
        (download, missing),
        (stream, missing),
        (prefix, f"s3://{bucket}/empty/"),
        (no_bucket, "s3://no-such-bucket-here/in/"),
        (upload_to_nowhere, "s3://no-such-bucket-here/f"),
    ]:
        assert caught.value.error_id == "BridgeS3NotFound", caught.value
        assert uri in str(caught.value)
    assert "NoSuchBucket" in str(no_bucket.value)
    assert not (tmp_path / "x").exists()


def test_bad_uris_are_invalid_tasks(settings: Settings, tmp_path: Path) -> None:
    for uri in ["/local/path", "http://bucket/key", "s3://", "s3:///key", "s3://bad bucket/key"]:
        with pytest.raises(InvalidTask):
            storage.parse_s3_uri(uri)
    with pytest.raises(InvalidTask, match="names no S3 object"):
        storage.download(settings, "s3://bucket/dir/", tmp_path / "x")
    assert storage.parse_s3_uri("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert storage.parse_s3_uri("s3://bucket") == ("bucket", "")


def test_s3_errors_keep_aws_code_and_message() -> None:
    # given the errors S3 answers with (as botocore raises them)
    def error(code: str, status: int, message: str) -> ClientError:
        reply: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(reply, "GetObject")

    denied = storage.s3_failure(error("AccessDenied", 403, "Access Denied"), "s3://b/k", "reading")
    slow = storage.s3_failure(error("SlowDown", 503, "Please reduce your request rate."), "s3://b/k", "reading")

    # then each has its own error id, AWS's code and message, and the URI
    assert (denied.error_id, str(denied)) == (
        "BridgeS3AccessDenied",
        "S3 access denied to s3://b/k when reading (AccessDenied: Access Denied)",
    )
    assert slow.error_id == "BridgeS3Error"
    assert "SlowDown: Please reduce your request rate." in str(slow) and "s3://b/k" in str(slow)


def test_an_unreachable_endpoint_is_an_s3_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TaskFailure) as caught:
        storage.download(settings, "s3://bucket/key", tmp_path / "x")
    assert caught.value.error_id == "BridgeS3Error"
    assert "s3://bucket/key" in str(caught.value) and "testing" not in str(caught.value)


def test_a_large_stream_is_written_in_parts_with_bounded_memory(settings: Settings, bucket: str, s3: Any) -> None:
    # given 64 MB produced one megabyte at a time
    uri = f"s3://{bucket}/big/blob.bin"
    sent = hashlib.sha256()

    # when it is written through open_write while Python's allocations are traced
    tracemalloc.start()
    try:
        with storage.open_write(settings, uri) as out:
            for n in range(64):
                chunk = n.to_bytes(4, "big") * (MB // 4)
                sent.update(chunk)
                out.write(chunk)
                del chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then S3 holds it as a multipart object of 8 MB parts, and the writer never held much of it
    head = s3.head_object(Bucket=bucket, Key="big/blob.bin")
    assert head["ContentLength"] == 64 * MB
    assert head["ETag"].strip('"').endswith("-8")
    assert peak < 64 * MB, f"peak traced memory {peak / MB:.1f} MB"

    # and it streams back byte for byte
    got = hashlib.sha256()
    body = storage.open_read(settings, uri)
    for chunk in iter(lambda: body.read(MB), b""):
        got.update(chunk)
    body.close()
    assert got.hexdigest() == sent.hexdigest()


def test_small_and_empty_writes_are_single_puts(settings: Settings, bucket: str, s3: Any) -> None:
    with storage.open_write(settings, f"s3://{bucket}/small.txt") as out:
        out.write(b"one ")
        out.write(memoryview(b"two"))
    with storage.open_write(settings, f"s3://{bucket}/empty"):
        pass
    assert s3.get_object(Bucket=bucket, Key="small.txt")["Body"].read() == b"one two"
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_an_error_while_writing_aborts_the_upload(settings: Settings, bucket: str, s3: Any) -> None:
    # given a write that has already sent two parts when the producer fails
    writer = storage.open_write(settings, f"s3://{bucket}/half")
    with pytest.raises(RuntimeError, match="producer broke"), writer as out:
        out.write(b"x" * (17 * MB))
        raise RuntimeError("producer broke")

    # then no object appeared and no multipart upload is left open (S3 would bill its parts)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="half")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ValueError, match="closed"):
        out.write(b"more")


def test_a_writer_to_a_missing_bucket_fails_not_found_and_leaves_nothing(settings: Settings) -> None:
    writer = storage.open_write(settings, "s3://no-such-bucket-here/x")
    with pytest.raises(TaskFailure) as caught:
        writer.write(b"y" * (9 * MB))
    assert caught.value.error_id == "BridgeS3NotFound"
    assert writer.closed
