"""The task-object parser and the Celery message body: typed values out, only BridgeError subclasses raised."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.errors import BridgeError, InvalidTask
from bridge.messages import TaskMessage
from bridge.taskmodel import TaskObject, parse_task_object, period_s, task_key

ATTEMPT = "@Copy_2026-01-01T00:00:00_Attempt=1"


def string(key: str, value: str) -> dict[str, str]:
    return {"key": key, "stringValue": value}


def ref(key: str, value: str) -> dict[str, str]:
    return {"key": key, "refValue": value}


def valid_task(**attempt_fields: str) -> dict[str, Any]:
    """A task object as the local service hands it out: the attempt plus the objects it refers to."""
    fields = [
        string("type", "ShellCommandActivity"),
        string("command", "echo $1 $2"),
        string("scriptArgument", "first"),
        string("scriptArgument", "second"),
        string("*myPassword", "attempt-secret"),
        ref("@componentParent", "Copy"),
        ref("@instanceParent", "@Copy_2026-01-01T00:00:00"),
        ref("database", "Db"),
        *(string(k, v) for k, v in attempt_fields.items()),
    ]
    return {
        "taskId": "opaque-task-id:1",
        "pipelineId": "df-0123456789",
        "attemptId": ATTEMPT,
        "objects": {
            ATTEMPT: {"id": ATTEMPT, "name": ATTEMPT, "fields": fields},
            "Db": {"id": "Db", "name": "Db", "fields": [string("type", "JdbcDatabase"), string("*password", "db-pw")]},
        },
    }


# -- a well-formed task object ---------------------------------------------------------------------


def test_parses_fields_refs_and_repeated_values_in_order() -> None:
    # given a task object with a repeated field and refs
    raw = valid_task(reportProgressTimeout="20 minutes", attemptTimeout="1 hour")

    # when it is parsed
    task = parse_task_object(raw)

    # then the attempt's values, refs and identities are typed and in order
    assert task.object_type == "ShellCommandActivity"
    assert task.attempt.get_all("scriptArgument") == ["first", "second"]
    assert task.attempt.ref("database") == "Db"
    assert task.objects["Db"].type == "JdbcDatabase"
    assert task.component_id == "Copy"
    assert task.instance_id == "@Copy_2026-01-01T00:00:00"
    assert task.progress_deadline_s == 1200
    assert task.attempt_timeout_s == 3600
    digest = hashlib.sha1(b"opaque-task-id:1").hexdigest()[:12]
    assert task.key == task_key("df-0123456789", ATTEMPT, "opaque-task-id:1") == f"df-0123456789:{ATTEMPT}:{digest}"


def test_collects_every_star_field_value_as_a_secret() -> None:
    # given star fields on the attempt and on the database it refers to
    raw = valid_task()

    # when it is parsed
    task = parse_task_object(raw)

    # then both values are secrets, and nothing else is
    assert task.secrets == {"attempt-secret", "db-pw"}


def test_an_attempt_without_instance_parent_is_its_own_unit_of_exclusion() -> None:
    raw = valid_task()
    raw["objects"][ATTEMPT]["fields"] = [string("type", "ShellCommandActivity")]

    task = parse_task_object(raw)

    assert task.instance_id == ATTEMPT
    assert task.component_id == ATTEMPT
    assert task.progress_deadline_s is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("20 minutes", 1200),
        ("1 Hour", 3600),
        (" 2 days ", 172800),
        ("30 seconds", 30),
        ("1 week", 604800),
        ("", None),
        (None, None),
        ("soon", None),
        ("-1 minutes", None),
        ("20 \u017feconds", None),  # the long s folds to "s" under Unicode case-insensitivity
        ("2 mİnutes", None),
    ],
)
def test_period_values(value: str | None, seconds: float | None) -> None:
    assert period_s(value) == seconds


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda raw: raw.pop("taskId"), "taskId"),
        (lambda raw: raw.update(taskId=""), "taskId"),
        (lambda raw: raw.update(taskId="x" * 2049), "taskId"),
        (lambda raw: raw.update(taskId="bad\ud800"), "taskId is not valid Unicode"),
        (lambda raw: raw.update(pipelineId=7), "pipelineId"),
        (lambda raw: raw.update(objects=[]), "'objects'"),
        (lambda raw: raw["objects"].pop(ATTEMPT), "attempt object"),
        (lambda raw: raw["objects"].update(Db="not an object"), "'Db' is not a JSON object"),
        (lambda raw: raw["objects"]["Db"].update(fields={}), "'fields' is not a list"),
        (lambda raw: raw["objects"]["Db"]["fields"].append({"stringValue": "v"}), "without a key"),
        (lambda raw: raw["objects"]["Db"]["fields"].append({"key": "k"}), "exactly one of"),
        (lambda raw: raw["objects"]["Db"]["fields"].append({"key": "k", "refValue": "a", "stringValue": "b"}), "one"),
        (lambda raw: raw["objects"]["Db"]["fields"].append({"key": "k", "stringValue": 3}), "not a string"),
        (lambda raw: raw["objects"]["Db"]["fields"].append(string("type", "\udcff")), "not valid Unicode"),
    ],
)
def test_malformed_task_objects_are_refused_saying_what(mutate: Any, says: str) -> None:
    # given a valid task object with one thing broken
    raw = valid_task()
    mutate(raw)

    # when it is parsed, then it is refused as an invalid task naming the problem
    with pytest.raises(InvalidTask, match=None) as refused:
        parse_task_object(raw)
    assert says in str(refused.value)
    assert refused.value.error_id == "BridgeInvalidTask"


# -- fuzzing ------------------------------------------------------------------------------------------

#: Text including lone surrogates (JSON's "\ud800" escapes decode to them).
texts = st.one_of(st.text(max_size=12), st.text(st.characters(categories=["Cs", "Lu", "Nd", "Zs"]), max_size=4))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
#: Values a field is likely to hold, including Periods that once crashed the parser.
field_values = st.one_of(
    texts, st.sampled_from(["20 minutes", "20 \u017feconds", "2 mİnutes", "9999999999 weeks", "ShellCommandActivity"])
)
field_keys = st.one_of(
    st.sampled_from(["type", "reportProgressTimeout", "attemptTimeout", "@instanceParent", "@componentParent"]),
    st.sampled_from(["*password", "*", "scriptArgument"]),
    texts,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``valid``, sometimes any JSON value."""
    return st.one_of(valid, valid, json_values)


fields = st.one_of(
    st.builds(lambda k, v: {"key": k, "stringValue": v}, maybe(field_keys), maybe(field_values)),
    st.builds(lambda k, v: {"key": k, "refValue": v}, maybe(field_keys), maybe(texts)),
    json_values,
)


@st.composite
def near_valid_task_objects(draw: st.DrawFn) -> Any:
    """Task objects shaped like the real ones, with any part possibly replaced by arbitrary JSON."""
    attempt_id = draw(maybe(st.sampled_from([ATTEMPT, "a"])))
    ids = draw(st.lists(maybe(texts), max_size=3))
    objects = {
        object_id: draw(maybe(st.fixed_dictionaries({"fields": maybe(st.lists(fields, max_size=6))})))
        for object_id in [attempt_id, *ids]
        if isinstance(object_id, str)
    }
    raw = {
        "taskId": draw(maybe(texts)),
        "pipelineId": draw(maybe(texts)),
        "attemptId": attempt_id,
        "objects": draw(maybe(st.just(objects))),
    }
    drop = draw(st.sets(st.sampled_from(sorted(raw))))
    return {k: v for k, v in raw.items() if k not in drop}


def use_everything(task: TaskObject) -> None:
    """What the poller and workers read from a parsed task; none of it may raise."""
    for value in (task.key, task.object_type, task.component_id, task.instance_id, task.attempt_id):
        value.encode()  # written to Redis lease records and log files as UTF-8
    task.progress_deadline_s  # noqa: B018
    task.attempt_timeout_s  # noqa: B018
    for obj in task.objects.values():
        obj.get_all("scriptArgument")
        obj.type  # noqa: B018
    for secret in task.secrets:
        secret.encode()


@settings(max_examples=200)
@given(st.one_of(json_values, near_valid_task_objects()))
@example({"taskId": "t", "pipelineId": "p", "attemptId": "a", "objects": {"a": {"fields": [string("x", "\ud800")]}}})
@example({"taskId": "t", "pipelineId": "p", "attemptId": "a", "objects": {"a": {"fields": [string("k", "v")]}, 1: {}}})
@example(
    {
        "taskId": "t",
        "pipelineId": "p",
        "attemptId": "a",
        "objects": {"a": {"fields": [string("reportProgressTimeout", "20 \u017feconds")]}},
    }
)
def test_parse_task_object_raises_only_bridge_errors(raw: Any) -> None:
    try:
        task = parse_task_object(raw)
    except BridgeError:
        return
    use_everything(task)


def valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": 1,
        "task_key": "df-1:a:0123456789ab",
        "epoch": 2,
        "worker_group": "wg",
        "queue": "dp.wg",
        "object_type": "ShellCommandActivity",
        "heartbeat_interval_s": 60.0,
        "progress_deadline_s": 300.0,
        "claimed_at": 1767225600.0,
        "task_object": valid_task(),
    }
    body.update(changes)
    return body


def test_message_body_round_trips() -> None:
    message = TaskMessage.from_body(valid_body())

    assert TaskMessage.from_body(message.to_body()) == message
    assert parse_task_object(message.task_object).key.startswith("df-0123456789:")


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        valid_body(schema=2),
        {k: v for k, v in valid_body().items() if k != "epoch"},
        valid_body(epoch=float("inf")),
        valid_body(epoch="two"),
        valid_body(heartbeat_interval_s=float("nan")),
        valid_body(heartbeat_interval_s=0),
        valid_body(progress_deadline_s=-1),
        valid_body(claimed_at=10**400),
        valid_body(task_object="not a map"),
    ],
)
def test_malformed_message_bodies_are_invalid_tasks(body: Any) -> None:
    with pytest.raises(InvalidTask):
        TaskMessage.from_body(body)


message_bodies = st.fixed_dictionaries(
    {},
    optional={
        "schema": maybe(st.just(1)),
        "task_key": maybe(texts),
        "epoch": maybe(st.integers()),
        "worker_group": maybe(texts),
        "queue": maybe(texts),
        "object_type": maybe(texts),
        "heartbeat_interval_s": maybe(st.floats()),
        "progress_deadline_s": maybe(st.floats()),
        "claimed_at": maybe(st.floats()),
        "task_object": maybe(near_valid_task_objects()),
    },
)


@settings(max_examples=200)
@given(st.one_of(json_values, message_bodies))
@example(valid_body(epoch=float("-inf")))
@example(valid_body(claimed_at=10**400))
def test_message_from_body_raises_only_bridge_errors(body: Any) -> None:
    try:
        message = TaskMessage.from_body(body)
    except BridgeError:
        return
    with contextlib.suppress(BridgeError):
        use_everything(parse_task_object(message.task_object))
