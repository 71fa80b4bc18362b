"""Run one command so that no process of it outlives the worker process, and stop it as a group.

The worker side (:func:`run_command`) spawns this module as a small supervisor, which starts the command in a
new session (its pid is the group id) with stdout/stderr inherited straight from the output files. The two talk
over pipes only:

- stdin of the supervisor, the *lifeline*: the worker writes one JSON line ``{"env": {...}}`` (the command's exact
  environment) and then holds the write end, which no other process inherits. EOF means the worker died: the
  supervisor stops the group (SIGTERM, grace, SIGKILL) and exits.
- ``--status-fd``: the supervisor writes JSON lines ``{"pid": n}`` after the spawn, ``{"exit_code": n}`` or
  ``{"signal": n}`` at the end, or ``{"error": msg, "errno": n}`` when the command could not start.
- SIGTERM to the supervisor: stop the group (SIGTERM, grace, SIGKILL).

The supervisor is stdlib-only and runs as a script under ``python -I -S``, so it imports neither the ``workers``
package (the Celery app) nor site-packages, and no ``PYTHON*`` variable or cwd can change what it imports. On
Linux it is a child subreaper, so orphaned members of the group are reaped by it even when PID 1 never reaps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

_SCRIPT = os.path.abspath(__file__)
_KILL_MARGIN_S = 5.0  # past grace, the worker stops trusting the supervisor and kills the group itself
_CANCEL_POLL_S = 0.2  # a threading.Event cannot wake select(); this bounds the cancel latency
_REAP_S = 2.0  # after SIGKILL, how long the supervisor waits for the group's members to be reaped
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class CommandResult:
    """How a command run by :func:`run_command` ended.

    Attributes:
        exit_code: The command's exit status when it exited normally.
        signal: The signal that killed the command (or its group leader), if any; when ``supervisor_lost``,
            the signal that killed the supervisor.
        timed_out: Stopped because ``timeout_s`` passed.
        canceled: Stopped because ``cancel`` was set.
        duration_s: Wall time from the spawn until the whole group was gone.
        timeout_s: The limit the command ran under, if any.
        supervisor_lost: The supervisor ended without reporting the command's outcome, which is then unknown.
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    canceled: bool
    duration_s: float
    timeout_s: float | None = None
    supervisor_lost: bool = False

    def describe(self) -> str:
        """One phrase for logs and error messages, e.g. ``exit status 3`` or ``timed out after 12 s (SIGTERM)``."""
        if self.canceled:
            return "canceled"
        if self.timed_out:
            how = "supervisor lost" if self.supervisor_lost else _status_text(self.exit_code, self.signal, short=True)
            return f"timed out after {self.timeout_s or self.duration_s:g} s ({how})"
        if self.supervisor_lost:
            died = f"killed by signal {_signal_name(self.signal)}" if self.signal else "exited without reporting"
            return f"outcome unknown: supervisor {died}"
        return _status_text(self.exit_code, self.signal)


def run_command(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdout_path: str,
    stderr_path: str,
    cancel: threading.Event | None = None,
    timeout_s: float | None = None,
    grace_s: float = 10.0,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 1.0,
) -> CommandResult:
    """Run ``argv`` in its own process group under a supervisor and wait for the whole group to end.

    Output is appended to ``stdout_path``/``stderr_path`` by the command itself; nothing is read back. A
    command's failure is reported in the result, never raised. If this call is interrupted by an exception
    (e.g. Celery's ``SoftTimeLimitExceeded``), the group is stopped (SIGTERM, grace, SIGKILL) before it propagates.

    Args:
        argv: The command and its arguments; ``argv[0]`` is looked up in ``env["PATH"]``.
        cwd: Working directory of the command.
        env: The command's complete environment; nothing is inherited from the worker.
        stdout_path: File the command's stdout is appended to.
        stderr_path: File the command's stderr is appended to.
        cancel: When set, the group is stopped and the result is ``canceled``.
        timeout_s: When this much time has passed, the group is stopped and the result is ``timed_out``.
        grace_s: Time between SIGTERM and SIGKILL when stopping the group.
        on_tick: Called about every ``tick_s`` while the command runs (heartbeats); exceptions are logged.
        tick_s: Interval between ``on_tick`` calls.

    Returns:
        How the command ended.

    Raises:
        OSError: The command could not be started (missing cwd or executable, unwritable output file, ...).
    """
    if not argv:
        raise ValueError("run_command needs a non-empty argv")
    if cancel is not None and cancel.is_set():
        return CommandResult(None, None, False, True, 0.0, timeout_s)
    start = time.monotonic()
    sup, status, life_w = _spawn(argv, cwd, stdout_path, stderr_path, grace_s)
    stop: str | None = None
    try:
        _send_env(life_w, env)
        stop = _wait(sup, status, start, cancel, timeout_s, grace_s, on_tick, tick_s)
    except BaseException:
        os.close(life_w)  # EOF on the lifeline: the supervisor stops the group (SIGTERM, grace, SIGKILL)
        life_w = -1
        try:
            sup.wait(grace_s + _KILL_MARGIN_S)
        except subprocess.TimeoutExpired:
            status.read()
            _killpg(status.fields.get("pid"), signal.SIGKILL)
            sup.kill()
            sup.wait()
        raise
    finally:
        if life_w >= 0:
            os.close(life_w)
        os.close(status.fd)
    return _result(argv[0], sup, status.fields, stop, time.monotonic() - start, timeout_s, stderr_path)


def tail(path: str, max_bytes: int = 4096) -> str:
    """The last ``max_bytes`` of a file, decoded as UTF-8 (``errors="replace"``), without reading the rest.

    Raises:
        OSError: The file cannot be opened.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - max_bytes))
        data = f.read(max_bytes)
    if size > max_bytes:
        data = data[next((i for i, b in enumerate(data[:4]) if b & 0xC0 != 0x80), 0) :]  # no torn first character
    return data.decode("utf-8", errors="replace")


class _StatusReader:
    """Merges the supervisor's JSON status lines into one dict."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd, self.eof, self._buf = fd, False, b""
        self.fields: dict[str, Any] = {}

    def read(self) -> None:
        while not self.eof:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            self.eof = not chunk
            *lines, self._buf = (self._buf + chunk).split(b"\n")
            for line in lines:
                try:
                    self.fields.update(json.loads(line))
                except ValueError:
                    logger.warning("ignored an unreadable supervisor status line: %r", line[:200])


def _spawn(
    argv: Sequence[str], cwd: str, stdout_path: str, stderr_path: str, grace_s: float
) -> tuple[subprocess.Popen[bytes], _StatusReader, int]:
    """Start the supervisor; returns it, its status reader and the write end of its lifeline."""
    status_r, status_w = os.pipe()
    life_r, life_w = os.pipe()
    try:
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            cmd = [sys.executable, "-I", "-S", _SCRIPT, "--status-fd", str(status_w), "--grace", str(grace_s), "--"]
            sup = subprocess.Popen([*cmd, *argv], stdin=life_r, stdout=out, stderr=err, cwd=cwd, pass_fds=[status_w])
    except BaseException as exc:
        os.close(status_r)
        os.close(life_w)
        if isinstance(exc, OSError):
            where = f": {exc.filename!r}" if exc.filename else ""
            raise OSError(exc.errno, f"cannot start {argv[0]!r}: {exc.strerror}{where}") from exc
        raise
    finally:
        os.close(status_w)
        os.close(life_r)
    return sup, _StatusReader(status_r), life_w


def _send_env(fd: int, env: Mapping[str, str]) -> None:
    data = (json.dumps({"env": dict(env)}) + "\n").encode()
    with contextlib.suppress(BrokenPipeError):  # the supervisor is gone; its exit status tells what happened
        while data:
            data = data[os.write(fd, data) :]


def _wait(
    sup: subprocess.Popen[bytes],
    status: _StatusReader,
    start: float,
    cancel: threading.Event | None,
    timeout_s: float | None,
    grace_s: float,
    on_tick: Callable[[], None] | None,
    tick_s: float,
) -> str | None:
    """Wait for the supervisor to exit, ticking and stopping the group as asked; returns why it was stopped."""
    stop: str | None = None
    signaled = False
    deadline = math.inf if timeout_s is None else start + timeout_s
    kill_at = math.inf
    next_tick = start + tick_s if on_tick else math.inf
    while sup.poll() is None:
        now = time.monotonic()
        if stop is None and ((cancel is not None and cancel.is_set()) or now >= deadline):
            stop = "canceled" if now < deadline else "timed out"
            logger.info("stopping command group %s: %s", status.fields.get("pid"), stop)
            kill_at, deadline = now + grace_s + _KILL_MARGIN_S, math.inf
        if stop is not None and not signaled and "pid" in status.fields:
            sup.send_signal(signal.SIGTERM)  # only now: before it reports the pid, SIGTERM would kill it outright
            signaled, kill_at = True, now + grace_s + _KILL_MARGIN_S
        if now >= kill_at:
            logger.warning("supervisor %d did not stop in time; killing group %s", sup.pid, status.fields.get("pid"))
            _killpg(status.fields.get("pid"), signal.SIGKILL)
            sup.kill()
            kill_at = math.inf
        if on_tick is not None and now >= next_tick:
            try:
                on_tick()
            except Exception:
                logger.exception("on_tick failed while command group %s runs", status.fields.get("pid"))
            next_tick += tick_s
            if next_tick <= time.monotonic():
                next_tick = time.monotonic() + tick_s
        step = min(next_tick, kill_at, deadline) - time.monotonic()
        step = max(0.0, min(step, _CANCEL_POLL_S if cancel is not None and stop is None else 1.0))
        if status.eof:
            time.sleep(min(step, 0.01))  # the status pipe closes as the supervisor exits
        elif select.select([status.fd], [], [], step)[0]:
            status.read()
    status.read()
    return stop


def _result(
    name: str,
    sup: subprocess.Popen[bytes],
    fields: dict[str, Any],
    stop: str | None,
    duration_s: float,
    timeout_s: float | None,
    stderr_path: str,
) -> CommandResult:
    if "error" in fields:
        message = f"cannot start {name!r}: {fields['error']}"
        raise OSError(fields["errno"], message) if fields.get("errno") else OSError(message)
    rc = sup.returncode
    if "pid" not in fields and stop is None:
        raise OSError(f"supervisor for {name!r} ended ({_status_text(rc, None)}) before starting it; see {stderr_path}")
    lost = "exit_code" not in fields and "signal" not in fields
    if lost:
        _killpg(fields.get("pid"), signal.SIGKILL)  # the supervisor can no longer do it
        logger.warning("supervisor of command group %s ended without a status (%s)", fields.get("pid"), rc)
        exit_code, sig = None, -rc if rc < 0 else None
    else:
        exit_code, sig = fields.get("exit_code"), fields.get("signal")
    canceled, timed_out = stop == "canceled", stop == "timed out"
    return CommandResult(exit_code, sig, timed_out, canceled, duration_s, timeout_s, lost)


def _killpg(pgid: int | None, sig: int) -> bool:
    """Signal a process group; False once it has no members left (or is unknown)."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a member changed user; it still counts
    return True


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig or 0).name
    except ValueError:
        return str(sig)


def _status_text(exit_code: int | None, sig: int | None, short: bool = False) -> str:
    if exit_code is not None and exit_code < 0:  # a Popen returncode
        sig = -exit_code
    if sig:
        return _signal_name(sig) if short else f"killed by signal {_signal_name(sig)}"
    return f"exit status {exit_code}"


# --- the supervisor process: stdlib only ---


class _Supervisor:
    """Runs one command in a new session and stops its group on SIGTERM or when the lifeline closes."""

    def __init__(self, argv: list[str], status_fd: int, grace_s: float) -> None:
        self.argv, self.status_fd, self.grace_s, self.stop_requested = argv, status_fd, grace_s, False

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):  # a handler, not SIG_IGN: exec must reset it
            signal.signal(sig, lambda _sig, _frame: None)  # the worker decides when to stop, not the terminal
        _become_subreaper()
        env = _read_env(0)
        if env is None:
            return 1  # the worker died before we started
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        except (OSError, ValueError, TypeError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            self._emit(error=text, errno=getattr(exc, "errno", None))
            return 127
        self._emit(pid=proc.pid)
        wait_status = self._wait(proc.pid, wake_r)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        if os.WIFSIGNALED(wait_status):
            self._emit(signal=os.WTERMSIG(wait_status))
            return 128 + os.WTERMSIG(wait_status)
        self._emit(exit_code=os.WEXITSTATUS(wait_status))
        return os.WEXITSTATUS(wait_status)

    def _wait(self, pgid: int, wake_r: int) -> int:
        """Reap until the leader is done and the group is empty, stopping the group when asked to."""
        lifeline, leader, term_at, killed = True, None, math.inf, False
        while True:
            leader = _reap(pgid, leader)
            now = time.monotonic()
            if leader is not None and not _killpg(pgid, 0):
                return leader
            if term_at == math.inf and (self.stop_requested or not lifeline or leader is not None):
                _killpg(pgid, signal.SIGTERM)  # after the leader's exit this stops leftover members
                _killpg(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
                term_at = now
            elif not killed and now >= term_at + self.grace_s:
                _killpg(pgid, signal.SIGKILL)
                killed = True
            elif killed and leader is not None and now >= term_at + self.grace_s + _REAP_S:
                return leader  # members in uninterruptible sleep; nothing more can be done
            fds = [wake_r, 0] if lifeline else [wake_r]
            ready = select.select(fds, [], [], 1.0 if term_at == math.inf else 0.05)[0]
            if wake_r in ready:
                os.read(wake_r, 4096)  # one byte per signal; whatever is left just wakes us once more
            if 0 in ready and not os.read(0, 4096):
                lifeline = False

    def _on_sigterm(self, _sig: int, _frame: FrameType | None) -> None:
        self.stop_requested = True

    def _emit(self, **fields: object) -> None:
        with contextlib.suppress(OSError):  # the worker is gone; the lifeline tells us so
            os.write(self.status_fd, (json.dumps(fields) + "\n").encode())


def _reap(leader: int, leader_status: int | None) -> int | None:
    """Reap every exited child (orphans come to us as subreaper); returns the leader's wait status once known."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return leader_status
        if pid == 0:
            return leader_status
        if pid == leader:
            leader_status = wait_status


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(ImportError, OSError, AttributeError):  # without it, orphans go to PID 1 as usual
            import ctypes  # only here: a subreaper is Linux-only and ctypes costs start-up time

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _read_env(fd: int) -> dict[str, str] | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    return dict(json.loads(data)["env"])


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process; returns the command's exit status (128 + signal if killed)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workers.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--status-fd", type=int, required=True, help="where JSON status lines are written")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("argv", nargs="+", help="the command, after --")
    ns = parser.parse_args(args)
    return _Supervisor(ns.argv, ns.status_fd, ns.grace).run()


if __name__ == "__main__":
    sys.exit(main())
