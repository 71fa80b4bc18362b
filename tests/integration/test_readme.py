"""The README's AWS CLI walkthrough runs as written (against the local service on a free port)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

from tests.support import ROOT, EmulatorProcess, child_env


def walkthrough() -> list[str]:
    """The shell block that starts with `bridge emulator`, minus that first line (the test starts the service)."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "bridge emulator --port" in b)
    return block.splitlines()[1:]


def test_readme_walkthrough_runs_as_written(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given the local service on a free port, with AWS's default timings except a short poll wait
    service = emulator_factory("--poll-wait", "5")
    script = "\n".join(["set -euo pipefail", *walkthrough()]).replace("8999", str(service.port))
    # when the README's commands run in bash from the project root
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=300
    )
    # then every command succeeds and list-runs shows the task the walkthrough finished
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FINISHED" in result.stdout
    assert "TmpExists" in result.stdout
