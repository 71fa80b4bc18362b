"""Two ``bridge start`` processes for one worker group from the start: each hand-out runs once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun


@pytest.mark.timeout(300)
def test_two_pollers_for_one_group(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "two-pollers") as run:
        # given workers of both pools and two pollers of the same group
        run.start_workers("threads", "prefork")
        run.start_bridge()
        run.start_bridge()

        # when 40 tasks arrive
        run.activate()

        # then every instance ends FINISHED, each ran once, never two at a time, and nothing is left running
        run.finish()
