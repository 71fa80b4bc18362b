"""``--log-format json``: lifecycle lines become JSON objects with their ids as fields, every field masked."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import logs, masking
from bridge.logs import JsonFormatter, configure_worker
from bridge.masking import MASK, MaskingFilter, SecretRegistry

SECRET = "tok-2718-secret"
PIPELINE = "df-0123456789ABC"
ATTEMPT = "@Load_2024-05-01T10:00:00_Attempt=2"
KEY = f"{PIPELINE}:{ATTEMPT}:0123456789ab"


@pytest.fixture
def registry() -> SecretRegistry:
    found = SecretRegistry()
    found.add([SECRET])
    return found


@pytest.fixture
def json_log(registry: SecretRegistry) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger set up as ``--log-format json`` sets up the root logger: a JSON handler with masking."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(registry))
    logger = logging.getLogger(f"test-logs-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    masking.install(logger, registry)
    yield logger, stream
    logger.removeHandler(handler)


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_lifecycle_line_carries_its_event_group_and_ids_as_fields(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log

    # when the poller logs a received task, and a worker logs a dropped copy of it
    logger.info("received worker_group=%s task_key=%s type=%s", "etl", KEY, "ShellCommandActivity")
    logger.info("dropped worker_group=%s task_key=%s epoch=%d: lease is %s (epoch %d)", "etl", KEY, 3, "queued", 4)

    # then each JSON line names the event, the group, the key and the ids inside the key
    received, dropped = entries(stream)
    assert received["message"] == f"received worker_group=etl task_key={KEY} type=ShellCommandActivity"
    assert {k: received[k] for k in ("event", "worker_group", "task_key", "pipeline_id", "attempt_id")} == {
        "event": "received",
        "worker_group": "etl",
        "task_key": KEY,
        "pipeline_id": PIPELINE,
        "attempt_id": ATTEMPT,
    }
    assert received["object_type"] == "ShellCommandActivity"
    assert received["level"] == "INFO" and received["ts"].endswith("Z")
    # and the first epoch named is the message's own (not the one in the explanation), as a number
    assert (dropped["event"], dropped["epoch"], dropped["attempt_id"]) == ("dropped", 3, ATTEMPT)


@pytest.mark.parametrize(
    ("message", "event"),
    [
        (f"enqueued worker_group=etl task_key={KEY} queue=dp.etl celery_id={KEY}:1", "enqueued"),
        (f"canceled worker_group=etl task_key={KEY}: canceled by Data Pipeline", "canceled"),
        (f"not started worker_group=etl task_key={KEY} after 300 s; re-publishing with epoch 2", "not_started"),
        (f"handed outcome of task_key={KEY} to the bridge keeper worker_group=etl status=FAILED: why", "handed_off"),
        (f"adopted worker_group=etl task_key={KEY} (queued) from dead bridge process b-1", "adopted"),
    ],
)
def test_events_are_named_by_the_words_before_the_ids(
    json_log: tuple[logging.Logger, io.StringIO], message: str, event: str
) -> None:
    logger, stream = json_log

    logger.info(message)

    [entry] = entries(stream)
    assert (entry["event"], entry["worker_group"], entry["task_key"], entry["pipeline_id"]) == (
        event,
        "etl",
        KEY,
        PIPELINE,
    )


def test_a_line_about_no_task_has_no_task_fields(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log

    logger.info("bridge stopped")
    logger.info("stopped polling worker_group=%s", "etl")

    plain, group = entries(stream)
    assert set(plain) == {"ts", "level", "logger", "message"}
    assert (group["event"], group["worker_group"]) == ("stopped_polling", "etl")
    assert "task_key" not in group and "pipeline_id" not in group


def test_a_handler_line_takes_its_ids_from_the_task_logger(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    # given a handler's logger, which carries the task's key and group whatever the wording of its lines
    logger, stream = json_log
    tlog = logging.LoggerAdapter(logger, {"task_key": KEY, "worker_group": "etl"})

    # when the handler logs a line naming neither
    tlog.info("started command in %s", "/work/x")

    # then the JSON line still names the task, and no lifecycle event (the worker's own line says "started")
    [entry] = entries(stream)
    assert (entry["worker_group"], entry["task_key"], entry["pipeline_id"], entry["attempt_id"]) == (
        "etl",
        KEY,
        PIPELINE,
        ATTEMPT,
    )
    assert "event" not in entry


def test_secrets_are_masked_in_every_field(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    leaky_key = f"{PIPELINE}:@{SECRET}_Attempt=1:0123456789ab"

    # when a line names a secret in a parsed field, a record field carries one, and a traceback has one
    logger.info("enqueued worker_group=etl task_key=%s queue=%s", KEY, SECRET)
    logging.LoggerAdapter(logger, {"task_key": leaky_key, "worker_group": SECRET}).info("command ended")
    try:
        raise RuntimeError(f"cannot connect with {SECRET}")
    except RuntimeError:
        logger.exception("failed worker_group=etl task_key=%s error_id=BridgeHandlerError", KEY)

    # then no field of any line has it
    output = stream.getvalue()
    assert SECRET not in output
    parsed, extra, failed = entries(stream)
    assert parsed["queue"] == MASK
    assert extra["worker_group"] == MASK and extra["attempt_id"] == f"@{MASK}_Attempt=1"
    assert f"RuntimeError: cannot connect with {MASK}" in failed["exc"]
    assert (failed["event"], failed["error_id"]) == ("failed", "BridgeHandlerError")


def test_the_formatter_masks_even_without_the_masking_filter(registry: SecretRegistry) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "received worker_group=%s", (SECRET,), None)

    entry = json.loads(JsonFormatter(registry).format(record))

    assert entry["message"] == f"received worker_group={MASK}" and entry["worker_group"] == MASK


@contextlib.contextmanager
def celery_like_loggers() -> Iterator[tuple[logging.Logger, logging.Handler, logging.Handler]]:
    """The root logger and a task logger with handlers of their own, as Celery's worker set-up leaves them.

    A context manager rather than a fixture: pytest adds and removes its own root handlers around each phase.
    """
    root = logging.getLogger()
    saved = list(root.handlers)
    root_handler = logging.StreamHandler(io.StringIO())
    root_handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root.handlers = [root_handler]
    task_logger = logging.getLogger(f"test-celery-task-{uuid.uuid4().hex}")
    task_handler = logging.StreamHandler(io.StringIO())
    task_logger.addHandler(task_handler)
    task_logger.propagate = False
    try:
        yield task_logger, root_handler, task_handler
    finally:
        root.handlers = saved
        task_logger.removeHandler(task_handler)


def test_a_worker_logs_json_when_asked() -> None:
    with celery_like_loggers() as (task_logger, root_handler, task_handler):
        # when Celery's two logging signals call the worker set-up with the JSON format, twice (prefork children)
        for _ in range(2):
            configure_worker(logging.getLogger(), "json")
            configure_worker(task_logger, "json")

        # then both loggers' handlers write JSON, with one masking filter each
        for handler in (root_handler, task_handler):
            assert isinstance(handler.formatter, JsonFormatter)
            assert [type(f) for f in handler.filters] == [MaskingFilter]


def test_a_worker_keeps_celerys_format_for_text() -> None:
    with celery_like_loggers() as (task_logger, root_handler, task_handler):
        before = root_handler.formatter

        logs.configure_worker(task_logger, "text")

        assert root_handler.formatter is before and not isinstance(task_handler.formatter, JsonFormatter)
        assert [type(f) for f in task_handler.filters] == [MaskingFilter]
