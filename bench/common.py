"""What every scenario shares: the environment and results files, statistics, /proc sampling, tables, the CLI.

A scenario module (``bench/scenario_*.py``) exposes ``NAME`` and ``run(quick) -> Result``; :func:`main` runs one
alone, ``bench/run.py`` runs them all. Figures go to stdout as Markdown tables, progress to stderr, and
``bench/results/<scenario>.json`` gets the figures, the parameters, the environment and the git commit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
EXIT_OK = 0
EXIT_FAILED = 1
#: Runs per compared system when one run takes under ``MEDIAN_BELOW_S`` (the issue: medians of 3).
RUNS = 3
MEDIAN_BELOW_S = 30.0
#: Packages whose versions change the figures.
PACKAGES = ("dp-celery-bridge", "celery", "kombu", "redis", "boto3", "botocore", "prometheus-client", "pyinstrument")

log = logging.getLogger("bench")


class BenchError(RuntimeError):
    """A scenario cannot go on (a process did not start, tasks never finished, the service refused a call)."""


# -- the environment ----------------------------------------------------------------------------------


def git_commit() -> str:
    """The work tree's commit (``git rev-parse HEAD``, read-only), or ``unknown``."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def redis_server_version() -> str:
    from tests.support import redis_server_binary

    try:
        out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"
    return next((word.split("=", 1)[1] for word in out.split() if word.startswith("v=")), out.strip() or "unknown")


def environment() -> dict[str, Any]:
    """The machine and software the figures come from (read before a scenario, so the load is not ours)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "redis_server": redis_server_version(),
        # Other work on the machine skews the figures: a load near the core count or above makes them noisy.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


# -- statistics -----------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile of ``samples`` (linear interpolation; NaN when empty)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    found = [v for v in values if not math.isnan(v)]
    return statistics.median(found) if found else math.nan


def runs_for(expected_s: float, quick: bool) -> int:
    """How many runs a compared system gets: the median of ``RUNS`` when one run is short, else one."""
    return 1 if quick or expected_s >= MEDIAN_BELOW_S else RUNS


# -- processes, from /proc --------------------------------------------------------------------------------

_CLOCK_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" that ends comm, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` now, in MB (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * _PAGE_KB / 1024


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of ``pid``'s resident memory (``VmHWM``), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


@dataclass
class Usage:
    """One process's use of the machine over a window."""

    cpu_s: float
    wall_s: float
    rss_max_mb: float
    peak_rss_mb: float

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s > 0 else math.nan


class Sampler:
    """CPU over a window and resident memory sampled every ``interval_s``, for named processes.

    Use as a context manager: the window is the ``with`` block; ``usage`` holds the figures after it.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.interval_s = interval_s
        self.usage: dict[str, Usage] = {}
        self._rss = {name: 0.0 for name in self.pids}
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            self._rss[name] = max(self._rss[name], rss_mb(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_s(pid) for name, pid in self.pids.items()}
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            self.usage[name] = Usage(cpu_s(pid) - self._cpu0[name], wall, self._rss[name], peak_rss_mb(pid))

    def cpu(self, *names: str) -> float:
        """CPU seconds of ``names`` together over the window."""
        return sum(self.usage[n].cpu_s for n in names if n in self.usage)


# -- reporting ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What one scenario found: Markdown tables for people, a document for ``bench/results/<name>.json``."""

    name: str
    title: str
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for a table (``n/a`` for a missing one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def verdict(met: bool | None) -> str:
    """How a figure compares with its target (printed, never asserted)."""
    return "n/a" if met is None else ("met" if met else "missed")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table; ``right[n]`` right-aligns column ``n`` (numbers, by default all but the first)."""
    align = right if right is not None else [False, *([True] * (len(headers) - 1))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_result(
    result: Result, quick: bool, env: dict[str, Any], started: float, directory: Path = RESULTS_DIR
) -> Path:
    """Write ``<directory>/<name>.json``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    document = {
        "scenario": result.name,
        "title": result.title,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "duration_s": round(time.monotonic() - started, 1),
        "commit": git_commit(),
        "environment": env,
        "parameters": result.parameters,
        "figures": result.figures,
        "tables": result.tables,
        "notes": result.notes,
    }
    path.write_text(json.dumps(_plain(document), indent=2) + "\n")
    return path


def render(result: Result, quick: bool, env: dict[str, Any]) -> str:
    """The scenario's tables and notes, as printed."""
    mode = "quick mode (small sizes, 1 run)" if quick else "full mode"
    parts = [f"## {result.title}", ""]
    for text in result.tables:
        parts += [text, ""]
    parts += [f"- {note}" for note in result.notes]
    parts.append(
        f"- {mode}; {env['cores']} cores ({env['cpu']}), {env['implementation']} {env['python']}, "
        f"load {env['load_average_1m']} before the run; commit {git_commit()[:12]}"
    )
    return "\n".join(parts)


#: Where the running scenario writes (``--output-dir``); scenarios that keep extra files put them under it.
OUTPUT_DIR = RESULTS_DIR


def execute(run: Callable[[bool], Result], quick: bool, output_dir: Path = RESULTS_DIR) -> str:
    """Run one scenario, print its tables, write its JSON; returns what was printed."""
    global OUTPUT_DIR
    OUTPUT_DIR = output_dir
    env = environment()
    started = time.monotonic()
    result = run(quick)
    path = write_result(result, quick, env, started, output_dir)
    text = render(result, quick, env)
    print(text, flush=True)
    print(flush=True)
    log.info("%s: %.0f s; results written to %s", result.name, time.monotonic() - started, path)
    return text


def parser(description: str) -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(description=description)
    found.add_argument("--quick", action="store_true", help="Small sizes and one run (to check the scenario works).")
    found.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="Where <scenario>.json goes.")
    return found


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)


def main(run: Callable[[bool], Result], description: str, argv: Sequence[str] | None = None) -> int:
    """A scenario module's command line: ``--quick``, ``--output-dir``."""
    options = parser(description).parse_args(argv)
    setup_logging()
    try:
        execute(run, options.quick, options.output_dir)
    except BenchError as exc:
        log.error("benchmark failed: %s", exc)
        return EXIT_FAILED
    return EXIT_OK
