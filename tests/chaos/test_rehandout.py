"""Both ways the service can hand a task out again after a missed deadline, with a worker killed mid-run.

``new-attempt`` (AWS's documented behaviour): the silent attempt is TIMEDOUT and a new attempt, with a new
task id, is handed out. ``same-task``: the very same task id comes back, so the bridge sees a hand-out of a
task it already holds a (dead) lease for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["new-attempt", "same-task"])
def test_worker_killed_under_each_rehandout_mode(tmp_path: Path, mode: str) -> None:
    with ChaosRun(tmp_path, f"rehandout-{mode}", rehandout=mode) as run:
        # given a service that hands silent tasks out again in this mode, and the whole stack
        threads, _prefork = run.start_workers("threads", "prefork")
        run.start_bridge()
        run.activate()
        run.wait_started(10)

        # when the threads worker is killed with SIGKILL mid-task, then replaced
        run.kill_worker(threads)
        run.start_workers("threads")

        # then every instance ends FINISHED; only the cut commands ran again, after the kill took them
        run.finish()
