"""Scenario 5, cost: the poller's CPU and memory idle and under load; worker time per task outside the handler.

The bridge runs as deployed (API budget on) with one 8-thread worker; the service holds polls for 90 s, as AWS does.

- idle: after a warm-up, nothing to do: the poller sits in one held poll while its keeper, leadership and liveness
  loops tick. Target: < 1 % CPU and < 100 MB RSS.
- under load at the budget: no-op tasks keep coming; once the burst is spent the poller claims at 1.8/s, the most
  AWS lets an account's task runners claim.
- saturated: a second bridge with ``--no-rate-limit`` claims no-op tasks as fast as it can.

CPU is user + system time from ``/proc/<pid>/stat`` over the window; RSS is sampled every 0.2 s (``statm``) and the
kernel's high-water mark (``VmHWM``, since the process started) is shown beside it. The worker's time outside the
handler comes from stamps in its task thread (``task_prerun`` -> handler start, handler end -> ``task_postrun``):
wall time, and that thread's CPU time (``time.thread_time``); the worker process's CPU per task adds every other
thread (heartbeats, lease guards, Celery's consumer).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import systems  # noqa: E402
from bench.common import BenchError, Result, Sampler, Usage, fmt, log, main, percentile, table, verdict  # noqa: E402
from bench.stack import BenchStack, scrape  # noqa: E402
from bench.tasks import END, POSTRUN, PRERUN, START, Stamp, by_key  # noqa: E402
from tests.support import free_port  # noqa: E402

NAME = "cost"
TITLE = "Scenario 5: cost (poller CPU and memory; worker time outside the handler)"
SLOTS = 8
FULL = {"idle_s": 60.0, "load_s": 30.0, "saturated_tasks": 300}
QUICK = {"idle_s": 10.0, "load_s": 8.0, "saturated_tasks": 40}
TARGET_IDLE_CPU_PCT = 1.0
TARGET_IDLE_RSS_MB = 100.0


def _idle(stack: BenchStack, system: systems.System, window_s: float) -> dict[str, Usage]:
    time.sleep(2.0)  # the warm-up's last SetTaskStatus settles; the poller is back in a held poll
    with Sampler(system.pids) as sampler:
        time.sleep(window_s)
    return sampler.usage


def _at_budget(stack: BenchStack, system: systems.System, port: int, window_s: float) -> tuple[dict[str, Usage], int]:
    """Keep no-op tasks waiting; measure ``window_s`` once the PollForTask burst is spent. Returns claims made too."""
    pipelines = stack.steps(system.group, 120 + int(3 * window_s))
    stack.activate(pipelines)
    deadline = time.monotonic() + 120
    while scrape(port).get('dpb_api_budget_waits_total{operation="PollForTask"}', 0) == 0:
        if time.monotonic() > deadline:
            raise BenchError("cost: the PollForTask burst was never spent")
        time.sleep(0.25)
    since = stack.log.mark()
    with Sampler(system.pids) as sampler:
        time.sleep(window_s)
    return sampler.usage, len(stack.log.handed_out(since))


def _outside(stamps: list[Stamp], since: float) -> dict[str, list[float]]:
    """Per task: wall and thread-CPU seconds before and after the handler, in the Celery task's thread."""
    recent = [s for s in stamps if s.at >= since]
    prerun, start, end, postrun = (by_key(recent, kind) for kind in (PRERUN, START, END, POSTRUN))
    found: dict[str, list[float]] = {k: [] for k in ("before", "after", "total", "before_cpu", "after_cpu", "cpu")}
    for key in prerun.keys() & start.keys() & end.keys() & postrun.keys():
        before, after = start[key].at - prerun[key].at, postrun[key].at - end[key].at
        before_cpu = start[key].thread_cpu_s - prerun[key].thread_cpu_s
        after_cpu = postrun[key].thread_cpu_s - end[key].thread_cpu_s
        for name, value in zip(
            found, (before, after, before + after, before_cpu, after_cpu, before_cpu + after_cpu), strict=True
        ):
            found[name].append(value)
    return found


def _usage_row(label: str, usage: Usage, claims: int | None, target: bool) -> list[object]:
    per_claim = fmt(1000 * usage.cpu_s / claims, 2) if claims else ""
    row: list[object] = [
        label,
        fmt(usage.wall_s, 0),
        fmt(usage.cpu_pct, 2),
        per_claim,
        fmt(usage.rss_max_mb, 0),
        fmt(usage.peak_rss_mb, 0),
    ]
    if not target:
        return [*row, "", ""]
    met = usage.cpu_pct < TARGET_IDLE_CPU_PCT and usage.rss_max_mb < TARGET_IDLE_RSS_MB
    return [*row, f"< {TARGET_IDLE_CPU_PCT:g} % and < {TARGET_IDLE_RSS_MB:g} MB", verdict(met)]


def run(quick: bool) -> Result:
    sizes = QUICK if quick else FULL
    result = Result(NAME, TITLE, parameters={**sizes, "slots": SLOTS})
    port = free_port()
    with BenchStack(["--poll-wait", "90"]) as stack:
        with systems.bridge(stack, SLOTS, "--metrics-port", str(port), name="bridge", warmup=SLOTS) as s:
            log.info("cost: idle for %.0f s", sizes["idle_s"])
            idle = _idle(stack, s, sizes["idle_s"])
            log.info("cost: under load at the API budget for %.0f s", sizes["load_s"])
            load, load_claims = _at_budget(stack, s, port, sizes["load_s"])
        with systems.bridge(stack, SLOTS, name="bridge, no budget", warmup=2 * SLOTS, BRIDGE_RATE_LIMIT="false") as s:
            count = int(sizes["saturated_tasks"])
            began = time.time()
            saturated = systems.batch(stack, s, count)
            outside = _outside(stack.events(), began)
    if len(outside["total"]) < count:
        raise BenchError(f"cost: stamps for only {len(outside['total'])} of {count} tasks")

    headers = ["poller", "window s", "CPU %", "CPU ms per claim", "RSS max MB", "peak RSS MB (VmHWM)", "target", ""]
    rows = [
        _usage_row("idle: one held poll", idle["poller"], None, True),
        _usage_row(
            f"under load at the API budget ({load_claims / load['poller'].wall_s:.2f} claims/s)",
            load["poller"],
            load_claims,
            False,
        ),
        _usage_row(
            f"saturated, budget off ({saturated.tasks_per_s:.0f} claims/s)", saturated.usage["poller"], count, False
        ),
        _usage_row("worker (8 threads), idle", idle["worker"], None, False),
        _usage_row("worker, under load at the API budget", load["worker"], load_claims, False),
        _usage_row("worker, saturated", saturated.usage["worker"], count, False),
    ]
    result.tables.append(table(headers, rows))

    def ms(name: str, pct: float) -> str:
        return fmt(1000 * percentile(outside[name], pct), 2)

    worker_ms = saturated.cpu_ms_per_task("worker")
    result.tables.append(
        table(
            [
                "worker time per task outside the handler (no-op tasks)",
                "wall p50 ms",
                "wall p99 ms",
                "task-thread CPU p50 ms",
            ],
            [
                [
                    "before: Celery task starts -> handler starts",
                    ms("before", 50),
                    ms("before", 99),
                    ms("before_cpu", 50),
                ],
                ["after: handler ends -> Celery task ends", ms("after", 50), ms("after", 99), ms("after_cpu", 50)],
                ["**total outside the handler**", ms("total", 50), ms("total", 99), ms("cpu", 50)],
                ["worker process CPU per task, every thread (saturated)", "", "", fmt(worker_ms, 2)],
            ],
        )
    )
    result.figures = {
        "idle": {k: vars(v) | {"cpu_pct": v.cpu_pct} for k, v in idle.items()},
        "at_budget": {"claims": load_claims, **{k: vars(v) | {"cpu_pct": v.cpu_pct} for k, v in load.items()}},
        "saturated": {
            "tasks": count,
            "tasks_per_s": saturated.tasks_per_s,
            **{k: vars(v) | {"cpu_pct": v.cpu_pct} for k, v in saturated.usage.items()},
        },
        "outside_handler_ms": {
            name: {"p50": 1000 * percentile(values, 50), "p99": 1000 * percentile(values, 99)}
            for name, values in outside.items()
        },
        "worker_cpu_ms_per_task": worker_ms,
        "idle_target_met": idle["poller"].cpu_pct < TARGET_IDLE_CPU_PCT
        and idle["poller"].rss_max_mb < TARGET_IDLE_RSS_MB,
    }
    result.notes.append("CPU from /proc has 10 ms resolution: an idle window's CPU % is good to about 10 ms / window.")
    return result


if __name__ == "__main__":
    sys.exit(main(run, TITLE))
