"""``bridge dev``: the whole stack from one command, run as a user runs it (a subprocess, its terminal output).

Each test runs ``python -m bridge dev`` with real children (the local service, redis-server, a Celery worker,
the poller, Flower) and checks what the user sees, then that nothing it started is left behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, LineReader, child_env, wait_for

HELLO = ROOT / "examples" / "hello.json"
TABLE_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(FINISHED|FAILED|BLOCKED|CASCADE_FAILED|CANCELED|RUNNING|\S+)\s+\d+")


class DevRun:
    """One ``python -m bridge dev`` process, its output read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
            cwd=ROOT,
            start_new_session=True,
        )
        self.output = LineReader(self.proc.stdout)

    def wait(self, timeout: float = 90.0) -> int:
        """Wait for the exit, then for the last lines of output."""
        code = self.proc.wait(timeout=timeout)
        self.output._thread.join(timeout=10)
        return code

    def text(self) -> str:
        return self.output.text()

    def line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first output line matching ``pattern`` (waiting for it)."""

        def find() -> re.Match[str] | None:
            return next((m for line in list(self.output.lines) if (m := re.search(pattern, line))), None)

        found: re.Match[str] = wait_for(find, timeout=timeout, interval=0.1, what=f"a line matching {pattern!r}")
        return found

    def value(self, label: str) -> str:
        """The value of a ``  <label>  <value>`` line of the start-up block."""
        return self.line(rf"^  {label} +(.*)$")[1].strip()

    @property
    def root(self) -> Path:
        return Path(self.value("logs")).parent

    def pids(self) -> dict[str, int]:
        """``pids      redis-server 1, emulator 2, ...`` as a mapping."""
        return {name: int(pid) for name, pid in (item.rsplit(" ", 1) for item in self.value("pids").split(", "))}

    def table(self) -> dict[tuple[str, str], str]:
        """The final table: (pipeline, object) → status."""
        lines = self.text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("PIPELINE  OBJECT"))
        rows = {}
        for line in lines[start + 1 :]:
            found = TABLE_ROW.match(line)
            if not found:
                break
            rows[(found[1], found[2])] = found[3]
        return rows

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.output._thread.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def runs() -> Iterator[list[DevRun]]:
    started: list[DevRun] = []
    yield started
    for run in started:
        run.close()


def start(runs: list[DevRun], *args: str) -> DevRun:
    run = DevRun(*args)
    runs.append(run)
    return run


def write_definition(path: Path, *objects: dict[str, Any], **default: str) -> Path:
    path.write_text(json.dumps({"objects": [{"id": "Default", "scheduleType": "ondemand", **default}, *objects]}))
    return path


def shell(object_id: str, command: str, **fields: Any) -> dict[str, Any]:
    return {"id": object_id, "type": "ShellCommandActivity", "command": command, **fields}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pgrep(pattern: str) -> list[str]:
    result = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if str(os.getpid()) != line.split()[0]]


def assert_nothing_left(run: DevRun, root: Path, pids: dict[str, int]) -> None:
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=5, what="every child to be gone")
    assert not pgrep(str(root)), pgrep(str(root))
    assert not root.exists(), f"{root} was not removed"


def get(url: str, auth: tuple[str, str] | None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_hello_runs_every_object_to_finished(runs: list[DevRun]) -> None:
    # Given the example definition, when bridge dev runs it without Flower
    run = start(runs, str(HELLO), "--no-flower")
    root, pids = run.root, run.pids()
    code = run.wait()

    # Then it exits 0, and every object of the definition ended FINISHED
    assert code == 0, run.text()
    objects = [obj["id"] for obj in json.loads(HELLO.read_text())["objects"] if obj["id"] != "Default"]
    assert run.table() == {("hello", obj): "FINISHED" for obj in objects}, run.text()
    assert "flower" not in pids
    assert_nothing_left(run, root, pids)


def test_a_failing_step_exits_1_and_shows_failed_and_blocked(runs: list[DevRun], tmp_path: Path) -> None:
    # Given a definition whose second step fails (no worker group named: bridge dev uses 'dev'),
    # and another one on its own worker group
    failing = write_definition(
        tmp_path / "broken.json",
        shell("Prep", "echo preparing; sleep 3"),
        shell("Break", "echo 'disk on fire' >&2; exit 3", dependsOn={"ref": "Prep"}),
        shell("After", "true", dependsOn={"ref": "Break"}),
        shell("Last", "true", dependsOn={"ref": "After"}),
        failureAndRerunMode="none",
        maximumRetries="0",
    )
    other = write_definition(tmp_path / "other.json", shell("Hello", "echo hi"), workerGroup="other")

    # When bridge dev runs both, Flower on
    run = start(runs, str(failing), str(other))
    root, pids = run.root, run.pids()
    url, user, password = run.line(r"^  flower +(\S+)\s+\(user (\S+), password (\S+)\)").groups()

    # Then Flower answers with the printed credentials, and only with them
    assert get(url + "/", (user, password)) == 200
    assert get(url + "/", None) == 401
    assert get(url + "/", (user, "wrong")) == 401
    code = run.wait()

    # And the run exits 1 with the failure and what it blocked
    assert code == 1, run.text()
    assert run.table() == {
        ("broken", "Prep"): "FINISHED",
        ("broken", "Break"): "FAILED",
        ("broken", "After"): "BLOCKED",
        ("broken", "Last"): "BLOCKED",
        ("other", "Hello"): "FINISHED",
    }, run.text()
    assert re.search(r"broken\s+Break\s+FAILED\s+BridgeCommandFailed.*disk on fire", run.text()), run.text()
    assert "worker groups dev, other" in run.text()
    assert_nothing_left(run, root, pids)


def test_sigint_mid_run_stops_every_process(runs: list[DevRun], tmp_path: Path) -> None:
    # Given a run whose only step sleeps for 30 s
    marker = f"marker-{uuid.uuid4().hex[:12]}"
    slow = write_definition(tmp_path / "slow.json", shell("Slow", f"sleep 30; echo {marker}"), workerGroup="dev")
    run = start(runs, str(slow))
    root, pids = run.root, run.pids()
    run.line(r"\] slow +Slow +RUNNING")
    wait_for(lambda: pgrep(marker), timeout=10, what="the command to run")
    assert all(alive(pid) for pid in pids.values())

    # When the user presses Ctrl-C
    run.proc.send_signal(signal.SIGINT)
    code = run.wait(timeout=30)  # the step sleeps 30 s: returning at all means it was stopped

    # Then it exits promptly with 130, and no process it started is left
    assert code == 130, run.text()
    assert set(pids) == {"emulator", "redis-server", "worker", "bridge", "flower"}
    assert_nothing_left(run, root, pids)
    assert not pgrep(marker), pgrep(marker)
