"""A private RabbitMQ node for tests: its own node name, ports, data, logs, config and Erlang cookie.

It never touches the machine's own node (``rabbit@localhost`` on 5672): the system config files in
/etc/rabbitmq are replaced by empty or private ones, so nothing of theirs (``NODENAME``, the 5672 listener)
applies. The node still registers with the shared epmd on 4369, which is how Erlang distribution works and
harmless: the name is unique.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import pytest

from tests.support import free_port, wait_for

#: Where Debian's rabbitmq-server package puts the scripts that run as the calling user
#: (/usr/sbin/rabbitmq-server is a wrapper that switches to the ``rabbitmq`` user and the system's config).
SEARCH_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin", "/opt/rabbitmq/sbin", "/usr/sbin")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


def restartable_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that a test stops and starts again.

    While the server is down, clients keep reconnecting to its port; with a port inside the ephemeral range
    one of those connects can pick the same port as its source and connect to itself (TCP simultaneous
    open), and the restarted server then fails with EADDRINUSE.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(10001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not _port_open(port):
            return port
    return free_port()


def rabbitmq_server_binary() -> str:
    """The ``rabbitmq-server`` script; skips the test when RabbitMQ is not installed (fails under ``CI=true``)."""
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / "rabbitmq-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("rabbitmq-server")
    if found:
        return found
    message = (
        "RABBITMQ IS NOT INSTALLED: these tests need a rabbitmq-server binary. "
        "Install Debian's 'rabbitmq-server' package (apt-get install rabbitmq-server)."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def amqp_ready(url: str) -> bool:
    """Whether an AMQP connection (kombu, as Celery makes it) opens and a channel works."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.channel()
            channel.close()
            return True
    except Exception:
        return False


class RabbitNode:
    """A private ``rabbitmq-server`` node on a free AMQP port, in a temporary directory.

    ``stop()`` then ``start()`` restarts it on the same ports with the same data (durable queues and
    persistent messages survive), as a broker outage does.
    """

    def __init__(self) -> None:
        self.server = rabbitmq_server_binary()
        self.port = restartable_port()
        self.dist_port = restartable_port()
        self.nodename = f"bridge-test-{uuid.uuid4().hex[:10]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="rabbit-test-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._write_files()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _write_files(self) -> None:
        (self.dir / "home").mkdir()
        cookie = self.dir / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (NODENAME=rabbit@localhost)
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin, no other listeners
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.port}",
                    "loopback_users.guest = true",
                    "disk_free_limit.absolute = 1MB",
                    "log.console = false",
                    "log.file.level = info",
                    "",
                ]
            )
        )

    def env(self) -> dict[str, str]:
        """The node's environment: nothing from the system's RabbitMQ configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.dir / "home"),  # the Erlang cookie: the server's and rabbitmqctl's
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.dir / "plugins-expand"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> RabbitNode:
        """Start the node; returns once an AMQP connection works.

        Raises:
            AssertionError: the node did not accept AMQP connections in time (its log tail included).
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._log = open(self.dir / "console.log", "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [self.server],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not amqp_ready(self.url):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"rabbitmq-server {self.nodename} exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise AssertionError(
                    f"rabbitmq-server {self.nodename} did not accept AMQP within {timeout:g}s:\n{tail}"
                )
            time.sleep(0.3)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the node cleanly (SIGTERM: the start script stops the VM gracefully); SIGKILL past ``timeout``.

        Returns once no process of the node is left and its AMQP port is closed.
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
            # Helpers in the group (erl_child_setup, inet_gethost, the disk monitor) end with the VM; any left
            # after a grace period are killed, so nothing of the node outlives a stop.
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not _group_alive(proc.pid), timeout=10, interval=0.2, what="the node's helpers")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            wait_for(lambda: not _group_alive(proc.pid), timeout=30, what=f"{self.nodename}'s processes to end")
        if self._log is not None:
            self._log.close()
            self._log = None
        wait_for(lambda: not _port_open(self.port), timeout=30, what=f"port {self.port} to close")

    def kill(self) -> None:
        """SIGKILL the node's whole process group (a crash, not a clean stop)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.stop()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the console output and the node's log file, for failure messages."""
        texts = []
        for path in [self.dir / "console.log", *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                texts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def cleanup(self) -> None:
        """Stop the node and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies don't count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = (entry / "stat").read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
