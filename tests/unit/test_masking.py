"""Secret masking: values of ``*`` fields never reach a log line, at any level, with or without a traceback."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from bridge import masking
from bridge.api import register_reply_secrets
from bridge.logs import JsonFormatter
from bridge.masking import MASK, MaskingFilter, SecretRegistry, field_secrets

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def registry() -> SecretRegistry:
    found = SecretRegistry()
    found.add([SECRET])
    return found


@pytest.fixture
def captured(registry: SecretRegistry) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A DEBUG logger tree like the CLI's: one text handler with masking installed, children propagating."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger(f"test-masking-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    masking.install(logger, registry)
    yield logger, stream
    logger.removeHandler(handler)


def test_registry_masks_every_occurrence_and_the_longest_secret_whole() -> None:
    registry = SecretRegistry()
    registry.add(["abc", "abcdef", ""])

    assert len(registry) == 2
    assert registry.mask("abcdef and abc and abcabc") == f"{MASK} and {MASK} and {MASK}{MASK}"
    assert registry.mask("nothing here") == "nothing here"


def test_a_debug_line_with_lazy_args_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.debug("Response body:\n%r", f'{{"key": "*password", "stringValue": "{SECRET}"}}'.encode())

    assert SECRET not in stream.getvalue()
    assert MASK in stream.getvalue()


def test_a_child_loggers_line_is_masked_by_the_parents_handler(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    logger.getChild("botocore.parsers").debug("params: %s", {"errorMessage": f"login failed for {SECRET}"})

    assert SECRET not in stream.getvalue()
    assert f"login failed for {MASK}" in stream.getvalue()


def test_a_traceback_carrying_the_secret_is_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    try:
        raise RuntimeError(f"cannot connect with password {SECRET}")
    except RuntimeError:
        logger.debug("handler error task_key=%s", "k", exc_info=True)

    text = stream.getvalue()
    assert "Traceback" in text
    assert SECRET not in text
    assert f"cannot connect with password {MASK}" in text


def test_a_record_is_masked_for_every_handler(registry: SecretRegistry) -> None:
    # given two handlers (text and JSON) on one logger, both with masking
    text, jsonl = io.StringIO(), io.StringIO()
    logger = logging.getLogger(f"test-masking-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    json_handler = logging.StreamHandler(jsonl)
    json_handler.setFormatter(JsonFormatter())
    for handler in (logging.StreamHandler(text), json_handler):
        logger.addHandler(handler)
    masking.install(logger, registry)

    # when a line with a traceback is logged
    try:
        raise ValueError(SECRET)
    except ValueError:
        logger.exception("failed with %s", SECRET)

    # then neither output has the secret, and the JSON line still carries the masked traceback
    assert SECRET not in text.getvalue() + jsonl.getvalue()
    entry = json.loads(jsonl.getvalue())
    assert entry["message"] == f"failed with {MASK}"
    assert f"ValueError: {MASK}" in entry["exc"]


def test_install_is_idempotent(captured: tuple[logging.Logger, io.StringIO], registry: SecretRegistry) -> None:
    logger, _ = captured

    masking.install(logger, registry)

    assert [type(f) for f in logger.handlers[0].filters] == [MaskingFilter]


def test_lines_pass_unchanged_while_no_secret_is_known() -> None:
    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "value %s", ("plain",), None)

    assert MaskingFilter(SecretRegistry()).filter(record)
    assert (record.msg, record.args) == ("value %s", ("plain",))


def test_field_secrets_finds_star_fields_anywhere_in_a_reply() -> None:
    reply = {
        "taskObject": {
            "objects": {
                "a": {
                    "fields": [{"key": "*myPassword", "stringValue": "one"}, {"key": "password", "stringValue": "x"}]
                },
                "Db": {"fields": [{"key": "*password", "stringValue": "two"}, {"key": "*ref", "refValue": "Db2"}]},
            }
        },
        "pipelineObjects": [
            {"fields": [{"key": "*token", "stringValue": "three"}, {"key": "*empty", "stringValue": ""}]}
        ],
    }

    assert field_secrets(reply) == {"one", "two", "three"}


def test_a_reply_body_registers_its_secrets_before_botocore_logs_it() -> None:
    # given a raw PollForTask reply body with a star field, as botocore's before-parse event sees it
    secret = f"unique-{uuid.uuid4().hex}"
    body = json.dumps({"taskObject": {"objects": {"a": {"fields": [{"key": "*password", "stringValue": secret}]}}}})

    # when the hook sees it
    register_reply_secrets(response_dict={"body": body.encode(), "status_code": 200})

    # then the process-wide registry masks it
    assert masking.SECRETS.mask(f"Response body: {body}") == f"Response body: {body.replace(secret, MASK)}"


def test_a_reply_body_that_is_not_json_is_ignored() -> None:
    register_reply_secrets(response_dict={"body": b'"*password": not json'})
    register_reply_secrets(response_dict={"body": b""})
    register_reply_secrets()


def test_a_record_whose_args_do_not_fit_its_format_is_reported_not_raised(registry: SecretRegistry) -> None:
    # given a masked handler that reports logging errors (logging's default) rather than raising them
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter(registry))
    reported: list[logging.LogRecord] = []
    handler.handleError = reported.append  # type: ignore[method-assign]
    record = logging.LogRecord("lib", logging.DEBUG, __file__, 1, "%s and %s", (SECRET,), None)

    # when a library's record with too few arguments reaches it
    handler.handle(record)

    # then the handler reported it, as it would without masking, and wrote nothing
    assert reported == [record]
    assert stream.getvalue() == ""


def test_escaped_spellings_of_a_secret_are_masked_too() -> None:
    # given a secret with a quote, a backslash and non-ASCII letters
    from bridge.masking import SecretRegistry

    registry = SecretRegistry()
    secret = 'pä"ss\\wörd-77'
    registry.add([secret])
    body = json.dumps({"*password": secret}).encode()
    # when it is logged as botocore does (repr of the JSON bytes), raw UTF-8 or as is
    lines = [repr(body), repr(json.dumps({"p": secret}, ensure_ascii=False).encode()), f"value={secret}"]
    # then no spelling of it survives
    for line in lines:
        masked = registry.mask(line)
        assert "****" in masked
        assert "rd-77" not in masked, masked
