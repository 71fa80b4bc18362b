"""A Celery worker advertises its slots to the pollers' admission control (``bridge.admission.SlotRegistry``).

``install(app, ...)`` hooks Celery's signals so that the worker's main process registers its
concurrency and consumed queues once it is ready, refreshes that every few seconds in a thread (a
worker killed with ``kill -9`` drops out when its registration expires), and unregisters as soon as
it starts shutting down (it takes no new messages from then on).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.admission import WORKER_REFRESH_S, WORKER_TTL_S, SlotRegistry
from bridge.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)


class SlotAdvertiser:
    """Keeps one worker's registration fresh from a thread, and removes it on ``stop``.

    Args:
        consumer: The worker's Celery consumer (the ``worker_ready`` sender): its hostname is the
            worker id, its controller's concurrency the slots, its task consumer's queues the queues.
        redis_url_getter: Returns the URL of the Redis that holds the registry.
        refresh_s: Seconds between refreshes.
        ttl_s: How long a registration outlives its last refresh.
    """

    def __init__(
        self,
        consumer: Any,
        redis_url_getter: Callable[[], str],
        refresh_s: float = WORKER_REFRESH_S,
        ttl_s: float = WORKER_TTL_S,
    ) -> None:
        self.consumer = consumer
        self.worker_id = str(consumer.hostname)
        self.redis_url_getter = redis_url_getter
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self.pid = os.getpid()
        self.stopping = threading.Event()
        self._registry: SlotRegistry | None = None
        self._queues: list[str] = []
        self._down = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unregistered = False

    def start(self) -> None:
        """Register now and keep refreshing in a daemon thread (idempotent)."""
        if self._thread is None and not self.stopping.is_set():
            self._thread = threading.Thread(target=self.run, name="slot-advertiser", daemon=True)
            self._thread.start()

    def concurrency(self) -> int:
        """The worker's slots: the autoscaler's maximum if it has one, else its fixed concurrency."""
        controller = self.consumer.controller
        return int(getattr(controller, "max_concurrency", None) or controller.concurrency or 0)

    def queues(self) -> list[str]:
        """The queues the worker consumes now (``celery control add_consumer`` changes them at run time)."""
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is not None:
            return sorted({q.name for q in task_consumer.queues})
        return sorted(self.consumer.app.amqp.queues.consume_from)

    def registry(self) -> SlotRegistry:
        """Raises: ConfigError when the Redis URL does not parse."""
        if self._registry is None:
            url = self.redis_url_getter()
            try:
                # One try per refresh: the next refresh is the retry, and shutdown must not hang on Redis.
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    socket_timeout=5,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                    retry=Retry(NoBackoff(), 0),
                )
            except ValueError as exc:
                raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc
            self._registry = SlotRegistry(client)
        return self._registry

    def refresh(self) -> None:
        """Register (again) with the current concurrency and queues.

        Raises:
            BrokerError: Redis cannot be reached.
            ConfigError: the Redis URL does not parse.
        """
        queues = self.queues()
        with self._lock:
            if self.stopping.is_set():
                return
            self.registry().register(
                self.worker_id, self.concurrency(), queues, hostname=socket.gethostname(), ttl_s=self.ttl_s
            )
            self._queues = queues

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.refresh()
            except (BrokerError, ConfigError) as exc:
                if not self._down:
                    log.warning("worker slots of %s not registered, retrying: %s", self.worker_id, exc)
                self._down = True
            except Exception:
                log.critical("worker slot registration error", exc_info=True)
            else:
                if self._down:
                    log.info("worker slots of %s registered again", self.worker_id)
                self._down = False
            self.stopping.wait(self.refresh_s)
        self.unregister()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop refreshing and unregister (idempotent; safe before ``start``)."""
        self.stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self.unregister()

    def unregister(self) -> None:
        """Remove the registration once; a failure only leaves it to expire."""
        with self._lock:
            self.stopping.set()
            if self._unregistered:
                return
            self._unregistered = True
            try:
                self.registry().unregister(self.worker_id, self._queues)
            except (BrokerError, ConfigError) as exc:
                log.warning("worker slots of %s not unregistered (they expire by themselves): %s", self.worker_id, exc)
                return
        log.info("unregistered worker slots of %s", self.worker_id)


def install(app: Celery, redis_url_getter: Callable[[], str]) -> None:
    """Make ``app``'s workers advertise their slots in the Redis at ``redis_url_getter()``. Idempotent."""
    advertisers: dict[str, SlotAdvertiser] = {}
    uid = f"dpb-slots-{id(app)}"

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or sender.hostname in advertisers:
            return
        advertiser = advertisers[sender.hostname] = SlotAdvertiser(sender, redis_url_getter)
        advertiser.start()
        log.info(
            "advertising %d slots of %s on %s", advertiser.concurrency(), advertiser.worker_id, advertiser.queues()
        )

    def on_shutting_down(sender: Any = None, **_: Any) -> None:
        # Runs inside a signal handler: only wake the thread, which unregisters on its way out.
        advertiser = advertisers.get(str(sender))
        if advertiser is not None and advertiser.pid == os.getpid():
            advertiser.stopping.set()

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        for advertiser in list(advertisers.values()):
            if advertiser.pid == os.getpid():
                advertiser.stop()

    # weak=False: these closures have no other reference; dispatch_uid makes a second install a no-op.
    signals.worker_ready.connect(on_ready, weak=False, dispatch_uid=uid + "-ready")
    signals.worker_shutting_down.connect(on_shutting_down, weak=False, dispatch_uid=uid + "-shutting-down")
    signals.worker_shutdown.connect(on_shutdown, weak=False, dispatch_uid=uid + "-shutdown")
