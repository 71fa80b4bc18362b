"""The poller killed mid-claim: at each named crash point, and at random moments of a seeded run.

Every task a dead poller held must still run exactly once: Data Pipeline hands out again what was never
acknowledged or beaten, and the restarted poller (a new process, a new owner) adopts what was leased.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.chaos.harness import CRASH_POINTS, ChaosRun, chaos_seed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_poller_killed_at_a_crash_point(tmp_path: Path, point: str) -> None:
    with ChaosRun(tmp_path, f"crash-{point}") as run:
        # given 40 tasks waiting, workers of both pools, and a poller armed to die the first time it reaches the
        # point (a held poll comes only once every task was handed out: that crash leaves leases in flight)
        run.start_workers("threads", "prefork")
        run.activate()
        crashing = run.start_bridge(crash_at=point)

        # when the poller dies there and is started again without the hook
        run.expect_crash(crashing, point)
        run.start_bridge()

        # then every instance ends FINISHED, each ran once, never two at a time, and nothing is left running
        run.finish()


@pytest.mark.timeout(300)
def test_poller_killed_at_random_moments(tmp_path: Path) -> None:
    seed = chaos_seed()
    rng = random.Random(seed)
    print(f"chaos seed {seed} (CHAOS_SEED={seed} replays the kill schedule)", flush=True)
    with ChaosRun(tmp_path, f"random-{seed}") as run:
        # given workers of both pools and a poller
        run.start_workers("threads", "prefork")
        bridge = run.start_bridge()

        # when the poller is killed with SIGKILL three times at seeded moments, restarted after each
        run.activate()
        for _ in range(3):
            time.sleep(rng.uniform(0.2, 5.0))
            run.kill_bridge(bridge)
            time.sleep(rng.uniform(0.0, 2.0))
            bridge = run.start_bridge()

        # then every instance ends FINISHED, each ran once, never two at a time, and nothing is left running
        try:
            run.finish()
        except AssertionError as exc:
            raise AssertionError(f"chaos seed {seed}: {exc}") from None
