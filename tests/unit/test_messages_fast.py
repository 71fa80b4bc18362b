"""The Celery message body is built without a deep copy and serialises exactly as ``dataclasses.asdict`` did."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.messages import TaskMessage
from emulator.definition import definition_file_to_api
from tests.samples_adapt import STRICT_SAMPLES, load_sample


def task_object_from(sample: str) -> dict[str, Any]:
    """A task object as PollForTask returns it, its objects taken from one of the AWS sample definitions."""
    objects, _, _ = definition_file_to_api(load_sample(sample))
    attempt = next(
        o for o in objects if any(f["key"] == "type" and "Activity" in f.get("stringValue", "") for f in o["fields"])
    )
    attempt_id = f"@{attempt['id']}_2026-01-01T00:00:00_Attempt=1"
    return {
        "taskId": "opaque-" + "x" * 1500,
        "pipelineId": "df-0123456789ABCDEF",
        "attemptId": attempt_id,
        "objects": {
            attempt_id: {"id": attempt_id, "name": attempt_id, "fields": attempt["fields"]},
            **{o["id"]: o for o in objects},
        },
    }


def message(task_object: dict[str, Any]) -> TaskMessage:
    return TaskMessage(
        schema=1,
        task_key="df-0123456789ABCDEF:@Copy_1:0123456789ab",
        epoch=3,
        worker_group="wg",
        queue="dp.wg",
        object_type="CopyActivity",
        heartbeat_interval_s=60.0,
        progress_deadline_s=300.0,
        claimed_at=1767225600.123456,
        task_object=task_object,
    )


def serialised(body: dict[str, Any]) -> str:
    """As kombu's JSON serialiser sends it (key order kept)."""
    return json.dumps(body)


@pytest.mark.parametrize("sample", STRICT_SAMPLES)
def test_the_body_of_a_sample_task_serialises_as_asdict_did(sample: str) -> None:
    # given a message carrying a realistic task object
    msg = message(task_object_from(sample))

    # when its body is built
    body = msg.to_body()

    # then it is what dataclasses.asdict gave, to the byte once serialised, and every field is there in order
    assert serialised(body) == serialised(dataclasses.asdict(msg))
    assert list(body) == [f.name for f in dataclasses.fields(TaskMessage)]
    assert TaskMessage.from_body(json.loads(serialised(body))) == msg


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)


@given(task_object=st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_any_task_object_serialises_as_asdict_did(task_object: dict[str, Any]) -> None:
    msg = message(task_object)

    assert serialised(msg.to_body()) == serialised(dataclasses.asdict(msg))
