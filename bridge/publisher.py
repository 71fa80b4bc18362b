"""Publishing task messages to the Celery broker, without importing the workers' code."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from bridge.errors import BrokerError, ConfigError
from bridge.messages import TaskMessage, celery_id, task_name

log = logging.getLogger(__name__)

#: Above the longest queue wait plus run time: a redelivered copy is fenced out by the lease anyway.
VISIBILITY_TIMEOUT_S = 12 * 3600


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


class Publisher:
    """Sends ``dp.<Type>`` messages.

    Args:
        broker_url: The Celery broker (Redis or RabbitMQ).
    """

    def __init__(self, broker_url: str) -> None:
        self.app = publisher_app(broker_url)

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
        self.app.close()
