"""One frozen ``Settings`` for the poller and the workers, built from CLI options or ``BRIDGE_*`` variables."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Environment variables every setting can come from (first one set wins), for docs and ``from_env``.
ENV: dict[str, tuple[str, ...]] = {
    "worker_groups": ("BRIDGE_WORKER_GROUPS",),
    "endpoint_url": ("BRIDGE_ENDPOINT_URL", "AWS_ENDPOINT_URL_DATA_PIPELINE", "AWS_ENDPOINT_URL"),
    "region": ("BRIDGE_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    "broker_url": ("BRIDGE_BROKER_URL", "CELERY_BROKER_URL"),
    "redis_url": ("BRIDGE_REDIS_URL",),
    "hostname": ("BRIDGE_HOSTNAME",),
    "taskrunner_id": ("BRIDGE_TASKRUNNER_ID",),
    "max_in_flight": ("BRIDGE_MAX_IN_FLIGHT",),
    "heartbeat_interval_s": ("BRIDGE_HEARTBEAT_INTERVAL_S",),
    "progress_deadline_s": ("BRIDGE_PROGRESS_DEADLINE_S",),
    "runner_heartbeat_interval_s": ("BRIDGE_RUNNER_HEARTBEAT_INTERVAL_S",),
    "drain_timeout_s": ("BRIDGE_DRAIN_TIMEOUT_S",),
    "routes": ("BRIDGE_ROUTES",),
    "work_dir": ("BRIDGE_WORK_DIR",),
    "env_allowlist": ("BRIDGE_ENV_ALLOWLIST",),
    "kill_grace_s": ("BRIDGE_KILL_GRACE_S",),
    "log_level": ("BRIDGE_LOG_LEVEL",),
    "log_format": ("BRIDGE_LOG_FORMAT",),
    "queue_allowance": ("BRIDGE_QUEUE_ALLOWANCE",),
    "max_queue_wait_s": ("BRIDGE_MAX_QUEUE_WAIT_S",),
    "report_timeout_s": ("BRIDGE_REPORT_TIMEOUT_S",),
    "running_ttl_s": ("BRIDGE_RUNNING_TTL_S",),
    "leader_ttl_s": ("BRIDGE_LEADER_TTL_S",),
    "liveness_ttl_s": ("BRIDGE_LIVENESS_TTL_S",),
    "account_id": ("BRIDGE_ACCOUNT_ID",),
    "api_budget_fraction": ("BRIDGE_API_BUDGET_FRACTION",),
    "local_budget_fraction": ("BRIDGE_LOCAL_BUDGET_FRACTION",),
    "rate_limit": ("BRIDGE_RATE_LIMIT",),
    "s3_endpoint_url": ("BRIDGE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"),
    "rds_endpoints": ("BRIDGE_RDS_ENDPOINTS",),
    "metrics_port": ("BRIDGE_METRICS_PORT",),
    "metrics_host": ("BRIDGE_METRICS_HOST",),
    "worker_metrics_port": ("BRIDGE_WORKER_METRICS_PORT",),
    "worker_metrics_host": ("BRIDGE_WORKER_METRICS_HOST",),
}


def default_taskrunner_id(hostname: str, worker_groups: tuple[str, ...]) -> str:
    """A stable id per host and groups, unique enough across an account (AWS asks for uniqueness)."""
    digest = hashlib.sha1(("|".join(worker_groups)).encode()).hexdigest()[:8]
    return f"bridge-{hostname}-{digest}"


def parse_routes(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``TYPE=QUEUE[,TYPE=QUEUE...]`` into a mapping.

    Raises:
        ConfigError: on an entry without ``=`` or with an empty side.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    routes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        type_name, sep, queue = item.partition("=")
        if not sep or not type_name.strip() or not queue.strip():
            raise ConfigError(f"bad route {item!r}: expected ActivityType=queue")
        routes[type_name.strip()] = queue.strip()
    return routes


def parse_rds_endpoints(text: str) -> dict[str, str]:
    """``ID=HOST:PORT[,ID=HOST:PORT...]`` into a mapping.

    Raises:
        ValueError: an entry without ``=`` or without a ``:port``.
    """
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        instance, sep, address = item.partition("=")
        host, colon, port = address.strip().rpartition(":")
        if not sep or not instance.strip() or not colon or not host or not port.isdigit():
            raise ValueError(f"bad RDS endpoint {item!r}: expected instanceId=host:port")
        found[instance.strip()] = address.strip()
    return found


@dataclass(frozen=True)
class Settings:
    """Everything the bridge and its workers are configured with.

    Durations end in ``_s``. ``heartbeat_interval_s`` is clamped per task to a third of its
    progress deadline (the object's ``reportProgressTimeout``, else ``progress_deadline_s``).
    """

    worker_groups: tuple[str, ...] = ()
    endpoint_url: str | None = None
    region: str = "us-east-1"
    broker_url: str = DEFAULT_REDIS_URL
    redis_url: str = DEFAULT_REDIS_URL
    hostname: str = field(default_factory=socket.gethostname)
    taskrunner_id: str = ""
    max_in_flight: int = 8
    heartbeat_interval_s: float = 60.0
    progress_deadline_s: float = 300.0
    runner_heartbeat_interval_s: float = 300.0
    drain_timeout_s: float = 300.0
    #: How long the poller retries an acknowledgement after a hand-out (AWS re-hands out after 120 s).
    ack_window_s: float = 90.0
    routes: Mapping[str, str] = field(default_factory=dict)
    work_dir: str = "/tmp/dp-bridge"
    env_allowlist: tuple[str, ...] = ()
    kill_grace_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    #: Claims allowed beyond the live worker slots (tasks waiting in the queue for a free slot).
    queue_allowance: int = 0
    #: A lease not running this long after it was queued is re-published once, then failed BridgeNotStarted.
    max_queue_wait_s: float = 600.0
    #: How long a worker retries SetTaskStatus before handing delivery to the poller's keeper.
    report_timeout_s: float = 300.0
    #: TTL of a running task's instance lock, renewed every second while the task runs (self-fencing bound).
    running_ttl_s: float = 30.0
    #: TTL of the per-group poller lock; a standby takes over within this after the active poller dies.
    leader_ttl_s: float = 10.0
    #: TTL of each bridge process's liveness key; leases of an owner whose key expired are adopted.
    liveness_ttl_s: float = 15.0
    #: AWS account the API budget is shared with (default: STS, or "local" with a custom endpoint).
    account_id: str = ""
    #: Share of AWS's per-account call rates the fleet may use.
    api_budget_fraction: float = 0.9
    #: Share of the budget one process uses on its own while Redis (the shared bucket) is unreachable.
    local_budget_fraction: float = 0.25
    rate_limit: bool = True
    #: S3-compatible storage for workers (scripts, staging, copies, logs); ``None``: AWS, as boto3 finds it.
    s3_endpoint_url: str | None = None
    #: ``rdsInstanceId -> host:port`` overrides for RdsDatabase (else RDS DescribeDBInstances).
    rds_endpoints: Mapping[str, str] = field(default_factory=dict)
    #: Port of ``bridge start``'s Prometheus endpoint (0: no endpoint).
    metrics_port: int = 0
    #: Address the bridge's Prometheus endpoint binds to (localhost unless told otherwise).
    metrics_host: str = "127.0.0.1"
    #: Port of a Celery worker's Prometheus endpoint, served by its main process for the whole pool (0: none).
    worker_metrics_port: int = 0
    #: Address a worker's Prometheus endpoint binds to.
    worker_metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.taskrunner_id:
            object.__setattr__(self, "taskrunner_id", default_taskrunner_id(self.hostname, self.worker_groups))

    def validate(self, *, need_groups: bool = False) -> Settings:
        """Check the settings; returns ``self``.

        Raises:
            ConfigError: naming the bad setting.
        """
        if need_groups and not self.worker_groups:
            raise ConfigError("at least one --worker-group is required")
        for group in self.worker_groups:
            if not group or len(group) > 1024:
                raise ConfigError(f"bad worker group {group!r}: 1 to 1024 characters")
        if self.max_in_flight < 1:
            raise ConfigError("--max-in-flight must be at least 1")
        for name in ("heartbeat_interval_s", "progress_deadline_s", "runner_heartbeat_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.runner_heartbeat_interval_s > 900:
            raise ConfigError("runner heartbeats must come at least every 15 minutes (900 s)")
        if self.drain_timeout_s < 0:
            raise ConfigError("drain timeout must not be negative")
        for url_name in ("broker_url", "redis_url"):
            url = getattr(self, url_name)
            if "://" not in url:
                raise ConfigError(f"{url_name} {url!r} is not a URL (e.g. redis://127.0.0.1:6379/0)")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis_url {self.redis_url!r} must be a redis://, rediss:// or unix:// URL")
        if self.queue_allowance < 0:
            raise ConfigError("--queue-allowance must not be negative")
        for name in ("max_queue_wait_s", "report_timeout_s", "running_ttl_s", "leader_ttl_s", "liveness_ttl_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.running_ttl_s < self.kill_grace_s + 4:
            raise ConfigError(
                f"running_ttl_s ({self.running_ttl_s:g}) must exceed kill_grace_s ({self.kill_grace_s:g}) by 4 s or "
                "more: a self-fenced command must be gone before its running lease expires"
            )
        for name in ("api_budget_fraction", "local_budget_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1]")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log format must be 'text' or 'json'")
        for name in ("metrics_port", "worker_metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be a port number (1-65535), or 0 for no metrics endpoint")
        return self

    def queue_for(self, worker_group: str, object_type: str) -> str:
        """The Celery queue a task of ``object_type`` from ``worker_group`` goes to."""
        return self.routes.get(object_type) or f"dp.{worker_group}"

    def beat_interval_for(self, deadline_s: float | None) -> float:
        """Heartbeat interval for a task whose progress deadline is ``deadline_s`` (None: the default)."""
        deadline = deadline_s or self.progress_deadline_s
        return max(0.2, min(self.heartbeat_interval_s, deadline / 3))

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (re-deriving the default taskrunner id)."""
        if "taskrunner_id" not in changes and self.taskrunner_id == default_taskrunner_id(
            self.hostname, self.worker_groups
        ):
            changes["taskrunner_id"] = ""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``BRIDGE_*`` (and boto3's / Celery's) variables, then ``overrides``.

        Raises:
            ConfigError: a variable does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, keys in ENV.items():
            raw = next((env[k] for k in keys if env.get(k)), None)
            if raw is None:
                continue
            try:
                values[name] = _convert(name, raw)
            except ValueError as exc:
                raise ConfigError(f"{keys[0]}={raw!r}: {exc}") from exc
        if "redis_url" not in values and "broker_url" in values and values["broker_url"].startswith("redis"):
            values["redis_url"] = values["broker_url"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(name: str, raw: str) -> Any:
    if name in ("worker_groups", "env_allowlist"):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if name in ("max_in_flight", "queue_allowance", "metrics_port", "worker_metrics_port"):
        return int(raw)
    if name in ("api_budget_fraction", "local_budget_fraction"):
        return float(raw)
    if name == "rate_limit":
        if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError("expected true or false")
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name.endswith("_s"):
        return float(raw)
    if name == "routes":
        return parse_routes(raw)
    if name == "rds_endpoints":
        return parse_rds_endpoints(raw)
    return raw
