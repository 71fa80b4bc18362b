"""Per-task loops run on daemon threads the worker process reuses, and behave like threads of their own."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import warnings
import weakref

import pytest

from workers.heartbeat import LoopThread


def test_a_loop_runs_on_a_named_daemon_thread_and_can_be_joined() -> None:
    # given a loop that records where it runs and waits to be told to stop
    stop = threading.Event()
    seen: list[tuple[str, bool, bool]] = []

    def body() -> None:
        seen.append((threading.current_thread().name, threading.current_thread().daemon, loop.is_current()))
        stop.wait(10)

    loop = LoopThread(body, "heartbeat-abc")
    # when it starts, then it runs on a daemon thread named after it, alive until it returns
    loop.start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [("heartbeat-abc", True, True)]
    assert loop.is_alive() and not loop.is_current()
    stop.set()
    loop.join(timeout=5)
    assert not loop.is_alive()


def test_a_finished_loops_thread_serves_the_next_loop() -> None:
    # given a loop that has ended
    first = LoopThread(lambda: None, "progress-1")
    first.start()
    first.join(timeout=5)
    time.sleep(0.05)  # (its thread goes back to the idle ones right after)
    before = {thread.ident for thread in threading.enumerate()}
    # when the next loop starts, then it runs on a thread that was there already: no new thread was started
    idents: list[int] = []
    second = LoopThread(lambda: idents.append(threading.get_ident()), "progress-2")
    second.start()
    second.join(timeout=5)
    assert len(idents) == 1 and idents[0] in before


def test_loops_running_at_once_each_get_a_thread() -> None:
    stop = threading.Event()
    running = threading.Semaphore(0)

    def body() -> None:
        running.release()
        stop.wait(10)

    loops = [LoopThread(body, f"lease-guard-{n}") for n in range(5)]
    for loop in loops:
        loop.start()
    assert all(running.acquire(timeout=5) for _ in loops)
    stop.set()
    for loop in loops:
        loop.join(timeout=5)
    assert not any(loop.is_alive() for loop in loops)


def test_a_loop_that_fails_is_over_and_its_thread_serves_on(caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        raise ValueError("a bug")

    broken = LoopThread(fail, "heartbeat-bug")
    with caplog.at_level(logging.CRITICAL, logger="workers.heartbeat"):
        broken.start()
        broken.join(timeout=5)
    assert not broken.is_alive()
    ran = threading.Event()
    after = LoopThread(ran.set, "heartbeat-next")
    after.start()
    assert ran.wait(5)
    assert "loop heartbeat-bug ended with an error" in caplog.text


def test_a_loop_started_twice_is_refused() -> None:
    loop = LoopThread(lambda: None, "progress-x")
    loop.start()
    with pytest.raises(RuntimeError):
        loop.start()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_loops_on_threads_of_its_own() -> None:
    # given a parent whose loop thread is idle (a prefork child inherits no threads, only their records)
    warm = LoopThread(lambda: None, "progress-parent")
    warm.start()
    warm.join(timeout=5)
    time.sleep(0.05)
    # when a forked child starts a loop, then the loop runs
    read, write = os.pipe()
    with warnings.catch_warnings():  # (Python 3.12 warns about forking a process that has threads: that is the point)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report whether its loop ran, then leave without running pytest's teardown
        ran = threading.Event()
        loop = LoopThread(ran.set, "heartbeat-child")
        loop.start()
        os.write(write, b"1" if ran.wait(5) else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_an_idle_thread_keeps_nothing_of_the_loop_it_ran() -> None:
    # given a loop whose target holds a task's state (a heartbeat's clients and closures, maybe its secrets)
    class State:
        def run(self) -> None:
            pass

    state = State()
    alive = weakref.ref(state)
    loop = LoopThread(state.run, "heartbeat-secret")
    loop.start()
    loop.join(timeout=5)
    assert not loop.is_alive()

    # when the task lets go of it, then nothing in the idle thread keeps it alive
    del loop, state
    deadline = time.monotonic() + 5
    while alive() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert alive() is None
