"""Secret masking: values of ``*`` fields never reach a log line, event, result or error."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

MASK = "****"


class SecretRegistry:
    """The secret values this process has seen; ``mask`` replaces each with ``****``.

    Secrets are kept for the life of the process: a log line about a task may be written after
    the task ended (a late retry, a keeper delivering its outcome).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        new = {form for v in values if v for form in spellings(v)}
        with self._lock:
            if new - set(self._secrets):
                # Longest first, so a secret that contains another is masked whole.
                self._secrets = tuple(sorted(set(self._secrets) | new, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __len__(self) -> int:
        return len(self._secrets)


def field_secrets(document: Any) -> set[str]:
    """Values of every ``*`` field (``{"key": "*password", "stringValue": ...}``) anywhere in a JSON document."""
    found: set[str] = set()
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            key, value = node.get("key"), node.get("stringValue")
            if isinstance(key, str) and key.startswith("*") and isinstance(value, str) and value:
                found.add(value)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def spellings(value: str) -> set[str]:
    """How a secret can appear in a log line: as is, JSON-escaped, and as ``%r`` of those as UTF-8 bytes.

    botocore logs request and reply bodies at DEBUG as ``repr(bytes)``; a value with quotes,
    backslashes or non-ASCII characters would otherwise slip past an exact match.
    """
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    for form in list(forms):
        forms.add(repr(form.encode("utf-8", "backslashreplace"))[2:-1])
    return {f for f in forms if f}


#: The process-wide registry every handler's filter reads.
SECRETS = SecretRegistry()


class MaskingFilter(logging.Filter):
    """Renders a record's message and masks it (attach to handlers: they see every logger's records)."""

    def __init__(self, registry: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self.registry = registry

    def filter(self, record: logging.LogRecord) -> bool:
        if len(self.registry):
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: the handler's handleError reports it, not the caller
                return True
            masked = self.registry.mask(message)
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.registry.mask(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def install(logger: logging.Logger | None = None, registry: SecretRegistry = SECRETS) -> None:
    """Attach a masking filter to every handler of ``logger`` (default: the root logger). Idempotent."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter(registry))
