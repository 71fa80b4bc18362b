"""compose.yaml can't be run here (no Docker engine), so check that every command it runs exists here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.support import BIN, ROOT, child_env, redis_server_binary

#: Options that take a value: they belong to the command prefix we keep.
VALUED = {"-A", "-m"}


def compose() -> dict[str, Any]:
    with open(ROOT / "compose.yaml") as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def help_command(service: dict[str, Any]) -> list[str]:
    """The service's command cut before its first option, plus --help."""
    tokens = [str(t) for t in (service.get("entrypoint") or []) + (service.get("command") or [])]
    kept: list[str] = []
    skip_next = False
    for token in tokens:
        if skip_next:
            kept.append(token)
            skip_next = False
        elif token in VALUED:
            kept.append(token)
            skip_next = True
        elif token.startswith("-"):
            break
        else:
            kept.append(token)
    known = {"python": sys.executable, "celery": str(BIN / "celery")}
    program = redis_server_binary() if kept[0] == "redis-server" else known.get(kept[0]) or shutil.which(kept[0])
    assert program, f"{kept[0]} is not installed here"
    return [program, *kept[1:], "--help"]


SERVICES = compose()["services"]


def test_compose_has_the_whole_stack() -> None:
    # given / when: the compose file
    # then: it runs Redis, the local service, the poller, workers and Flower with auth
    assert {"redis", "emulator", "bridge", "worker", "flower"} <= set(SERVICES)
    assert any(str(arg).startswith("--basic-auth=") for arg in SERVICES["flower"]["command"])
    assert "-Q" in SERVICES["worker"]["command"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_command_runs_here_with_help(name: str) -> None:
    # given a service's command from compose.yaml
    cmd = help_command(SERVICES[name])
    # when it runs with --help
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)
    # then it exists and prints usage (redis-server's --help exits 1: only our own image's must exit 0)
    if "build" in SERVICES[name]:
        assert result.returncode == 0, f"{cmd}: {result.stderr[-2000:]}"
    assert "usage" in (result.stdout + result.stderr).lower()
