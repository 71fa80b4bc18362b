"""The service's clock: real time by default, optionally faster or advanced by hand (for tests)."""

from __future__ import annotations

import threading
import time


class Clock:
    """Seconds since the epoch, running ``speed`` times faster than real time, plus manual advances.

    Args:
        speed: How many clock seconds pass per real second (``--clock-speed``).
    """

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self._lock = threading.Lock()
        self._real_base = time.time()
        self._offset = 0.0

    def now(self) -> float:
        """The current clock time in epoch seconds."""
        with self._lock:
            return self._real_base + (time.time() - self._real_base) * self.speed + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    def real_seconds(self, clock_seconds: float) -> float:
        """How long to wait in real time for ``clock_seconds`` to pass."""
        return max(0.0, clock_seconds / self.speed)


def stamp(ts: float) -> str:
    """Clock seconds as the API's ``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    from datetime import UTC, datetime

    from emulator.periods import format_datetime

    return format_datetime(datetime.fromtimestamp(ts, UTC))
