"""Fixtures shared by every suite. Tests start what they need; nothing is assumed running."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import EmulatorProcess, RedisServer, dp_client


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorProcess]]:
    """Start ``bridge emulator`` processes with given options; all are stopped after the test."""
    started: list[EmulatorProcess] = []

    def start(*args: str, port: int | None = None) -> EmulatorProcess:
        proc = EmulatorProcess(args, port=port).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorProcess]) -> EmulatorProcess:
    """A local service with short timeouts, suitable for most tests."""
    return emulator_factory("--poll-wait", "2", "--time-scale", "60")


@pytest.fixture
def dp(emulator: EmulatorProcess) -> Any:
    """A boto3 Data Pipeline client for ``emulator``."""
    return dp_client(emulator.url)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port."""
    server = RedisServer().start()
    yield server
    server.cleanup()
