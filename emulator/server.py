"""HTTP for the local service: AWS JSON 1.1 at ``POST /`` and the admin API at ``POST /_admin/<action>``."""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.errors import (
    InternalServiceError,
    InvalidRequestException,
    SerializationException,
    ServiceError,
    ThrottlingException,
    UnknownOperationException,
)
from emulator.faults import NO_FAULT, Decision, FaultConfig, Faults, InjectedFault
from emulator.service import OPERATIONS, Service
from emulator.sigv4 import Credentials, verify
from emulator.throttle import Throttle

log = logging.getLogger(__name__)

#: Target prefixes accepted: the service model's, and the legacy one from an old Developer Guide page.
TARGET_PREFIXES = ("DataPipeline.", "DataPipeline_20121129.")
MAX_BODY_BYTES = 32 * 1024 * 1024
#: The counters' key for calls whose target is missing or names no operation (clients choose the text,
#: so it must not become a key of its own).
UNKNOWN_OPERATION = "?"
#: How long ``server_close`` waits for calls in flight (held polls end once the service stops).
DRAIN_TIMEOUT_S = 5.0


class Counters:
    """Calls per operation, and how many were throttled, faulted or dropped (for the admin API)."""

    KINDS = ("calls", "throttled", "faulted", "dropped", "errors")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(self.KINDS, 0))

    def add(self, operation: str, kind: str) -> None:
        with self._lock:
            self._counts[operation][kind] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {op: dict(c) for op, c in sorted(self._counts.items())}


class ServiceHTTPServer(ThreadingHTTPServer):
    """One thread per connection, so held polls never delay other calls."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        service: Service,
        credentials: Credentials | None,
        throttle: Throttle | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(address, Handler)
        self.service = service
        self.credentials = credentials
        #: ``None``: no operation is ever throttled (``--no-throttle``).
        self.throttle = throttle
        self.faults = faults or Faults(FaultConfig())
        self.counters = Counters()
        #: Set once shutdown starts: replies then close their connections.
        self.closing = False
        self._in_flight = 0
        self._drained = threading.Condition()
        self.admin_actions: dict[str, Any] = {
            "terminate-runner": self._admin_terminate_runner,
            "runners": lambda _body: {"runners": service.runners()},
            "actions": self._admin_actions,
            "counters": lambda _body: {"counters": self.counters.snapshot()},
            "stats": lambda _body: self._stats(),
            "throttle": lambda _body: {
                "enabled": throttle is not None,
                "operations": throttle.snapshot() if throttle is not None else {},
            },
            "faults": self._admin_faults,
            "clock": lambda _body: service.clock_info(),
            "advance-clock": self._admin_advance_clock,
        }

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def _admin_advance_clock(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise InvalidRequestException('advance-clock needs {"seconds": <non-negative number>}.')
        return self.service.advance_clock(float(seconds))

    def _admin_terminate_runner(self, body: dict[str, Any]) -> dict[str, Any]:
        runner_id = body.get("taskrunnerId")
        if not isinstance(runner_id, str) or not runner_id:
            raise InvalidRequestException("terminate-runner needs a taskrunnerId.")
        self.service.terminate_runner(runner_id)
        return {"taskrunnerId": runner_id, "terminate": True}

    def _admin_actions(self, body: dict[str, Any]) -> dict[str, Any]:
        """Fired actions in order; ``{"pipelineId": ...}`` keeps one pipeline's."""
        pipeline_id = body.get("pipelineId")
        if pipeline_id is not None and not isinstance(pipeline_id, str):
            raise InvalidRequestException("actions: pipelineId must be a string.")
        return {"actions": self.service.fired_actions(pipeline_id)}

    def _admin_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        """Show the fault injection; a body with any of its keys changes it first (see ``FaultConfig.updated``)."""
        if body:
            try:
                config = self.faults.config.updated(body)
            except ValueError as exc:
                raise InvalidRequestException(f"faults: {exc}") from exc
            self.faults.configure(config)
            log.warning("fault injection now: %s", json.dumps(self.faults.describe(), sort_keys=True))
        return self.faults.describe()

    def _stats(self) -> dict[str, Any]:
        with self.service.state.lock:
            return self.service.state.stats()

    def call_started(self) -> None:
        """Count an API call in flight (``server_close`` waits for it)."""
        with self._drained:
            self._in_flight += 1

    def call_ended(self) -> None:
        """The call counted by ``call_started`` has answered (or failed to)."""
        with self._drained:
            self._in_flight -= 1
            self._drained.notify_all()

    def server_close(self) -> None:
        """Stop listening, then let calls in flight answer (up to ``DRAIN_TIMEOUT_S``).

        Handler threads are daemons, so without this wait the process would exit under a held
        PollForTask and its runner would see a dropped connection instead of an empty reply.
        """
        self.closing = True
        super().server_close()
        with self._drained:
            if not self._drained.wait_for(lambda: self._in_flight == 0, timeout=DRAIN_TIMEOUT_S):
                log.warning("%d calls still in flight at shutdown", self._in_flight)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each keep-alive reply waits ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True
    server: ServiceHTTPServer
    server_version = "LocalDataPipeline"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing -----------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        raw = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            # The body was not read, so the connection cannot carry another request.
            self.close_connection = True
            if length < 0:
                raise SerializationException(f"Invalid Content-Length {raw[:50]!r}.")
            raise SerializationException("Request body too large.")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: dict[str, Any]) -> bool:
        """Write a JSON reply; returns ``False`` if the client is gone."""
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(data)))
            if self.server.closing or self.close_connection:
                self.send_header("Connection", "close")  # also sets close_connection
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _drop(self) -> None:
        """Close the connection without a reply (an injected fault: the operation has run)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def client_gone(self) -> bool:
        """Whether the client closed its connection (checked while a poll is held)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    # -- routes -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path in ("/_health", "/ping"):
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"__type": "UnknownOperationException", "message": "Use POST / for the API."})

    def do_POST(self) -> None:
        if self.path.startswith("/_admin/"):
            self._admin(self.path[len("/_admin/") :].strip("/"))
        else:
            self._api()

    def _api(self) -> None:
        self.server.call_started()
        try:
            self._call()
        finally:
            self.server.call_ended()

    def _call(self) -> None:
        target = self.headers.get("X-Amz-Target") or ""
        prefix = next((p for p in TARGET_PREFIXES if target.startswith(p)), None)
        name = target[len(prefix) :] if prefix is not None else ""
        operation = name if name in OPERATIONS else UNKNOWN_OPERATION
        counters = self.server.counters
        counters.add(operation, "calls")
        decision = NO_FAULT
        task: dict[str, Any] | None = None
        try:
            body = self._read_body()
            if prefix is None:
                raise UnknownOperationException(f"Missing or unknown X-Amz-Target {target[:100]!r}.")
            if self.server.credentials is not None:
                path, _, query = self.path.partition("?")
                verify("POST", path, query, self.headers, body, self.server.credentials)
            decision = self._admit(operation)
            try:
                params = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError) as exc:
                raise SerializationException(f"The request body is not valid JSON: {exc}") from exc
            reply = self.server.service.call(name, params, gone=self.client_gone)
            status = 200
            task = reply.get("taskObject") if operation == "PollForTask" else None
        except (ThrottlingException, InjectedFault) as exc:  # counted by _admit
            status, reply = exc.status, exc.body()
        except ServiceError as exc:
            counters.add(operation, "errors")
            status, reply = exc.status, exc.body()
        except Exception:  # never a traceback to the client; the server keeps serving
            log.critical("operation %s failed", operation, exc_info=True)
            counters.add(operation, "errors")
            status, reply = 500, InternalServiceError("An internal service error occurred.").body()
        if decision.drop:
            # Deliberately lost: a handed-out task stays handed out until its deadline, as on AWS.
            counters.add(operation, "dropped")
            self._drop()
            return
        if task is not None and self.client_gone():
            self.server.service.requeue(task["taskId"])
            return
        if not self._send(status, reply) and task is not None:
            self.server.service.requeue(task["taskId"])

    def _admit(self, operation: str) -> Decision:
        """Injected latency, then the throttle, then an injected error; returns what else to inject.

        A refused call does nothing: the operation has not run yet. A held PollForTask takes its
        token here, at arrival.

        Raises:
            ThrottlingException: over the operation's rate.
            InjectedFault: an error injected by ``--fault-rate``.
        """
        server = self.server
        decision = server.faults.decide(operation)
        if decision.latency_s > 0:
            time.sleep(decision.latency_s)
        if server.throttle is not None and not server.throttle.admit(operation):
            server.counters.add(operation, "throttled")
            raise ThrottlingException("Rate exceeded")
        if decision.fault:
            server.counters.add(operation, "faulted")
            raise InjectedFault("An internal service error occurred.")
        return decision

    def _admin(self, action: str) -> None:
        try:
            raw = self._read_body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise SerializationException("The admin API takes a JSON object.")
            handler = self.server.admin_actions.get(action)
            if handler is None:
                known = ", ".join(sorted(self.server.admin_actions))
                raise UnknownOperationException(f"Unknown admin action {action!r}; known: {known}.")
            self._send(200, handler(body))
        except ServiceError as exc:
            self._send(exc.status, exc.body())
        except ValueError as exc:
            self._send(400, SerializationException(f"The request body is not valid JSON: {exc}").body())


def serve(
    service: Service,
    host: str,
    port: int,
    credentials: Credentials | None = None,
    throttle: Throttle | None = None,
    faults: Faults | None = None,
) -> ServiceHTTPServer:
    """Bind the server (``port=0`` picks a free port); call ``serve_forever`` on the result.

    ``throttle`` ``None`` throttles nothing; ``faults`` ``None`` injects nothing.
    """
    return ServiceHTTPServer((host, port), service, credentials, throttle, faults)
