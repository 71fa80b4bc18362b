"""Redis (leases and broker both) restarted mid-run with AOF on, with no persistence, and stopped for a while.

With AOF the records survive and the run goes on; with no persistence every lease and queued message is gone
and Data Pipeline's re-hand-out must bring each task back; a stop of twice the progress deadline makes the
service hand out again every task whose heartbeats needed Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun, Timing


@pytest.mark.timeout(300)
@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_redis_restarted_mid_run(tmp_path: Path, appendonly: bool) -> None:
    with ChaosRun(tmp_path, f"redis-restart-{'aof' if appendonly else 'volatile'}", redis_appendonly=appendonly) as run:
        # given the whole stack running the pipeline's tasks
        run.start_workers("threads", "prefork")
        run.start_bridge()
        run.activate()
        run.wait_started(12)

        # when Redis is restarted while tasks are queued and running
        run.restart_redis()

        # then every instance still ends FINISHED, each ran once, and nothing is left running
        run.finish()


@pytest.mark.timeout(360)
def test_redis_down_for_twice_the_progress_deadline(tmp_path: Path) -> None:
    timing = Timing()
    with ChaosRun(tmp_path, "redis-down", timing=timing, redis_appendonly=True) as run:
        # given the whole stack running the pipeline's tasks
        run.start_workers("threads", "prefork")
        run.start_bridge()
        run.activate()
        run.wait_started(12)

        # when Redis is stopped for twice the progress deadline, then started again with its data
        run.restart_redis(down_s=2 * timing.progress_timeout_s)

        # then every instance still ends FINISHED, each ran once, never two at a time, nothing is left running
        run.finish()
