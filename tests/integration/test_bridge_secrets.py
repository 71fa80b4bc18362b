"""A ``*password`` never leaves the task object: not in logs at DEBUG, argsrepr, or what Data Pipeline is told."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bridge.masking import MASK
from tests.integration.bridge_stack import Stack, attempts, logged, run_pipeline, wait_final
from tests.support import advertise_slots, shell_activity, wait_for

GROUP = "vault"
SECRET = "s3cr3t-Pa55"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(["--poll-wait", "2", "--time-scale", "60"], BRIDGE_LOG_LEVEL="DEBUG")
    try:
        yield stack.start()
    finally:
        stack.stop()


def queued_messages(stack: Stack, queue: str) -> list[dict[str, Any]]:
    """Celery messages waiting in ``queue`` (kombu's Redis transport keeps them as JSON in a list)."""
    client = redis.Redis.from_url(stack.redis.url)
    try:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def test_a_password_is_masked_everywhere_at_debug(stack: Stack) -> None:
    # given a bridge at DEBUG (a slot advertised, though no worker consumes the queue yet), and a pipeline
    # whose activity uses a database with a *password, carries the same
    # value in a *myPassword field, and prints it to stderr before failing
    advertise_slots(stack.redis.url, [f"dp.{GROUP}"])
    bridge = stack.bridge(GROUP)
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {
            "id": "Warehouse",
            "type": "JdbcDatabase",
            "connectionString": "jdbc:postgresql://db.internal:5432/dw",
            "jdbcDriverClass": "org.postgresql.Driver",
            "username": "loader",
            "*password": SECRET,
        },
        shell_activity(
            "Load",
            command=f"echo 'psql: password authentication failed (tried {SECRET})' >&2; exit 1",
            database={"ref": "Warehouse"},
            **{"*myPassword": SECRET},
        ),
    )

    # when the bridge enqueues it (no worker consumes the queue yet)
    messages = wait_for(lambda: queued_messages(stack, f"dp.{GROUP}"), timeout=30, what="the Celery message")

    # then the message's argsrepr names the attempt but not the secret
    argsrepr = messages[0]["headers"]["argsrepr"]
    assert "object=Load" in argsrepr
    assert SECRET not in argsrepr

    # when a worker at DEBUG runs it
    worker = stack.worker(f"dp.{GROUP}", loglevel="DEBUG")
    ended = wait_final(stack.dp, pipeline, "Load")
    logged(worker, "failed worker_group=vault", pipeline)

    # then the failure reached Data Pipeline with the secret masked
    attempt = attempts(stack.dp, pipeline, "Load")[-1]
    assert ended["@status"] == "FAILED"
    for shown in (ended, attempt):
        assert f"tried {MASK}" in shown["errorMessage"]
        assert SECRET not in shown["errorMessage"]
        assert SECRET not in shown["errorStackTrace"]

    # and neither process wrote it, although both logged the task (botocore's reply bodies included)
    received = logged(worker, "Task dp.ShellCommandActivity[", "received")
    assert SECRET not in received
    assert "Response body" in bridge.text()
    assert MASK in bridge.text()
    assert SECRET not in bridge.text()
    assert SECRET not in worker.text()
