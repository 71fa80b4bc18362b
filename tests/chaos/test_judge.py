"""The chaos suite's own referee: the log reading, the rules and the leftover check catch what they must.

No stack here: synthetic logs and one sleeping process, so a rule that silently passes everything shows up
in a second rather than as a green chaos run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.chaos.evidence import Kill, judge, read_executions
from tests.chaos.processes import ProcessTracker

WORKER, CHILD, OTHER = 500, 501, 900


def log_of(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "commands.log"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def mark(word: str, at: float, component: str, attempt: int, pid: int, parent: int) -> str:
    instance = f"@{component}_2026-01-01T00:00:00"
    return f"{word} {at} {component} {instance} {instance}_Attempt={attempt} 2 {pid},{parent}"


def test_a_clean_run_breaks_no_rule(tmp_path: Path) -> None:
    # given one execution per instance, back to back
    log = log_of(
        tmp_path,
        mark("START", 1.0, "A", 1, 10, WORKER),
        mark("START", 1.5, "B", 1, 11, WORKER),
        mark("END", 3.0, "A", 1, 10, WORKER),
        mark("END", 3.5, "B", 1, 11, WORKER),
    )

    # when judged
    problems = judge(["A", "B"], {"A": "FINISHED", "B": "FINISHED"}, read_executions(log), [])

    # then nothing is wrong
    assert problems == []


def test_a_second_run_an_overlap_and_an_unfinished_instance_are_each_reported(tmp_path: Path) -> None:
    # given A ran twice at once, and B never ran and failed
    log = log_of(
        tmp_path,
        mark("START", 1.0, "A", 1, 10, WORKER),
        mark("START", 2.0, "A", 2, 11, OTHER),
        mark("END", 3.0, "A", 1, 10, WORKER),
        mark("END", 4.0, "A", 2, 11, OTHER),
    )

    # when judged
    problems = judge(["A", "B"], {"A": "FINISHED", "B": "FAILED"}, read_executions(log), [])

    # then each broken rule has its line
    assert any("A: ran to its END 2 times" in p for p in problems), problems
    assert any("A: two executions overlap" in p for p in problems), problems
    assert any("B: instance ended FAILED" in p for p in problems), problems
    assert any("B: ran to its END 0 times" in p for p in problems), problems


def test_a_start_without_end_is_excused_only_by_a_worker_kill_above_it(tmp_path: Path) -> None:
    # given A was cut (no END) under a killed pool child, then ran again after the kill's processes were gone;
    # and B was cut with no kill above it
    log = log_of(
        tmp_path,
        mark("START", 1.0, "A", 1, 10, CHILD),
        mark("START", 1.0, "B", 1, 12, OTHER),
        mark("START", 30.0, "A", 2, 11, OTHER),
        mark("END", 32.0, "A", 2, 11, OTHER),
        mark("START", 40.0, "B", 2, 13, OTHER),
        mark("END", 42.0, "B", 2, 13, OTHER),
    )
    kill = Kill("prefork child", at=2.0, gone_at=2.5, pids=frozenset({CHILD, 10}))

    # when judged
    problems = judge(["A", "B"], {"A": "FINISHED", "B": "FINISHED"}, read_executions(log), [kill])

    # then A is fine; B's cut is unexplained, and (never known to have stopped) overlaps its second run
    assert not [p for p in problems if p.startswith("A:")], problems
    assert any("B: START without END and no worker kill" in p for p in problems), problems
    assert any("B: two executions overlap" in p for p in problems), problems


def test_a_rerun_before_the_killed_processes_were_gone_is_an_overlap(tmp_path: Path) -> None:
    # given the kill took 5 s to take A's command, and A's next execution started within them
    log = log_of(
        tmp_path,
        mark("START", 1.0, "A", 1, 10, WORKER),
        mark("START", 4.0, "A", 2, 11, OTHER),
        mark("END", 6.0, "A", 2, 11, OTHER),
    )
    kill = Kill("worker", at=2.0, gone_at=7.0, pids=frozenset({WORKER}))

    # when judged
    problems = judge(["A"], {"A": "FINISHED"}, read_executions(log), [kill])

    # then the overlap is reported
    assert any("A: two executions overlap" in p for p in problems), problems


def test_a_term_line_ends_an_execution_without_finishing_it(tmp_path: Path) -> None:
    # given A was stopped by SIGTERM from its supervisor (no kill of ours), then ran again later
    log = log_of(
        tmp_path,
        mark("START", 1.0, "A", 1, 10, WORKER),
        mark("TERM", 2.0, "A", 1, 10, WORKER),
        mark("START", 25.0, "A", 2, 11, WORKER),
        mark("END", 27.0, "A", 2, 11, WORKER),
    )

    # when judged
    problems = judge(["A"], {"A": "FINISHED"}, read_executions(log), [])

    # then the cut is reported, but no overlap (it is known to have stopped at its TERM)
    assert any("A: START without END" in p and "SIGTERM at 2.000" in p for p in problems), problems
    assert not any("overlap" in p for p in problems), problems


def test_the_tracker_finds_a_process_carrying_the_runs_marker(tmp_path: Path) -> None:
    # given a process started outside any tracked tree whose command line names the run's directory
    marker = f"{tmp_path}/"
    tracker = ProcessTracker(marker)
    code = "import time; time.sleep(30)"
    stray = subprocess.Popen([sys.executable, "-c", code, f"{marker}stray"])
    try:
        # when the tracker looks for leftovers
        deadline = time.monotonic() + 5
        while stray.pid not in tracker.left_running() and time.monotonic() < deadline:
            time.sleep(0.05)

        # then the stray process is found, and gone once killed
        assert stray.pid in tracker.left_running()
        tracker.kill_all()
        stray.wait(timeout=5)
        assert stray.pid not in tracker.left_running()
    finally:
        stray.kill()
        stray.wait()
