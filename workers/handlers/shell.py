"""ShellCommandActivity and ShellCommandPrecondition: ``bash -c <command> <name> <args...>`` or an S3 script.

What AWS documents (reference §6.5) and this handler does:

- ``command`` runs under ``bash -c`` with the ``scriptArgument`` values as ``$1..$n``. ``scriptUri`` is an S3
  script, downloaded and run with ``bash`` exactly as it is (it takes no parameters and is not evaluated);
  ``scriptArgument`` with ``scriptUri`` is an error.
- ``stdout`` / ``stderr``: a local path (worker groups may use one), or an S3 URI, written locally and uploaded
  when the command ends, partial output included when it failed.
- ``stage: true`` with S3DataNode ``input``\\s and ``output``\\s: each input (``directoryPath``: the whole prefix;
  ``filePath``: that file) is copied into ``${INPUT<n>_STAGING_DIR}`` before the command; after it succeeds,
  ``${OUTPUT<n>_STAGING_DIR}`` is uploaded to the output's ``directoryPath`` (outputs need one, as AWS requires).
- The attempt's handler log, stdout and stderr are shipped under ``pipelineLogUri`` (workers.logship).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bridge.errors import Canceled, InvalidTask, TaskFailure
from bridge.masking import SECRETS
from workers import storage
from workers.context import Outcome, TaskContext, TaskStatus
from workers.handlers import register
from workers.heartbeat import fenced
from workers.logship import AttemptLog, attempt_log
from workers.supervisor import CommandResult, run_command, tail

#: Variables a command inherits from the worker; everything else is left out (no broker URLs, no keys).
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER", "LOGNAME", "SHELL")
MESSAGE_LIMIT = 10240
STDERR_TAIL_BYTES = 4096
STACK_LIMIT = 1024
PRECONDITION = "ShellCommandPrecondition"
S3_NODE = "S3DataNode"


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


@dataclass(frozen=True)
class Output:
    """Where a stream of the command goes: ``path`` locally, then ``uri`` in S3 if set."""

    name: str
    path: Path
    uri: str | None = None


@dataclass(frozen=True)
class StagedNode:
    """One staged S3DataNode: its variable (``INPUT1_STAGING_DIR``), local directory and S3 location."""

    variable: str
    node_id: str
    directory: Path
    uri: str
    is_file: bool


def _output(ctx: TaskContext, key: str) -> Output:
    value = (ctx.attempt.get(key) or "").strip()
    if not value:
        return Output(key, ctx.work_dir / f"{key}.log")
    if "://" in value:
        storage.parse_s3_uri(value)  # an s3:// URI, or InvalidTask naming it
        return Output(key, ctx.work_dir / f"{key}.log", value)
    path = Path(value)
    if not path.is_absolute():
        path = ctx.work_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return Output(key, path)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _staging_plan(ctx: TaskContext) -> tuple[list[StagedNode], list[StagedNode]]:
    """The inputs and outputs to stage, checked before anything is downloaded.

    Raises:
        InvalidTask: a node that is not an S3DataNode, has no location, or an output without ``directoryPath``.
    """
    root = ctx.work_dir / "staging"
    inputs: list[StagedNode] = []
    for n, node_id in enumerate(ctx.attempt.refs("input"), start=1):
        node = ctx.resolve(node_id)
        _check_s3_node(node.type, node_id, "input")
        directory_path, file_path = node.get("directoryPath"), node.get("filePath")
        if not directory_path and not file_path:
            raise InvalidTask(f"staged input {node_id!r} has neither 'directoryPath' nor 'filePath'")
        uri = directory_path or file_path or ""
        storage.parse_s3_uri(uri)
        inputs.append(StagedNode(f"INPUT{n}_STAGING_DIR", node_id, root / f"input{n}", uri, not directory_path))
    outputs: list[StagedNode] = []
    for n, node_id in enumerate(ctx.attempt.refs("output"), start=1):
        node = ctx.resolve(node_id)
        _check_s3_node(node.type, node_id, "output")
        directory_path = node.get("directoryPath")
        if not directory_path:
            has = "only 'filePath'" if node.get("filePath") else "no 'directoryPath'"
            raise InvalidTask(
                f"staged output {node_id!r} has {has}: output staging needs 'directoryPath' on the output "
                "S3DataNode (AWS allows output staging only when directoryPath is set)"
            )
        storage.parse_s3_uri(directory_path)
        outputs.append(StagedNode(f"OUTPUT{n}_STAGING_DIR", node_id, root / f"output{n}", directory_path, False))
    return inputs, outputs


def _check_s3_node(node_type: str | None, node_id: str, role: str) -> None:
    if node_type != S3_NODE:
        raise InvalidTask(
            f"stage: true needs S3DataNode inputs and outputs, but {role} {node_id!r} is a {node_type or 'untyped'} "
            "object"
        )


def _fill_inputs(ctx: TaskContext, inputs: list[StagedNode]) -> None:
    for staged in inputs:
        if ctx.cancel.is_set():
            raise Canceled(_cancel_reason(ctx))
        staged.directory.mkdir(parents=True, exist_ok=True)
        if staged.is_file:
            name = PurePosixPath(storage.parse_s3_uri(staged.uri)[1]).name or "input"
            storage.download(ctx.settings, staged.uri, staged.directory / name)
            count = 1
        else:
            count = len(storage.download_prefix(ctx.settings, staged.uri, staged.directory))
        ctx.log.info("staged input %s: %d file(s) from %s", staged.node_id, count, staged.uri)


def _push_outputs(ctx: TaskContext, outputs: list[StagedNode]) -> None:
    for staged in outputs:
        uploaded = storage.upload_dir(ctx.settings, staged.directory, staged.uri)
        ctx.log.info("staged output %s: %d file(s) to %s", staged.node_id, len(uploaded), staged.uri)


def _argv(ctx: TaskContext) -> list[str]:
    """The command line; an S3 script is downloaded first.

    Raises:
        InvalidTask: neither or both of command/scriptUri, or scriptArgument with scriptUri.
        TaskFailure: the script could not be downloaded (``BridgeS3NotFound``...).
    """
    command = ctx.attempt.get("command")
    script_uri = (ctx.attempt.get("scriptUri") or "").strip()
    arguments = ctx.attempt.get_all("scriptArgument")
    if command and script_uri:
        raise InvalidTask("set either 'command' or 'scriptUri', not both")
    if command:
        return ["bash", "-c", command, ctx.task.component_id, *arguments]
    if not script_uri:
        raise InvalidTask(f"{ctx.task.object_type} needs 'command' or 'scriptUri'")
    if arguments:
        raise InvalidTask(
            "'scriptArgument' can only be used with 'command'; with 'scriptUri' it is an error (AWS: scriptUri "
            "takes no parameters; use command, e.g. 'bash script.sh $1', to pass arguments)"
        )
    name = PurePosixPath(storage.parse_s3_uri(script_uri)[1]).name or "script"
    path = storage.download(ctx.settings, script_uri, ctx.work_dir / "script" / name)
    path.chmod(0o700)
    ctx.log.info("downloaded script %s", script_uri)
    return ["bash", str(path)]


def _failure_message(result: CommandResult, stderr_path: Path) -> tuple[str, str]:
    try:
        stderr = SECRETS.mask(tail(str(stderr_path), STDERR_TAIL_BYTES))
    except OSError:
        stderr = ""
    message = f"Command {result.describe()}"
    if stderr.strip():
        message += f"; stderr (last {STDERR_TAIL_BYTES} bytes):\n{stderr}"
    return message[:MESSAGE_LIMIT], stderr[-STACK_LIMIT:]


def _upload_streams(ctx: TaskContext, outputs: list[Output]) -> TaskFailure | None:
    """Upload the S3-bound streams (partial output too); returns the first failure instead of raising it."""
    first: TaskFailure | None = None
    for out in outputs:
        if out.uri is None:
            continue
        try:
            if not out.path.exists():
                out.path.touch()
            storage.upload(ctx.settings, out.path, out.uri)
            ctx.log.info("uploaded %s to %s", out.name, out.uri)
        except TaskFailure as exc:
            ctx.log.warning("could not upload %s to %s: %s", out.name, out.uri, exc)
            first = first or exc
    return first


def _cancel_reason(ctx: TaskContext) -> str:
    return str(getattr(ctx.cancel, "reason", "") or ctx.cancel_reason or "canceled")


def _command_outcome(ctx: TaskContext, result: CommandResult, stderr_path: Path) -> Outcome:
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


@register("ShellCommandActivity", PRECONDITION)
def run_shell(ctx: TaskContext) -> Outcome:
    """Stage, run the command, upload its outputs; map its exit status to FINISHED / FAILED (FALSE for a
    precondition). The attempt's logs are shipped under ``pipelineLogUri`` whatever happens (unless fenced).

    Raises:
        Canceled: Data Pipeline canceled the task while the command ran.
        TaskFailure: a bridge-side problem (bad task, S3 error before the command ran).
    """
    with attempt_log(ctx) as captured:
        try:
            return _run(ctx, captured)
        except TaskFailure as exc:
            ctx.log.warning("failed: %s (%s)", exc, exc.error_id)  # into the shipped handler log too
            raise
        finally:
            if not (ctx.cancel.is_set() and fenced(_cancel_reason(ctx))):  # a fenced attempt is another's
                captured.ship(ctx)


def _run(ctx: TaskContext, captured: AttemptLog) -> Outcome:
    # Everything that can be checked without I/O first, so a bad task fails before anything is downloaded.
    streams = [_output(ctx, "stdout"), _output(ctx, "stderr")]
    stdout, stderr = streams
    for out in streams:
        captured.add(out.path, out.name)
    stage = _is_true(ctx.attempt.get("stage"))
    inputs, outputs = _staging_plan(ctx) if stage else ([], [])
    argv = _argv(ctx)
    env = command_env(ctx)
    _fill_inputs(ctx, inputs)
    for staged in [*inputs, *outputs]:
        staged.directory.mkdir(parents=True, exist_ok=True)
        env[staged.variable] = str(staged.directory)

    ctx.log.info("started command in %s", ctx.work_dir)
    result = run_command(
        argv,
        cwd=str(ctx.work_dir),
        env=env,
        stdout_path=str(stdout.path),
        stderr_path=str(stderr.path),
        cancel=ctx.cancel,
        timeout_s=ctx.task.attempt_timeout_s,
        grace_s=ctx.settings.kill_grace_s,
    )
    ctx.log.info("command ended: %s", result.describe())
    if result.canceled:
        if not fenced(_cancel_reason(ctx)):  # a fenced attempt's outputs belong to another worker
            _upload_streams(ctx, streams)
        raise Canceled(_cancel_reason(ctx))
    outcome = _command_outcome(ctx, result, stderr.path)
    if outcome.status != TaskStatus.FINISHED:
        ctx.log.warning("command did not succeed (%s): %s", outcome.status, outcome.error_message)
    upload_error = _upload_streams(ctx, streams)
    if outcome.status == TaskStatus.FINISHED:
        if upload_error is not None:
            return Outcome.failed(upload_error.error_id, f"The command succeeded but {upload_error}")
        _push_outputs(ctx, outputs)
        return outcome
    if upload_error is not None:  # the command's own outcome stays; the upload failure is only mentioned
        message = f"{outcome.error_message or ''}\n(also: {upload_error})".strip()[:MESSAGE_LIMIT]
        return Outcome(outcome.status, outcome.error_id, message, outcome.error_stack_trace)
    return outcome
