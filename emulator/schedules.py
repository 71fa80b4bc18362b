"""When scheduled components run: intervals of a ``Schedule`` object, backfill and the 1-day rule.

Intervals are ``[start + k * period, start + (k + 1) * period)``. A ``cron`` instance runs at the
start of its interval, a ``timeseries`` instance (the default) at its end; both carry the
interval as ``@scheduledStartTime`` / ``@scheduledEndTime`` (Developer Guide, "Schedule").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from emulator.definition import EffectiveField
from emulator.periods import Period, parse_datetime, parse_period

#: AWS refuses activation when the first scheduled start is more than a day in the past.
MAX_BACKFILL_AGE_S = 86400.0
#: A safety cap on instances one activation may create per schedule (AWS caps by maxActiveInstances).
MAX_RUNS_PER_TICK = 10000


class ScheduleType(StrEnum):
    CRON = "cron"
    TIMESERIES = "timeseries"
    ONDEMAND = "ondemand"

    @classmethod
    def of(cls, value: str | None) -> ScheduleType:
        """``scheduleType`` as written (any case); ``timeseries`` when unset."""
        if not value:
            return cls.TIMESERIES
        try:
            return cls(value.strip().lower())
        except ValueError:
            return cls.TIMESERIES


@dataclass(frozen=True)
class Schedule:
    """A ``Schedule`` object's timing; ``start`` is ``None`` for ``startAt: FIRST_ACTIVATION_DATE_TIME``."""

    schedule_id: str
    period: Period
    start: datetime | None
    end: datetime | None
    occurrences: int | None

    @classmethod
    def from_fields(cls, schedule_id: str, fields: Sequence[EffectiveField]) -> Schedule:
        """Read a schedule's effective fields (already validated by PutPipelineDefinition).

        Raises:
            ValueError: a field does not parse.
        """
        values = {f.key: f.value for f in fields if not f.is_ref}
        start = parse_datetime(values["startDateTime"]) if values.get("startDateTime") else None
        end = parse_datetime(values["endDateTime"]) if values.get("endDateTime") else None
        occurrences = int(values["occurrences"]) if values.get("occurrences") else None
        return cls(schedule_id, parse_period(values.get("period", "")), start, end, occurrences)

    def first_start(self, activated_at: datetime) -> datetime:
        return self.start or activated_at

    def interval(self, activated_at: datetime, index: int) -> tuple[datetime, datetime]:
        """The ``index``-th interval (0-based)."""
        origin = self.first_start(activated_at)
        return self.period.add_to(origin, index), self.period.add_to(origin, index + 1)

    def exists(self, activated_at: datetime, index: int) -> bool:
        """Whether the ``index``-th interval is inside ``occurrences`` / ``endDateTime``."""
        if self.occurrences is not None and index >= self.occurrences:
            return False
        if self.end is not None:
            start, _ = self.interval(activated_at, index)
            return start < self.end
        return True

    def run_time(self, activated_at: datetime, index: int, stype: ScheduleType) -> datetime:
        """When the ``index``-th instance becomes due."""
        start, end = self.interval(activated_at, index)
        return start if stype == ScheduleType.CRON else end

    def due(
        self, activated_at: datetime, now: datetime, first_index: int, stype: ScheduleType
    ) -> list[tuple[int, datetime, datetime]]:
        """Intervals from ``first_index`` whose run time is at or before ``now``: (index, start, end)."""
        out: list[tuple[int, datetime, datetime]] = []
        index = first_index
        while len(out) < MAX_RUNS_PER_TICK and self.exists(activated_at, index):
            if self.run_time(activated_at, index, stype) > now:
                break
            start, end = self.interval(activated_at, index)
            out.append((index, start, end))
            index += 1
        return out

    def next_run_time(self, activated_at: datetime, index: int, stype: ScheduleType) -> datetime | None:
        """When interval ``index`` becomes due, or ``None`` when the schedule has ended."""
        if not self.exists(activated_at, index):
            return None
        return self.run_time(activated_at, index, stype)

    def index_at(self, activated_at: datetime, moment: datetime) -> int:
        """The index of the interval that contains ``moment``; the first (or last) when it lies outside."""
        origin = self.first_start(activated_at)
        index = self._raw_index(origin, moment)
        last: int | None = None
        if self.occurrences is not None:
            last = self.occurrences - 1
        if self.end is not None:
            at_end = self._raw_index(origin, self.end)
            if self.period.add_to(origin, at_end) >= self.end:
                at_end -= 1  # that interval starts at (or after) the end, so it does not exist
            last = at_end if last is None else min(last, at_end)
        return index if last is None else max(0, min(index, last))

    def _raw_index(self, origin: datetime, moment: datetime) -> int:
        if moment <= origin:
            return 0
        # Months and years have no fixed length: estimate, then step to the exact interval.
        index = max(0, int((moment - origin).total_seconds() // self.period.seconds()) - 1)
        while index > 0 and self.period.add_to(origin, index) > moment:
            index -= 1
        while self.period.add_to(origin, index + 1) <= moment:
            index += 1
        return index

    def too_old(self, activated_at: datetime, now: datetime | None = None) -> bool:
        """AWS's rule: the first scheduled start may be at most one day before ``now`` (default: activation)."""
        age = ((now or activated_at) - self.first_start(activated_at)).total_seconds()
        return age > MAX_BACKFILL_AGE_S


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
