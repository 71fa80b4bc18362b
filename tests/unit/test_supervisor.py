"""workers.supervisor: commands run as a group, are stopped as a group and never outlive their worker.

These tests spawn real processes (bash, sleep); each takes well under a few seconds.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import workers.supervisor as supervisor
from workers.supervisor import CommandResult, run_command, tail

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture
def pgids() -> Iterator[list[int]]:
    """Process groups a test started; any survivor is killed afterwards so a failure leaks nothing."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def run(tmp_path: Path, argv: list[str], **kwargs: Any) -> CommandResult:
    return run_command(
        argv, cwd=str(tmp_path), env=ENV, stdout_path=str(tmp_path / "out"), stderr_path=str(tmp_path / "err"), **kwargs
    )


def first_line(path: Path) -> str | None:
    text = path.read_text() if path.exists() else ""
    return text.split("\n")[0] if "\n" in text else None


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def live_members(pgid: int) -> list[int]:
    """Members of a process group that are not zombies (where PID 1 never reaps, zombies stay in the group)."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def when_started(tmp_path: Path, pgids: list[int], then: Callable[[int], None]) -> Callable[[], None]:
    """An on_tick that, once the command has echoed its pid (= its pgid) as first line, records it and calls then."""

    def on_tick() -> None:
        line = first_line(tmp_path / "out")
        if line and not pgids:
            pgids.append(int(line.split()[-1]))
            then(pgids[0])

    return on_tick


@pytest.mark.parametrize(
    ("argv", "exit_code", "sig", "text"),
    [
        (["true"], 0, None, "exit status 0"),
        (["bash", "-c", "exit 3"], 3, None, "exit status 3"),
        (["bash", "-c", "kill -KILL $$"], None, signal.SIGKILL, "killed by signal SIGKILL"),
    ],
)
def test_outcome_is_reported(
    tmp_path: Path, argv: list[str], exit_code: int | None, sig: int | None, text: str
) -> None:
    result = run(tmp_path, argv)

    assert (result.exit_code, result.signal, result.timed_out, result.canceled) == (exit_code, sig, False, False)
    assert result.describe() == text
    assert not result.supervisor_lost


def test_stdout_and_stderr_land_in_their_files(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("earlier\n")

    result = run(tmp_path, ["bash", "-c", "echo to-out; echo to-err >&2"])

    assert result.exit_code == 0
    assert (tmp_path / "out").read_text() == "earlier\nto-out\n"
    assert (tmp_path / "err").read_text() == "to-err\n"


def test_large_output_is_streamed_to_the_file_never_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given: every open() of the output file is recorded
    real_open = builtins.open
    modes: list[str] = []

    def spy(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(tmp_path / "out"):
            modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # when
    result = run(tmp_path, ["head", "-c", "20000000", "/dev/zero"])

    # then
    monkeypatch.undo()
    assert result.exit_code == 0
    assert (tmp_path / "out").stat().st_size == 20_000_000
    assert modes == ["ab"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb < 10_000


def test_env_and_cwd_are_exactly_those_given(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DP_OBJECT_ID": "ShellActivity", "ODD": "a b=c ü"}

    result = run_command(
        ["env"], cwd=str(tmp_path), env=env, stdout_path=str(tmp_path / "out"), stderr_path=str(tmp_path / "err")
    )
    run(tmp_path, ["pwd", "-P"])

    assert result.exit_code == 0
    lines = (tmp_path / "out").read_text(encoding="utf-8").splitlines()
    assert dict(line.split("=", 1) for line in lines[:-1]) == env  # no LC_CTYPE, no worker variables
    assert lines[-1] == str(tmp_path.resolve())


def test_cancel_stops_the_command_and_its_grandchildren(tmp_path: Path, pgids: list[int]) -> None:
    cancel = threading.Event()
    on_tick = when_started(tmp_path, pgids, lambda _pgid: cancel.set())

    result = run(
        tmp_path, ["bash", "-c", "echo $$; sleep 100 & sleep 100"], cancel=cancel, on_tick=on_tick, tick_s=0.05
    )

    assert result.canceled and not result.timed_out
    assert result.describe() == "canceled"
    assert result.signal == signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.killpg(pgids[0], 0)


def test_a_command_ignoring_sigterm_is_killed_after_grace(tmp_path: Path, pgids: list[int]) -> None:
    cancel = threading.Event()
    on_tick = when_started(tmp_path, pgids, lambda _pgid: cancel.set())

    result = run(
        tmp_path,
        ["bash", "-c", "trap '' TERM; echo $$; sleep 100 & sleep 100"],
        cancel=cancel,
        grace_s=0.5,
        on_tick=on_tick,
        tick_s=0.05,
    )

    assert result.canceled
    assert result.signal == signal.SIGKILL
    assert result.duration_s >= 0.5  # the grace was given
    assert group_gone(pgids[0])


def test_timeout_stops_the_command(tmp_path: Path) -> None:
    result = run(tmp_path, ["sleep", "100"], timeout_s=0.3)

    assert result.timed_out and not result.canceled
    assert result.signal == signal.SIGTERM
    assert result.describe() == "timed out after 0.3 s (SIGTERM)"
    assert result.duration_s >= 0.3  # not stopped before the timeout


def test_on_tick_is_called_about_every_tick_and_its_errors_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    def on_tick() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("heartbeat failed")

    with caplog.at_level(logging.ERROR, logger="workers.supervisor"):
        result = run(tmp_path, ["sleep", "1"], on_tick=on_tick, tick_s=0.1)

    assert result.exit_code == 0
    assert len(calls) >= 3  # a failing tick does not stop the ticking
    assert "on_tick failed" in caplog.text


def test_a_background_child_left_by_a_successful_command_is_killed(tmp_path: Path, pgids: list[int]) -> None:
    result = run(tmp_path, ["bash", "-c", "sleep 100 & echo $$"])

    pgids.append(int(first_line(tmp_path / "out") or 0))
    assert result.exit_code == 0
    assert group_gone(pgids[0])


PARENT = """
import os, sys, threading
from workers.supervisor import run_command

work = sys.argv[1]

def print_pgid():
    text = open(work + "/out").read()
    if text.endswith("\\n") and not getattr(print_pgid, "done", False):
        print_pgid.done = True
        print(os.getpgid(int(text)), flush=True)

def main():
    run_command(["bash", "-c", "echo $$; sleep 300 & sleep 300"], cwd=work, env={"PATH": "/usr/bin:/bin"},
                stdout_path=work + "/out", stderr_path=work + "/err", on_tick=print_pgid, tick_s=0.05)

if sys.argv[2] == "thread":  # as in Celery's threads pool
    threading.Thread(target=main).start()
else:  # as in a prefork child
    main()
"""


@pytest.mark.parametrize("where", ["main", "thread"])
def test_no_process_of_the_command_outlives_a_killed_worker(tmp_path: Path, pgids: list[int], where: str) -> None:
    # given: a worker process running a command with a grandchild
    worker = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), where], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    try:
        pgids.append(int(worker.stdout.readline()))
        assert wait_until(lambda: len(live_members(pgids[0])) == 3)  # bash and both sleeps

        # when: the worker is killed without a chance to clean up
        worker.kill()
    finally:
        worker.kill()
        worker.wait()
        worker.stdout.close()

    # then: the whole group goes away
    assert wait_until(lambda: group_gone(pgids[0]), timeout_s=5)


def test_a_lost_supervisor_is_reported_and_the_group_killed_by_the_worker(tmp_path: Path, pgids: list[int]) -> None:
    def kill_supervisor(_pgid: int) -> None:
        os.kill(int((first_line(tmp_path / "out") or "").split()[0]), signal.SIGKILL)

    on_tick = when_started(tmp_path, pgids, kill_supervisor)

    result = run(
        tmp_path, ["bash", "-c", "sleep 0.2; echo $PPID $$; sleep 100 & sleep 100"], on_tick=on_tick, tick_s=0.05
    )

    assert result.supervisor_lost
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    assert result.describe() == "outcome unknown: supervisor killed by signal SIGKILL"
    assert wait_until(lambda: not live_members(pgids[0]))


def test_a_stuck_supervisor_is_killed_with_the_group_after_grace(
    tmp_path: Path, pgids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the supervisor is frozen when cancel is set
    monkeypatch.setattr(supervisor, "_KILL_MARGIN_S", 0.3)
    cancel = threading.Event()

    def freeze_supervisor(_pgid: int) -> None:
        os.kill(int((first_line(tmp_path / "out") or "").split()[0]), signal.SIGSTOP)
        cancel.set()

    on_tick = when_started(tmp_path, pgids, freeze_supervisor)

    # when
    result = run(
        tmp_path,
        ["bash", "-c", "sleep 0.2; echo $PPID $$; sleep 100 & sleep 100"],
        cancel=cancel,
        grace_s=0.2,
        on_tick=on_tick,
        tick_s=0.05,
    )

    # then
    assert result.canceled and result.supervisor_lost
    assert result.duration_s >= 0.5  # the grace was given
    assert wait_until(lambda: not live_members(pgids[0]))


def test_nothing_runs_when_cancel_is_already_set(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()

    result = run(tmp_path, ["touch", "ran"], cancel=cancel)

    assert result.canceled
    assert not (tmp_path / "ran").exists()


def test_an_interrupted_run_command_stops_the_group_before_raising(tmp_path: Path, pgids: list[int]) -> None:
    def interrupt(_pgid: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            tmp_path,
            ["bash", "-c", "echo $$; sleep 100 & sleep 100"],
            on_tick=when_started(tmp_path, pgids, interrupt),
            tick_s=0.05,
        )

    assert group_gone(pgids[0])


def test_spawn_failures_raise_clear_oserrors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot start 'no-such-command'"):
        run(tmp_path, ["no-such-command"])
    with pytest.raises(FileNotFoundError, match="cannot start 'true': No such file or directory: '/no/such/dir'"):
        run_command(["true"], cwd="/no/such/dir", env=ENV, stdout_path=str(tmp_path / "o"), stderr_path=os.devnull)
    with pytest.raises(FileNotFoundError, match="'/no/such/dir/out'"):
        run_command(["true"], cwd=str(tmp_path), env=ENV, stdout_path="/no/such/dir/out", stderr_path=os.devnull)


def test_tail_returns_only_the_end_of_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # sparse: reading it all would take seconds and a gigabyte
        f.seek(0, os.SEEK_END)
        f.write(b"last line\n")

    assert tail(str(path), 16) == "\0" * 6 + "last line\n"
    assert len(tail(str(path))) == 4096


def test_tail_drops_a_torn_first_character(tmp_path: Path) -> None:
    path = tmp_path / "utf8.log"
    path.write_text("é" * 100, encoding="utf-8")

    assert tail(str(path), 5) == "éé"
    assert tail(str(path), 1000) == "é" * 100
