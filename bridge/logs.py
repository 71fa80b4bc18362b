"""Logging set-up for the CLI and the workers: text or JSON lines, secrets masked on every handler.

Lifecycle lines keep one wording in both formats (``received worker_group=G task_key=K type=T``); the JSON
formatter lifts their ``key=value`` pairs into fields, so call sites stay plain ``%``-style lines::

    {"ts": "2024-05-01T10:00:00.123Z", "level": "INFO", "logger": "bridge.poller",
     "message": "received worker_group=G task_key=df-1:@A_Attempt=1:0123456789ab type=ShellCommandActivity",
     "event": "received", "worker_group": "G", "task_key": "df-1:@A_Attempt=1:0123456789ab",
     "object_type": "ShellCommandActivity", "pipeline_id": "df-1", "attempt_id": "@A_Attempt=1"}
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from bridge import masking
from bridge.masking import SecretRegistry

#: ``key=value`` pairs a line may carry, and the JSON field each becomes. Others stay in the message only.
FIELDS = {
    "worker_group": "worker_group",
    "task_key": "task_key",
    "epoch": "epoch",
    "queue": "queue",
    "celery_id": "celery_id",
    "type": "object_type",
    "error_id": "error_id",
    "status": "status",
    "taskrunner_id": "taskrunner_id",
}
#: Record attributes (``extra=``, a ``LoggerAdapter``'s) used when the message itself does not name them.
RECORD_FIELDS = ("worker_group", "task_key")
#: Multi-word event phrases and their field value; other phrases become words joined by ``_``.
EVENT_ALIASES = {
    "handed outcome of": "handed_off",
    "delivering the outcome of": "delivering",
}

# A key starts a word (so ``_Attempt=1`` inside an attempt id is no key); values end at whitespace.
_PAIR = re.compile(r"(?<![\w=])([a-z_]+)=(\S+)")
# The event: up to four lowercase words opening the line, right before its ``worker_group=`` or ``task_key=``.
_EVENT = re.compile(r"([a-z]+(?: [a-z]+){0,3}) (?:worker_group|task_key)=")
_TASK_KEY = re.compile(r"(?P<pipeline_id>[^:\s]+):(?P<attempt_id>\S+):[0-9a-f]{12}")
# What ends a value in running text (``task_key=K: reason``); a task key itself ends with hex digits.
_VALUE_END = ":;,.)"


def split_task_key(task_key: str) -> tuple[str, str] | None:
    """``(pipeline_id, attempt_id)`` of a ``<pipelineId>:<attemptId>:<sha1[:12]>`` key, else ``None``."""
    found = _TASK_KEY.fullmatch(task_key)
    return (found["pipeline_id"], found["attempt_id"]) if found else None


def lifecycle_fields(message: str) -> dict[str, Any]:
    """The fields a line names: its event, known ``key=value`` pairs (the first of each), ids from its task key."""
    fields: dict[str, Any] = {}
    event = _EVENT.match(message)
    if event is not None:
        words = event[1]
        fields["event"] = EVENT_ALIASES.get(words, words.replace(" ", "_"))
    for key, raw in _PAIR.findall(message):
        name = FIELDS.get(key)
        if name is None or name in fields:
            continue
        value = raw.rstrip(_VALUE_END)
        if value:
            fields[name] = int(value) if name == "epoch" and value.isdigit() else value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: the message plus the fields it names, every string masked.

    Args:
        registry: The secrets to mask in every field (the handler's masking filter already masked the message).
    """

    def __init__(self, registry: SecretRegistry = masking.SECRETS) -> None:
        super().__init__()
        self.registry = registry

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        entry.update((k, v) for k, v in lifecycle_fields(message).items() if k not in entry)
        for name in RECORD_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str) and value and name not in entry:
                entry[name] = value
        ids = split_task_key(entry["task_key"]) if isinstance(entry.get("task_key"), str) else None
        if ids is not None:
            entry["pipeline_id"], entry["attempt_id"] = ids
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps({k: self.registry.mask(v) if isinstance(v, str) else v for k, v in entry.items()})


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, with masking on its handler."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    masking.install(root)
    # botocore and urllib3 are chatty at DEBUG; they go through the same masked handler.
    if level.upper() != "DEBUG":
        for noisy in ("botocore", "urllib3", "kombu", "amqp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_worker(logger: logging.Logger | None = None, fmt: str = "text") -> None:
    """Finish Celery's logging set-up in a worker (its ``after_setup_logger`` / ``after_setup_task_logger``).

    Celery builds the handlers (``worker_hijack_root_logger``); this masks secrets on them and, for
    ``fmt == "json"``, swaps their formatters for :class:`JsonFormatter`. Safe to call once per signal.

    Args:
        logger: The logger Celery just set up (the root logger, or its task logger, which does not propagate).
        fmt: ``text`` (Celery's own format) or ``json``.
    """
    targets = [logging.getLogger()] if logger is None else [logging.getLogger(), logger]
    for target in targets:
        if fmt == "json":
            for handler in target.handlers:
                if not isinstance(handler.formatter, JsonFormatter):
                    handler.setFormatter(JsonFormatter())
        masking.install(target)
