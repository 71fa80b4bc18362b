"""A running task takes heartbeating over from the bridge: it carries on from the bridge's last accepted beat (taken
as CLOCK_SKEW_S older than recorded: another host's clock wrote it), beating one interval after it when it is
recent and at once, from its loop, when it is old; only an unknown beat time makes it beat before the handler.
Either way self-fencing counts from Data Pipeline's last beat."""

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
    # when the task takes over, then it need not beat now: that beat (less the skew allowed) is its last accepted one
    assert beat.continue_from(acked)
    assert beat.last_beat == acked and beat.accepted_at() == acked - CLOCK_SKEW_S
    # and its next beat is due one interval after it, not one interval after the take
    assert beat._next_beat == pytest.approx(acked - CLOCK_SKEW_S + INTERVAL_S)


def test_the_loop_sends_the_next_beat_one_interval_after_the_bridges() -> None:
    # given a 4 s interval and the bridge's last beat just now
    api = Api()
    beat = Heartbeat(api, "t", "k", 4.0, CancelSignal(), deadline_s=12.0)  # type: ignore[arg-type]
    acked = time.time()
    assert beat.continue_from(acked)
    # when the loop runs, then the first beat goes out one interval after the bridge's (less the skew allowed),
    # then one an interval
    beat.start()
    time.sleep(6.5)
    beat.stop()
    assert len(api.beaten) == 2
    assert acked + 4.0 - CLOCK_SKEW_S <= api.beaten[0] <= acked + 4.0 - CLOCK_SKEW_S + 0.3
    assert api.beaten[1] - api.beaten[0] == pytest.approx(4.0, abs=0.3)


def test_an_old_beat_is_due_at_once_from_the_loop_and_fencing_counts_from_it() -> None:
    # given the bridge's last beat 25 s ago (it stretched its beats under budget pressure)
    api = Api()
    beat = Heartbeat(api, "t", "k", INTERVAL_S, CancelSignal(), deadline_s=3 * INTERVAL_S)  # type: ignore[arg-type]
    old = time.time() - 25
    # when the task takes over, then its next beat is due now, left to its loop (which stretches it under budget
    # pressure as far as the deadline allows), and until a beat is accepted, Data Pipeline's deadline (what
    # self-fencing counts from) still runs from the old beat
    assert beat.continue_from(old)
    assert beat.accepted_at() == old - CLOCK_SKEW_S
    assert beat._next_beat <= time.time()
    beat.start()
    deadline = time.time() + 2
    while not api.beaten and time.time() < deadline:
        time.sleep(0.05)
    beat.stop()
    assert len(api.beaten) == 1 and api.beaten[0] - old - 25 < 1.0


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
    # while a small skew is read as "just now", less the skew allowed
    now = time.time()
    assert beat.continue_from(now + CLOCK_SKEW_S / 2)
    assert now - CLOCK_SKEW_S <= beat.accepted_at() <= time.time() - CLOCK_SKEW_S
