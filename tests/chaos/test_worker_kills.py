"""kill -9 of a Celery worker mid-task: of a threads worker's main process, and of one prefork pool child.

The commands the kill cut short (a START without an END) run again once Data Pipeline hands their tasks out
again; nothing else runs twice, no two executions of one instance overlap, and no process of theirs survives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun


@pytest.mark.timeout(300)
def test_threads_worker_killed_mid_task(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "kill-threads-worker") as run:
        # given a threads worker and a prefork worker running the pipeline's tasks
        threads, _prefork = run.start_workers("threads", "prefork")
        run.start_bridge()
        run.activate()
        run.wait_started(10)

        # when the threads worker's process is killed with SIGKILL while it runs commands, then replaced
        run.kill_worker(threads)
        run.start_workers("threads")

        # then every instance ends FINISHED; only the cut commands ran again, after the kill took them
        run.finish()


@pytest.mark.timeout(300)
def test_prefork_child_killed_mid_task(tmp_path: Path) -> None:
    with ChaosRun(tmp_path, "kill-prefork-child") as run:
        # given a threads worker and a prefork worker running the pipeline's tasks
        _threads, prefork = run.start_workers("threads", "prefork")
        run.start_bridge()
        run.activate()
        run.wait_started(10)

        # when one pool child of the prefork worker is killed with SIGKILL while it runs a command
        run.kill_prefork_child(prefork)

        # then every instance ends FINISHED; only the cut command ran again, after the kill took it
        run.finish()
