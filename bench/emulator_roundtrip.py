"""Task round trips per second against the local Data Pipeline service, with 1 and with 8 client threads.

A round trip is what a task runner does for one task: PollForTask, ReportTaskProgress (the
acknowledgement), SetTaskStatus FINISHED. The script starts the service as a subprocess, gives each
client thread its own worker group full of ready ShellCommandActivity attempts (on-demand pipelines,
activated), warms up, then times a fixed number of round trips per setting, several times.

Run: ``.venv/bin/python bench/emulator_roundtrip.py`` (or ``make bench``). Progress goes to stderr,
the table to stdout, the figures to ``bench/results/emulator_roundtrip.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support is not an installed package

from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

from tests.support import EmulatorProcess, dp_client, put_definition  # noqa: E402

log = logging.getLogger("bench.emulator_roundtrip")

RESULTS_PATH = ROOT / "bench" / "results" / "emulator_roundtrip.json"
#: The emulator options the figures are quoted with; --emulator-arg values come after, so they win.
BASE_EMULATOR_ARGS = ("--poll-wait", "2", "--ack-timeout", "120")
#: 100 objects per pipeline (the service limit) minus the Default object.
ACTIVITIES_PER_PIPELINE = 99
EXIT_OK = 0
EXIT_FAILED = 1


class BenchError(RuntimeError):
    """The benchmark cannot go on (the service refused a call, or a worker group ran dry)."""


@dataclass(frozen=True)
class Options:
    """What to measure, from the command line."""

    threads: tuple[int, ...]
    counts: tuple[int, ...]
    repeats: int
    warmup: int
    emulator_args: tuple[str, ...]
    output: Path
    py_spy: Path | None


@dataclass(frozen=True)
class Repeat:
    """One timed pass of a setting."""

    wall_s: float
    round_trips_per_s: float
    server_cpu_s: float | None
    client_cpu_s: float


@dataclass(frozen=True)
class SettingResult:
    """Every repeat of one thread count, and the figures the table shows."""

    threads: int
    round_trips: int
    repeats: list[Repeat]
    wall_s_median: float
    round_trips_per_s_median: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_round_trip: float | None
    client_cpu_ms_per_round_trip: float


# -- the service ------------------------------------------------------------------------------


def server_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``), or ``None`` elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" that ends comm, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def definition(worker_group: str, activities: int) -> dict[str, Any]:
    """An on-demand pipeline of ``activities`` independent shell commands for ``worker_group``."""
    default = {
        "id": "Default",
        "scheduleType": "ondemand",
        "failureAndRerunMode": "cascade",
        "workerGroup": worker_group,
        "role": "DataPipelineDefaultRole",
        "resourceRole": "DataPipelineDefaultResourceRole",
    }
    shells = [{"id": f"Shell{n:03d}", "type": "ShellCommandActivity", "command": "true"} for n in range(activities)]
    return {"objects": [default, *shells]}


def provision(client: Any, worker_group: str, tasks: int) -> int:
    """Create and activate enough pipelines to put ``tasks`` ready attempts on ``worker_group``.

    Returns:
        The number of pipelines created.

    Raises:
        BenchError: when the service reports validation errors.
    """
    pipelines = math.ceil(tasks / ACTIVITIES_PER_PIPELINE)
    left = tasks
    for n in range(pipelines):
        size = min(left, ACTIVITIES_PER_PIPELINE)
        left -= size
        pipeline_id = client.create_pipeline(name=f"bench-{worker_group}-{n}", uniqueId=f"{worker_group}-{n}")[
            "pipelineId"
        ]
        reply = put_definition(client, pipeline_id, definition(worker_group, size))
        if reply["errored"]:
            raise BenchError(f"the benchmark's definition has errors: {reply['validationErrors']}")
        client.activate_pipeline(pipelineId=pipeline_id)
    return pipelines


# -- the client side --------------------------------------------------------------------------


def round_trip(client: Any, worker_group: str, hostname: str) -> float:
    """Poll one task, acknowledge it, finish it; returns the seconds it took.

    Raises:
        BenchError: when the poll comes back empty (the worker group ran dry).
    """
    started = time.perf_counter()
    task = client.poll_for_task(workerGroup=worker_group, hostname=hostname).get("taskObject")
    if not task:
        raise BenchError(f"PollForTask on {worker_group} returned no task: too few were provisioned")
    client.report_task_progress(taskId=task["taskId"])
    client.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
    return time.perf_counter() - started


class ClientPool:
    """One boto3 client, worker group and thread per simulated task runner."""

    def __init__(self, url: str, threads: int) -> None:
        # Built here, one after another: creating boto3 sessions concurrently is not thread-safe.
        self.clients = [dp_client(url) for _ in range(threads)]
        self.worker_groups = [f"bench-{threads}t-{n}" for n in range(threads)]

    def run(self, shares: Sequence[int]) -> tuple[float, list[float]]:
        """Do ``shares[n]`` round trips on thread ``n``, all starting together.

        Returns:
            The wall seconds from the common start to the last finish, and every round trip's seconds.

        Raises:
            BenchError: the first error a thread hit.
        """
        latencies: list[list[float]] = [[] for _ in shares]
        errors: list[BaseException] = []
        start = threading.Barrier(len(shares) + 1)

        def work(n: int) -> None:
            start.wait()
            try:
                for _ in range(shares[n]):
                    latencies[n].append(round_trip(self.clients[n], self.worker_groups[n], f"bench-host-{n}"))
            except Exception as exc:  # reported by the main thread once every thread is done
                errors.append(exc)

        workers = [
            threading.Thread(target=work, args=(n,), name=f"runner-{n}", daemon=True) for n in range(len(shares))
        ]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        wall_s = time.perf_counter() - began
        if errors:
            raise BenchError(f"a client thread failed: {errors[0]!r}") from errors[0]
        return wall_s, [s for per_thread in latencies for s in per_thread]


def split(count: int, threads: int) -> list[int]:
    """``count`` round trips spread over ``threads`` as evenly as they go."""
    base, extra = divmod(count, threads)
    return [base + (1 if n < extra else 0) for n in range(threads)]


def percentile_ms(samples: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile of ``samples`` (seconds), in milliseconds."""
    if len(samples) < 2:  # quantiles() needs two points
        return samples[0] * 1000
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1] * 1000


def measure(pool: ClientPool, count: int, options: Options, server_pid: int) -> SettingResult:
    """Warm ``pool`` up, then time ``count`` round trips ``options.repeats`` times."""
    threads = len(pool.clients)
    pool.run([options.warmup] * threads)
    repeats: list[Repeat] = []
    samples: list[float] = []
    for n in range(options.repeats):
        server_before, client_before = server_cpu_s(server_pid), time.process_time()
        wall_s, latencies = pool.run(split(count, threads))
        server_after, client_after = server_cpu_s(server_pid), time.process_time()
        server_used = server_after - server_before if server_after is not None and server_before is not None else None
        repeats.append(Repeat(wall_s, count / wall_s, server_used, client_after - client_before))
        samples.extend(latencies)
        log.info(
            "threads=%d repeat %d/%d: %d round trips in %.2f s, %.0f/s",
            threads,
            n + 1,
            options.repeats,
            count,
            wall_s,
            count / wall_s,
        )
    server_cpu = [r.server_cpu_s for r in repeats if r.server_cpu_s is not None]
    done = count * len(repeats)
    return SettingResult(
        threads=threads,
        round_trips=count,
        repeats=repeats,
        wall_s_median=statistics.median(r.wall_s for r in repeats),
        round_trips_per_s_median=statistics.median(r.round_trips_per_s for r in repeats),
        p50_ms=percentile_ms(samples, 50),
        p99_ms=percentile_ms(samples, 99),
        server_cpu_ms_per_round_trip=sum(server_cpu) / done * 1000 if len(server_cpu) == len(repeats) else None,
        client_cpu_ms_per_round_trip=sum(r.client_cpu_s for r in repeats) / done * 1000,
    )


# -- profiling --------------------------------------------------------------------------------


class Profiler:
    """py-spy attached to the service for one setting, writing collapsed stacks (for speedscope, flamegraph.pl)."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            raise BenchError(f"--py-spy needs {py_spy}: .venv/bin/pip install py-spy")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        # --gil: sample only the thread holding the GIL, so the profile shows where the service's
        # Python CPU goes rather than handler threads blocked on sockets or the state lock.
        cmd = [str(py_spy), "record", "--pid", str(self.pid), "--rate", "250", "--gil", "--format", "raw"]
        self.proc = subprocess.Popen([*cmd, "--output", str(self.output)], stdout=sys.stderr, stderr=sys.stderr)
        time.sleep(1.0)  # let it attach before the timed passes begin
        if self.proc.poll() is not None:
            raise BenchError(f"py-spy exited {self.proc.returncode} (attaching needs ptrace permission)")

    def stop(self) -> None:
        """Ask py-spy to write its file (SIGINT), and wait for it. Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        log.info("py-spy profile of the service written to %s", self.output)


# -- reporting --------------------------------------------------------------------------------


def git_commit() -> str:
    """The short commit of the work tree, or ``unknown``."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() or "unknown"


def environment() -> dict[str, Any]:
    """The machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        # Other work on the machine skews the figures: a load near the core count or above makes them noisy.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def table(results: Sequence[SettingResult], repeats: int) -> str:
    """The results as a Markdown table."""
    head = (
        f"| threads | round trips | wall s | round trips/s (median of {repeats}) | p50 / p99 ms per round trip"
        " | server CPU ms per round trip | client CPU ms per round trip |"
    )
    rows = [head, "|" + "---:|" * 7]
    for r in results:
        server = f"{r.server_cpu_ms_per_round_trip:.2f}" if r.server_cpu_ms_per_round_trip is not None else "n/a"
        rows.append(
            f"| {r.threads} | {r.round_trips} | {r.wall_s_median:.2f} | {r.round_trips_per_s_median:.0f}"
            f" | {r.p50_ms:.1f} / {r.p99_ms:.1f} | {server} | {r.client_cpu_ms_per_round_trip:.2f} |"
        )
    return "\n".join(rows)


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- the command ------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """Options from the command line (``--help`` describes them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--threads",
        default="1,8",
        help="Comma-separated client thread counts, one setting each (default: 1,8).",
    )
    parser.add_argument(
        "--count",
        default=None,
        help="Round trips timed per repeat: one number for every setting, or one per --threads entry"
        " (default: 300, or 100 per thread when that is more: 300 for 1 thread, 800 for 8).",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per setting; the median is reported.")
    parser.add_argument(
        "--warmup", type=int, default=50, help="Untimed round trips per thread before each setting (default: 50)."
    )
    parser.add_argument(
        "--emulator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Extra argument for 'bridge emulator', repeatable; use the = form for options,"
        " e.g. --emulator-arg=--log-level=WARNING. Defaults: " + " ".join(BASE_EMULATOR_ARGS) + ".",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="Where the JSON results go.")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="Profile the service with py-spy during the largest thread count's timed passes and write"
        " collapsed stacks to FILE (the figures of a profiled run are slower; do not quote them).",
    )
    args = parser.parse_args(argv)
    try:
        threads = tuple(int(t) for t in args.threads.split(","))
        counts = (
            tuple(max(300, 100 * t) for t in threads)
            if args.count is None
            else tuple(int(c) for c in args.count.split(","))
        )
    except ValueError:
        parser.error("--threads and --count take comma-separated integers")
    if len(counts) == 1:
        counts = counts * len(threads)
    if len(counts) != len(threads):
        parser.error("--count takes one number, or one per --threads entry")
    if min(threads) < 1 or min(counts) < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads, --count and --repeats must be positive, --warmup not negative")
    if any(c < t for c, t in zip(counts, threads, strict=True)):
        parser.error("--count must be at least the thread count")
    return Options(threads, counts, args.repeats, args.warmup, tuple(args.emulator_arg), args.output, args.py_spy)


def run(options: Options) -> list[SettingResult]:
    """Start the service, provision every setting, measure each, stop the service."""
    emulator = EmulatorProcess([*BASE_EMULATOR_ARGS, *options.emulator_args])
    profiler: Profiler | None = None
    try:
        try:
            emulator.start()
        except AssertionError as exc:  # tests.support's way of saying the banner never came
            raise BenchError(f"the service did not start: {exc}") from exc
        assert emulator.proc is not None
        log.info("service started at %s (pid %d)", emulator.url, emulator.proc.pid)
        # Every setting's tasks are queued before any is timed, so each setting sees the same state size.
        setup = dp_client(emulator.url)
        pools: list[ClientPool] = []
        for threads, count in zip(options.threads, options.counts, strict=True):
            pool = ClientPool(emulator.url, threads)
            made = 0
            for n, share in enumerate(split(count, threads)):
                made += provision(setup, pool.worker_groups[n], options.warmup + options.repeats * share)
            log.info("threads=%d: %d pipelines activated", threads, made)
            pools.append(pool)
        results = []
        largest = max(options.threads)
        for pool, count in zip(pools, options.counts, strict=True):
            if options.py_spy is not None and len(pool.clients) == largest and profiler is None:
                profiler = Profiler(emulator.proc.pid, options.py_spy)
                profiler.start()
            results.append(measure(pool, count, options, emulator.proc.pid))
            if profiler is not None:
                profiler.stop()
        return results
    except (BotoCoreError, ClientError) as exc:
        raise BenchError(f"a setup call failed: {exc}") from exc
    finally:
        # Shutdown order: detach the profiler (it writes its file), then stop the service.
        if profiler is not None:
            profiler.stop()
        emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, measure, print the table, write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    options = parse_options(argv)
    env = environment()  # before the run, so the load average is the machine's, not ours
    try:
        results = run(options)
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return EXIT_FAILED
    commit = git_commit()
    print(table(results, options.repeats))
    print(
        f"\nmachine: {env['cores']} cores ({env['cpu']}), {env['implementation']} {env['python']},"
        f" load {env['load_average_1m']} before the run;"
        f" commit {commit}; emulator args: {' '.join([*BASE_EMULATOR_ARGS, *options.emulator_args])}"
    )
    write_results(
        options.output,
        {
            "benchmark": "emulator_roundtrip",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "environment": env,
            "emulator_args": [*BASE_EMULATOR_ARGS, *options.emulator_args],
            "warmup_per_thread": options.warmup,
            "repeats": options.repeats,
            "profiled": options.py_spy is not None,
            "results": [asdict(r) for r in results],
        },
    )
    log.info("results written to %s", options.output)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
