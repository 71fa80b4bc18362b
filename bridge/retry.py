"""Retrying Data Pipeline calls with capped, jittered exponential backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from bridge.errors import RemoteError

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 15.0) -> float:
    """Full-jitter exponential backoff for retry number ``attempt`` (0-based)."""
    return random.uniform(0, min(cap_s, base_s * (2**attempt)))


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    deadline_s: float,
    stop: threading.Event | None = None,
    base_s: float = 0.5,
    cap_s: float = 15.0,
) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error occurs, or ``deadline_s`` passes.

    ``stop`` cuts the waits short (the call in progress is never interrupted).

    Raises:
        RemoteError: the last error, when it is not retryable or time ran out.
    """
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return fn()
        except RemoteError as exc:
            wait = backoff_s(attempt, base_s, cap_s)
            if not exc.retryable or time.monotonic() + wait > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc.code or exc, wait)
            attempt += 1
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
