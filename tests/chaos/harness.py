"""A chaos run: the whole bridge as a user runs it, with 40 tasks, while a test breaks parts of it.

``ChaosRun`` starts a local Data Pipeline service (``--time-scale 60``, short acknowledgement and progress
timeouts), a private redis-server, real ``celery -A workers worker`` processes (threads and prefork pools) and
real ``bridge start`` processes. Its pipeline has 40 on-demand ShellCommandActivity objects whose command
(``timed_command.py``) appends START and END lines to one log. A test starts what it needs, activates the
pipeline, breaks something (kill -9, a Redis restart, ...), then calls ``finish()``, which waits for every
instance to end, stops everything and asserts the rules of ``evidence.judge`` plus "no process of ours is left
running". Every failure message carries a diagnosis: statuses, attempts, leases and the processes' output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from tests.chaos.evidence import Execution, Kill, by_component, judge, read_executions
from tests.chaos.pipeline import TASKS, ChaosPipeline
from tests.chaos.processes import ProcessTracker, descendants, kill, process_table, running
from tests.integration.bridge_stack import close_output
from tests.support import EmulatorProcess, ManagedProcess, RedisServer, bridge_env, bridge_start, celery_worker

#: The test-only hook: ``bridge start`` exits with ``CRASH_EXIT`` the first time it reaches this point.
CRASH_ENV = "BRIDGE_TEST_CRASH_AT"
CRASH_EXIT = 137
CRASH_POINTS = ("after-poll", "after-lease", "after-ack", "after-publish", "during-poll")
#: A kill of a worker lands only when each command it cuts has at least this long left to run.
KILL_MARGIN_S = 0.3


@dataclass(frozen=True)
class Timing:
    """The service's deadlines (real seconds) and the bridge's matching settings."""

    ack_timeout_s: float = 10.0
    progress_timeout_s: float = 20.0
    poll_wait_s: float = 5.0
    heartbeat_interval_s: float = 2.0
    time_scale: float = 60.0


class ChaosRun:
    """One scenario's processes and evidence. Use as a context manager: leaving it kills whatever is left.

    Args:
        tmp_path: The test's private directory (its path marks every process of this run).
        name: For progress lines.
        tasks: How many activities the pipeline has.
        timing: Deadlines of the service and the bridge.
        rehandout: The service's ``--rehandout`` mode.
        redis_appendonly: Run Redis with AOF persistence.
        emulator_args: More options for the service.
    """

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        *,
        tasks: int = TASKS,
        timing: Timing = Timing(),
        rehandout: str = "new-attempt",
        redis_appendonly: bool = False,
        emulator_args: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.dir = tmp_path / "run"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "commands.log"
        self.timing = timing
        self.group = f"chaos-{uuid.uuid4().hex[:8]}"
        self.tasks = tasks
        self.emulator = EmulatorProcess(
            [
                "--time-scale",
                f"{timing.time_scale:g}",
                "--ack-timeout",
                f"{timing.ack_timeout_s:g}",
                "--progress-timeout",
                f"{timing.progress_timeout_s:g}",
                "--poll-wait",
                f"{timing.poll_wait_s:g}",
                "--default-retry-delay",
                "120",
                "--rehandout",
                rehandout,
                *emulator_args,
            ]
        )
        self.redis = RedisServer(appendonly=redis_appendonly)
        self.tracker = ProcessTracker(f"{self.dir}/")
        self.bridges: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self.kills: list[Kill] = []
        #: Broken rules seen along the way (a kill whose processes survived, a process that would not stop...).
        self.problems: list[str] = []
        self.pipeline: ChaosPipeline | None = None
        self.began = time.monotonic()
        self._closed = False

    # -- the stack ----------------------------------------------------------------------------------

    def __enter__(self) -> ChaosRun:
        self.tracker.start()
        try:
            self.emulator.start()
            assert self.emulator.proc is not None
            self.tracker.add_root(self.emulator.proc.pid)
            self.redis.start()
            assert self.redis.proc is not None
            self.tracker.add_root(self.redis.proc.pid)
            self.pipeline = ChaosPipeline(self.emulator.url, self.group, self.log, self.tasks)
        except BaseException:
            self.close()
            raise
        self.say(f"emulator {self.emulator.url}, redis {self.redis.url}, worker group {self.group}, dir {self.dir}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def env(self) -> dict[str, str]:
        """Environment of the bridge and the workers: short heartbeats, TTLs and drains."""
        t = self.timing
        return bridge_env(
            self.emulator.url,
            self.redis.url,
            BRIDGE_WORK_DIR=str(self.dir / "work"),
            BRIDGE_HEARTBEAT_INTERVAL_S=f"{t.heartbeat_interval_s:g}",
            BRIDGE_PROGRESS_DEADLINE_S=f"{t.progress_timeout_s:g}",
            BRIDGE_RUNNING_TTL_S="6",
            BRIDGE_LEADER_TTL_S="4",
            BRIDGE_LIVENESS_TTL_S="6",
            BRIDGE_MAX_QUEUE_WAIT_S="30",
            BRIDGE_QUEUE_ALLOWANCE="2",
            BRIDGE_DRAIN_TIMEOUT_S="3",
            BRIDGE_KILL_GRACE_S="1",
        )

    def say(self, text: str) -> None:
        print(f"[{self.name} +{time.monotonic() - self.began:5.1f}s] {text}", flush=True)

    def start_workers(self, *pools: str, concurrency: int = 4) -> list[ManagedProcess]:
        """Start one ``celery -A workers worker`` per pool (in parallel); returns them once all are ready."""
        started = []
        for pool in pools:
            name = f"{pool}-{uuid.uuid4().hex[:6]}"
            proc = celery_worker(self.env, f"dp.{self.group}", pool=pool, concurrency=concurrency, name=name)
            proc.ready_text = None
            proc.start()
            self.tracker.add_root(proc.pid)
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            self._wait_line(proc, "ready.", timeout=90)
        self.say(f"workers ready: {', '.join(f'{p} (pid {w.pid})' for p, w in zip(pools, started, strict=True))}")
        return started

    def start_bridge(self, crash_at: str | None = None) -> ManagedProcess:
        """Start ``bridge start`` for the run's group; with ``crash_at``, the crash hook is armed."""
        env = self.env
        if crash_at:
            env[CRASH_ENV] = crash_at
        proc = bridge_start(env, self.group)
        proc.ready_text = None
        proc.start()
        self.tracker.add_root(proc.pid)
        self.bridges.append(proc)
        self._wait_line(proc, "polling worker_group=", timeout=60, may_exit=crash_at is not None)
        self.say(f"bridge start pid {proc.pid}" + (f" with {CRASH_ENV}={crash_at}" if crash_at else ""))
        return proc

    def _wait_line(self, proc: ManagedProcess, text: str, timeout: float, may_exit: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.output is not None and any(text in line for line in list(proc.output.lines)):
                return
            if proc.proc is not None and proc.proc.poll() is not None:
                if may_exit:
                    return
                raise AssertionError(f"{proc.cmd[:4]} exited {proc.proc.returncode}:\n{tail(proc, 40)}")
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} from {proc.cmd[:4]} within {timeout:g}s:\n{tail(proc, 40)}")

    # -- the pipeline ------------------------------------------------------------------------------------

    @property
    def dp(self) -> ChaosPipeline:
        assert self.pipeline is not None, "use ChaosRun as a context manager"
        return self.pipeline

    def activate(self) -> str:
        """Create, define and activate the run's pipeline (40 tasks unless told otherwise)."""
        pipeline_id = self.dp.activate(self.name)
        self.say(f"activated {pipeline_id} with {len(self.dp.components)} tasks")
        return pipeline_id

    def wait_final(self, timeout: float) -> dict[str, str]:
        """Wait until every instance ended (or ``timeout``), printing progress; returns the statuses."""
        deadline = time.monotonic() + timeout
        last_said = 0.0
        while True:
            found = self.dp.statuses()
            if self.dp.ended(found):
                self.say(f"all {len(found)} instances ended")
                return found
            if time.monotonic() - last_said >= 5:
                self.say(self.dp.progress(found))
                last_said = time.monotonic()
            if time.monotonic() >= deadline:
                return found
            time.sleep(1.0)

    def executions(self) -> list[Execution]:
        """Every command execution so far (and every command still running is remembered as ours)."""
        found = read_executions(self.log)
        for execution in found:
            if execution.end is None:
                self.tracker.remember(execution.pid)
        return found

    def wait_started(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` commands have written START."""
        deadline = time.monotonic() + timeout
        while len(self.executions()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.executions())} commands started within {timeout:g}s")
            time.sleep(0.1)

    # -- breaking things ----------------------------------------------------------------------------------

    def expect_crash(self, proc: ManagedProcess, point: str, timeout: float = 60.0) -> None:
        """Wait for ``proc`` to exit at crash point ``point`` (exit status ``CRASH_EXIT``)."""
        assert proc.proc is not None
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 2
        while proc.proc.poll() is None:
            now = time.monotonic()
            finished = now >= next_check and self.dp.ended(self.dp.statuses())
            if now >= deadline or finished:
                why = "every instance ended first" if finished else f"not within {timeout:g}s"
                raise AssertionError(
                    f"bridge start (pid {proc.pid}) never crashed at {CRASH_ENV}={point}: {why}."
                    f" Is the crash hook implemented?\n{tail(proc, 30)}"
                )
            if now >= next_check:
                next_check = now + 2
            time.sleep(0.1)
        code = proc.proc.returncode
        at = time.monotonic()
        self.kills.append(Kill(f"poller crash at {point}", at, at, frozenset({proc.pid}), worker=False))
        close_output(proc.proc, proc.output)
        self.say(f"bridge start pid {proc.pid} crashed at {point} with exit status {code}")
        assert code == CRASH_EXIT, f"bridge start exited {code} (not {CRASH_EXIT}) at {point}:\n{tail(proc, 40)}"

    def kill_bridge(self, proc: ManagedProcess) -> Kill:
        """kill -9 a ``bridge start`` process."""
        found = self._kill(proc.pid, f"bridge start pid {proc.pid}", worker=False, popen=proc)
        close_output(proc.proc, proc.output)
        return found

    def kill_worker(self, proc: ManagedProcess) -> Kill:
        """kill -9 a worker's main process while it runs commands (at a moment none is about to end)."""
        victim = self._quiet_victim(lambda: [proc.pid], proc)
        found = self._kill(victim, f"worker pid {victim}", worker=True, popen=proc)
        close_output(proc.proc, proc.output)
        return found

    def kill_prefork_child(self, proc: ManagedProcess) -> Kill:
        """kill -9 one prefork pool child of ``proc`` while it runs a command."""

        def children() -> list[int]:
            return [info.pid for info in process_table().values() if info.ppid == proc.pid]

        victim = self._quiet_victim(children, proc)
        return self._kill(victim, f"prefork child pid {victim} of worker pid {proc.pid}", worker=True)

    def _quiet_victim(self, candidates: Callable[[], list[int]], worker: ManagedProcess, timeout: float = 60.0) -> int:
        """One of ``candidates()`` at a moment a kill cuts commands short and nothing else.

        That is: it runs at least one command, none of them within ``KILL_MARGIN_S`` of its end, and every
        command of it that wrote END has been reported (``worker`` logged ``finished`` for its attempt). A kill
        between a command's END and its SetTaskStatus would rightly make Data Pipeline run it again.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executions = self.executions()
            now = time.monotonic()
            lines = list(worker.output.lines) if worker.output else []
            reported = "\n".join(line for line in lines if "finished worker_group=" in line)
            for pid in candidates():
                mine = [e for e in executions if pid in e.chain[1:]]
                live = [e for e in mine if e.end is None and e.stopped is None and running(e.pid)]
                ending = any(e.start + e.seconds - now < KILL_MARGIN_S for e in live)
                unreported = any(e.end is not None and f"{e.attempt}:" not in reported for e in mine)
                if live and not ending and not unreported:
                    return pid
            time.sleep(0.05)
        raise AssertionError(f"no moment to kill under worker pid {worker.pid} mid-task within {timeout:g}s")

    def _kill(self, pid: int, what: str, *, worker: bool, popen: ManagedProcess | None = None) -> Kill:
        """SIGKILL ``pid`` alone and wait (30 s at most) until it and every process under it are gone."""
        table = process_table()
        under = {pid} | descendants([pid], table)
        starts = {p: table[p].starttime for p in under if p in table}
        at = time.monotonic()
        kill(pid, signal.SIGKILL)
        if popen is not None and popen.proc is not None:
            popen.proc.wait(timeout=30)
        while any(running(p, starts.get(p)) for p in under) and time.monotonic() < at + 30:
            time.sleep(0.05)
        # A command being spawned as the kill landed was in no snapshot: its START line names the killed
        # process among its ancestors. Wait for those too before saying when the kill's work was over.
        late = {e.pid for e in self.executions() if e.end is None and under.intersection(e.chain)} - under
        while any(running(p) for p in late) and time.monotonic() < at + 30:
            time.sleep(0.05)
        under |= late
        gone_at = time.monotonic()
        cut = [e for e in self.executions() if e.end is None and under.intersection(e.chain)]
        survivors = sorted(p for p in under if running(p, starts.get(p)))
        if survivors:
            self.problems.append(f"30 s after kill -9 of {what}, processes under it still run: {survivors}")
        found = Kill(what, at, gone_at, frozenset(under), worker=worker)
        self.kills.append(found)
        names = ", ".join(e.component for e in cut) or "none"
        self.say(f"killed {what}: {len(under)} processes gone after {gone_at - at:.1f}s; commands cut: {names}")
        return found

    def restart_redis(self, down_s: float = 0.0, sig: int = signal.SIGTERM) -> None:
        """Stop Redis (``sig``), leave it down ``down_s``, start it again on the same port and directory."""
        persistence = "AOF" if self.redis.appendonly else "no persistence"
        self.redis.stop(sig)
        self.say(f"redis stopped ({signal.Signals(sig).name}, {persistence}); down for {down_s:g}s")
        time.sleep(down_s)
        self.redis.start()
        assert self.redis.proc is not None
        self.tracker.add_root(self.redis.proc.pid)
        self.say(f"redis started again (pid {self.redis.proc.pid})")

    def set_faults(self, fault_rate: float, drop_rate: float, seed: int) -> None:
        """Inject 500s and dropped replies on every operation from now on."""
        config = self.emulator.admin(
            "faults", {"faultRate": [str(fault_rate)], "dropRate": [str(drop_rate)], "seed": seed}
        )
        self.say(f"faults on: {config}")

    # -- the verdict ----------------------------------------------------------------------------------

    def finish(self, timeout: float = 120.0) -> None:
        """Wait for every instance to end, stop everything, and assert the run broke no rule."""
        statuses = self.wait_final(timeout)
        executions = self.executions()
        ended = self.dp.ended(statuses)
        diagnosis = self.diagnosis(statuses, executions)
        self.say(f"service calls: {self.call_counts()}")
        self.stop_processes()
        left = self.tracker.wait_all_gone(timeout=15)
        problems = list(self.problems)
        if not ended:
            problems.insert(0, f"not every instance ended within {timeout:g}s of the last disruption")
        problems += judge(self.dp.components, statuses, executions, self.kills)
        if left:
            problems.append(
                "processes left running after everything stopped: "
                + "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(left.items()))
            )
        self.tracker.kill_all()
        cut = sum(1 for e in executions if e.end is None)
        self.say(
            f"{len(executions)} executions ({cut} cut), {len(self.kills)} kills, {len(problems)} problems,"
            f" {time.monotonic() - self.began:.0f}s in all"
        )
        verdict = f"chaos run {self.name!r} broke {len(problems)} rule(s):\n  " + "\n  ".join(problems[:40])
        (self.dir / "verdict.txt").write_text(f"{verdict}\n\n{diagnosis}\n" if problems else "no rule broken\n")
        if problems:
            raise AssertionError(f"{verdict}\n\n{diagnosis}")

    def diagnosis(self, statuses: dict[str, str], executions: list[Execution]) -> str:
        """What a failure message needs: statuses, attempts of odd instances, leases, kills, outputs."""
        out = [f"pipeline {self.dp.pipeline_id}, worker group {self.group}, log {self.log}", self.dp.progress(statuses)]
        runs = by_component(executions)
        odd = [c for c in self.dp.components if statuses.get(c) != "FINISHED" or len(runs.get(c, [])) != 1]
        with contextlib.suppress(Exception):  # a diagnosis must never hide the failure it explains
            for component in odd[:10]:
                out.append(f"{component}: {statuses.get(component, 'missing')}")
                out += [f"    {line}" for line in self.dp.attempts(component)]
                out += [f"    ran {execution.describe()}" for execution in runs.get(component, [])]
        out.append(f"leases: {self._leases()}")
        for found in self.kills:
            out.append(f"kill: {found.what} at +{found.at - self.began:.1f}s, gone +{found.gone_at - self.began:.1f}s")
        if self.emulator.output is not None:
            out.append(f"--- emulator (last 15 lines)\n{_tail_lines(self.emulator.output.lines, 15)}")
        for proc in self.bridges + self.workers:
            out.append(f"--- {' '.join(proc.cmd[1:4])} pid {proc.pid} (last 25 lines)\n{tail(proc, 25)}")
        return "\n".join(out)

    def call_counts(self) -> str:
        """Calls the service received, and how many it faulted, dropped or refused, over all operations."""
        try:
            counters: dict[str, dict[str, int]] = self.emulator.admin("counters")["counters"]
        except Exception as exc:  # only for a progress line
            return f"unknown ({exc})"
        totals: dict[str, int] = {}
        for kinds in counters.values():
            for kind, count in kinds.items():
                totals[kind] = totals.get(kind, 0) + count
        return ", ".join(f"{kind} {count}" for kind, count in totals.items())

    def _leases(self) -> str:
        try:
            client = redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=5)
            try:
                counts: dict[str, int] = {}
                for key in client.scan_iter("dpb:lease:*", count=500):
                    state = str(client.hget(key, "state") or "?")
                    counts[state] = counts.get(state, 0) + 1
                return str(dict(sorted(counts.items())))
            finally:
                client.close()
        except redis.RedisError as exc:
            return f"unreadable ({exc})"

    # -- teardown ---------------------------------------------------------------------------------------

    def stop_processes(self) -> None:
        """SIGTERM every bridge and worker at once, wait for them, then stop the service and Redis."""
        managed = [p for p in self.bridges + self.workers if p.proc is not None and p.proc.poll() is None]
        for proc in managed:
            with contextlib.suppress(ProcessLookupError):
                proc.send(signal.SIGTERM)
        for proc in managed:
            assert proc.proc is not None
            try:
                proc.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.problems.append(f"{' '.join(proc.cmd[1:4])} pid {proc.pid} did not exit within 30s of SIGTERM")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.proc.wait(timeout=10)
        for proc in self.bridges + self.workers:
            close_output(proc.proc, proc.output)
        emulator, reader = self.emulator.proc, self.emulator.output
        self.emulator.stop()
        close_output(emulator, reader)
        self.redis.stop()
        self.save_outputs()

    def save_outputs(self) -> None:
        """Every process's output into the run's directory, for a look after a failure."""
        named = [("emulator", self.emulator.output)] + [
            (f"{'bridge' if proc in self.bridges else 'worker'}-{proc.pid}", proc.output)
            for proc in self.bridges + self.workers
        ]
        for name, reader in named:
            if reader is not None:
                (self.dir / f"{name}.out").write_text("\n".join(list(reader.lines)) + "\n")

    def close(self) -> None:
        """Stop and kill everything this run started (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc in self.bridges + self.workers:
                if proc.proc is not None and proc.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(Exception):
                        proc.proc.wait(timeout=10)
                close_output(proc.proc, proc.output)
            emulator, reader = self.emulator.proc, self.emulator.output
            self.emulator.stop()
            close_output(emulator, reader)
            self.tracker.kill_all()
            self.save_outputs()
        finally:
            self.tracker.stop()
            self.redis.cleanup()
            if self.pipeline is not None:
                self.pipeline.close()


def tail(proc: ManagedProcess, count: int) -> str:
    return _tail_lines(proc.output.lines if proc.output else [], count)


def _tail_lines(lines: list[str], count: int) -> str:
    return "\n".join(list(lines)[-count:])


def chaos_seed() -> int:
    """``CHAOS_SEED`` from the environment (to replay a run), else a fresh one."""
    return int(os.environ.get("CHAOS_SEED") or int.from_bytes(os.urandom(4), "big"))
