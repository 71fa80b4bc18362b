"""Scenario 2, decoupling: 192 one-second tasks (6 whole rounds on 32 slots), throttling off.

Compared in one invocation: the Task Runner model at its default 2 threads, the model at 32 threads (the bridge's
concurrency), and the bridge with 32 worker slots behind one poller. Each system is warmed up first (untimed no-op
tasks), then timed from activation to the last SetTaskStatus the service logged.

- speed-up = wall(model, 2 threads) / wall(system); the ideal is 32 / 2 = 16;
- efficiency = speed-up / 16 (target >= 0.85); bridge / 32-thread model = wall(model, 32) / wall(bridge) (>= 0.9).

The bridge runs with ``--no-rate-limit``: at 90 % of AWS's 2 PollForTask/s, 192 claims would take over a minute
whatever the design (so would Task Runner's 32 polls, which AWS would throttle); scenario 4 measures the limits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import systems  # noqa: E402
from bench.common import Result, fmt, log, main, median, runs_for, table, verdict  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from bench.systems import Batch  # noqa: E402

NAME = "decoupling"
TITLE = "Scenario 2: decoupling (192 x 1 s tasks, throttling off)"
SLOTS = 32
BASELINE_THREADS = 2
FULL = (192, 1.0)
QUICK = (64, 0.5)
TARGET_EFFICIENCY = 0.85
TARGET_VS_MODEL = 0.9


def run(quick: bool) -> Result:
    count, seconds = QUICK if quick else FULL
    ideal = SLOTS / BASELINE_THREADS
    title = f"Scenario 2: decoupling ({count} x {seconds:g} s tasks, {SLOTS} slots, throttling off)"
    result = Result(NAME, title, parameters={"tasks": count, "task_s": seconds, "slots": SLOTS})
    batches: dict[str, list[Batch]] = {}

    def timed(key: str, runs: int, once: Callable[[], Batch]) -> None:
        batches[key] = []
        for n in range(runs):
            batches[key].append(once())
            found = batches[key][-1]
            log.info("%s: run %d/%d: %d tasks in %.2f s", found.system, n + 1, runs, count, found.wall_s)

    with BenchStack() as stack:
        for threads in (BASELINE_THREADS, SLOTS):
            expected_s = count * seconds / threads

            def model_batch(threads: int = threads) -> Batch:
                with systems.model(stack, threads, count, warmup=2 * threads) as s:
                    return systems.batch(stack, s, count, seconds)

            timed(f"model{threads}", runs_for(expected_s, quick), model_batch)
        with systems.bridge(stack, SLOTS, name="bridge", warmup=2 * SLOTS, BRIDGE_RATE_LIMIT="false") as s:
            timed("bridge", runs_for(count * seconds / SLOTS, quick), lambda: systems.batch(stack, s, count, seconds))

    wall = {key: median(b.wall_s for b in found) for key, found in batches.items()}
    base = wall[f"model{BASELINE_THREADS}"]
    rows = []
    figures: dict[str, object] = {"ideal_speed_up": ideal}
    labels = {
        f"model{BASELINE_THREADS}": (f"Task Runner model, {BASELINE_THREADS} threads (default)", BASELINE_THREADS),
        f"model{SLOTS}": (f"Task Runner model, {SLOTS} threads", SLOTS),
        "bridge": (f"bridge: 1 poller, {SLOTS} worker slots", SLOTS),
    }
    for key, (label, concurrency) in labels.items():
        speed_up = base / wall[key]
        efficiency = speed_up / (concurrency / BASELINE_THREADS) if concurrency != BASELINE_THREADS else 1.0
        vs_model = wall[f"model{SLOTS}"] / wall[key] if key == "bridge" else None
        figures[key] = {
            "label": label,
            "runs": [b.wall_s for b in batches[key]],
            "wall_s_median": wall[key],
            "ideal_wall_s": count * seconds / concurrency,
            "speed_up": speed_up,
            "efficiency": efficiency,
            "vs_32_thread_model": vs_model,
        }
        is_wide = concurrency == SLOTS
        rows.append(
            [
                label,
                f"{len(batches[key])}",
                fmt(wall[key], 2),
                fmt(count * seconds / concurrency, 1),
                fmt(speed_up, 2) + (f" (ideal {ideal:g})" if is_wide else ""),
                fmt(efficiency, 2) if is_wide else "",
                f"≥ {TARGET_EFFICIENCY}: {verdict(efficiency >= TARGET_EFFICIENCY)}" if is_wide else "",
                fmt(vs_model, 2) if vs_model is not None else "",
                f"≥ {TARGET_VS_MODEL}: {verdict(vs_model >= TARGET_VS_MODEL)}" if vs_model is not None else "",
            ]
        )
    headers = [
        "system",
        "runs",
        "wall s (median)",
        "ideal s",
        f"speed-up over {BASELINE_THREADS} threads",
        "efficiency",
        "target",
        "bridge ÷ 32-thread model",
        "target",
    ]
    result.tables.append(table(headers, rows))
    result.figures = figures
    result.notes.append(
        "Medians of 3 runs for systems whose run is under 30 s (1 run otherwise, and in quick mode). The bridge runs"
        " with --no-rate-limit (see the module docstring); every other reliability step is on."
    )
    return result


if __name__ == "__main__":
    sys.exit(main(run, TITLE))
