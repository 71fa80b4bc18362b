"""The service clock runs at its speed and moves forward by hand; real time stays real."""

from __future__ import annotations

import pytest

from emulator.clock import Clock

START = 1_800_000_000.0


class FakeReal:
    """A real-time source the test moves."""

    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def test_a_fast_clock_runs_speed_times_real_time_while_real_time_stays_real() -> None:
    # given a clock at an hour per second
    real = FakeReal()
    clock = Clock(3600, real)

    # when two real seconds pass
    real.t += 2

    # then the clock moved two hours, real time two seconds
    assert clock.now() == START + 2 * 3600
    assert clock.real_now() == START + 2


def test_advance_moves_only_the_clock_and_shortens_the_real_wait_for_a_clock_time() -> None:
    real = FakeReal()
    clock = Clock(60, real)
    due = START + 600  # ten clock minutes away: ten real seconds
    assert clock.real_due(due) == START + 10

    clock.advance(300)

    assert clock.now() == START + 300
    assert clock.real_now() == START
    assert clock.real_due(due) == START + 5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_resume_continues_from_a_saved_time_but_never_goes_back() -> None:
    real = FakeReal()
    clock = Clock(1, real)
    clock.resume(START + 7200)
    assert clock.now() == START + 7200
    clock.resume(START)
    assert clock.now() == START + 7200


def test_the_speed_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Clock(0)
