"""Publishing task messages to the Celery broker, without importing the workers' code."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.exceptions import KombuError, OperationalError
from kombu.transport import pyamqp
from kombu.transport import redis as redis_transport

from bridge.errors import BrokerError, ConfigError
from bridge.messages import TaskMessage, celery_id, task_name

log = logging.getLogger(__name__)

#: Above the longest queue wait plus run time: a redelivered copy is fenced out by the lease anyway.
VISIBILITY_TIMEOUT_S = 12 * 3600
#: Transports whose ping is one round trip on a kept connection (any other opens a new connection per ping).
PROBED_TRANSPORTS = (redis_transport.Transport, pyamqp.Transport)


def publisher_app(broker_url: str) -> Celery:
    """A Celery app used only to send messages (same serialisation settings as the workers)."""
    app = Celery("dp-bridge-publisher", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        task_send_sent_event=True,
    )
    return app


class BrokerProbe:
    """A broker connection kept open for reachability checks: each check is one round trip on it.

    Args:
        conn: An established connection of one of ``PROBED_TRANSPORTS``, its sockets timing out after ``timeout_s``.
        timeout_s: The connect and read timeout its sockets were made with.

    Raises:
        BrokerError: the broker cannot be reached.
    """

    def __init__(self, conn: Connection, timeout_s: float) -> None:
        self.conn: Any = conn  # kombu's connection and channel methods are untyped
        self.timeout_s = timeout_s
        self.errors: tuple[type[BaseException], ...] = (
            KombuError,
            OSError,
            *conn.connection_errors,
            *conn.channel_errors,
        )
        self.is_redis = isinstance(conn.transport, redis_transport.Transport)
        try:
            self.channel: Any = conn.default_channel
        except self.errors as exc:
            raise _unreachable(exc) from exc

    def round_trip(self) -> None:
        """PING for Redis; for AMQP a passive declare of ``amq.direct`` (every virtual host has it).

        Raises:
            BrokerError: no answer (the connection is then of no further use).
        """
        try:
            if self.is_redis:
                self.channel.client.ping()
            else:
                self.channel.exchange_declare(exchange="amq.direct", type="direct", passive=True)
        except self.errors as exc:
            raise _unreachable(exc) from exc

    def close(self) -> None:
        """Close the connection politely (an AMQP close is one more round trip)."""
        with contextlib.suppress(*self.errors):
            self.conn.release()

    def discard(self) -> None:
        """Drop a connection that failed, without talking to the broker again."""
        with contextlib.suppress(*self.errors):
            self.conn.collect()


def _unreachable(exc: BaseException) -> BrokerError:
    return BrokerError(f"the broker is unreachable: {str(exc) or type(exc).__name__}")


def probe_options(timeout_s: float) -> dict[str, float]:
    """Transport options that bound every socket wait of a check connection (Redis and py-amqp names)."""
    return {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "read_timeout": timeout_s,
        "write_timeout": timeout_s,
    }


class Publisher:
    """Sends ``dp.<Type>`` messages.

    Args:
        broker_url: The Celery broker (Redis or RabbitMQ).
    """

    def __init__(self, broker_url: str) -> None:
        self.app = publisher_app(broker_url)
        # One connection for ping(), shared by the poller threads: a check holds the lock for one round trip.
        self._probe: BrokerProbe | None = None
        self._probe_lock = threading.Lock()
        self._probe_unsupported = False

    def check(self, timeout_s: float = 5.0) -> None:
        """Connect once.

        Raises:
            BrokerError: the broker cannot be reached.
            ConfigError: the broker URL does not parse or names no known transport.
        """
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout_s)
        except (KombuError, OSError) as exc:
            raise BrokerError(f"the broker is unreachable: {exc}") from exc
        except (KeyError, ValueError) as exc:  # kombu: unknown transport, bad port or virtual host
            raise ConfigError(f"bad broker URL {self.app.conf.broker_url!r}: {exc}") from exc

    def ping(self, timeout_s: float = 5.0) -> None:
        """One round trip to the broker on a connection kept between calls (made again after a failure).

        A transport other than Redis or py-amqp gets ``check()`` instead, a new connection per call.

        Raises:
            BrokerError: the broker cannot be reached or did not answer within about ``timeout_s``.
            ConfigError: the broker URL does not parse or names no known transport.
        """
        if self._probe_unsupported:
            self.check(timeout_s)
            return
        if not self._probe_lock.acquire(timeout=timeout_s):
            raise BrokerError(f"the broker is unreachable: another check got no answer within {timeout_s:g} s")
        try:
            self._ping(timeout_s)
        finally:
            self._probe_lock.release()

    def _ping(self, timeout_s: float) -> None:
        probe = self._probe
        if probe is not None and probe.timeout_s == timeout_s:
            started = time.monotonic()
            try:
                probe.round_trip()
                return
            except BrokerError:
                self._drop_probe()
                if time.monotonic() - started >= timeout_s / 2:
                    raise  # no answer in time: a new connection would only wait again
                # It failed at once, as a connection the broker closed meanwhile (a restart) does: a new
                # connection tells whether the broker itself is down, as a check with no kept connection would.
        else:
            self._drop_probe()
        probe = self._open_probe(timeout_s)
        if probe is None:
            self._probe_unsupported = True
            self.check(timeout_s)
            return
        try:
            probe.round_trip()
        except BrokerError:
            probe.discard()
            raise
        self._probe = probe

    def _open_probe(self, timeout_s: float) -> BrokerProbe | None:
        """A new check connection; ``None`` for a transport not in ``PROBED_TRANSPORTS``.

        Raises:
            BrokerError: the broker cannot be reached.
            ConfigError: the broker URL does not parse or names no known transport.
        """
        conn: Any = None  # a kombu Connection (untyped methods)
        try:
            conn = self.app.connection_for_write(connect_timeout=timeout_s, transport_options=probe_options(timeout_s))
            if not isinstance(conn.transport, PROBED_TRANSPORTS):
                return None
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            probe = BrokerProbe(conn, timeout_s)
            conn = None  # the probe owns it now
            return probe
        except (KombuError, OSError) as exc:
            raise _unreachable(exc) from exc
        except (KeyError, ValueError) as exc:  # kombu: unknown transport, bad port or virtual host
            raise ConfigError(f"bad broker URL {self.app.conf.broker_url!r}: {exc}") from exc
        finally:
            if conn is not None:
                with contextlib.suppress(KombuError, OSError):
                    conn.collect()

    def _drop_probe(self) -> None:
        if self._probe is not None:
            self._probe.discard()
            self._probe = None

    def publish(self, message: TaskMessage, argsrepr: str) -> str:
        """Send one message; returns its Celery task id.

        Raises:
            BrokerError: the broker refused or could not be reached.
        """
        task_id = celery_id(message.task_key, message.epoch)
        options: dict[str, Any] = {
            "task_id": task_id,
            "queue": message.queue,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "retry": True,
            "retry_policy": {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
        }
        try:
            self.app.send_task(task_name(message.object_type), args=[message.to_body()], **options)
        except (KombuError, OperationalError, OSError) as exc:
            raise BrokerError(f"cannot publish {task_id}: {exc}") from exc
        return task_id

    def close(self) -> None:
        """Close the check connection and the publishing connections. Idempotent."""
        with self._probe_lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None
        self.app.close()
