"""Run the benchmark scenarios of issue 8, one after another, and print a table per scenario.

    .venv/bin/python bench/run.py                     # all five, full sizes (what ``make bench`` runs)
    .venv/bin/python bench/run.py --quick             # small sizes, one run each: checks they work
    .venv/bin/python bench/run.py --only latency --only limits

Each scenario writes ``bench/results/<scenario>.json``; this also writes ``bench/results/summary.md`` with every
table, ready to paste into ``bench/README.md``. A scenario that fails is reported and the others still run; the exit
code is then 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

from bench import (  # noqa: E402
    scenario_cost,
    scenario_decoupling,
    scenario_latency,
    scenario_limits,
    scenario_overhead,
)
from bench.common import EXIT_FAILED, EXIT_OK, BenchError, execute, log, parser, setup_logging  # noqa: E402

SCENARIOS = {
    module.NAME: module
    for module in (scenario_overhead, scenario_decoupling, scenario_latency, scenario_limits, scenario_cost)
}


def main(argv: Sequence[str] | None = None) -> int:
    found = parser(__doc__.split("\n\n")[0] if __doc__ else "")
    found.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="Run this scenario (repeatable); default: all."
    )
    options = found.parse_args(argv)
    setup_logging()
    names = options.only or list(SCENARIOS)
    started = time.monotonic()
    rendered: list[str] = []
    failed: list[str] = []
    for name in names:
        log.info("scenario %s: starting", name)
        try:
            rendered.append(execute(SCENARIOS[name].run, options.quick, options.output_dir))
        except (BenchError, AssertionError, OSError) as exc:
            log.error("scenario %s failed: %s", name, exc)
            failed.append(name)
    summary = options.output_dir / "summary.md"
    summary.write_text("\n\n".join(rendered) + "\n")
    log.info(
        "%d scenarios in %.1f min; tables in %s%s",
        len(names),
        (time.monotonic() - started) / 60,
        summary,
        f"; failed: {', '.join(failed)}" if failed else "",
    )
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
