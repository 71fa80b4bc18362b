"""Operator commands: ``bridge status``, ``bridge check``, ``bridge pause`` and ``bridge resume``.

They read and write Redis only (never Data Pipeline), with short timeouts, so they answer at once even when
the fleet is in trouble. ``bridge.cli`` registers them; the model behind them is ``bridge.status``.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import redis

from bridge import logs
from bridge.errors import BrokerError, ConfigError
from bridge.leases import LIVE, TERMINAL, LeaseState, LeaseStore
from bridge.settings import DEFAULT_REDIS_URL, parse_routes
from bridge.status import (
    FleetStatus,
    check_bridge,
    check_worker,
    pause_group,
    read_status,
    resume_group,
)

T = TypeVar("T")

# The values of bridge.cli's exit codes (bridge.cli imports this module, so this one cannot import it).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def _redis_options(fn: Any) -> Any:
    options = [
        click.option(
            "--redis-url",
            envvar="BRIDGE_REDIS_URL",
            default=None,
            show_envvar=True,
            help="Redis the bridge keeps its state in [default: the broker URL if it is Redis, "
            "else redis://127.0.0.1:6379/0].",
        ),
        click.option(
            "--broker-url",
            envvar=["BRIDGE_BROKER_URL", "CELERY_BROKER_URL"],
            default=None,
            show_envvar=True,
            help="Celery broker URL; only used as the Redis URL when --redis-url is not set and it is Redis.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _groups(values: Iterable[str]) -> list[str]:
    """Repeated and comma-separated ``--worker-group`` values, in order, without duplicates."""
    return list(dict.fromkeys(g.strip() for item in values for g in item.split(",") if g.strip()))


def redis_url_of(redis_url: str | None, broker_url: str | None) -> str:
    """The Redis URL ``bridge start`` would use with the same options.

    Raises:
        ConfigError: the URL is not a redis://, rediss:// or unix:// URL.
    """
    url = redis_url or (broker_url if broker_url and broker_url.startswith("redis") else DEFAULT_REDIS_URL)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"--redis-url {safe_url(url)!r} must be a redis://, rediss:// or unix:// URL")
    return url


def safe_url(url: str) -> str:
    """``url`` with its password masked."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def _connect(url: str, timeout_s: float) -> redis.Redis:
    """A client that gives up within ``timeout_s`` per call, after checking that Redis answers.

    Raises:
        ConfigError: the URL does not parse.
        BrokerError: Redis does not answer.
    """
    client = LeaseStore.fast_client(url, timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise BrokerError(f"Redis at {safe_url(url)} does not answer: {exc}") from exc
    return client


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"bridge: {message}", err=True)
    sys.exit(code)


# -- status ---------------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--worker-group",
    "-g",
    "worker_groups",
    multiple=True,
    help="Show only this group (repeatable, or comma-separated) [default: every group found in Redis].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (schema: bridge.status.FleetStatus).")
@click.option(
    "--route",
    "routes",
    multiple=True,
    envvar="BRIDGE_ROUTES",
    show_envvar=True,
    help="The bridge's routes, TYPE=QUEUE (repeatable), so their queues' consumers are shown "
    "[dp.<group> and the queues of live leases are always shown].",
)
@click.option(
    "--errors",
    "errors_limit",
    default=10,
    show_default=True,
    type=click.IntRange(0, 1000),
    help="Show this many of the last API errors (newest first).",
)
@click.option(
    "--leases",
    "lease_limit",
    default=50,
    show_default=True,
    type=click.IntRange(0),
    help="Rows of live leases in the table (--json lists all).",
)
@click.option(
    "--timeout-s",
    envvar="BRIDGE_STATUS_TIMEOUT_S",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    show_envvar=True,
    help="Give up on a Redis call after this long.",
)
@_redis_options
def status(
    worker_groups: tuple[str, ...],
    as_json: bool,
    routes: tuple[str, ...],
    errors_limit: int,
    lease_limit: int,
    timeout_s: float,
    redis_url: str | None,
    broker_url: str | None,
) -> None:
    """Show the fleet: per worker group the active poller and standbys, live worker slots, leases by state
    (with age and time to their heartbeat deadline), paused groups, and the last Data Pipeline API errors.

    Reads Redis only. Exit codes: 0 shown, 2 bad option, 3 Redis unreachable.
    """
    logs.configure("WARNING")
    try:
        url = redis_url_of(redis_url, broker_url)
        route_map = parse_routes(",".join(routes))
        client = _connect(url, timeout_s)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    except BrokerError as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    try:
        found = read_status(client, worker_groups=_groups(worker_groups), routes=route_map, errors_limit=errors_limit)
    except BrokerError as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
    else:
        click.echo(render(found, lease_limit=lease_limit))


# -- check ----------------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--owner",
    envvar="BRIDGE_CHECK_OWNER",
    show_envvar=True,
    help="Check this bridge process (its owner id, as `bridge status` lists it) [default: any on --hostname].",
)
@click.option(
    "--hostname",
    envvar="BRIDGE_HOSTNAME",
    default=None,
    show_envvar=True,
    help="Host whose bridge process must be alive (as `bridge start --hostname`) [default: this host's name].",
)
@click.option(
    "--worker",
    envvar="BRIDGE_CHECK_WORKER",
    show_envvar=True,
    help="Check a Celery worker instead: NAME is its --hostname (w1@host; without '@', NAME@<hostname>). "
    "Healthy while its slot registration lives.",
)
@click.option(
    "--timeout-s",
    envvar="BRIDGE_CHECK_TIMEOUT_S",
    default=1.5,
    show_default=True,
    type=click.FloatRange(min=0.1, max=60),
    show_envvar=True,
    help="Unhealthy if Redis has not answered within this long.",
)
@_redis_options
def check(
    owner: str | None,
    hostname: str | None,
    worker: str | None,
    timeout_s: float,
    redis_url: str | None,
    broker_url: str | None,
) -> None:
    """Health check for containers: exit 0 when Redis answers and this host's bridge process is alive
    (its liveness key exists), else 1 with one line saying why (2: bad option).

    Never hangs: every Redis call gives up in time, and the whole check within --timeout-s.
    """
    host = hostname or socket.gethostname()
    try:
        url = redis_url_of(redis_url, broker_url)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    target = None if worker is None else (worker if "@" in worker else f"{worker}@{host}")

    def probe() -> tuple[bool, str]:
        client = _connect(url, timeout_s / 2)
        try:
            if target is not None:
                return check_worker(client, target)
            return check_bridge(client, hostname=host, owner=owner)
        finally:
            client.close()

    try:
        healthy, why = _within(timeout_s, probe)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, str(exc))
    except BrokerError as exc:
        healthy, why = False, str(exc)
    except TimeoutError:
        healthy, why = False, f"Redis at {safe_url(url)} did not answer within {timeout_s:g} s"
    if not healthy:
        _fail(EXIT_FAILED, f"unhealthy: {why}")
    click.echo(f"healthy: {why}")


def _within(timeout_s: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread; ``TimeoutError`` if it has not returned within ``timeout_s`` (DNS can hang)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError
    return result[0]


# -- pause / resume -------------------------------------------------------------------------------------


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # (no user entry, as in many containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


_GROUP_OPTION = click.option(
    "--worker-group",
    "-g",
    "worker_groups",
    multiple=True,
    required=True,
    help="The worker group (repeatable, or comma-separated).",
)


@click.command()
@_GROUP_OPTION
@click.option("--reason", default="", help="Why, for `bridge status` and the bridge's log.")
@click.option(
    "--by",
    envvar="BRIDGE_OPERATOR",
    default=None,
    show_envvar=True,
    help="Who pauses [default: user@host].",
)
@_redis_options
def pause(
    worker_groups: tuple[str, ...], reason: str, by: str | None, redis_url: str | None, broker_url: str | None
) -> None:
    """Stop claiming tasks for WORKER_GROUP across the fleet (a Redis flag), to drain it.

    Leases already held keep being heartbeated and their tasks run to the end; `bridge status` shows the
    group paused and its leases draining. `bridge resume` undoes it. Exit codes: 0, 2 bad option, 3 Redis
    unreachable.
    """
    logs.configure("WARNING")
    who = by or _operator()
    with _client(redis_url, broker_url) as client:
        for group in _groups(worker_groups):
            pause_group(client, group, who, reason)
            held = _in_flight(client, group)
            click.echo(
                f"paused worker_group={group} (by {who}): no new claims; {held} lease(s) in flight keep being "
                "heartbeated until their tasks end"
            )


@click.command()
@_GROUP_OPTION
@_redis_options
def resume(worker_groups: tuple[str, ...], redis_url: str | None, broker_url: str | None) -> None:
    """Claim tasks for WORKER_GROUP again after `bridge pause`.

    Exit codes: 0 (also when the group was not paused), 2 bad option, 3 Redis unreachable.
    """
    logs.configure("WARNING")
    with _client(redis_url, broker_url) as client:
        for group in _groups(worker_groups):
            was = resume_group(client, group)
            click.echo(f"resumed worker_group={group}" if was else f"worker_group={group} was not paused")


class _client:
    """``with _client(redis_url, broker_url) as client``: exits 2 / 3 with one line on a bad URL / no Redis."""

    def __init__(self, redis_url: str | None, broker_url: str | None, timeout_s: float = 2.0) -> None:
        self.redis_url, self.broker_url, self.timeout_s = redis_url, broker_url, timeout_s
        self.client: redis.Redis | None = None

    def __enter__(self) -> redis.Redis:
        try:
            self.client = _connect(redis_url_of(self.redis_url, self.broker_url), self.timeout_s)
        except ConfigError as exc:
            _fail(EXIT_CONFIG, str(exc))
        except BrokerError as exc:
            _fail(EXIT_UNAVAILABLE, str(exc))
        return self.client

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.client is not None:
            self.client.close()
        if isinstance(exc, BrokerError):
            _fail(EXIT_UNAVAILABLE, str(exc))


def _in_flight(client: redis.Redis, group: str) -> int:
    try:
        return int(client.zcard(LeaseStore.inflight_key(group)))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot count the leases of {group}: {exc}") from exc


def duration(seconds: float | None) -> str:
    """``seconds`` as ``45s``, ``3m05s``, ``2h10m`` or ``3d04h`` (negative: overdue, ``-12s``; ``None``: ``-``)."""
    if seconds is None:
        return "-"
    sign, s = ("-", -seconds) if seconds < 0 else ("", seconds)
    whole = int(s)
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def _counts(by_state: dict[str, int], states: Iterable[LeaseState]) -> str:
    """``queued=1 running=2`` (states with none left out; ``-`` when all are)."""
    wanted = {str(s) for s in states}
    return " ".join(f"{state}={n}" for state, n in by_state.items() if n and state in wanted) or "-"


def render(fleet: FleetStatus, *, lease_limit: int = 50) -> str:
    """The human tables: groups, live leases (soonest deadline first), pauses, processes, workers, API errors."""
    now = fleet.generated_at
    out: list[str] = []
    groups = list(fleet.groups.values())
    if not groups:
        out.append("no worker group found (no bridge process, lease, lock or pause flag in this Redis)")
    else:
        out += table(
            [
                "GROUP",
                "ACTIVE POLLER",
                "STANDBYS",
                "PAUSED",
                "SLOTS",
                "QUEUES (consumers)",
                "IN FLIGHT",
                "LIVE LEASES",
                "ENDED (kept 1 day)",
            ],
            (
                [
                    g.worker_group,
                    (g.active_poller or "-") + ("" if g.active_poller is None or g.active_poller_alive else " (dead)"),
                    len(g.standbys),
                    "yes" if g.paused else "no",
                    g.slots,
                    " ".join(f"{q}={n}" for q, n in g.queues.items()) or "-",
                    g.in_flight,
                    _counts(g.leases_by_state, LIVE),
                    _counts(g.leases_by_state, TERMINAL),
                ]
                for g in groups
            ),
        )
    leases = sorted(
        ((g.worker_group, lease) for g in groups for lease in g.leases),
        key=lambda item: (item[1].deadline_in_s is None, item[1].deadline_in_s or 0.0),
    )
    if leases:
        out += ["", f"LIVE LEASES ({len(leases)}, soonest deadline first)"]
        out += table(
            ["GROUP", "TASK KEY", "STATE", "EPOCH", "AGE", "LAST BEAT", "DEADLINE IN", "HEARTBEAT OWNER"],
            (
                [
                    group,
                    lease.task_key,
                    lease.state,
                    lease.epoch,
                    duration(lease.age_s),
                    duration(lease.last_beat_age_s) + (" ago" if lease.last_beat_age_s is not None else ""),
                    duration(lease.deadline_in_s),
                    lease.heartbeat_owner or lease.owner,
                ]
                for group, lease in leases[:lease_limit]
            ),
        )
        if len(leases) > lease_limit:
            out.append(f"... and {len(leases) - lease_limit} more (--json shows all)")
    paused = [g for g in groups if g.paused is not None]
    if paused:
        out += ["", "PAUSED GROUPS (no claims; leases still heartbeated)"]
        out += table(
            ["GROUP", "BY", "SINCE", "REASON"],
            (
                [g.worker_group, p.by or "-", duration(now - p.at) + " ago", p.reason or "-"]
                for g in paused
                if (p := g.paused)
            ),
        )
    if fleet.processes:
        out += ["", "BRIDGE PROCESSES"]
        out += table(
            ["OWNER", "HOST", "PID", "UP", "GROUPS", "POLLS"],
            (
                [
                    p.owner,
                    p.hostname,
                    p.pid,
                    duration(now - p.started) if p.started else "-",
                    ",".join(p.worker_groups),
                    ",".join(g.worker_group for g in groups if g.active_poller == p.owner) or "-",
                ]
                for p in fleet.processes
            ),
        )
    if fleet.workers:
        out += ["", "WORKERS"]
        out += table(
            ["WORKER", "HOST", "PID", "SLOTS", "QUEUES"],
            ([w.worker_id, w.hostname, w.pid, w.concurrency, ",".join(w.queues)] for w in fleet.workers),
        )
    if fleet.api_errors:
        out += ["", f"LAST API ERRORS ({len(fleet.api_errors)}, newest first)"]
        out += table(
            ["WHEN", "OWNER", "OPERATION", "CODE", "MESSAGE"],
            (
                [duration(now - e.at) + " ago", e.owner, e.operation, e.code, _one_line(e.message, 100)]
                for e in fleet.api_errors
            ),
        )
    return "\n".join(out)


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
