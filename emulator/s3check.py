"""System-managed preconditions: the service itself checks ``S3KeyExists`` and ``S3PrefixNotEmpty``.

AWS runs these "on your behalf" without a task runner (reference §4.8). Here each check is one
attempt: the lifecycle opens it under the state lock, :class:`SystemChecks` asks S3 on a worker
thread with the lock released (a slow S3 never blocks the API), then hands the :class:`Outcome`
back under the lock. ``retryDelay`` and ``preconditionTimeout`` apply as for runner-side
preconditions. The S3 endpoint is ``--s3-endpoint-url`` (boto3's default resolution without it);
credentials come from the environment, else dummy ones (enough for moto or LocalStack).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.state import Key, State

log = logging.getLogger(__name__)

#: The system-managed precondition types this service evaluates, with the field naming the S3 location.
S3_FIELDS = {"S3KeyExists": "s3Key", "S3PrefixNotEmpty": "s3Prefix"}
#: Worker threads asking S3 (checks of different instances run side by side).
WORKERS = 4
#: How long ``stop`` waits for checks in flight (their workers are daemons; a hung S3 call is abandoned).
STOP_TIMEOUT_S = 2.0
#: Error codes that mean "not there" rather than "could not look".
_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class Probe:
    """One question for S3: does ``key`` exist (``prefix=False``), or is anything under it."""

    url: str
    bucket: str
    key: str
    prefix: bool


@dataclass(frozen=True)
class Outcome:
    """The answer to a :class:`Probe`: ``met``, and what was seen (shown as the attempt's errorMessage)."""

    met: bool
    detail: str
    error_id: str | None = None


def probe_for(type_name: str, location: str) -> Probe:
    """The probe of a ``type_name`` precondition whose ``s3Key`` / ``s3Prefix`` is ``location``.

    Raises:
        ValueError: ``location`` is not ``s3://bucket/key`` (a prefix may be empty).
    """
    prefix = type_name == "S3PrefixNotEmpty"
    scheme, sep, rest = location.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme.lower() != "s3" or not sep or not bucket or (not key and not prefix):
        field_name = S3_FIELDS.get(type_name, "s3Key")
        raise ValueError(f"{field_name} must look like s3://bucket/{'prefix' if prefix else 'key'}, not {location!r}")
    return Probe(location, bucket, key, prefix)


class S3Checker:
    """Answers probes with a boto3 S3 client (made on first use; boto3 clients are thread-safe).

    Args:
        endpoint_url: The S3 endpoint (``--s3-endpoint-url``), or ``None`` for boto3's default.
    """

    def __init__(self, endpoint_url: str | None) -> None:
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session()
                dummy = {} if session.get_credentials() is not None else {"aws_access_key_id": "local"}
                if dummy:
                    dummy["aws_secret_access_key"] = "local"  # not a secret: any key works locally
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=session.region_name or "us-east-1",
                    config=Config(
                        connect_timeout=5,
                        read_timeout=20,
                        retries={"max_attempts": 2, "mode": "standard"},
                        s3={"addressing_style": "path"} if self.endpoint_url else {},
                    ),
                    **dummy,
                )
            return self._client

    def check(self, probe: Probe) -> Outcome:
        """Ask S3; an error S3 answers (or no answer) counts as "not met", with the error as detail."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3 = self._s3()
            if probe.prefix:
                listed = s3.list_objects_v2(Bucket=probe.bucket, Prefix=probe.key, MaxKeys=1)
                if listed.get("KeyCount", len(listed.get("Contents", []))) > 0:
                    return Outcome(True, f"{probe.url} is not empty.")
                return Outcome(False, f"Nothing under {probe.url} yet.")
            s3.head_object(Bucket=probe.bucket, Key=probe.key)
            return Outcome(True, f"{probe.url} exists.")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                what = "bucket" if code == "NoSuchBucket" else "object"
                return Outcome(False, f"{probe.url} does not exist (no such {what}).")
            return Outcome(False, f"S3 refused the check of {probe.url}: {code or exc}.", "S3Error")
        except BotoCoreError as exc:
            return Outcome(False, f"S3 could not be asked about {probe.url}: {exc}.", "S3Unavailable")


Done = Callable[[Key, Outcome], None]
"""Called under the state lock with an attempt's key and its outcome."""


class SystemChecks:
    """Runs probes on worker threads (off the state lock) and reports each outcome under it.

    Args:
        state: Its lock guards the report; it is flushed after each.
        checker: Answers the probes.
        done: Applies an outcome to its attempt (re-checking that the attempt is still open).
    """

    def __init__(self, state: State, checker: S3Checker, done: Done) -> None:
        self.state = state
        self.checker = checker
        self.done = done
        self._queue: queue.Queue[tuple[Key, Probe] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def submit(self, key: Key, probe: Probe) -> None:
        """Check ``probe`` for the attempt ``key`` soon; workers start on the first submit."""
        if self._stop.is_set():
            return
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._work, name=f"s3-check-{n}", daemon=True) for n in range(WORKERS)
            ]
            for thread in self._threads:
                thread.start()
        self._queue.put((key, probe))

    def stop(self) -> None:
        """Stop the workers; a check in flight is dropped (its attempt is re-checked after a restart). Idempotent."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + STOP_TIMEOUT_S  # one deadline for all: a hung S3 call must not add up
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            key, probe = item
            try:
                outcome = self.checker.check(probe)
            except Exception as exc:  # a bug must not kill the worker; the attempt still ends
                log.critical("S3 check of %s for %s failed", probe.url, key[1], exc_info=True)
                outcome = Outcome(False, f"The check of {probe.url} failed: {exc}", "S3Error")
            log.info("system precondition %s of %s: %s", key[1], key[0], outcome.detail)
            with self.state.lock:
                if self._stop.is_set():
                    return
                try:
                    self.done(key, outcome)
                except Exception:
                    log.critical("applying the S3 check of %s failed", key[1], exc_info=True)
                self.state.flush()
