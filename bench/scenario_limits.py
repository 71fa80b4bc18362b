"""Scenario 4, under AWS's limits: the service throttles at AWS's rates; the bridge runs as deployed.

(a) Sustained claims. No-op tasks wait in the service; the bridge claims as fast as its API budget lets it (90 % of
AWS's 2 PollForTask/s, so 1.8/s, after a burst). The burst is over once the bridge's own metrics count a
PollForTask token wait (``dpb_api_budget_waits``); the next 120 claims the service logged give the sustained rate.
Target: >= 95 % of the configured 1.8/s, and no call the service throttled.

(b) Long tasks kept alive. A probe of N puts N long tasks (each holds its slot until the benchmark releases it) on N
worker slots with a short, time-scaled progress deadline D, waits until they all run (or the bridge stops claiming),
holds them a while, then releases them. It passes when every task that ran ended FINISHED and no lease was lost:
no deadline missed in the service, no lease the keeper wrote off, no task canceled as lost. Bisection (at most 4
probes) between what a fixed cadence of D/3 allows and the bound, both for the claim rate c = 1.8/s:

    bound  = (10/s - c) x (D - margin)      margin = max(2 s, D/10), the bridge's beat margin
    fixed  = (10/s - c) x D / 3

A probe where fewer than N ran and every lease held settles the answer at what ran: the bridge's admission bound
stopped claiming, or claims crawled (polls yield to heartbeats when the ReportTaskProgress budget runs low) until the
probe's claim limit (120 s; 40 s in quick mode). Target: >= 90 % of the bound with zero leases lost.

The bridge's own admission cap is floor(0.9 x 9/s x (D - margin - 1 s)): the budget's 9/s (90 % of AWS's 10/s), one
beat per lease per stretched period (each stretched beat is sent a keeper tick or two ahead of deadline - margin),
and 10 % of headroom. Acknowledgements need no room in it: polls wait while the bucket is below a claim's reserve.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import systems  # noqa: E402
from bench.common import BenchError, Result, fmt, log, main, table, verdict  # noqa: E402
from bench.stack import BenchStack, scrape  # noqa: E402
from bench.tasks import END, START  # noqa: E402
from bridge.admission import CAP_SHARE, budget_cap  # noqa: E402
from bridge.keeper import beat_margin_s, stretched_period_s  # noqa: E402
from tests.support import free_port  # noqa: E402

NAME = "limits"
TITLE = "Scenario 4: under AWS's limits (service throttling at AWS's rates, API budget on)"
AWS_POLL_RATE = 2.0
AWS_PROGRESS_RATE = 10.0
BUDGET_FRACTION = 0.9  # the bridge's default --api-budget-fraction
CLAIM_RATE = BUDGET_FRACTION * AWS_POLL_RATE
TARGET_CLAIM_SHARE = 0.95
TARGET_BOUND_SHARE = 0.90
THROTTLED_OPS = ("PollForTask", "ReportTaskProgress", "SetTaskStatus", "ReportTaskRunnerHeartbeat")
#: (a): claims measured after the burst, full / quick.
FULL_CLAIMS, QUICK_CLAIMS = 120, 20
CLAIM_SLOTS = 8
#: (b): the progress deadline, and how many probes the bisection may use, full / quick.
FULL_DEADLINE_S, QUICK_DEADLINE_S = 20.0, 8.0
FULL_PROBES, QUICK_PROBES = 4, 2
#: A probe's claiming has stalled when no task started for this long (the bridge holds back, or is starved).
STALL_S = 25.0
#: A probe's claiming ends after this long even while tasks still start (under heartbeat pressure claims crawl).
FULL_CLAIM_LIMIT_S, QUICK_CLAIM_LIMIT_S = 120.0, 40.0


# -- (a) sustained claims ----------------------------------------------------------------------------


def sustained_claims(claims: int) -> dict[str, object]:
    """Claims per second after the budget's burst, over ``claims`` claims."""
    port = free_port()
    with BenchStack(["--throttle"]) as stack, systems.bridge(stack, CLAIM_SLOTS, "--metrics-port", str(port)) as s:
        # Enough for the burst (at most 90 tokens), the measured claims and slack; left over tasks are never claimed.
        pipelines = stack.steps(s.group, claims + 120)
        before = stack.counters()
        since = stack.log.mark()
        stack.activate(pipelines)
        emptied: float | None = None
        deadline = time.monotonic() + 120 + 2 * claims / CLAIM_RATE
        while time.monotonic() < deadline:
            metrics = scrape(port)
            if emptied is None and metrics.get('dpb_api_budget_waits_total{operation="PollForTask"}', 0) > 0:
                emptied = time.time()
                log.info("limits (a): the PollForTask burst is spent; measuring %d claims", claims)
            if emptied is not None and len([e for e in stack.log.handed_out(since) if e.at >= emptied]) > claims:
                break
            time.sleep(0.25)
        else:
            raise BenchError("limits (a): the bridge never reached its sustained claim rate in time")
        handed = stack.log.handed_out(since)
        burst = len([e for e in handed if e.at < emptied])
        window = [e.at for e in handed if e.at >= emptied][: claims + 1]
        after = stack.counters()
    rate = claims / (window[-1] - window[0])
    throttled = {
        op: after.get(op, {}).get("throttled", 0) - before.get(op, {}).get("throttled", 0)
        for op in sorted(set(after) | set(before))
        if after.get(op, {}).get("throttled", 0) - before.get(op, {}).get("throttled", 0)
    }
    return {
        "burst_claims": burst,
        "claims": claims,
        "window_s": window[-1] - window[0],
        "claims_per_s": rate,
        "configured_per_s": CLAIM_RATE,
        "share_of_configured": rate / CLAIM_RATE,
        "share_of_aws_ceiling": rate / AWS_POLL_RATE,
        "throttled": throttled,
        "met": rate >= TARGET_CLAIM_SHARE * CLAIM_RATE and not throttled,
    }


# -- (b) long tasks kept alive ---------------------------------------------------------------------------


@dataclass
class Probe:
    """What one probe of ``tasks`` long tasks found."""

    tasks: int
    #: Tasks (instances) whose body ran, all at once, before the release.
    running: int
    #: What bound the bridge's admission last (``slots``, ``budget``, ``max_in_flight``) when claiming ended.
    bound: str
    missed_deadlines: int
    keeper_lost: int
    #: Bodies that returned before the release: their task was canceled, lost or fenced.
    canceled_as_lost: int
    #: Tasks that ran but whose instance did not end FINISHED after the release.
    not_finished: int
    claim_phase_s: float
    stretched_beats: int
    throttled: dict[str, int]
    #: The first few lines that say why a task was canceled, lost or fenced (the worker's) or missed (the service's).
    evidence: list[str]

    @property
    def alive(self) -> bool:
        return not (self.missed_deadlines or self.keeper_lost or self.canceled_as_lost or self.not_finished)

    @property
    def filled(self) -> bool:
        return self.running >= self.tasks


def _instance(key: str) -> str:
    """``<pipeline>/<attempt>`` without the attempt number: a task handed out again keeps its instance."""
    return key.rsplit("_Attempt=", 1)[0]


def _running(stack: BenchStack, since: float) -> tuple[set[str], set[str]]:
    """Keys whose body started, and keys whose body returned, since ``since``."""
    stamps = [s for s in stack.events() if s.at >= since]
    return {s.key for s in stamps if s.kind == START}, {s.key for s in stamps if s.kind == END}


def _wait_running(stack: BenchStack, tasks: int, since: float, limit_s: float) -> None:
    """Wait until ``tasks`` bodies run, none started for ``STALL_S`` or ``limit_s`` passed."""
    last_count, last_change = 0, time.monotonic()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        started, ended = _running(stack, since)
        running = len(started - ended)
        if running >= tasks:
            return
        if running != last_count:
            last_count, last_change = running, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return
        time.sleep(0.5)


def _worker_lines(text: str, before: float) -> list[str]:
    """The Celery worker's log lines written before ``before`` (its format: ``[2024-01-31 12:00:00,123: ...``)."""
    found = []
    for line in text.splitlines():
        try:
            at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at < before:
            found.append(line)
    return found


def probe(tasks: int, deadline_s: float, claim_limit_s: float) -> Probe:
    """Run ``tasks`` long tasks on as many slots with progress deadline ``deadline_s``; see the module docstring."""
    port = free_port()
    hold_s = deadline_s + beat_margin_s(deadline_s)
    args = ["--throttle", "--progress-timeout", f"{deadline_s:g}"]
    with BenchStack(args) as stack:
        release = stack.dir / "release"
        extra = ("--progress-deadline-s", f"{deadline_s:g}", "--metrics-port", str(port))
        with systems.bridge(stack, tasks, *extra, name=f"probe {tasks}") as s:
            pipelines = stack.steps(s.group, tasks, release=str(release))
            before = stack.counters()
            since = stack.log.mark()
            started_at = time.time()
            stack.activate(pipelines)
            _wait_running(stack, tasks, started_at, claim_limit_s)
            claim_phase_s = time.time() - started_at
            metrics = scrape(port)
            bound = next(
                (k.split('bound="')[1].split('"')[0] for k, v in metrics.items() if "dpb_admission_bound" in k and v),
                "?",
            )
            log.info(
                "limits (b): claiming ended after %.0f s (bound: %s); holding %.0f s", claim_phase_s, bound, hold_s
            )
            time.sleep(hold_s)
            started, ended = _running(stack, started_at)
            released_at = time.time()
            release.touch()
            # Every body returns within a poll of the release file; their SetTaskStatus calls follow.
            deadline = time.monotonic() + 60 + len(started) / 5
            while time.monotonic() < deadline and not started <= _running(stack, started_at)[1]:
                time.sleep(0.5)
            # Then every SetTaskStatus: at the budget's 9/s once its burst is spent, a few seconds for a large probe.
            wanted = {_instance(key.split("/", 1)[1]) for key in started}
            deadline = time.monotonic() + 30 + len(started) / 5
            while True:
                reported = {_instance(f"{e.attempt_id}"): e.status for e in stack.log.ended(since)}
                if wanted <= reported.keys() or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            finished = {key for key, status in reported.items() if status == "FINISHED"}
            metrics = scrape(port)
            after = stack.counters()
            worker_log = s.processes["worker"].text()
            missed = stack.log.missed(since)
    instances = {_instance(key.split("/", 1)[1]) for key in started}
    throttled = {
        op: after.get(op, {}).get("throttled", 0) - before.get(op, {}).get("throttled", 0) for op in THROTTLED_OPS
    }
    cancels = [
        line for line in _worker_lines(worker_log, released_at) if "cancel requested" in line or "fenced" in line
    ]
    return Probe(
        tasks=tasks,
        running=len(instances),
        bound=bound,
        missed_deadlines=len(missed),
        keeper_lost=int(metrics.get("dpb_keeper_lost_total", 0)),
        canceled_as_lost=len(ended),
        not_finished=len(instances - finished),
        claim_phase_s=claim_phase_s,
        stretched_beats=worker_log.count("stretching heartbeats"),
        throttled={op: n for op, n in throttled.items() if n},
        evidence=cancels[:3] + [f"{e.attempt_id}: {e.status}" for e in missed[:3]],
    )


def bisect(deadline_s: float, max_probes: int, claim_limit_s: float) -> tuple[list[Probe], int, bool, dict[str, float]]:
    """The largest N whose leases all stayed alive, by bisection between the fixed-cadence figure and the bound.

    Returns the probes, the answer, whether a probe verified it, and the reference figures.
    """
    margin = beat_margin_s(deadline_s)
    spare = AWS_PROGRESS_RATE - CLAIM_RATE
    refs = {
        "deadline_s": deadline_s,
        "margin_s": margin,
        "claim_rate_per_s": CLAIM_RATE,
        "claim_limit_s": claim_limit_s,
        "bound": spare * (deadline_s - margin),
        "fixed_cadence": spare * deadline_s / 3,
        "stretched_period_s": stretched_period_s(deadline_s),
        "admission_cap": budget_cap(BUDGET_FRACTION * AWS_PROGRESS_RATE, stretched_period_s(deadline_s)),
    }
    low, high = math.floor(refs["fixed_cadence"]), math.floor(refs["bound"])
    verified = False
    probes: list[Probe] = []
    while low < high and len(probes) < max_probes:
        size = (low + high + 1) // 2
        log.info(
            "limits (b): probe %d of at most %d: %d tasks (between %d and %d)",
            len(probes) + 1,
            max_probes,
            size,
            low,
            high,
        )
        found = probe(size, deadline_s, claim_limit_s)
        probes.append(found)
        log.info("limits (b): %s", found)
        if found.alive and found.filled:
            low, verified = size, True
        elif found.alive:
            # Fewer ran (the admission bound stopped claiming, or claims crawled under heartbeat pressure until the
            # claim limit) and every lease held: as many as the bridge gets running at once. Stop here.
            if found.running >= low:
                low, verified = found.running, True
            high = low
        else:
            high = max(low, min(size, found.running) - 1)
    return probes, low, verified, refs


def run(quick: bool) -> Result:
    claims = QUICK_CLAIMS if quick else FULL_CLAIMS
    deadline_s = QUICK_DEADLINE_S if quick else FULL_DEADLINE_S
    max_probes = QUICK_PROBES if quick else FULL_PROBES
    claim_limit_s = QUICK_CLAIM_LIMIT_S if quick else FULL_CLAIM_LIMIT_S
    result = Result(NAME, TITLE, parameters={"claims": claims, "deadline_s": deadline_s, "max_probes": max_probes})
    sustained = sustained_claims(claims)
    probes, answer, verified, refs = bisect(deadline_s, max_probes, claim_limit_s)

    throttled = sustained["throttled"] or {}
    result.tables.append(
        table(
            [
                "(a) sustained claims",
                "claims",
                "window s",
                "claims/s",
                "of 1.8/s configured",
                "of AWS's 2/s",
                "throttled by the service",
                "target",
                "",
            ],
            [
                [
                    f"after a burst of {sustained['burst_claims']}",
                    claims,
                    fmt(sustained["window_s"], 1),  # type: ignore[arg-type]
                    fmt(sustained["claims_per_s"], 3),  # type: ignore[arg-type]
                    f"{fmt(100 * sustained['share_of_configured'], 1)} %",  # type: ignore[operator]
                    f"{fmt(100 * sustained['share_of_aws_ceiling'], 1)} %",  # type: ignore[operator]
                    ", ".join(f"{op} {n}" for op, n in throttled.items()) or "0",  # type: ignore[attr-defined]
                    f"≥ {TARGET_CLAIM_SHARE:.0%}, 0 throttled",
                    verdict(bool(sustained["met"])),
                ]
            ],
        )
    )
    probe_rows = [
        [
            p.tasks,
            p.running,
            fmt(p.claim_phase_s, 0),
            p.bound,
            p.missed_deadlines,
            p.keeper_lost,
            p.canceled_as_lost,
            p.not_finished,
            p.stretched_beats,
            ", ".join(f"{op} {n}" for op, n in p.throttled.items()) or "0",
            ("alive" if p.filled else "alive, fewer ran") if p.alive else "lost leases",
        ]
        for p in probes
    ]
    result.tables.append(
        table(
            [
                "(b) probe: tasks",
                "ran together",
                "claim phase s",
                "admission bound",
                "deadlines missed",
                "keeper lost",
                "canceled as lost",
                "not FINISHED",
                "stretch warnings",
                "throttled",
                "result",
            ],
            probe_rows,
        )
    )
    share = answer / refs["bound"]
    met = verified and share >= TARGET_BOUND_SHARE
    result.tables.append(
        table(
            ["(b) long tasks kept alive", "tasks", "of the bound", "target", ""],
            [
                [
                    f"largest with every lease alive ({'verified' if verified else 'not verified: no probe passed'})",
                    answer,
                    f"{fmt(100 * share, 0)} %",
                    f"≥ {TARGET_BOUND_SHARE:.0%}, 0 lost",
                    verdict(met),
                ],
                [
                    f"bound: (10/s - {CLAIM_RATE:g}/s) x ({deadline_s:g} s - {refs['margin_s']:g} s)",
                    fmt(refs["bound"], 1),
                    "100 %",
                    "",
                    "",
                ],
                [
                    f"fixed cadence of D/3: (10/s - {CLAIM_RATE:g}/s) x {deadline_s:g} s / 3",
                    fmt(refs["fixed_cadence"], 1),
                    f"{fmt(100 * refs['fixed_cadence'] / refs['bound'], 0)} %",
                    "",
                    "",
                ],
                [
                    f"the bridge's admission cap: ⌊{CAP_SHARE:g} x 9/s x {refs['stretched_period_s']:g} s⌋"
                    " (one beat per D - margin - slack)",
                    int(refs["admission_cap"]),
                    f"{fmt(100 * refs['admission_cap'] / refs['bound'], 0)} %",
                    "",
                    "",
                ],
            ],
        )
    )
    result.figures = {
        "sustained_claims": sustained,
        "long_tasks": {"answer": answer, "verified": verified, "share_of_bound": share, "met": met, **refs},
        "probes": [{**asdict(p), "alive": p.alive} for p in probes],
    }
    result.notes.append(
        f"(b) uses a progress deadline of {deadline_s:g} s in the service and the bridge (time-scaled from AWS's"
        " 15 min); the claim rate in both formulas is the bridge's poll budget, 1.8/s."
    )
    return result


if __name__ == "__main__":
    sys.exit(main(run, TITLE))
