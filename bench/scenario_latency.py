"""Scenario 3, latency at low load: from a task becoming available to its handler starting, and back.

The bridge runs as deployed (API budget on, 4 worker slots). One single-task pipeline is activated at a time, the
next once the previous has ended and at least ``GAP_S`` after it (so the poll rate stays under the budget's 1.8/s
and every task finds the poller waiting in a held poll). Each moment comes from the process that saw it:

- available: the service logged the activation; claimed: the service logged the hand-out (PollForTask reply);
- handler start / end: the ``bench.step`` body's ``time.time()``; the Celery task's start: a ``task_prerun`` hook;
- SetTaskStatus received: the service logged the task's end.

The service's log has millisecond timestamps (truncated), the others microseconds; all share the machine's clock.
For reference the same table has the Celery/Redis floor: publish -> start of a bare Celery task, one at a time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import systems  # noqa: E402
from bench.common import BenchError, Result, fmt, log, main, percentile, table, verdict  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from bench.tasks import END, PRERUN, START, by_key, task_key  # noqa: E402

NAME = "latency"
TITLE = "Scenario 3: latency at low load (one task at a time, API budget on)"
SLOTS = 4
#: At least this long between activations: one claim per 0.6 s stays under 90 % of AWS's 2 PollForTask/s.
GAP_S = 0.6
FULL_SAMPLES = 150
QUICK_SAMPLES = 25
FLOOR_SAMPLES = 200
FLOOR_GAP_S = 0.02
TARGET_P50_MS = 15.0
TARGET_P99_MS = 60.0


def _spans(stack: BenchStack, group: str, samples: int) -> dict[str, list[float]]:
    """Activate ``samples`` single-task pipelines one at a time; returns each span's samples in seconds."""
    pipelines = [stack.steps(group, 1)[0] for _ in range(samples)]
    since = stack.log.mark()
    for n, pipeline_id in enumerate(pipelines):
        began = time.monotonic()
        stack.activate([pipeline_id])
        stack.log.wait_ended(n + 1, since, 30, what="low-load tasks")
        time.sleep(max(0.0, began + GAP_S - time.monotonic()))
        if (n + 1) % 25 == 0:
            log.info("latency: %d/%d tasks", n + 1, samples)
    activated = {e.pipeline_id: e.at for e in stack.log.activated(since)}
    handed = {task_key(e.pipeline_id, e.attempt_id): e for e in stack.log.handed_out(since)}
    ended = {e.attempt_id: e for e in stack.log.ended(since)}
    stamps = stack.events()
    prerun, start, end = by_key(stamps, PRERUN), by_key(stamps, START), by_key(stamps, END)
    spans: dict[str, list[float]] = {k: [] for k in ("available", "delivery", "take", "claim", "report", "total")}
    for key, hand_out in handed.items():
        if hand_out.pipeline_id not in activated or key not in start or key not in end or key not in prerun:
            raise BenchError(f"task {key} is missing a timestamp")
        finished = ended.get(hand_out.attempt_id)
        if finished is None or finished.status != "FINISHED":
            raise BenchError(f"task {key} did not end FINISHED")
        spans["available"].append(hand_out.at - activated[hand_out.pipeline_id])
        spans["delivery"].append(prerun[key].at - hand_out.at)
        spans["take"].append(start[key].at - prerun[key].at)
        spans["claim"].append(start[key].at - hand_out.at)
        spans["report"].append(finished.at - end[key].at)
        spans["total"].append(finished.at - activated[hand_out.pipeline_id])
    return spans


def run(quick: bool) -> Result:
    samples = QUICK_SAMPLES if quick else FULL_SAMPLES
    floor_samples = QUICK_SAMPLES if quick else FLOOR_SAMPLES
    result = Result(NAME, TITLE, parameters={"samples": samples, "gap_s": GAP_S, "slots": SLOTS})
    with BenchStack() as stack:
        with systems.CeleryFloor(stack, SLOTS) as floor:
            floor_s = []
            for n in range(floor_samples):
                floor_s.append(floor.latency(f"latency-floor-{n}"))
                time.sleep(FLOOR_GAP_S)
        with systems.bridge(stack, SLOTS, name="bridge", warmup=SLOTS) as s:
            spans = _spans(stack, s.group, samples)
    spans["floor"] = floor_s

    def ms(key: str, pct: float) -> float:
        return 1000 * percentile(spans[key], pct)

    rows = []
    spec = (
        ("available", "available -> claimed (held poll answered)", None),
        ("delivery", "claimed -> Celery task starts (lease, ack, publish, delivery)", None),
        ("take", "Celery task starts -> handler starts (take the lease, start the loops)", None),
        ("claim", "**claimed -> handler starts**", (TARGET_P50_MS, TARGET_P99_MS)),
        ("report", "**handler ends -> SetTaskStatus received**", None),
        ("total", "available -> SetTaskStatus received (no-op handler)", None),
        ("floor", "Celery/Redis floor: publish -> start", None),
    )
    figures: dict[str, object] = {}
    for key, label, target in spec:
        p50, p99 = ms(key, 50), ms(key, 99)
        figures[key] = {
            "label": label,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": ms(key, 100),
            "samples": len(spans[key]),
        }
        if target is None:
            rows.append([label, len(spans[key]), fmt(p50), fmt(p99), fmt(ms(key, 100)), "", ""])
            continue
        met = p50 <= target[0] and p99 <= target[1]
        figures[key]["target"] = {"p50_ms": target[0], "p99_ms": target[1], "met": met}  # type: ignore[index]
        rows.append(
            [
                label,
                len(spans[key]),
                fmt(p50),
                fmt(p99),
                fmt(ms(key, 100)),
                f"≤ {target[0]:g} / ≤ {target[1]:g}",
                verdict(met),
            ]
        )
    result.tables.append(table(["span", "samples", "p50 ms", "p99 ms", "max ms", "target p50 / p99", ""], rows))
    result.figures = figures
    result.notes.append(
        f"One task every ≥ {GAP_S:g} s (the poll budget is 1.8/s). With {samples} samples p99 is one of the few"
        " largest values: read it as a tail indication. Service times are its log's milliseconds (truncated)."
    )
    return result


if __name__ == "__main__":
    sys.exit(main(run, TITLE))
