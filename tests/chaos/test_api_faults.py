"""10 % injected 500s and 10 % dropped replies on every Data Pipeline operation, seeded.

A 500 means the call did not run; a dropped reply means it ran and the answer was lost (a hand-out stays
handed out until its acknowledgement deadline). Neither may lose a task or run one twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun, chaos_seed


@pytest.mark.timeout(300)
def test_injected_errors_and_dropped_replies(tmp_path: Path) -> None:
    seed = chaos_seed()
    print(f"chaos seed {seed} (CHAOS_SEED={seed} replays the fault draws)", flush=True)
    with ChaosRun(tmp_path, f"api-faults-{seed}") as run:
        # given the whole stack, then faults on every operation from before the pipeline exists
        run.start_workers("threads", "prefork")
        run.start_bridge()
        run.set_faults(fault_rate=0.1, drop_rate=0.1, seed=seed)

        # when 40 tasks run through the faulty service
        run.activate()

        # then every instance ends FINISHED, each ran once, never two at a time, and nothing is left running
        try:
            run.finish(timeout=150)
        except AssertionError as exc:
            raise AssertionError(f"chaos seed {seed}: {exc}") from None
