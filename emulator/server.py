"""HTTP for the local service: AWS JSON 1.1 at ``POST /`` and the admin API at ``POST /_admin/<action>``."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.errors import (
    InternalServiceError,
    InvalidRequestException,
    SerializationException,
    ServiceError,
    UnknownOperationException,
)
from emulator.service import Service
from emulator.sigv4 import Credentials, verify

log = logging.getLogger(__name__)

#: Target prefixes accepted: the service model's, and the legacy one from an old Developer Guide page.
TARGET_PREFIXES = ("DataPipeline.", "DataPipeline_20121129.")
MAX_BODY_BYTES = 32 * 1024 * 1024


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

    def __init__(self, address: tuple[str, int], service: Service, credentials: Credentials | None) -> None:
        super().__init__(address, Handler)
        self.service = service
        self.credentials = credentials
        self.counters = Counters()
        self.admin_actions: dict[str, Any] = {
            "terminate-runner": self._admin_terminate_runner,
            "runners": lambda _body: {"runners": service.runners()},
            "counters": lambda _body: {"counters": self.counters.snapshot()},
            "stats": lambda _body: self._stats(),
        }

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def _admin_terminate_runner(self, body: dict[str, Any]) -> dict[str, Any]:
        runner_id = body.get("taskrunnerId")
        if not isinstance(runner_id, str) or not runner_id:
            raise InvalidRequestException("terminate-runner needs a taskrunnerId.")
        self.service.terminate_runner(runner_id)
        return {"taskrunnerId": runner_id, "terminate": True}

    def _stats(self) -> dict[str, Any]:
        with self.service.state.lock:
            return self.service.state.stats()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ServiceHTTPServer
    server_version = "LocalDataPipeline"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing -----------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
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
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

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
        operation = "?"
        try:
            body = self._read_body()
            target = self.headers.get("X-Amz-Target") or ""
            prefix = next((p for p in TARGET_PREFIXES if target.startswith(p)), None)
            if prefix is None:
                raise UnknownOperationException(f"Missing or unknown X-Amz-Target {target!r}.")
            operation = target[len(prefix) :]
            self.server.counters.add(operation, "calls")
            if self.server.credentials is not None:
                path, _, query = self.path.partition("?")
                verify("POST", path, query, self.headers, body, self.server.credentials)
            try:
                params = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError) as exc:
                raise SerializationException(f"The request body is not valid JSON: {exc}") from exc
            result = self.server.service.call(operation, params, gone=self.client_gone)
        except ServiceError as exc:
            self.server.counters.add(operation, "errors")
            self._send(exc.status, exc.body())
            return
        except Exception:  # never a traceback to the client; the server keeps serving
            log.critical("operation %s failed", operation, exc_info=True)
            self.server.counters.add(operation, "errors")
            self._send(500, InternalServiceError("An internal service error occurred.").body())
            return
        task = result.get("taskObject") if operation == "PollForTask" else None
        if task is not None and self.client_gone():
            self.server.service.requeue(task["taskId"])
            return
        if not self._send(200, result) and task is not None:
            self.server.service.requeue(task["taskId"])

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


def serve(service: Service, host: str, port: int, credentials: Credentials | None = None) -> ServiceHTTPServer:
    """Bind the server (``port=0`` picks a free port); call ``serve_forever`` on the result."""
    return ServiceHTTPServer((host, port), service, credentials)
