"""Logging set-up for the CLI: text or JSON lines, secrets masked on every handler."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from bridge import masking


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry)


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
