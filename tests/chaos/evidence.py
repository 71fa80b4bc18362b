"""What a chaos run must show: the commands' START/END log read as executions, and the rules they must obey.

Rules (the issue's): every instance ends FINISHED; no two executions of one instance overlap in time; each
instance ran to its END exactly once, and any other execution of it is a START without an END cut short by
a worker kill the harness made.

The pipelines are on demand, so each component has exactly one instance: executions are grouped by component
id, and each line's instance id is checked to be that one instance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Execution:
    """One run of a command, from its START line to its END line (``end`` is ``None`` without one).

    ``stopped`` is when a SIGTERM cut it short (its TERM line); a command killed outright has neither.
    """

    component: str
    instance: str
    attempt: str
    start: float
    seconds: float
    chain: tuple[int, ...]
    end: float | None = None
    stopped: float | None = None

    @property
    def pid(self) -> int:
        return self.chain[0]

    def describe(self) -> str:
        end = f"{self.end:.3f}" if self.end is not None else "no END"
        if self.stopped is not None:
            end += f" (SIGTERM at {self.stopped:.3f})"
        return f"{self.attempt} {self.start:.3f}..{end} pids {','.join(map(str, self.chain))}"


@dataclass(frozen=True)
class Kill:
    """A kill -9 the harness made: of what, when, and every process that was under it at that moment."""

    what: str
    at: float
    gone_at: float
    pids: frozenset[int] = field(default_factory=frozenset)
    worker: bool = True

    def cut(self, execution: Execution) -> bool:
        """Whether this kill ended ``execution`` (a START without an END under the killed process)."""
        return (
            self.worker
            and execution.end is None
            and execution.start <= self.gone_at  # a command spawned as the kill landed starts just after it
            and bool(self.pids.intersection(execution.chain))
        )


def read_executions(log_path: Path) -> list[Execution]:
    """Every execution in the log, in START order; a START and its END are matched by pid."""
    if not log_path.exists():
        return []
    done: list[Execution] = []
    open_by_pid: dict[int, Execution] = {}
    for line in log_path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 7 or parts[0] not in ("START", "END", "TERM"):
            continue
        word, at, component, instance, attempt, seconds, chain_text = parts
        chain = tuple(int(p) for p in chain_text.split(",") if p)
        if word == "START":
            stale = open_by_pid.pop(chain[0], None)
            if stale is not None:  # the pid was reused: the earlier run never wrote its END
                done.append(stale)
            open_by_pid[chain[0]] = Execution(component, instance, attempt, float(at), float(seconds), chain)
        elif (running := open_by_pid.pop(chain[0], None)) is not None:
            if word == "END":
                running.end = float(at)
            else:
                running.stopped = float(at)
            done.append(running)
    done.extend(open_by_pid.values())
    return sorted(done, key=lambda e: e.start)


def by_component(executions: Iterable[Execution]) -> dict[str, list[Execution]]:
    found: dict[str, list[Execution]] = {}
    for execution in executions:
        found.setdefault(execution.component, []).append(execution)
    return found


def judge(
    components: Iterable[str],
    statuses: Mapping[str, str],
    executions: list[Execution],
    kills: list[Kill],
) -> list[str]:
    """Every broken rule, one line each (empty: the run is correct)."""
    problems: list[str] = []
    runs = by_component(executions)
    for component in components:
        status = statuses.get(component, "missing")
        if status != "FINISHED":
            problems.append(f"{component}: instance ended {status}, not FINISHED")
        mine = sorted(runs.get(component, []), key=lambda e: e.start)
        if len({e.instance for e in mine}) > 1:
            problems.append(f"{component}: executions of several instances: {_list(mine)}")
        completed = [e for e in mine if e.end is not None]
        cut = [e for e in mine if e.end is None and any(k.cut(e) for k in kills)]
        unexplained = [e for e in mine if e.end is None and e not in cut]
        if len(completed) != 1:
            problems.append(f"{component}: ran to its END {len(completed)} times (expected 1): {_list(mine)}")
        for execution in unexplained:
            problems.append(f"{component}: START without END and no worker kill to explain it: {execution.describe()}")
        latest: Execution | None = None  # of the executions so far, the one that stopped last
        for execution in mine:
            if latest is not None and execution.start < _end_of(latest, kills):
                note = " (cut by a kill: it counts until its processes were gone)" if latest.end is None else ""
                problems.append(
                    f"{component}: two executions overlap: {latest.describe()}{note} and {execution.describe()}"
                )
            if latest is None or _end_of(execution, kills) > _end_of(latest, kills):
                latest = execution
    return problems


def _end_of(execution: Execution, kills: list[Kill]) -> float:
    """When an execution stopped: its END or TERM, else when the kill that cut it had taken its processes, else
    never (as far as the log can tell)."""
    if execution.end is not None:
        return execution.end
    if execution.stopped is not None:
        return execution.stopped
    gone = [k.gone_at for k in kills if k.cut(execution)]
    return min(gone) if gone else math.inf


def _list(executions: list[Execution]) -> str:
    return "; ".join(e.describe() for e in executions) or "none"
