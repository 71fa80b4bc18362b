"""The fleet as ``bridge status`` shows it, read from Redis alone, and what ``check`` / ``pause`` / ``resume`` do.

``read_status`` builds a ``FleetStatus`` from the keys the bridge processes and the workers write; its
``to_json`` is the stable ``--json`` schema (documented on ``FleetStatus``). The commands are in ``bridge.opscli``.

Keys this module writes::

    dpb:errors:<owner>   list of json {at, owner, operation, code, message}, newest first, at most 20,
                         expiring ERRORS_TTL_S after the last one (``record_api_error``)
    dpb:paused:<group>   json {by, at, reason} (``pause_group``; ``bridge.admission`` claims nothing meanwhile)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from bridge.admission import Reservations, SlotRegistry, paused_key, worker_key
from bridge.apiwrap import DelegatingApi
from bridge.errors import BrokerError, RemoteError
from bridge.leadership import LeaderLock, Liveness
from bridge.leases import LIVE, PREFIX, LeaseState, LeaseStore
from bridge.masking import SECRETS

if TYPE_CHECKING:  # (bridge.api imports boto3: too slow for `bridge check`)
    from bridge.api import TaskApi

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Version of the ``--json`` document; bumped only when a field changes meaning or goes away.
SCHEMA_VERSION = 1
#: API errors kept per bridge process.
ERRORS_KEEP = 20
#: An error list expires this long after its last error.
ERRORS_TTL_S = 3600
#: Longest error message kept (AWS messages are short; a transport error's text can be long).
MESSAGE_LIMIT = 500
#: After Redis refused an error record, recording is skipped this long (it must never slow the API calls).
RECORD_BACKOFF_S = 5.0

_LEASE_FIELDS = (
    "state",
    "epoch",
    "worker_group",
    "queue",
    "object_type",
    "pipeline_id",
    "attempt_id",
    "owner",
    "heartbeat_owner",
    "claimed_at",
    "last_beat",
    "progress_deadline_s",
)


def errors_key(owner: str) -> str:
    """The list of ``owner``'s last API errors."""
    return f"{PREFIX}:errors:{owner}"


# -- the API-error log --------------------------------------------------------------------------------


def record_api_error(client: redis.Redis, owner: str, operation: str, code: str, message: str) -> None:
    """Keep one API error in ``owner``'s capped, expiring list (secrets masked), for ``bridge status``.

    Raises:
        BrokerError: Redis cannot be reached.
    """
    entry = {
        "at": time.time(),
        "owner": owner,
        "operation": operation,
        "code": SECRETS.mask(code),
        "message": SECRETS.mask(message)[:MESSAGE_LIMIT],
    }
    key = errors_key(owner)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(key, 0, ERRORS_KEEP - 1)
        pipe.expire(key, ERRORS_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        raise BrokerError(f"cannot record an API error of {owner}: {exc}") from exc


class ErrorRecordingApi(DelegatingApi):
    """A ``TaskApi`` that records each ``RemoteError`` of ``inner`` with ``record_api_error``, then re-raises it.

    Recording is best effort: give it a quick client (``LeaseStore.fast_client``); while Redis refuses,
    errors go unrecorded for ``RECORD_BACKOFF_S`` at a time, so calls never wait on it.

    Args:
        inner: The API to call.
        client: A redis-py client with ``decode_responses=True``.
        owner: This process's identity (its liveness owner).
    """

    def __init__(self, inner: TaskApi, client: redis.Redis, owner: str) -> None:
        super().__init__(inner)
        self.client = client
        self.owner = owner
        self._skip_until = 0.0

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RemoteError as exc:
            self.record(operation, exc)
            raise

    def record(self, operation: str, exc: RemoteError) -> None:
        """Record ``exc`` unless Redis refused a record in the last ``RECORD_BACKOFF_S``."""
        now = time.monotonic()
        if now < self._skip_until:
            return
        try:
            record_api_error(self.client, self.owner, operation, exc.code or type(exc).__name__, str(exc))
        except BrokerError as err:
            self._skip_until = now + RECORD_BACKOFF_S
            log.debug("API error not recorded: %s", err)


# -- pause flags ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Who paused a worker group, when (epoch seconds) and why."""

    by: str
    at: float
    reason: str = ""


def pause_group(client: redis.Redis, worker_group: str, by: str, reason: str = "") -> Pause:
    """Stop every bridge process claiming for ``worker_group`` (leases held keep being heartbeated).

    Raises:
        BrokerError: Redis cannot be reached.
    """
    pause = Pause(by=by, at=time.time(), reason=reason)
    try:
        client.set(paused_key(worker_group), json.dumps(asdict(pause), separators=(",", ":")))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot pause {worker_group}: {exc}") from exc
    return pause


def resume_group(client: redis.Redis, worker_group: str) -> bool:
    """Let ``worker_group`` be claimed again; whether it was paused.

    Raises:
        BrokerError: Redis cannot be reached.
    """
    try:
        return bool(client.delete(paused_key(worker_group)))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot resume {worker_group}: {exc}") from exc


def _pause_from(raw: object) -> Pause:
    try:
        record = json.loads(str(raw))
        return Pause(by=str(record.get("by", "")), at=float(record.get("at", 0)), reason=str(record.get("reason", "")))
    except (ValueError, TypeError, AttributeError):
        return Pause(by="", at=0.0, reason=str(raw))


# -- health checks --------------------------------------------------------------------------------------


def check_bridge(client: redis.Redis, *, hostname: str, owner: str | None = None) -> tuple[bool, str]:
    """Whether a bridge process is alive: ``owner``'s liveness key, else one of a process on ``hostname``.

    Returns:
        ``(healthy, one line saying why)``.

    Raises:
        BrokerError: Redis cannot be reached.
    """
    if owner:
        found = Liveness.is_alive(client, owner)
        return found, f"bridge process {owner} is {'alive' if found else 'not alive (no liveness key)'}"
    for process in _processes(client):
        if process.hostname == hostname:
            return True, f"bridge process {process.owner} on {hostname} is alive"
    return False, f"no live bridge process on host {hostname} (no liveness key with that hostname)"


def check_worker(client: redis.Redis, worker_id: str) -> tuple[bool, str]:
    """Whether the Celery worker ``worker_id`` (its ``--hostname``, e.g. ``w1@host``) has a live slot registration.

    Raises:
        BrokerError: Redis cannot be reached.
    """
    try:
        found = bool(client.exists(worker_key(worker_id)))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read the registration of {worker_id}: {exc}") from exc
    return found, f"worker {worker_id} is {'registered' if found else 'not registered (no live slot registration)'}"


# -- the status model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseView:
    """One live lease. ``age_s``: since its claim; ``deadline_in_s``: until Data Pipeline would give up on it."""

    task_key: str
    state: str
    epoch: int
    queue: str
    object_type: str
    pipeline_id: str
    attempt_id: str
    owner: str
    heartbeat_owner: str
    age_s: float
    last_beat_age_s: float | None
    deadline_in_s: float | None


@dataclass(frozen=True)
class GroupStatus:
    """One worker group."""

    worker_group: str
    active_poller: str | None
    active_poller_alive: bool
    lock_ttl_s: float | None
    standbys: list[str]
    paused: Pause | None
    slots: int
    queues: dict[str, int]
    in_flight: int
    reservations: int
    leases_by_state: dict[str, int]
    leases: list[LeaseView]


@dataclass(frozen=True)
class ProcessView:
    """A live ``bridge start`` process (its liveness record)."""

    owner: str
    hostname: str
    pid: int
    started: float
    worker_groups: list[str]


@dataclass(frozen=True)
class WorkerView:
    """A live Celery worker (its slot registration)."""

    worker_id: str
    hostname: str
    pid: int
    concurrency: int
    queues: list[str]


@dataclass(frozen=True)
class ApiError:
    """One recorded API error."""

    at: float
    owner: str
    operation: str
    code: str
    message: str


@dataclass(frozen=True)
class FleetStatus:
    """Everything ``bridge status`` shows. ``to_json()`` is the ``--json`` document (schema version 1)::

        {
          "schema_version": 1,
          "generated_at": <epoch s>,
          "groups": {
            "<worker group>": {
              "active_poller": "<owner>" | null,      # holder of dpb:leader:<group>
              "active_poller_alive": bool,            # the holder's liveness key exists
              "lock_ttl_s": float | null,             # until the lock expires unless renewed (null: none / no TTL)
              "standbys": ["<owner>", ...],           # live processes serving the group, not the active poller
              "paused": {"by": str, "at": <epoch s>, "reason": str} | null,
              "slots": int,                           # live worker slots over the group's queues
              "queues": {"<queue>": <live consumers>, ...},
              "in_flight": int,                       # size of dpb:inflight:<group>
              "reservations": int,                    # unexpired admission reservations (polls in flight)
              "leases_by_state": {"claimed": n, "queued": n, "running": n, "reporting": n,
                                  "done": n, "canceled": n, "lost": n, "released": n},   # every dpb:lease:* record
              "leases": [                             # live leases, soonest deadline first
                {"task_key", "state", "epoch", "queue", "object_type", "pipeline_id", "attempt_id", "owner",
                 "heartbeat_owner", "age_s", "last_beat_age_s" (null: never beaten), "deadline_in_s" (null: unknown;
                 negative: overdue)}
              ]
            }
          },
          "processes": [{"owner", "hostname", "pid", "started", "worker_groups"}],
          "workers": [{"worker_id", "hostname", "pid", "concurrency", "queues"}],
          "api_errors": [{"at", "owner", "operation", "code", "message"}]   # newest first
        }

    New fields may be added; none is removed or changes meaning without a new ``schema_version``.
    """

    generated_at: float
    groups: dict[str, GroupStatus]
    processes: list[ProcessView]
    workers: list[WorkerView]
    api_errors: list[ApiError]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {"schema_version": SCHEMA_VERSION, **_rounded(asdict(self))}


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def read_status(
    client: redis.Redis,
    *,
    worker_groups: Iterable[str] = (),
    routes: Mapping[str, str] | None = None,
    errors_limit: int = ERRORS_KEEP,
    now: float | None = None,
) -> FleetStatus:
    """Read the fleet's state from Redis.

    Args:
        client: A redis-py client with ``decode_responses=True``.
        worker_groups: Only these groups (default: every group any key names).
        routes: ``TYPE -> QUEUE`` routes of the bridge processes (their queues count as the groups' queues,
            with ``dp.<group>`` and the queues of the groups' leases).
        errors_limit: At most this many API errors, newest first.
        now: The time ages are measured at (default: now).

    Raises:
        BrokerError: Redis cannot be reached.
    """
    now = time.time() if now is None else now
    try:
        return _read(client, tuple(worker_groups), dict(routes or {}), errors_limit, now)
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read the fleet's state from Redis: {exc}") from exc


def _suffixes(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(str(key)[len(prefix) :] for key in client.scan_iter(match=prefix + "*", count=1000))


def _read(
    client: redis.Redis, only: tuple[str, ...], routes: dict[str, str], errors_limit: int, now: float
) -> FleetStatus:
    processes = _processes(client)
    leaders = {g: str(h) for g, h in _get_all(client, LeaderLock.lock_key(""), str).items()}
    pauses = _get_all(client, paused_key(""), _pause_from)
    inflight_groups = _suffixes(client, LeaseStore.inflight_key(""))
    by_group = _leases_by_group(client)
    names = set(only) or (
        set(leaders)
        | set(pauses)
        | set(inflight_groups)
        | set(by_group)
        | {g for p in processes for g in p.worker_groups}
    )
    alive = {p.owner for p in processes}
    slots, reservations = SlotRegistry(client), Reservations(client)
    groups: dict[str, GroupStatus] = {}
    for group in sorted(names):
        records = by_group.get(group, [])
        holder = leaders.get(group)
        queues = {f"dp.{group}", *routes.values(), *(r["queue"] for r in records if r.get("queue"))}
        census = slots.census(queues)
        ttl_ms = int(client.pttl(LeaderLock.lock_key(group))) if holder is not None else -1
        counts = {str(state): 0 for state in LeaseState}
        for record in records:
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        live = [_lease_view(r, now) for r in records if r["state"] in LIVE]
        live.sort(key=lambda v: (v.deadline_in_s is None, v.deadline_in_s or 0.0, v.task_key))
        groups[group] = GroupStatus(
            worker_group=group,
            active_poller=holder,
            active_poller_alive=holder in alive,
            lock_ttl_s=ttl_ms / 1000 if ttl_ms >= 0 else None,
            standbys=sorted(p.owner for p in processes if group in p.worker_groups and p.owner != holder),
            paused=pauses.get(group),
            slots=census.slots,
            queues=census.consumers,
            in_flight=int(client.zcard(LeaseStore.inflight_key(group))),
            reservations=reservations.count(group),
            leases_by_state=counts,
            leases=live,
        )
    return FleetStatus(
        generated_at=now,
        groups=groups,
        processes=processes,
        workers=_workers(client),
        api_errors=_api_errors(client, errors_limit),
    )


def _get_all(client: redis.Redis, prefix: str, parse: Callable[[Any], T]) -> dict[str, T]:
    """Every key under ``prefix``, by suffix, its string value parsed (keys gone meanwhile are left out)."""
    names = _suffixes(client, prefix)
    values = client.mget([prefix + n for n in names]) if names else []
    return {n: parse(v) for n, v in zip(names, values, strict=True) if v is not None}


def _processes(client: redis.Redis) -> list[ProcessView]:
    """Raises: BrokerError."""
    try:
        records = _get_all(client, Liveness.alive_key(""), _json_dict)
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read liveness records: {exc}") from exc
    return [
        ProcessView(
            owner=owner,
            hostname=str(r.get("hostname", "")),
            pid=_int(r.get("pid")),
            started=_float(r.get("started")),
            worker_groups=[str(g) for g in r.get("worker_groups", []) if isinstance(g, str)],
        )
        for owner, r in records.items()
    ]


def _workers(client: redis.Redis) -> list[WorkerView]:
    records = _get_all(client, worker_key(""), _json_dict)
    return [
        WorkerView(
            worker_id=worker_id,
            hostname=str(r.get("hostname", "")),
            pid=_int(r.get("pid")),
            concurrency=_int(r.get("concurrency")),
            queues=[str(q) for q in r.get("queues", [])] if isinstance(r.get("queues"), list) else [],
        )
        for worker_id, r in records.items()
    ]


def _leases_by_group(client: redis.Redis) -> dict[str, list[dict[str, str]]]:
    """Every lease record (live and terminal) by worker group, without the bulky task object."""
    prefix = LeaseStore.lease_key("")
    keys = _suffixes(client, prefix)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(prefix + key, list(_LEASE_FIELDS))
    rows = pipe.execute(raise_on_error=False) if keys else []
    found: dict[str, list[dict[str, str]]] = {}
    for key, row in zip(keys, rows, strict=True):
        if isinstance(row, Exception) or not row or row[0] is None:
            continue  # (not a hash, or expired between the scan and the read)
        record = {name: str(value) for name, value in zip(_LEASE_FIELDS, row, strict=True) if value is not None}
        record["task_key"] = key
        found.setdefault(record.get("worker_group", ""), []).append(record)
    return found


def _lease_view(record: dict[str, str], now: float) -> LeaseView:
    claimed_at = _float(record.get("claimed_at"))
    last_beat = _float(record.get("last_beat"))
    deadline_s = _float(record.get("progress_deadline_s"))
    last_seen = max(claimed_at, last_beat)
    return LeaseView(
        task_key=record["task_key"],
        state=record["state"],
        epoch=_int(record.get("epoch")),
        queue=record.get("queue", ""),
        object_type=record.get("object_type", ""),
        pipeline_id=record.get("pipeline_id", ""),
        attempt_id=record.get("attempt_id", ""),
        owner=record.get("owner", ""),
        heartbeat_owner=record.get("heartbeat_owner", ""),
        age_s=now - claimed_at if claimed_at else 0.0,
        last_beat_age_s=now - last_beat if last_beat else None,
        deadline_in_s=last_seen + deadline_s - now if deadline_s > 0 and last_seen else None,
    )


def _api_errors(client: redis.Redis, limit: int) -> list[ApiError]:
    prefix = errors_key("")
    owners = _suffixes(client, prefix)
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        pipe.lrange(prefix + owner, 0, ERRORS_KEEP - 1)
    rows = pipe.execute(raise_on_error=False) if owners else []
    errors: list[ApiError] = []
    for owner, row in zip(owners, rows, strict=True):
        for raw in [] if isinstance(row, Exception) else row:
            entry = _json_dict(raw)
            errors.append(
                ApiError(
                    at=_float(entry.get("at")),
                    owner=str(entry.get("owner") or owner),
                    operation=str(entry.get("operation", "")),
                    code=str(entry.get("code", "")),
                    message=str(entry.get("message", "")),
                )
            )
    errors.sort(key=lambda e: e.at, reverse=True)
    return errors[: max(0, limit)]


def _json_dict(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(str(raw))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0
