"""`bridge start` refuses to start on a bad setup with one clear line, a named exit code and no traceback."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bridge.cli import EXIT_CONFIG, EXIT_UNAVAILABLE
from tests.support import ROOT, RedisServer, child_env, free_port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    yield server.url
    server.cleanup()


class Failing(BaseHTTPRequestHandler):
    """A Data Pipeline endpoint that answers every call with a 500, counting the calls."""

    calls = 0

    def do_POST(self) -> None:
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"__type": "InternalServiceError", "message": "down for maintenance"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def failing_endpoint() -> Iterator[str]:
    Failing.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def bridge_start(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bridge", "start", "--worker-group", "wg", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=60, cwd=ROOT)


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *says: str) -> None:
    """Exited ``code`` with exactly one ``bridge: ...`` line on stderr, naming the problem."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bridge: ")
    for text in says:
        assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("broker_url", "says"),
    [
        ("localhost:6379", "is not a URL"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://127.0.0.1:port/0", "Port could not be cast"),
    ],
)
def test_a_bad_broker_url_is_a_config_error(broker_url: str, says: str) -> None:
    # when the bridge starts with a broker URL that does not parse
    result = bridge_start("--broker-url", broker_url, "--endpoint-url", "http://127.0.0.1:1")

    # then it says so and exits with the configuration code
    assert_refused(result, EXIT_CONFIG, says)


def test_a_broker_with_an_unknown_transport_is_a_config_error(redis_url: str) -> None:
    result = bridge_start("--broker-url", "rabbit://mq:5672//", "--redis-url", redis_url, "--endpoint-url", "http://x")

    assert_refused(result, EXIT_CONFIG, "bad broker URL", "rabbit")


def test_an_unreachable_broker_is_unavailable() -> None:
    # given a broker URL on a port where nothing listens
    dead = f"redis://127.0.0.1:{free_port()}/0"

    # when the bridge starts
    result = bridge_start("--broker-url", dead, "--endpoint-url", "http://127.0.0.1:1")

    # then it exits with the unavailable code, naming what it could not reach
    assert_refused(result, EXIT_UNAVAILABLE, "unreachable", dead.rsplit("/", 1)[0].removeprefix("redis://"))


def test_an_endpoint_that_is_not_a_url_is_a_config_error(redis_url: str) -> None:
    result = bridge_start("--broker-url", redis_url, "--endpoint-url", "not-a-url")

    assert_refused(result, EXIT_CONFIG, "cannot build a Data Pipeline client", "not-a-url")


def test_an_endpoint_where_nothing_listens_is_a_config_error(redis_url: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"

    result = bridge_start("--broker-url", redis_url, "--endpoint-url", endpoint)

    assert_refused(result, EXIT_CONFIG, "cannot reach Data Pipeline", endpoint)


def test_an_endpoint_that_keeps_failing_is_refused_after_the_bridges_own_retries(
    redis_url: str, failing_endpoint: str
) -> None:
    # given an endpoint that answers every call with InternalServiceError
    # when the bridge starts
    result = bridge_start("--broker-url", redis_url, "--endpoint-url", failing_endpoint)

    # then it retries the start-up heartbeat for a while (saying so each time), then says it cannot reach it
    lines = result.stderr.strip().splitlines()
    retries = [line for line in lines if "start-up heartbeat failed (InternalServiceError)" in line]
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert lines[-1].startswith("bridge: cannot reach Data Pipeline"), result.stderr
    assert "InternalServiceError" in lines[-1]
    assert len(lines) == len(retries) + 1 and retries, result.stderr
    # and each call the service saw is one the bridge made and logged: botocore never retried behind its back
    assert Failing.calls == len(retries) + 1
