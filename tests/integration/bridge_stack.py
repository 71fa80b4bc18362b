"""The whole bridge as a user runs it, for the ``test_bridge_*`` modules.

A local Data Pipeline service, a private redis-server, real ``celery -A workers worker`` processes and a real
``bridge start``, all over their real protocols. Nothing is mocked; every process is stopped (and, failing
that, killed with its whole process group) when the stack stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import (
    EmulatorProcess,
    LineReader,
    ManagedProcess,
    RedisServer,
    bridge_env,
    bridge_start,
    celery_worker,
    describe,
    dp_client,
    fields_of,
    instance_of,
    ondemand_definition,
    put_definition,
    wait_for,
)

#: Instance statuses after which nothing runs again.
FINAL = frozenset({"FINISHED", "FAILED", "CANCELED", "CASCADE_FAILED", "SKIPPED"})


class Stack:
    """Emulator + Redis + workers + ``bridge start``; ``stop()`` leaves no process behind.

    Args:
        emulator_args: Options of ``bridge emulator``.
        env: Extra environment for the bridge and the workers (``BRIDGE_*``).
    """

    def __init__(self, emulator_args: Sequence[str], **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bridge-e2e-"))
        self.emulator = EmulatorProcess(emulator_args)
        self.redis = RedisServer()
        self.extra_env = {"BRIDGE_WORK_DIR": str(self.dir / "work"), "BRIDGE_DRAIN_TIMEOUT_S": "5", **env}
        self.processes: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self.dp: Any = None

    def start(self) -> Stack:
        self.emulator.start()
        self.redis.start()
        self.dp = dp_client(self.emulator.url)
        return self

    @property
    def env(self) -> dict[str, str]:
        return bridge_env(self.emulator.url, self.redis.url, **self.extra_env)

    def worker(
        self,
        queues: str,
        pool: str = "threads",
        concurrency: int = 2,
        loglevel: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Start a ``celery -A workers worker`` consuming ``queues``; returns it once ready."""
        proc = celery_worker(
            env or self.env, queues, pool=pool, concurrency=concurrency, name=f"w{uuid.uuid4().hex[:6]}"
        )
        proc.cmd[proc.cmd.index("--loglevel") + 1] = loglevel
        self.processes.append(proc)
        self.workers.append(proc)
        return proc.start()

    def bridge(self, *groups: str, extra: Sequence[str] = (), env: dict[str, str] | None = None) -> ManagedProcess:
        """Start ``bridge start`` for ``groups``; returns it once its first poller runs."""
        proc = bridge_start(env or self.env, *groups, extra=extra)
        self.processes.append(proc)
        return proc.start()

    def counters(self, operation: str) -> int:
        """How many ``operation`` calls the service has received."""
        counts: dict[str, dict[str, int]] = self.emulator.admin("counters")["counters"]
        return counts.get(operation, {}).get("calls", 0)

    def stop(self) -> None:
        """Stop every process this stack started, then anything a test command left behind."""
        for proc in reversed(self.processes):
            stop_process(proc)
        for pid_file in self.dir.glob("*.pids"):
            kill_pids(read_pids(pid_file))
        emulator, reader = self.emulator.proc, self.emulator.output
        self.emulator.stop()
        close_output(emulator, reader)
        self.redis.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_stack(worker_group: str, emulator_args: Sequence[str], concurrency: int = 2, **env: str) -> Iterator[Stack]:
    """A started stack with one threads-pool worker on ``dp.<worker_group>`` and a ``bridge start`` for it."""
    stack = Stack(emulator_args, **env)
    try:
        stack.start()
        stack.worker(f"dp.{worker_group}", pool="threads", concurrency=concurrency)
        stack.bridge(worker_group)
        yield stack
    finally:
        stack.stop()


def stop_process(proc: ManagedProcess, sig: int = signal.SIGTERM) -> int | None:
    """Stop ``proc`` gracefully, then kill its process group (prefork children outlive a killed parent)."""
    code = proc.stop(sig)
    if proc.proc is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.proc.pid, signal.SIGKILL)
    close_output(proc.proc, proc.output)
    return code


def close_output(popen: subprocess.Popen[str] | None, reader: LineReader | None) -> None:
    """Close a stopped process's output pipe once its reader has read it to the end."""
    if reader is not None:
        reader._thread.join(timeout=10)
    if popen is not None and popen.stdout is not None and (reader is None or not reader._thread.is_alive()):
        popen.stdout.close()


# -- pipelines ----------------------------------------------------------------------------------------


def run_pipeline(dp: Any, worker_group: str, *objects: dict[str, Any], **default_fields: Any) -> str:
    """Create, define (on demand, no retries unless told) and activate a pipeline; returns its id."""
    doc = ondemand_definition(*objects, workerGroup=worker_group, **{"maximumRetries": "0", **default_fields})
    pipeline_id: str = dp.create_pipeline(name="e2e", uniqueId=str(uuid.uuid4()))["pipelineId"]
    result = put_definition(dp, pipeline_id, doc)
    assert not result["errored"], result["validationErrors"]
    dp.activate_pipeline(pipelineId=pipeline_id)
    return pipeline_id


def instance(dp: Any, pipeline_id: str, component_id: str) -> dict[str, Any]:
    """The fields of ``component_id``'s instance, as DescribeObjects shows them."""
    return describe(dp, pipeline_id, instance_of(dp, pipeline_id, component_id))


def status(dp: Any, pipeline_id: str, component_id: str) -> str:
    found: str = instance(dp, pipeline_id, component_id)["@status"]
    return found


def wait_final(dp: Any, pipeline_id: str, component_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until ``component_id``'s instance ends; returns its fields."""
    ended: dict[str, Any] = wait_for(
        lambda: (found := instance(dp, pipeline_id, component_id))["@status"] in FINAL and found,
        timeout=timeout,
        interval=0.2,
        what=f"{component_id} to end",
    )
    return ended


def instances(dp: Any, pipeline_id: str) -> dict[str, dict[str, Any]]:
    """Every instance of a pipeline by component id, as DescribeObjects shows them."""
    ids = dp.query_objects(pipelineId=pipeline_id, sphere="INSTANCE")["ids"]
    found = dp.describe_objects(pipelineId=pipeline_id, objectIds=ids)["pipelineObjects"] if ids else []
    return {fields["@componentParent"]: fields for fields in map(fields_of, found)}


def attempts(dp: Any, pipeline_id: str, component_id: str) -> list[dict[str, Any]]:
    """Every attempt of ``component_id``'s instance, oldest first."""
    query = {"selectors": [{"fieldName": "@componentParent", "operator": {"type": "REF_EQ", "values": [component_id]}}]}
    ids = dp.query_objects(pipelineId=pipeline_id, sphere="ATTEMPT", query=query)["ids"]
    if not ids:
        return []
    found = [fields_of(o) for o in dp.describe_objects(pipelineId=pipeline_id, objectIds=ids)["pipelineObjects"]]
    return sorted(found, key=lambda a: int(a["@attemptCount"]))


# -- processes a command leaves -------------------------------------------------------------------------


def read_pids(path: Path) -> list[int]:
    """Pids a test command wrote to ``path``, one per line (missing file: none)."""
    try:
        return [int(word) for word in path.read_text().split()]
    except FileNotFoundError:
        return []


def _stat(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and process group, from /proc; ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, _ppid, pgid = text.rpartition(")")[2].split()[:3]
    return state, int(pgid)


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: it only waits for whoever reaps orphans)."""
    found = _stat(pid)
    return found is not None and found[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether the process group ``pgid`` has a member that still runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(entry.name)) is not None and found[1] == pgid and found[0] != "Z":
            return True
    return False


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL the test commands' ``bash``/``sleep`` processes among ``pids`` (never a recycled pid of another)."""
    for pid in pids:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0) in (b"bash", b"sleep"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def logged(proc: ManagedProcess, *texts: str, timeout: float = 30.0) -> str:
    """Wait for a line of ``proc``'s output that contains every one of ``texts``; returns it."""
    line: str = wait_for(
        lambda: next(
            (line for line in list(proc.output.lines if proc.output else []) if all(t in line for t in texts)), None
        ),
        timeout=timeout,
        what=f"a line with {texts}",
    )
    return line
