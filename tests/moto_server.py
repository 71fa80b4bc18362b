"""moto's S3 server (``moto[server]``) as a child process on a free port, for storage and handler tests.

Real HTTP, no mocks: workers reach it through ``BRIDGE_S3_ENDPOINT_URL``, tests through a boto3 client.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support import BIN, child_env, free_port, wait_for

#: Credentials moto accepts; children get them with the endpoint (``env``).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_command(port: int) -> list[str]:
    """How to start moto's server: its console script, else ``python -m moto.server``.

    Raises:
        AssertionError: moto's server is not installed (it is a test dependency: ``moto[server]``).
    """
    try:
        import flask  # noqa: F401  (moto's server needs it)
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise AssertionError(
            f"moto's S3 server is missing ({exc}): install the test extra, pip install 'moto[server]'"
        ) from exc
    script = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
    if script:
        return [script, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """A moto server on a free port; ``start()`` returns once it answers S3 calls, ``stop()`` ends it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for workers and bridges that use this server (endpoint and moto's test credentials)."""
        return {"BRIDGE_S3_ENDPOINT_URL": self.url, **CREDENTIALS}

    def start(self, timeout: float = 30.0) -> MotoServer:
        cmd = moto_server_command(self.port)
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(**CREDENTIALS), start_new_session=True
        )
        client = self.client()
        wait_for(lambda: self._answers(client), timeout=timeout, what=f"moto's S3 server on {self.url}")
        return self

    def _answers(self, client: Any) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"moto's server exited {self.proc.returncode}:\n{self.output()}")
        try:
            client.list_buckets()
            return True
        except Exception:
            return False

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).client(
            "s3",
            endpoint_url=self.url,
            config=Config(connect_timeout=2, read_timeout=30, retries={"total_max_attempts": 1}),
        )

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name unless given); returns its name."""
        bucket = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
