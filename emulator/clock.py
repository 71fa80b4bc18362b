"""The service's clock, and real time beside it.

Two time sources, on purpose:

- the *service clock* (``Clock.now``) runs ``--clock-speed`` times faster than real time and can
  be moved forward by hand (``advance-clock``). Schedules, ``@scheduledStartTime``,
  ``@actualStartTime`` and every other time the API shows come from it;
- *real time* (``Clock.real_now``, epoch seconds) drives every runner-facing deadline:
  acknowledgement and progress timeouts, ``attemptTimeout``, ``retryDelay``,
  ``preconditionTimeout``. A runner lives in real time, so a fast service clock must not expire
  its acknowledgement the moment it polls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    """Seconds since the epoch, running ``speed`` times faster than real time, plus manual advances.

    Args:
        speed: How many clock seconds pass per real second (``--clock-speed``).
        real: The real-time source (epoch seconds); tests inject their own.

    Raises:
        ValueError: ``speed`` is not positive.
    """

    def __init__(self, speed: float = 1.0, real: Callable[[], float] = time.time) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self._real = real
        self._lock = threading.Lock()
        # The clock read ``_anchor_clock`` at real time ``_anchor_real``; it moves ``speed`` times as fast.
        self._anchor_real = real()
        self._anchor_clock = self._anchor_real

    def now(self) -> float:
        """The current service-clock time in epoch seconds."""
        with self._lock:
            return self._anchor_clock + (self._real() - self._anchor_real) * self.speed

    def real_now(self) -> float:
        """The current real time in epoch seconds (for deadlines)."""
        return self._real()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; returns the new time.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._anchor_clock += seconds
        return self.now()

    def resume(self, clock_time: float) -> None:
        """Continue from a clock time saved before a restart, if it is ahead (the clock never goes back)."""
        ahead = clock_time - self.now()
        if ahead > 0:
            self.advance(ahead)

    def real_due(self, clock_time: float) -> float:
        """The real time at which the clock reaches ``clock_time`` (unless it is advanced meanwhile)."""
        return self.real_now() + (clock_time - self.now()) / self.speed


def stamp(ts: float) -> str:
    """Clock seconds as the API's ``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    from datetime import UTC, datetime

    from emulator.periods import format_datetime

    return format_datetime(datetime.fromtimestamp(ts, UTC))
