"""The Celery app (``celery -A workers worker -Q dp.<group>``), configured from ``BRIDGE_*`` variables."""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import cache
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Reject

from bridge import logs
from bridge.api import Boto3TaskApi
from bridge.errors import InvalidTask, RemoteError, UnsupportedActivity
from bridge.fencing import Fence
from bridge.leases import LeaseState, LeaseStore
from bridge.messages import TASK_PREFIX, TaskMessage
from bridge.publisher import VISIBILITY_TIMEOUT_S
from bridge.ratelimit import BudgetPressure, RateLimitedApi, build_limiter
from bridge.retry import retry_call
from bridge.settings import Settings
from workers import metrics, slots
from workers.execution import SHUTTING_DOWN, Execution, LeaseStoreDown, Runtime
from workers.handlers import load_builtin

log = logging.getLogger(__name__)


def make_app(settings: Settings) -> Celery:
    """The worker app with DESIGN.md §5's settings."""
    app = Celery("workers", broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # After a broker reconnect Celery lowers the prefetch count and restores it as tasks finish; with
        # RabbitMQ we saw it never restored (the worker stopped consuming). Prefetch is 1 per slot anyway.
        worker_enable_prefetch_count_reduction=False,
        task_reject_on_worker_lost=False,
        # Cancelling on reconnect would kill healthy work; the lease fences redelivered copies instead.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        worker_hijack_root_logger=True,
    )
    return app


@cache
def runtime(pid: int) -> Runtime:
    """Clients for this process (keyed by pid: prefork children build their own after fork)."""
    settings = Settings.from_env()
    leases = LeaseStore.from_url(settings.redis_url)
    # Every call a worker makes takes a token from the fleet's shared API budget.
    limiter = build_limiter(settings, LeaseStore.fast_client(settings.redis_url))
    api = RateLimitedApi(METRICS.wrap(Boto3TaskApi(settings.endpoint_url, settings.region)), limiter)
    return Runtime(
        settings=settings,
        api=api,
        early_api=api.early(),
        leases=leases,
        worker_id=f"worker:{socket.gethostname()}:{pid}",
        fence=Fence.from_url(settings.redis_url),
        budget=BudgetPressure(limiter) if settings.rate_limit else None,
    )


app = make_app(Settings.from_env())
HANDLERS = load_builtin()
# Pollers claim only while live worker slots (advertised here, per queue) can take the work.
slots.install(app, lambda: Settings.from_env().redis_url)
# Prometheus metrics of the pool (BRIDGE_WORKER_METRICS_PORT); it counts the calls of the clients ``runtime`` builds.
METRICS = metrics.install(app)


#: How long a worker waits before handing a message back while Redis is away (no tight redelivery loop).
LEASE_RETRY_S = 2.0


def _execute(self: Task, body: Any) -> str:
    try:
        return Execution(runtime(os.getpid()), body, HANDLERS).run()
    except LeaseStoreDown as exc:
        # Acking would lose the task while its lease stays queued; requeue it for when Redis is back.
        time.sleep(LEASE_RETRY_S)
        raise Reject(str(exc), requeue=True) from exc


for _type_name in HANDLERS:
    app.task(name=TASK_PREFIX + _type_name, bind=True, acks_late=True, ignore_result=True)(_execute)


@signals.task_unknown.connect  # type: ignore[untyped-decorator]
def fail_unknown(sender: Any = None, name: str = "", id: str = "", message: Any = None, **_: Any) -> None:
    """A ``dp.<Type>`` with no handler on this worker: end it FAILED so nothing waits forever."""
    if not name.startswith(TASK_PREFIX):
        return
    try:
        args = message.payload[0] if isinstance(message.payload, list | tuple) else []
        parsed = TaskMessage.from_body(args[0] if args else None)
    except (InvalidTask, AttributeError, IndexError, TypeError) as exc:
        log.error("unknown task %s with an unreadable body: %s", name, exc)
        return
    rt = runtime(os.getpid())
    task_id = str(parsed.task_object.get("taskId", ""))
    error = UnsupportedActivity(f"no handler for {parsed.object_type} on this worker fleet ({name})")
    claim = rt.leases.transition(
        parsed.task_key,
        parsed.worker_group,
        [LeaseState.QUEUED],
        LeaseState.REPORTING,
        epoch=parsed.epoch,
        fields={"heartbeat_owner": rt.worker_id},
    )
    if not claim.ok:
        log.info(
            "dropped unknown worker_group=%s task_key=%s: lease is %s",
            parsed.worker_group,
            parsed.task_key,
            claim.state or "missing",
        )
        return
    try:
        retry_call(
            lambda: rt.api.set_task_status(task_id, "FAILED", error.error_id, str(error)),
            what=f"failing {parsed.task_key}",
            deadline_s=60,
        )
        state = LeaseState.DONE
        log.info(
            "failed worker_group=%s task_key=%s error_id=%s: %s",
            parsed.worker_group,
            parsed.task_key,
            error.error_id,
            error,
        )
    except RemoteError as exc:
        log.error("could not fail unknown worker_group=%s task_key=%s: %s", parsed.worker_group, parsed.task_key, exc)
        state = LeaseState.LOST
    rt.leases.transition(parsed.task_key, parsed.worker_group, [LeaseState.REPORTING], state, epoch=parsed.epoch)


@signals.worker_shutting_down.connect  # type: ignore[untyped-decorator]
def shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    """A warm shutdown began: tasks still reporting hand their outcome to the bridge keeper instead of retrying."""
    SHUTTING_DOWN.set()
    log.info("worker shutting down (%s %s): reporting tasks hand their outcomes to the bridge keeper", sig, how)


@signals.after_setup_logger.connect  # type: ignore[untyped-decorator]
@signals.after_setup_task_logger.connect  # type: ignore[untyped-decorator]
def mask_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """Secrets never reach a worker's log handlers (botocore's and urllib3's included); JSON lines if asked."""
    logs.configure_worker(logger, Settings.from_env().log_format)
