"""Prometheus metrics of a Celery worker, served by its main process for the whole pool.

Set ``BRIDGE_WORKER_METRICS_PORT`` (and ``BRIDGE_WORKER_METRICS_HOST``, 127.0.0.1 by default) per worker; 0 or
unset serves nothing and changes nothing.

**Threads and prefork alike.** Tasks run in the main process (threads pool) or in forked children (prefork);
either way every value is written through prometheus_client's multiprocess mode into a directory of this worker
(a fresh ``dpb-worker-metrics-*`` directory under ``$TMPDIR``), and the main process serves the sum over every
process that wrote there. At ``worker_init``, before the pool forks, the main process creates the directory,
exports it as ``PROMETHEUS_MULTIPROC_DIR`` (children inherit it) and switches prometheus_client to its
multiprocess values, whatever imported prometheus_client first; the metric objects are built after that, so every
process writes its own file. The endpoint starts once the worker is ready (children forked later close their copy
of its socket). Trade-offs: one port per worker (not per child: children come and go, and a per-child port could
not be scraped reliably); counters of children that exited (``--max-tasks-per-child``, a kill) stay in the sum,
as counters should; a running-tasks gauge of a child that died without cleaning up is dropped at the next scrape;
the directory is removed at a clean shutdown (after ``kill -9`` a small directory is left in ``$TMPDIR``).

| Metric | Type | Labels | What |
|---|---|---|---|
| `dpb_worker_task_duration_seconds` | histogram | activity_type, worker_group, outcome | One delivery, start to end |
| `dpb_worker_tasks_running` | gauge | activity_type | Deliveries running now |
| `dpb_worker_heartbeats_total` | counter | outcome | ReportTaskProgress: `accepted`, `canceled`, `lost`, `failed` |
| `dpb_worker_cancellations_total` | counter | activity_type, worker_group | Stopped while running: canceled (or lost) |
| `dpb_worker_fenced_total` | counter | activity_type, worker_group | Tasks that stopped themselves (self-fencing) |
| `dpb_api_calls_total` etc. | | operation | As on the bridge (``bridge.metrics``): this worker's own calls |

``outcome`` of a delivery: ``finished``, ``failed``, ``false`` (a precondition), ``canceled`` (or lost), ``fenced``,
``dropped`` (a stale copy, or its instance held by another attempt), ``lost``, ``unreported``, ``handed_off`` (the
bridge delivers it), ``invalid``, ``requeued`` (Redis was down: the message went back), ``error``. Its count is the
number of deliveries: ``dpb_worker_task_duration_seconds_count{outcome="finished"}`` counts finished tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery, signals
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from bridge.api import TaskApi
from bridge.errors import TaskGone
from bridge.messages import TASK_PREFIX
from bridge.metrics import ApiMetrics, CountingApi, MetricsServer
from bridge.settings import Settings

log = logging.getLogger(__name__)

#: Task durations: quick preconditions to long-running commands.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")
#: Celery task states (a delivery that returned no outcome word) to ``outcome`` labels.
_STATE_OUTCOMES = {"REJECTED": "requeued", "FAILURE": "error", "RETRY": "retry", "IGNORED": "ignored"}


def outcome_of(retval: object, state: str) -> str:
    """The ``outcome`` label of a delivery: the word ``Execution.run`` returned, else from the Celery state."""
    if state == "SUCCESS" and isinstance(retval, str) and retval:
        return retval.strip().replace(" ", "_")
    return _STATE_OUTCOMES.get(state, (state or "unknown").lower())


class WorkerMetrics:
    """The worker's metric families, in multiprocess mode (registered nowhere: the directory is the registry)."""

    def __init__(self) -> None:
        self.api = ApiMetrics(None)
        self.duration = Histogram(
            "dpb_worker_task_duration_seconds",
            "One delivery of a task, start to end",
            ["activity_type", "worker_group", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.running = Gauge(
            "dpb_worker_tasks_running",
            "Deliveries running now",
            ["activity_type"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.heartbeats = Counter("dpb_worker_heartbeats", "ReportTaskProgress by outcome", ["outcome"], registry=None)
        self.cancellations = Counter(
            "dpb_worker_cancellations",
            "Tasks canceled by Data Pipeline",
            ["activity_type", "worker_group"],
            registry=None,
        )
        self.fenced = Counter(
            "dpb_worker_fenced", "Tasks that stopped themselves", ["activity_type", "worker_group"], registry=None
        )


class LiveCollector(Collector):
    """The multiprocess directory's sum, after dropping the live gauges of processes that died uncleanly."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._inner = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for name in os.listdir(self.path):
            found = _LIVE_FILE.match(name)
            if found and not _alive(int(found.group(1))):
                multiprocess.mark_process_dead(int(found.group(1)), self.path)  # type: ignore[no-untyped-call]
        yield from self._inner.collect()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerMonitor:
    """Hooks a Celery app's signals to export its workers' metrics (see the module docstring).

    Also an ``ApiObserver``: ``wrap`` the worker's Data Pipeline client to count its calls and heartbeats.

    Args:
        app: The Celery app whose workers are measured.
        environ: Where settings come from (default: ``os.environ``, read at ``worker_init``).
    """

    def __init__(self, app: Celery, environ: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.environ = environ
        self.metrics: WorkerMetrics | None = None
        self.server: MetricsServer | None = None
        self.path: str | None = None
        self._started: dict[str, tuple[float, str, str]] = {}
        self._lock = threading.Lock()

    # -- the worker's main process --------------------------------------------------------------------

    def enable(self, settings: Settings) -> bool:
        """Switch this process (and the children it forks from now on) to multiprocess metrics; whether on."""
        if not settings.worker_metrics_port or self.metrics is not None:
            return self.metrics is not None
        self.path = tempfile.mkdtemp(prefix="dpb-worker-metrics-")
        os.environ[MULTIPROC_ENV] = self.path
        # prometheus_client picks its value class when first imported: pick again now that the directory is set.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.metrics = WorkerMetrics()
        return True

    def serve(self, settings: Settings) -> None:
        """Serve the directory's sum on the worker's metrics port (idempotent).

        Raises:
            ConfigError: the port cannot be bound.
        """
        if self.path is None or self.server is not None:
            return
        registry = CollectorRegistry()
        registry.register(LiveCollector(self.path))
        self.server = MetricsServer(settings.worker_metrics_host, settings.worker_metrics_port, registry)
        self.server.start()

    def close(self) -> None:
        """Stop serving and remove the directory (a clean worker shutdown)."""
        if self.server is not None:
            self.server.stop()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- counting ---------------------------------------------------------------------------------------

    def wrap(self, api: TaskApi) -> TaskApi:
        """``api`` with its calls counted (a no-op while metrics are off)."""
        return CountingApi(api, self)

    def started(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.api.started(operation)

    def ended(self, operation: str, error: BaseException | None, result: object) -> None:
        if self.metrics is None:
            return
        self.metrics.api.ended(operation, error, result)
        if operation == "ReportTaskProgress":
            if error is None:
                outcome = "canceled" if result else "accepted"
            else:
                outcome = "lost" if isinstance(error, TaskGone) else "failed"
            self.metrics.heartbeats.labels(outcome).inc()

    def task_started(self, task_id: str, name: str, body: object) -> None:
        if self.metrics is None or not name.startswith(TASK_PREFIX):
            return
        activity_type = name[len(TASK_PREFIX) :]
        group = body.get("worker_group") if isinstance(body, Mapping) else None
        with self._lock:
            self._started[task_id] = (time.monotonic(), activity_type, group if isinstance(group, str) else "")
        self.metrics.running.labels(activity_type).inc()

    def task_ended(self, task_id: str, retval: object, state: str) -> None:
        with self._lock:
            started = self._started.pop(task_id, None)
        if self.metrics is None or started is None:
            return
        at, activity_type, group = started
        outcome = outcome_of(retval, state)
        self.metrics.running.labels(activity_type).dec()
        self.metrics.duration.labels(activity_type, group, outcome).observe(time.monotonic() - at)
        if outcome == "canceled":
            self.metrics.cancellations.labels(activity_type, group).inc()
        elif outcome == "fenced":
            self.metrics.fenced.labels(activity_type, group).inc()

    # -- Celery's signals --------------------------------------------------------------------------------

    def install(self) -> WorkerMonitor:
        """Connect to the app's signals (idempotent)."""
        uid = f"dpb-metrics-{id(self.app)}"
        # weak=False: these bound methods have no other reference; dispatch_uid makes a second install a no-op.
        signals.worker_init.connect(self._on_worker_init, weak=False, dispatch_uid=uid + "-init")
        signals.worker_ready.connect(self._on_worker_ready, weak=False, dispatch_uid=uid + "-ready")
        signals.worker_process_init.connect(self._on_process_init, weak=False, dispatch_uid=uid + "-process-init")
        signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False, dispatch_uid=uid + "-shutdown")
        signals.task_prerun.connect(self._on_prerun, weak=False, dispatch_uid=uid + "-prerun")
        signals.task_postrun.connect(self._on_postrun, weak=False, dispatch_uid=uid + "-postrun")
        return self

    def _settings(self) -> Settings:
        return Settings.from_env(self.environ)

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        try:
            if self.enable(self._settings()):
                log.info("worker metrics: collecting the pool's values in %s", self.path)
        except Exception:  # metrics never stop a worker from running tasks
            log.error("worker metrics not enabled", exc_info=True)

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        try:
            self.serve(self._settings())
        except Exception:
            log.error("worker metrics not served", exc_info=True)

    def _on_process_init(self, **_: Any) -> None:
        # A pool child forked after the endpoint started holds a copy of its socket: only the parent serves.
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.close_inherited()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self.close()

    def _on_prerun(self, task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
        if getattr(task, "app", None) is self.app:
            self.task_started(task_id, str(getattr(task, "name", "")), args[0] if args else None)

    def _on_postrun(self, task_id: str = "", retval: Any = None, state: str = "", **_: Any) -> None:
        self.task_ended(task_id, retval, str(state or ""))


def install(app: Celery) -> WorkerMonitor:
    """Export ``app``'s workers' metrics when ``BRIDGE_WORKER_METRICS_PORT`` is set; returns the monitor."""
    return WorkerMonitor(app).install()
