"""The Task Runner model: AWS's Task Runner concurrency in one process, on the bridge's own client code.

AWS's Task Runner runs one task per poll thread (``--tasks``, default 2): each thread polls, acknowledges, runs the
task and reports it, so its concurrency is its number of held polls. This model does exactly that with
``bridge.api.Boto3TaskApi`` (one per thread, from one boto3 session) and ``bridge.taskmodel.parse_task_object``, and
runs the same body the bridge's workers run (``bench.tasks.run_body``). With ``--raw`` each thread makes the three
calls on a plain boto3 client and runs nothing: the boto3 round-trip floor.

It prints ``polling with N threads`` once every thread is ready and, after ``--count`` tasks, one JSON line with
what it did; then it waits for SIGTERM and exits 0 (1 after errors). Run by ``bench/stack.py``; alone::

    .venv/bin/python bench/taskrunner.py --endpoint-url http://127.0.0.1:8999 --worker-group wg --threads 2 --count 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench and tests are not installed packages

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from bench.tasks import run_body, task_key  # noqa: E402
from bridge.api import Boto3TaskApi  # noqa: E402
from bridge.taskmodel import parse_task_object  # noqa: E402

EXIT_OK = 0
EXIT_FAILED = 1
#: A thread that hit an error waits this long before polling again.
ERROR_WAIT_S = 1.0


class Model:
    """``threads`` poll threads that together run ``count`` tasks, then stop."""

    def __init__(self, endpoint_url: str, worker_group: str, threads: int, count: int, raw: bool) -> None:
        self.worker_group = worker_group
        self.count = count
        self.raw = raw
        session = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1"))
        # Built here, one after another: building clients concurrently from one session is not thread-safe.
        if raw:
            config = Config(read_timeout=100, connect_timeout=5, retries={"total_max_attempts": 1, "mode": "standard"})
            self.clients: list[Any] = [
                session.client("datapipeline", endpoint_url=endpoint_url, config=config) for _ in range(threads)
            ]
        else:
            self.clients = [Boto3TaskApi(endpoint_url, session.region_name, session) for _ in range(threads)]
        self.done = 0
        self.errors = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def _claimed(self) -> None:
        with self.lock:
            self.done += 1
            if self.done >= self.count:
                self.finished.set()

    def _one(self, client: Any, hostname: str) -> None:
        if self.raw:
            task = client.poll_for_task(workerGroup=self.worker_group, hostname=hostname).get("taskObject")
            if not task or not task.get("taskId"):
                return
            client.report_task_progress(taskId=task["taskId"])
            client.set_task_status(taskId=task["taskId"], taskStatus="FINISHED")
            self._claimed()
            return
        raw = client.poll_for_task(self.worker_group, hostname)
        if raw is None:
            return
        client.report_task_progress(raw["taskId"])  # the acknowledgement
        task = parse_task_object(raw)
        attempt = task.attempt
        run_body(
            task_key(task.pipeline_id, task.attempt_id),
            float(attempt.get("mySeconds") or 0),
            attempt.get("myRelease") or "",
        )
        client.set_task_status(task.task_id, "FINISHED")
        self._claimed()

    def _loop(self, n: int) -> None:
        client = self.clients[n]
        while not self.finished.is_set():
            try:
                self._one(client, f"taskrunner-model-{n}")
            except Exception as exc:  # the loop's edge: count it, wait, go on
                with self.lock:
                    self.errors += 1
                print(f"thread {n}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                self.finished.wait(ERROR_WAIT_S)

    def run(self) -> int:
        # Stay up after the last task until told to stop, so whoever measures this process can still read /proc.
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        for n in range(len(self.clients)):
            threading.Thread(target=self._loop, args=(n,), name=f"poll-{n}", daemon=True).start()
        print(f"polling with {len(self.clients)} threads worker_group={self.worker_group}", flush=True)
        started = time.monotonic()
        while not self.finished.wait(0.2) and not stop.is_set():
            pass
        summary = {"done": self.done, "errors": self.errors, "wall_s": round(time.monotonic() - started, 3)}
        print(json.dumps(summary), flush=True)
        while not stop.wait(1.0):
            pass
        # Threads still holding a poll are daemons: the process ends under them (the service sees them go).
        return EXIT_OK if not self.errors else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--worker-group", required=True)
    parser.add_argument("--threads", type=int, default=2, help="Poll threads (Task Runner's --tasks; default 2).")
    parser.add_argument("--count", type=int, required=True, help="Exit after this many tasks.")
    parser.add_argument("--raw", action="store_true", help="Plain boto3 round trips, no body: the floor.")
    options = parser.parse_args(argv)
    model = Model(options.endpoint_url, options.worker_group, options.threads, options.count, options.raw)
    return model.run()


if __name__ == "__main__":
    sys.exit(main())
