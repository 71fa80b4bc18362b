"""A running task takes heartbeating over from the bridge: it carries on from the bridge's last accepted beat when
that beat is recent, and beats at once otherwise; either way self-fencing counts from Data Pipeline's last beat."""

from __future__ import annotations

import time
from typing import Any

import pytest

from workers.heartbeat import CLOCK_SKEW_S, CancelSignal, Heartbeat

INTERVAL_S = 10.0


class Api:
    def __init__(self) -> None:
        self.beaten: list[float] = []

    def report_task_progress(self, task_id: str, fields: Any = None) -> bool:
        self.beaten.append(time.time())
        return False


def heartbeat(api: Api) -> Heartbeat:
    return Heartbeat(api, "t", "k", INTERVAL_S, CancelSignal(), deadline_s=3 * INTERVAL_S)  # type: ignore[arg-type]


def test_a_beat_younger_than_an_interval_is_carried_on_from() -> None:
    # given the bridge's last beat 4 s ago
    beat = heartbeat(Api())
    acked = time.time() - 4
    # when the task takes over, then it need not beat now: that beat is its last accepted one
    assert beat.continue_from(acked)
    assert beat.accepted_at() == beat.last_beat == acked
    # and its next beat is due one interval after it, not one interval after the take
    assert beat._next_beat == pytest.approx(acked + INTERVAL_S)


def test_the_loop_sends_the_next_beat_one_interval_after_the_bridges() -> None:
    # given a 1 s interval and the bridge's last beat 0.5 s ago
    api = Api()
    beat = Heartbeat(api, "t", "k", 1.0, CancelSignal(), deadline_s=3.0)  # type: ignore[arg-type]
    acked = time.time() - 0.5
    assert beat.continue_from(acked)
    # when the loop runs, then the first beat goes out about 1 s after the bridge's, then one a second
    beat.start()
    time.sleep(1.8)
    beat.stop()
    assert len(api.beaten) == 2
    assert acked + 1.0 <= api.beaten[0] <= acked + 1.3


def test_an_old_beat_means_beating_at_once_and_fencing_counts_from_it() -> None:
    # given the bridge's last beat 25 s ago (it stretched its beats under budget pressure)
    beat = heartbeat(Api())
    old = time.time() - 25
    # when the task takes over, then it must beat at once, and until that beat is accepted, Data Pipeline's
    # deadline (what self-fencing counts from) still runs from the old beat
    assert not beat.continue_from(old)
    assert beat.accepted_at() == old


@pytest.mark.parametrize("recorded", [0.0, -5.0])
def test_an_unknown_beat_means_beating_at_once_and_changes_nothing(recorded: float) -> None:
    beat = heartbeat(Api())
    before = beat.accepted_at()
    assert not beat.continue_from(recorded)
    assert beat.accepted_at() == before and beat.last_beat == 0.0


def test_a_beat_from_the_future_is_not_trusted_beyond_clock_skew() -> None:
    # given a beat time recorded by a host whose clock is a minute ahead
    beat = heartbeat(Api())
    before = beat.accepted_at()
    # when the task takes over, then it beats at once and keeps its own idea of the last beat
    assert not beat.continue_from(time.time() + 60)
    assert beat.accepted_at() == before
    # while a small skew is read as "just now"
    now = time.time()
    assert beat.continue_from(now + CLOCK_SKEW_S / 2)
    assert now <= beat.accepted_at() <= time.time()
