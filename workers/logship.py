"""Each attempt's logs under the pipeline's ``pipelineLogUri``, in AWS's layout (best effort).

AWS's Task Runner copies an attempt's logs to ``<pipelineLogUri>/<pipelineId>/<componentId>/<instanceId>/<attemptId>/``
(for ShellCommandActivity also its stdout and stderr). Here:

- :func:`attempt_log` captures the attempt's handler log lines (everything logged with the attempt's ``task_key``
  and everything logged on the thread running it) into ``Activity.log`` in the attempt's work directory, masked.
- :func:`ship_attempt_logs` uploads that file and any others (``stdout``, ``stderr``) to the attempt's directory.
  A failure is logged and never changes the attempt's outcome.

Wiring for any handler (``workers/execution.py``)::

    with attempt_log(ctx) as captured:
        outcome = handler(ctx)
        ...
    captured.ship(ctx)

A handler may register more files (``captured.add(path, "stdout")``). Nested ``attempt_log`` calls for one attempt
share the outermost capture, and only the outermost ships, so a handler that ships its own logs when run alone
ships nothing twice when the caller also captures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import TaskFailure
from bridge.masking import SECRETS
from workers import storage
from workers.context import TaskContext

log = logging.getLogger(__name__)

#: The handler log's name in the attempt's log directory.
ACTIVITY_LOG = "Activity.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_active: dict[str, AttemptLog] = {}
_active_lock = threading.Lock()


def log_prefix(ctx: TaskContext) -> str | None:
    """``<pipelineLogUri>/<pipelineId>/<componentId>/<instanceId>/<attemptId>/`` of this attempt, or ``None``.

    ``pipelineLogUri`` is read from the attempt's (flattened, so inherited from ``Default``) fields.
    """
    base = (ctx.attempt.get("pipelineLogUri") or "").strip()
    if not base:
        return None
    task = ctx.task
    return storage.join_uri(base, task.pipeline_id, task.component_id, task.instance_id, task.attempt_id) + "/"


def ship_attempt_logs(ctx: TaskContext, files: Sequence[Path | tuple[Path, str]]) -> list[str]:
    """Upload ``files`` (a path ships under its own name, a ``(path, name)`` pair under ``name``) to this
    attempt's log directory; returns the URIs written. Best effort: nothing is raised.

    Nothing is uploaded when the attempt has no ``pipelineLogUri``; missing files are skipped.
    """
    prefix = log_prefix(ctx)
    if prefix is None:
        return []
    if not prefix.startswith(("s3://", "s3n://", "s3a://")):
        ctx.log.warning("pipelineLogUri %s is not an S3 URI; logs are not shipped", prefix)
        return []
    shipped: list[str] = []
    for entry in files:
        path, name = entry if isinstance(entry, tuple) else (entry, entry.name)
        if not path.is_file():
            continue
        uri = prefix + name
        try:
            storage.upload(ctx.settings, path, uri)
        except TaskFailure as exc:
            # S3 is unreachable or refuses us: the other files would only wait through the same retries.
            ctx.log.warning("could not ship logs to %s: %s (%s)", prefix, SECRETS.mask(str(exc)), exc.error_id)
            break
        except OSError as exc:
            ctx.log.warning("could not ship %s to %s: %s", name, uri, SECRETS.mask(str(exc)))
            continue
        shipped.append(uri)
    if shipped:
        ctx.log.info("shipped %d log file(s) to %s", len(shipped), prefix)
    return shipped


class AttemptLogHandler(logging.Handler):
    """Writes this attempt's records, masked, to a file: those carrying its ``task_key`` and those logged on
    the thread that runs it."""

    def __init__(self, path: Path, task_key: str, thread_id: int, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.task_key, self.thread_id = task_key, thread_id
        self.setFormatter(logging.Formatter(_FORMAT))
        self._file = path.open("a", encoding="utf-8", errors="replace")

    def filter(self, record: logging.LogRecord) -> bool:
        mine = getattr(record, "task_key", None) == self.task_key or record.thread == self.thread_id
        return mine and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:  # Handler.handle holds self.lock around this
            self._file.write(SECRETS.mask(self.format(record)) + "\n")
            self._file.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._file.close()
        finally:
            self.release()
        super().close()


@dataclass
class AttemptLog:
    """One attempt's captured handler log and the other files to ship with it.

    Attributes:
        path: The handler log (``Activity.log`` in the attempt's work directory).
        files: Other files to ship, with their names in the log directory.
        nested: Another ``attempt_log`` of the same attempt is open around this one (it ships, not this one).
    """

    path: Path
    files: list[tuple[Path, str]] = field(default_factory=list)
    nested: bool = False
    shipped: list[str] = field(default_factory=list)

    def add(self, path: Path, name: str | None = None) -> None:
        """Ship ``path`` too (as ``name``, default its file name); a later entry with the same name replaces it."""
        name = name or path.name
        self.files = [entry for entry in self.files if entry[1] != name] + [(path, name)]

    def ship(self, ctx: TaskContext) -> list[str]:
        """Upload the handler log and the added files (unless nested or already shipped); best effort."""
        if self.nested or self.shipped:
            return []
        self.shipped = ship_attempt_logs(ctx, [(self.path, ACTIVITY_LOG), *self.files])
        return self.shipped


@contextmanager
def attempt_log(ctx: TaskContext) -> Iterator[AttemptLog]:
    """Capture this attempt's log lines into ``Activity.log`` in ``ctx.work_dir`` while the block runs.

    Re-entrant per attempt: an inner call yields a ``nested`` view of the same capture.
    """
    key = str(ctx.work_dir)
    with _active_lock:
        outer = _active.get(key)
        if outer is None:
            current = _active[key] = AttemptLog(ctx.work_dir / ACTIVITY_LOG)
    if outer is not None:
        inner = AttemptLog(outer.path, nested=True)
        try:
            yield inner
        finally:
            for path, name in inner.files:
                outer.add(path, name)
        return
    handler = AttemptLogHandler(current.path, ctx.task.key, threading.get_ident())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield current
    finally:
        root.removeHandler(handler)
        handler.close()
        with _active_lock:
            _active.pop(key, None)
