"""ShellCommandActivity and ShellCommandPrecondition: ``bash -c <command> <name> <args...>``."""

from __future__ import annotations

import os
from pathlib import Path

from bridge.errors import Canceled, InvalidTask, TaskFailure
from bridge.masking import SECRETS
from workers.context import Outcome, TaskContext, TaskStatus
from workers.handlers import register
from workers.supervisor import CommandResult, run_command, tail

#: Variables a command inherits from the worker; everything else is left out (no broker URLs, no keys).
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL")
MESSAGE_LIMIT = 10240
STDERR_TAIL_BYTES = 4096
STACK_LIMIT = 1024
PRECONDITION = "ShellCommandPrecondition"


def command_env(ctx: TaskContext) -> dict[str, str]:
    """The allowlisted environment of a command (DESIGN.md §7)."""
    names = BASE_ENV + tuple(ctx.settings.env_allowlist)
    env = {name: os.environ[name] for name in names if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        DP_PIPELINE_ID=ctx.task.pipeline_id,
        DP_ATTEMPT_ID=ctx.task.attempt_id,
        DP_OBJECT_ID=ctx.task.component_id,
        TMPDIR=str(ctx.work_dir),
    )
    return env


def _output_path(ctx: TaskContext, key: str) -> Path:
    value = ctx.attempt.get(key)
    if not value:
        return ctx.work_dir / f"{key}.log"
    if value.startswith("s3://"):
        raise TaskFailure(f"{key} to S3 ({value}) is not supported by this worker", "BridgeUnsupportedFeature")
    path = Path(value)
    if not path.is_absolute():
        path = ctx.work_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _argv(ctx: TaskContext) -> list[str]:
    command = ctx.attempt.get("command")
    script_uri = ctx.attempt.get("scriptUri")
    if command and script_uri:
        raise InvalidTask("set either 'command' or 'scriptUri', not both")
    if not command:
        if script_uri:
            raise TaskFailure("scriptUri (S3) is not supported by this worker yet", "BridgeUnsupportedFeature")
        raise InvalidTask(f"{ctx.task.object_type} needs 'command' or 'scriptUri'")
    return ["bash", "-c", command, ctx.task.component_id, *ctx.attempt.get_all("scriptArgument")]


def _failure_message(result: CommandResult, stderr_path: Path) -> tuple[str, str]:
    stderr = SECRETS.mask(tail(str(stderr_path), STDERR_TAIL_BYTES))
    message = f"Command {result.describe()}"
    if stderr.strip():
        message += f"; stderr (last {STDERR_TAIL_BYTES} bytes):\n{stderr}"
    return message[:MESSAGE_LIMIT], stderr[-STACK_LIMIT:]


@register("ShellCommandActivity", PRECONDITION)
def run_shell(ctx: TaskContext) -> Outcome:
    """Run the command; map its exit status to FINISHED / FAILED (or FALSE for a precondition).

    Raises:
        Canceled: Data Pipeline canceled the task while the command ran.
        TaskFailure: a bridge-side problem (unsupported field, bad task).
    """
    argv = _argv(ctx)
    stdout_path, stderr_path = _output_path(ctx, "stdout"), _output_path(ctx, "stderr")
    ctx.log.info("started command in %s", ctx.work_dir)
    result = run_command(
        argv,
        cwd=str(ctx.work_dir),
        env=command_env(ctx),
        stdout_path=str(stdout_path),
        stderr_path=str(stderr_path),
        cancel=ctx.cancel,
        timeout_s=ctx.task.attempt_timeout_s,
        grace_s=ctx.settings.kill_grace_s,
    )
    ctx.log.info("command ended: %s", result.describe())
    if result.canceled:
        raise Canceled(ctx.cancel_reason or "canceled")
    message, stack = _failure_message(result, stderr_path)
    if result.timed_out:
        return Outcome.failed("BridgeAttemptTimeout", message, stack)
    if ctx.task.object_type == PRECONDITION:
        if result.exit_code == 0:
            return Outcome.finished()
        if result.exit_code is not None and 1 <= result.exit_code <= 125:
            return Outcome(TaskStatus.FALSE, None, f"Precondition not met: {message}", stack)
        return Outcome.failed("BridgePreconditionError", message, stack)
    if result.exit_code == 0:
        return Outcome.finished()
    return Outcome.failed("BridgeCommandFailed", message, stack)
