"""The poller's broker check: one round trip on a kept connection, against a real redis-server and RabbitMQ node."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.errors import BrokerError, ConfigError
from bridge.publisher import Publisher
from tests.rabbit import RabbitNode, restartable_port
from tests.support import RedisServer, wait_for

TIMEOUT_S = 1.0
#: A check that gave up rather than hung: far above the ~1-4 s a down or hung broker takes (two connects 2 s apart,
#: or one timeout), so a loaded machine cannot trip it, and far below forever, which is what a missing timeout gives.
#: How fast a check gives up is measured in bench/, not here.
HANG_BOUND_S = 15.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server on a port outside the ephemeral range: these tests stop and start it again."""
    server = RedisServer()
    server.port = restartable_port()
    yield server.start()
    server.cleanup()


@pytest.fixture
def publisher(server: RedisServer) -> Iterator[Publisher]:
    publisher = Publisher(server.url)
    yield publisher
    publisher.close()


def connections_made(server: RedisServer) -> int:
    """How many connections the server has accepted so far (the observer's own included)."""
    with redis.Redis(port=server.port) as client:
        return int(client.info("stats")["total_connections_received"])


def timed_failure(publisher: Publisher) -> tuple[float, BrokerError]:
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        publisher.ping(timeout_s=TIMEOUT_S)
    return time.monotonic() - started, caught.value


def test_repeated_pings_reuse_one_connection(server: RedisServer, publisher: Publisher) -> None:
    # given a publisher that checked the broker once
    publisher.ping(timeout_s=TIMEOUT_S)
    before = connections_made(server)

    # when it checks 50 more times
    for _ in range(50):
        publisher.ping(timeout_s=TIMEOUT_S)

    # then Redis saw no new connection but the observer's
    assert connections_made(server) == before + 1


def test_pings_from_several_threads_share_the_connection(server: RedisServer, publisher: Publisher) -> None:
    # given a publisher that checked the broker once
    publisher.ping(timeout_s=TIMEOUT_S)
    before = connections_made(server)
    errors: list[BaseException] = []

    def pings() -> None:
        try:
            for _ in range(25):
                publisher.ping(timeout_s=TIMEOUT_S)
        except BaseException as exc:
            errors.append(exc)

    # when four poller threads check at the same time
    threads = [threading.Thread(target=pings) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then every check passed on the one connection
    assert errors == []
    assert connections_made(server) == before + 1


def test_a_stopped_broker_fails_the_ping_and_a_restarted_one_passes_it(
    server: RedisServer, publisher: Publisher
) -> None:
    # given a publisher with a working check connection
    publisher.ping(timeout_s=TIMEOUT_S)

    # when Redis stops, then the ping fails promptly
    server.stop()
    elapsed, error = timed_failure(publisher)
    assert "unreachable" in str(error)
    assert elapsed < HANG_BOUND_S

    # and once it is back, the next ping connects again and passes
    server.start()
    publisher.ping(timeout_s=TIMEOUT_S)


def test_a_broker_restart_between_two_pings_is_not_an_outage(server: RedisServer, publisher: Publisher) -> None:
    # given a publisher with a working check connection
    publisher.ping(timeout_s=TIMEOUT_S)

    # when Redis restarts while the poller is in a long poll
    server.stop()
    server.start()

    # then the next check passes: the dead connection is replaced, not reported as an outage
    publisher.ping(timeout_s=TIMEOUT_S)


def test_a_hung_broker_fails_the_ping_within_the_timeout(server: RedisServer, publisher: Publisher) -> None:
    # given a publisher with a working check connection
    publisher.ping(timeout_s=TIMEOUT_S)
    assert server.proc is not None
    pid = server.proc.pid

    # when redis-server stops answering (its socket still accepts connections)
    os.kill(pid, signal.SIGSTOP)
    try:
        elapsed, _ = timed_failure(publisher)
        elapsed_new, _ = timed_failure(publisher)  # a new connection cannot hang either
    finally:
        os.kill(pid, signal.SIGCONT)

    # then each ping gave up (after about the timeout) instead of hanging, and once Redis answers again a ping passes
    assert elapsed < HANG_BOUND_S
    assert elapsed_new < HANG_BOUND_S
    publisher.ping(timeout_s=TIMEOUT_S)


def test_close_closes_the_check_connection(server: RedisServer) -> None:
    # given a publisher with a check connection open
    gc.collect()  # no client of the fixture's left to be collected (and disconnected) meanwhile
    publisher = Publisher(server.url)
    publisher.ping(timeout_s=TIMEOUT_S)
    with redis.Redis(port=server.port) as observer:

        def open_connections() -> int:
            return int(observer.info("clients")["connected_clients"])

        open_before = open_connections()

        # when it is closed
        publisher.close()

        # then Redis soon has one connection fewer
        wait_for(lambda: open_connections() == open_before - 1, timeout=5, what="the check connection to close")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "nosuch://host", "redis://127.0.0.1:1/notadb"])
def test_a_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        Publisher(url).ping(timeout_s=TIMEOUT_S)


def test_another_transport_is_checked_with_a_new_connection() -> None:
    # given a transport with no kept check connection (kombu's in-memory one), then ping falls back to check()
    publisher = Publisher("memory://")
    publisher.ping(timeout_s=TIMEOUT_S)
    publisher.ping(timeout_s=TIMEOUT_S)
    publisher.close()


def amqp_connections(port: int) -> int:
    """Established client connections to ``port`` on this machine (RabbitMQ's side not counted)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        remote, state = line.split()[2:4]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@pytest.mark.slow
def test_amqp_ping_reuses_its_connection_and_survives_a_restart() -> None:
    node = RabbitNode()
    try:
        # given a RabbitMQ node and a publisher that checked it
        node.start()
        publisher = Publisher(node.url)
        publisher.ping(timeout_s=TIMEOUT_S)

        # when it checks again, then each check is a round trip on the same connection
        for _ in range(20):
            publisher.ping(timeout_s=TIMEOUT_S)
        assert amqp_connections(node.port) == 1

        # when the node restarts between two checks, then the next check passes (a new connection, no outage)
        node.stop()
        node.start()
        publisher.ping(timeout_s=TIMEOUT_S)
        assert amqp_connections(node.port) == 1

        # when the node stops, then the check fails promptly
        node.stop()
        elapsed, _ = timed_failure(publisher)
        assert elapsed < HANG_BOUND_S
        publisher.close()
    finally:
        node.cleanup()
