"""Scenario 1, overhead (report-only): what each reliability step costs per no-op task, throttling off.

Compared in one invocation, each a batch of no-op tasks (``bench.step`` with no sleep) with 8-way concurrency:

- the boto3 floor: PollForTask, ReportTaskProgress, SetTaskStatus on plain boto3 clients, 8 threads, no body;
- the Celery floor: publish -> run of a bare Celery task on an 8-thread worker configured like the bridge's;
- the Task Runner model: polls, acknowledges, runs the body and reports in 8 threads of one process, on the bridge's
  own client code (``bridge.api.Boto3TaskApi``);
- the bridge: one poller and one Celery worker with 8 threads, every reliability step on but the API budget
  (``--no-rate-limit``: at 90 % of AWS's 2 PollForTask/s it would measure the budget, which scenario 4 does);
- the bridge with the API budget too, on a fresh budget per run and few enough tasks to stay inside its burst,
  so the figure is the budget's own cost (a Redis script per call), not its rate.

Then one profiled batch of the bridge and of the model says where their CPU goes (``bench/profiled.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import common, systems  # noqa: E402
from bench.common import BenchError, Result, fmt, log, main, median, runs_for, table  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from bench.systems import Batch  # noqa: E402

NAME = "overhead"
TITLE = "Scenario 1: overhead, report-only (no-op tasks, throttling off, 8-way)"
SLOTS = 8
FULL_TASKS = 200
QUICK_TASKS = 30
#: With its warm-up (one task per slot), inside the API budget's burst: a claim leaves 30 % of the 90 tokens, and each
#: task takes two ReportTaskProgress tokens (the acknowledgement, the worker's first beat).
BUDGET_TASKS = 24
#: Untimed no-op tasks before a system's timed batches (clients, connections and threads get built).
WARMUP = 2 * SLOTS
#: Areas shown in the profile table (the rest are summed as "everything else").
PROFILE_ROWS = 9


def _timed(runs: int, once: Callable[[], Batch]) -> list[Batch]:
    found = []
    for n in range(runs):
        found.append(once())
        log.info("%s: run %d/%d: %d tasks in %.2f s", found[-1].system, n + 1, runs, found[-1].tasks, found[-1].wall_s)
    return found


def _profile(stack: BenchStack, count: int) -> dict[str, dict[str, object]]:
    """One profiled batch of the bridge and of the model; their window's CPU by area."""
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    files = {"poller": work / "poller.txt", "worker": work / "worker.txt", "model": work / "model.txt"}

    def window(names: tuple[str, ...], edge: str) -> None:
        for name in names:
            Path(f"{files[name]}.{edge}").touch()
        time.sleep(0.3)  # the profiled processes look for the files every 50 ms

    try:
        with systems.bridge(
            stack, SLOTS, name="bridge (profiled)", profile_dir=work, warmup=WARMUP, BRIDGE_RATE_LIMIT="false"
        ) as s:
            window(("poller", "worker"), "start")
            systems.batch(stack, s, count)
            window(("poller", "worker"), "stop")
        with systems.model(stack, SLOTS, count, profile=files["model"], warmup=WARMUP) as s:
            window(("model",), "start")
            systems.batch(stack, s, count)
            window(("model",), "stop")
        found: dict[str, dict[str, object]] = {}
        profile_dir = common.OUTPUT_DIR / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            report = Path(f"{path}.json")
            if not report.exists():
                raise BenchError(f"the profiled {name} wrote no report")
            found[name] = json.loads(report.read_text())
            shutil.copy(path, profile_dir / f"{NAME}-{name}.txt")
        return found
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _profile_table(profiles: dict[str, dict[str, object]], count: int) -> str:
    names = ("poller", "worker", "model")
    per_area: dict[str, dict[str, float]] = {}
    for name in names:
        for row in profiles[name]["areas"]:  # type: ignore[attr-defined]
            per_area.setdefault(row["area"], {})[name] = 1000 * row["s"] / count
    ordered = sorted(per_area, key=lambda a: -sum(per_area[a].values()))
    shown, rest = ordered[:PROFILE_ROWS], ordered[PROFILE_ROWS:]
    rows = [[a, *(fmt(per_area[a].get(n, 0.0), 2) for n in names)] for a in shown]
    rows.append(["everything else", *(fmt(sum(per_area[a].get(n, 0.0) for a in rest), 2) for n in names)])
    totals = [1000 * float(profiles[n]["total_s"]) / count for n in names]  # type: ignore[arg-type]
    rows.append(["**total (profiled)**", *(f"**{fmt(t, 2)}**" for t in totals)])
    engine = profiles["poller"]["profiler"]
    head = [f"where the CPU goes ({engine}, ms per task)", "bridge poller", "bridge worker", "Task Runner model"]
    return table(head, rows)


def run(quick: bool) -> Result:
    count = QUICK_TASKS if quick else FULL_TASKS
    runs = runs_for(0, quick)  # every batch here takes well under 30 s
    result = Result(NAME, TITLE, parameters={"tasks": count, "budget_tasks": BUDGET_TASKS, "slots": SLOTS})
    batches: dict[str, list[Batch]] = {}
    publisher_cpu: list[float] = []
    with BenchStack() as stack:

        def floor_boto3() -> Batch:
            with systems.model(stack, SLOTS, count, raw=True, name="boto3 floor", warmup=WARMUP) as s:
                return systems.batch(stack, s, count)

        batches["boto3"] = _timed(runs, floor_boto3)

        with systems.CeleryFloor(stack, SLOTS) as floor:

            def floor_celery() -> Batch:
                found, cpu = floor.batch(count)
                publisher_cpu.append(cpu)
                return found

            batches["celery"] = _timed(runs, floor_celery)

        def model() -> Batch:
            with systems.model(stack, SLOTS, count, warmup=WARMUP) as s:
                return systems.batch(stack, s, count)

        batches["model"] = _timed(runs, model)

        with systems.bridge(stack, SLOTS, name="bridge", warmup=WARMUP, BRIDGE_RATE_LIMIT="false") as s:
            batches["bridge"] = _timed(runs, lambda: systems.batch(stack, s, count))

        def bridge_budget() -> Batch:
            account = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh budget: its buckets start full
            with systems.bridge(stack, SLOTS, name="bridge + API budget", warmup=SLOTS, BRIDGE_ACCOUNT_ID=account) as s:
                return systems.batch(stack, s, BUDGET_TASKS)

        batches["budget"] = _timed(runs, bridge_budget)
        profiles = _profile(stack, count)

    model_rate = median(b.tasks_per_s for b in batches["model"])
    rows = []
    spec = (
        ("boto3", "boto3 floor: 3 calls, no body", ("model",)),
        ("celery", "Celery floor: publish -> run", ("worker", "redis")),
        ("model", "Task Runner model, 8 threads", ("model",)),
        ("bridge", "bridge: poller + 8-thread worker, budget off", ("poller", "worker", "redis")),
        ("budget", f"bridge + API budget ({BUDGET_TASKS} tasks, inside its burst)", ("poller", "worker", "redis")),
    )
    figures = {}
    for key, label, ours in spec:
        found = batches[key]
        rate = median(b.tasks_per_s for b in found)
        parts = {name: median(b.cpu_ms_per_task(name) for b in found) for name in ours}
        if key == "celery":
            parts["publisher"] = 1000 * median(publisher_cpu) / count
        service = median(b.cpu_ms_per_task("service") for b in found)
        figures[key] = {
            "label": label,
            "tasks": found[0].tasks,
            "runs": [{"wall_s": b.wall_s, "tasks_per_s": b.tasks_per_s} for b in found],
            "tasks_per_s_median": rate,
            "cpu_ms_per_task": parts,
            "service_cpu_ms_per_task": service,
        }
        rows.append(
            [
                label,
                found[0].tasks,
                fmt(median(b.wall_s for b in found), 2),
                fmt(rate, 1),
                fmt(rate / model_rate, 2),
                fmt(sum(parts.values()), 2),
                " + ".join(f"{name} {fmt(ms, 2)}" for name, ms in parts.items()),
                fmt(service, 2),
            ]
        )
    headers = [
        "system",
        "tasks",
        "wall s",
        f"tasks/s (median of {runs})",
        "÷ model",
        "our CPU ms/task",
        "by process",
        "service CPU ms/task",
    ]
    result.tables.append(table(headers, rows, [False, True, True, True, True, True, False, True]))
    result.tables.append(_profile_table(profiles, count))
    figures["profiles"] = profiles
    result.figures = figures
    result.notes += [
        "No target: this says what each step costs. Wall time runs from activation to the last SetTaskStatus the"
        " service logged; CPU is each process's user + system time over that window, from /proc.",
        "The profile is one extra batch per system under bench/profiled.py (its CPU clock per thread; a profiled"
        " run is about 2x slower, so read the shares, not the totals). Top functions: bench/results/profiles/.",
    ]
    return result


if __name__ == "__main__":
    sys.exit(main(run, TITLE))
