"""A task handed out without its referenced objects: the worker fetches them with DescribeObjects, once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from bridge.api import Boto3TaskApi
from bridge.errors import InvalidTask
from bridge.settings import Settings
from bridge.taskmodel import parse_task_object
from tests.support import (
    TEST_ENV,
    EmulatorProcess,
    dp_client,
    ondemand_definition,
    shell_activity,
    start_pipeline,
    wait_for_task,
)
from workers.context import TaskContext


def test_missing_refs_are_fetched_once_and_unknown_ones_fail_clearly(
    emulator_factory: Callable[..., EmulatorProcess], tmp_path: Path
) -> None:
    # given a service that hands out the attempt alone (as AWS's only example does)
    service = emulator_factory("--poll-wait", "2", "--task-objects", "attempt-only")
    dp = dp_client(service.url)
    node = {"id": "In", "type": "S3DataNode", "directoryPath": "s3://bucket/in"}
    start_pipeline(dp, ondemand_definition(node, shell_activity("Copy", input={"ref": "In"}), workerGroup="refs"))
    task = parse_task_object(wait_for_task(dp, "refs"))
    assert list(task.objects) == [task.attempt_id]
    ctx = TaskContext(
        task,
        Settings(),
        Boto3TaskApi(service.url, "us-east-1", session=_session()),
        tmp_path,
        threading.Event(),
        logging.LoggerAdapter(logging.getLogger("test"), {}),
    )
    before = service.admin("counters")["counters"].get("DescribeObjects", {}).get("calls", 0)
    # when the handler asks for its input twice
    first = ctx.ref("input")
    second = ctx.ref("input")
    # then it came from DescribeObjects (with its fields), fetched only once
    assert first is not None and first.get("directoryPath") == "s3://bucket/in"
    assert second is first
    assert service.admin("counters")["counters"]["DescribeObjects"]["calls"] == before + 1
    # and an object that does not exist is a clear InvalidTask, not a crash
    with pytest.raises(InvalidTask, match="does not exist"):
        ctx.resolve("NoSuchObject")
    with pytest.raises(InvalidTask, match="needs 'output'"):
        ctx.ref("output")


def _session() -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"]
    )
