"""Processes of a chaos run, read from /proc: trees, kills, and proof that none is left running.

A pid alone is not an identity (pids are reused), so a process is remembered as ``(pid, starttime)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: How often the tracker samples the process trees (a command lives at least a second).
SAMPLE_S = 0.3


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    starttime: int


def proc_info(pid: int | str) -> ProcInfo | None:
    """One process from /proc/<pid>/stat; ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    # After the command name: state(3) ppid(4) ... starttime(22), numbered from 1 as in proc(5).
    return ProcInfo(int(pid), int(fields[1]), fields[0], int(fields[19]))


def process_table() -> dict[int, ProcInfo]:
    """Every process on the machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := proc_info(entry.name)) is not None:
            table[info.pid] = info
    return table


def descendants(roots: Iterable[int], table: dict[int, ProcInfo] | None = None) -> set[int]:
    """Every descendant of ``roots`` (not the roots themselves)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int, starttime: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not), and is still the process that started at ``starttime``."""
    info = proc_info(pid)
    return info is not None and info.state != "Z" and (starttime is None or info.starttime == starttime)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _mentions(pid: int, marker: bytes) -> bool:
    """Whether ``marker`` is in the process's command line or environment."""
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
    return False


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class ProcessTracker:
    """Remembers every process of a run: the roots it is given, their descendants, and anything naming ``marker``.

    A thread samples the trees every ``SAMPLE_S`` so processes that are reparented later (a command whose
    worker was killed) are still known. ``left_running`` lists the remembered ones that still run.

    Args:
        marker: Text only this run's processes carry (its private directory, in argv or environment).
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.seen: dict[tuple[int, int], str] = {}
        self._roots: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-tracker", daemon=True)
        self._own = {os.getpid(), *self._ancestors(os.getpid())}

    @staticmethod
    def _ancestors(pid: int) -> set[int]:
        found = set()
        info = proc_info(pid)
        while info is not None and info.ppid > 1:
            found.add(info.ppid)
            info = proc_info(info.ppid)
        return found

    def start(self) -> ProcessTracker:
        self._thread.start()
        return self

    def add_root(self, pid: int) -> None:
        with self._lock:
            self._roots.add(pid)
        self.sample()

    def sample(self) -> None:
        """Remember the roots and everything under them now."""
        table = process_table()
        with self._lock:
            roots = set(self._roots)
        for pid in roots | descendants(roots, table):
            info = table.get(pid)
            if info is not None and info.state != "Z" and (pid, info.starttime) not in self.seen:
                self.seen[(pid, info.starttime)] = cmdline(pid)[:200]

    def remember(self, pid: int) -> None:
        """Remember one more process (a command whose pid its log line gave)."""
        info = proc_info(pid)
        if info is not None and info.state != "Z" and _mentions(pid, self.marker):
            self.seen.setdefault((pid, info.starttime), cmdline(pid)[:200])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with contextlib.suppress(Exception):  # a process vanishing mid-read must not end the sampling
                self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def left_running(self) -> dict[int, str]:
        """Remembered processes still running, plus any other process that carries the marker."""
        left = {pid: cmd for (pid, start), cmd in list(self.seen.items()) if running(pid, start)}
        for pid in process_table():
            if pid not in left and pid not in self._own and running(pid) and _mentions(pid, self.marker):
                left[pid] = cmdline(pid)[:200]
        return left

    def wait_all_gone(self, timeout: float) -> dict[int, str]:
        """Wait up to ``timeout`` for every remembered process to end; returns those still running."""
        deadline = time.monotonic() + timeout
        left = self.left_running()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.left_running()
        return left

    def kill_all(self) -> None:
        """SIGKILL whatever is left (teardown, after the assertions were recorded)."""
        for (pid, start), _cmd in list(self.seen.items()):
            if running(pid, start):
                kill(pid)
        for pid in process_table():
            if pid not in self._own and running(pid) and _mentions(pid, self.marker):
                kill(pid)
