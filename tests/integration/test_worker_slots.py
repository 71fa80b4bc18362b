"""Real Celery workers advertise their slots (workers.slots) for the pollers' admission control.

A threads-pool worker with 3 slots and a prefork worker with 2, both on ``dp.g1,dp.g1.shell``: the
registry counts 5 slots on those queues; a SIGTERM unregisters a worker before it exits, and a
worker killed with SIGKILL drops out when its registration expires.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bridge.admission import SlotRegistry
from tests.support import ManagedProcess, RedisServer, bridge_env, celery_worker, wait_for

QUEUES = ["dp.g1", "dp.g1.shell"]

#: The worker app as workers/app.py builds it, with the slot advertiser installed.
APP_MODULE = """
import os

from bridge.settings import Settings
from workers import slots
from workers.app import make_app

app = make_app(Settings.from_env())
slots.install(app, lambda: os.environ["BRIDGE_REDIS_URL"])
slots.install(app, lambda: os.environ["BRIDGE_REDIS_URL"])  # a second install changes nothing
"""


@pytest.fixture
def registry(redis_server: RedisServer) -> Iterator[SlotRegistry]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    yield SlotRegistry(client)
    client.close()


@pytest.fixture
def start_worker(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[[str, int, str], ManagedProcess]]:
    """Start ``celery -A slots_app worker -Q dp.g1,dp.g1.shell`` processes; all are stopped after the test."""
    (tmp_path / "slots_app.py").write_text(APP_MODULE)
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = bridge_env("http://127.0.0.1:9", redis_server.url, PYTHONPATH=python_path)
    started: list[ManagedProcess] = []

    def start(pool: str, concurrency: int, name: str) -> ManagedProcess:
        worker = celery_worker(env, ",".join(QUEUES), pool=pool, concurrency=concurrency, name=name)
        worker.cmd[worker.cmd.index("-A") + 1] = "slots_app"
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)  # the prefork pool's children too
        worker.stop()


def test_threads_and_prefork_workers_register_their_slots_and_unregister_on_sigterm(
    registry: SlotRegistry, start_worker: Callable[[str, int, str], ManagedProcess]
) -> None:
    # given a threads worker with 3 slots and a prefork worker with 2, on both queues of g1
    threads = start_worker("threads", 3, "w1")
    prefork = start_worker("prefork", 2, "w2")

    # then the registry sees 5 slots, each worker counted once
    wait_for(lambda: registry.live_slots(QUEUES) == 5, timeout=30, what="5 live slots")
    assert registry.consumers("dp.g1") == registry.consumers("dp.g1.shell") == 2
    assert registry.live_slots(["dp.g1.shell"]) == 5

    # when both get SIGTERM (warm shutdown) and exit
    for worker in (threads, prefork):
        worker.send(signal.SIGTERM)
    for worker in (threads, prefork):
        assert worker.wait(timeout=60) == 0

    # then their slots are gone at once: unregistered, not left to expire
    assert registry.live_slots(QUEUES) == 0
    assert registry.consumers("dp.g1") == 0
    for worker, name in ((threads, "w1"), (prefork, "w2")):
        worker.stop()
        assert f"advertising {3 if name == 'w1' else 2} slots of {name}@" in worker.text()
        assert f"unregistered worker slots of {name}@" in worker.text()


def test_killed_workers_drop_out_when_their_registration_expires(
    registry: SlotRegistry, start_worker: Callable[[str, int, str], ManagedProcess]
) -> None:
    # given the same two workers, registered
    threads = start_worker("threads", 3, "w1")
    prefork = start_worker("prefork", 2, "w2")
    wait_for(lambda: registry.live_slots(QUEUES) == 5, timeout=30, what="5 live slots")

    # when both are killed with SIGKILL (the prefork pool's children too)
    for worker in (threads, prefork):
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)

    # then nothing unregistered them, and their slots stop counting once the registrations expire
    assert registry.live_slots(QUEUES) == 5
    wait_for(lambda: registry.live_slots(QUEUES) == 0, timeout=60, what="the registrations to expire")
    assert registry.consumers("dp.g1") == registry.consumers("dp.g1.shell") == 0
