"""Shell activities and the Exists precondition against S3, end to end, and attempt logs under pipelineLogUri.

One stack for the module: moto's S3 server (real HTTP), the local service (periods scaled 60x, so a 2-minute
``retryDelay`` is 2 s), a private Redis, one threads-pool worker on ``dp.s3wg`` with the S3 endpoint in its
environment, and ``bridge start -g s3wg``. Outcomes are read the way a user reads them: DescribeObjects, and the
objects that landed in S3.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.api import Boto3TaskApi
from bridge.masking import MASK, SECRETS
from bridge.settings import Settings
from bridge.taskmodel import parse_task_object
from tests.integration.bridge_stack import Stack, attempts, instance, run_pipeline, wait_final
from tests.moto_server import CREDENTIALS, MotoServer
from tests.samples_adapt import load_sample, to_worker_group, with_values
from tests.support import (
    EmulatorProcess,
    dp_client,
    instance_of,
    ondemand_definition,
    put_definition,
    shell_activity,
    start_pipeline,
    wait_for,
    wait_for_task,
)
from workers.context import TaskContext
from workers.logship import ACTIVITY_LOG, attempt_log, log_prefix

GROUP = "s3wg"
SECRET = "Zq-s3cr3t-7781"


def plugin_path(root: Path) -> str | None:
    """A directory whose dist-info declares ``workers.handlers.exists`` as a handler plugin, unless it is built in.

    Until ``load_builtin()`` imports the Exists handler, the worker loads it through the handler entry points.
    """
    from workers.handlers import ENTRY_POINT_GROUP, load_builtin

    if "Exists" in load_builtin():
        return None
    info = root / "dp_bridge_exists_shim-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dp-bridge-exists-shim\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nexists = workers.handlers.exists\n")
    return str(root)


@pytest.fixture(scope="module")
def s3server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(s3server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = dict(s3server.env)
    plugins = plugin_path(tmp_path_factory.mktemp("plugins"))
    if plugins:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))
    stack = Stack(["--poll-wait", "2", "--time-scale", "60"], BRIDGE_KILL_GRACE_S="2", **env)
    try:
        stack.start()
        stack.worker(f"dp.{GROUP}", pool="threads", concurrency=2)
        stack.bridge(GROUP)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def bucket(s3server: MotoServer) -> str:
    return s3server.bucket()


@pytest.fixture
def s3(s3server: MotoServer) -> Any:
    return s3server.client()


def script_activity(object_id: str, script_uri: str, **fields: Any) -> dict[str, Any]:
    """A ShellCommandActivity that runs an S3 script (no ``command``)."""
    return {"id": object_id, "type": "ShellCommandActivity", "scriptUri": script_uri, **fields}


def read(s3: Any, uri: str) -> str:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    text: str = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return text


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix) :] for item in found)


def test_a_script_in_s3_runs_as_downloaded(stack: Stack, bucket: str, s3: Any) -> None:
    # given a script in S3 that prints its $0 and arguments, holds text that looks like an expression, and
    # writes a marker; stdout goes to S3
    marker = stack.dir / "script-ran"
    script = f"#!/bin/bash\necho \"zero=$0 args=$#\"\necho 'left alone: #{{myParam}}'\necho ran > {marker}\n"
    s3.put_object(Bucket=bucket, Key="scripts/hello.sh", Body=script.encode())
    out = f"s3://{bucket}/out/script/stdout.txt"
    pipeline = run_pipeline(stack.dp, GROUP, script_activity("Script", f"s3://{bucket}/scripts/hello.sh", stdout=out))

    # when it runs
    ended = wait_final(stack.dp, pipeline, "Script")

    # then it finished, ran with bash as the downloaded file with no arguments, and nothing in it was evaluated
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    lines = read(s3, out).splitlines()
    assert lines[0].startswith("zero=/") and lines[0].endswith("/hello.sh args=0")
    assert lines[1] == "left alone: #{myParam}"
    assert marker.read_text() == "ran\n"


def test_script_arguments_with_a_script_uri_fail_as_aws_documents(stack: Stack, bucket: str, s3: Any) -> None:
    # given a scriptUri with scriptArgument (AWS: "Using it with scriptUri causes an error")
    marker = stack.dir / "args-script-ran"
    s3.put_object(Bucket=bucket, Key="scripts/args.sh", Body=f"echo ran > {marker}\n".encode())
    activity = script_activity("WithArgs", f"s3://{bucket}/scripts/args.sh", scriptArgument=["one", "two"])
    pipeline = run_pipeline(stack.dp, GROUP, activity)

    # when it runs
    ended = wait_final(stack.dp, pipeline, "WithArgs")

    # then it failed as an invalid task that says why, and the script never ran
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeInvalidTask"
    assert "'scriptArgument' can only be used with 'command'" in ended["errorMessage"]
    assert not marker.exists()


def test_stdout_and_stderr_reach_s3_even_when_the_command_fails(stack: Stack, bucket: str, s3: Any) -> None:
    # given a command that writes to both streams, then fails
    out, err = f"s3://{bucket}/out/fail/stdout", f"s3://{bucket}/out/fail/stderr"
    command = "echo 'first line'; echo 'partial result'; echo 'fatal: no space left' >&2; exit 4"
    pipeline = run_pipeline(stack.dp, GROUP, shell_activity("Partial", command=command, stdout=out, stderr=err))

    # when it runs
    ended = wait_final(stack.dp, pipeline, "Partial")

    # then it failed with the command's own status, and both streams were uploaded as far as they went
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeCommandFailed"
    assert "exit status 4" in ended["errorMessage"]
    assert read(s3, out) == "first line\npartial result\n"
    assert read(s3, err) == "fatal: no space left\n"


def test_staging_fills_two_inputs_and_uploads_the_output(stack: Stack, bucket: str, s3: Any) -> None:
    # given a directory input (two files, one nested), a single-file input and an output directory
    s3.put_object(Bucket=bucket, Key="stage/orders/2024/a.csv", Body=b"1,apple\n")
    s3.put_object(Bucket=bucket, Key="stage/orders/b.csv", Body=b"2,pear\n")
    s3.put_object(Bucket=bucket, Key="stage/prices.csv", Body=b"apple,3\npear,5\n")
    command = (
        'cat "$INPUT1_STAGING_DIR"/2024/a.csv "$INPUT1_STAGING_DIR"/b.csv > "$OUTPUT1_STAGING_DIR"/orders.csv; '
        'mkdir "$OUTPUT1_STAGING_DIR"/sub; cp "$INPUT2_STAGING_DIR"/prices.csv "$OUTPUT1_STAGING_DIR"/sub/; '
        'test -z "$INPUT3_STAGING_DIR"'
    )
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "Orders", "type": "S3DataNode", "directoryPath": f"s3://{bucket}/stage/orders"},
        {"id": "Prices", "type": "S3DataNode", "filePath": f"s3://{bucket}/stage/prices.csv"},
        {"id": "Report", "type": "S3DataNode", "directoryPath": f"s3://{bucket}/stage/report/"},
        shell_activity(
            "Merge",
            command=command,
            stage="true",
            input=[{"ref": "Orders"}, {"ref": "Prices"}],
            output={"ref": "Report"},
        ),
    )

    # when it runs
    ended = wait_final(stack.dp, pipeline, "Merge")

    # then the command saw both inputs (numbered in order) and what it staged landed in the output directory
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    assert keys(s3, bucket, "stage/report/") == ["orders.csv", "sub/prices.csv"]
    assert read(s3, f"s3://{bucket}/stage/report/orders.csv") == "1,apple\n2,pear\n"
    assert read(s3, f"s3://{bucket}/stage/report/sub/prices.csv") == "apple,3\npear,5\n"


def test_a_missing_input_fails_not_found_before_the_command_runs(stack: Stack, bucket: str) -> None:
    marker = stack.dir / "missing-input-ran"
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "Nothing", "type": "S3DataNode", "directoryPath": f"s3://{bucket}/no/such/dir"},
        shell_activity("NeedsInput", command=f"touch {marker}", stage="true", input={"ref": "Nothing"}),
    )
    ended = wait_final(stack.dp, pipeline, "NeedsInput")
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeS3NotFound"
    assert f"s3://{bucket}/no/such/dir" in ended["errorMessage"]
    assert not marker.exists()


def test_a_missing_script_fails_not_found(stack: Stack, bucket: str) -> None:
    uri = f"s3://{bucket}/scripts/not-there.sh"
    pipeline = run_pipeline(stack.dp, GROUP, script_activity("NoScript", uri))
    ended = wait_final(stack.dp, pipeline, "NoScript")
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeS3NotFound"
    assert uri in ended["errorMessage"]


def test_a_staged_output_without_a_directory_path_is_invalid(stack: Stack, bucket: str) -> None:
    marker = stack.dir / "file-output-ran"
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "OneFile", "type": "S3DataNode", "filePath": f"s3://{bucket}/out/one.csv"},
        shell_activity("FileOut", command=f"touch {marker}", stage="true", output={"ref": "OneFile"}),
    )
    ended = wait_final(stack.dp, pipeline, "FileOut")
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeInvalidTask"
    assert "'OneFile'" in ended["errorMessage"] and "directoryPath" in ended["errorMessage"]
    assert not marker.exists()


def test_exists_is_false_until_the_key_appears_then_releases_the_activity(stack: Stack, bucket: str, s3: Any) -> None:
    # given an activity reading two data nodes, each guarded by an Exists precondition re-checked every (scaled)
    # 2 minutes: a file that does not exist yet, and a directory that already has data
    marker = stack.dir / "exists-released"
    key = f"landing/{uuid.uuid4().hex}/ready.flag"
    s3.put_object(Bucket=bucket, Key="landing/dir-ready/part-0", Body=b"x")
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "FlagExists", "type": "Exists", "retryDelay": "2 minutes"},
        {"id": "FolderExists", "type": "Exists", "retryDelay": "2 minutes"},
        {"id": "Flag", "type": "S3DataNode", "filePath": f"s3://{bucket}/{key}", "precondition": {"ref": "FlagExists"}},
        {
            "id": "Folder",
            "type": "S3DataNode",
            "directoryPath": f"s3://{bucket}/landing/dir-ready",
            "precondition": {"ref": "FolderExists"},
        },
        shell_activity("Load", command=f"touch {marker}", input=[{"ref": "Flag"}, {"ref": "Folder"}]),
    )

    # when the file's precondition is first checked
    first = wait_for(
        lambda: next((a for a in attempts(stack.dp, pipeline, "FlagExists") if a.get("attemptStatus")), None),
        timeout=60,
        what="the first Exists check of the file",
    )

    # then it was FALSE, saying what is missing; the directory's held; the activity has not run
    assert first["attemptStatus"] == "FALSE"
    assert f"s3://{bucket}/{key} does not exist" in first["errorMessage"]
    assert wait_final(stack.dp, pipeline, "FolderExists")["@status"] == "FINISHED"
    assert not marker.exists()

    # when the key appears, a later check finds it and the activity runs
    s3.put_object(Bucket=bucket, Key=key, Body=b"")
    ended = wait_final(stack.dp, pipeline, "Load", timeout=60)
    assert ended["@status"] == "FINISHED"
    assert marker.exists()
    checks = [a.get("attemptStatus") for a in attempts(stack.dp, pipeline, "FlagExists")]
    assert checks[0] == "FALSE" and checks[-1] == "FINISHED"


def test_exists_on_a_sql_table_waits_for_the_table(stack: Stack) -> None:
    # given an activity reading a SqlDataNode (a local SQLite database) guarded by Exists, before its table exists
    db = stack.dir / "exists.sqlite"
    sqlite3.connect(db).close()
    marker = stack.dir / "table-released"
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {
            "id": "Db",
            "type": "JdbcDatabase",
            "connectionString": f"jdbc:sqlite:{db}",
            "jdbcDriverClass": "org.sqlite.JDBC",
            "username": "loader",
            "*password": SECRET,
        },
        {"id": "TableThere", "type": "Exists", "retryDelay": "2 minutes"},
        {
            "id": "Events",
            "type": "SqlDataNode",
            "table": "events",
            "database": {"ref": "Db"},
            "precondition": {"ref": "TableThere"},
        },
        shell_activity("ReadEvents", command=f"touch {marker}", input={"ref": "Events"}),
    )

    # when it is first checked, it is FALSE and names the table
    first = wait_for(
        lambda: next((a for a in attempts(stack.dp, pipeline, "TableThere") if a.get("attemptStatus")), None),
        timeout=60,
        what="the first Exists check of the table",
    )
    assert first["attemptStatus"] == "FALSE", first.get("errorMessage")
    assert "table events" in first["errorMessage"]

    # when the table is created, a later check passes and the activity runs
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events (id INTEGER)")
    assert wait_final(stack.dp, pipeline, "ReadEvents", timeout=60)["@status"] == "FINISHED"
    assert marker.exists()


def test_exists_on_a_node_it_cannot_check_fails_clearly(stack: Stack) -> None:
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        {"id": "TableExists", "type": "Exists"},
        {"id": "Events", "type": "DynamoDBDataNode", "tableName": "events", "precondition": {"ref": "TableExists"}},
        shell_activity("UsesEvents", input={"ref": "Events"}),
    )
    ended = wait_final(stack.dp, pipeline, "TableExists")
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeUnsupportedPrecondition"
    assert "DynamoDBDataNode" in ended["errorMessage"]


def test_logs_are_shipped_under_pipeline_log_uri_in_aws_layout(stack: Stack, bucket: str, s3: Any) -> None:
    # given a pipeline logging to S3 (pipelineLogUri on Default) whose activity holds a secret and prints it
    logs = f"s3://{bucket}/pipeline-logs"
    command = "echo 'to stdout'; echo \"using $1\" >&2; exit 2"
    pipeline = run_pipeline(
        stack.dp,
        GROUP,
        shell_activity("Logged", command=command, scriptArgument=[SECRET], **{"*myPassword": SECRET}),
        pipelineLogUri=logs,
    )

    # when it runs
    ended = wait_final(stack.dp, pipeline, "Logged")

    # then its handler log, stdout and stderr are in <pipelineLogUri>/<pipelineId>/<component>/<instance>/<attempt>/
    assert ended["@status"] == "FAILED"
    attempt_id = ended["@headAttempt"]
    prefix = f"pipeline-logs/{pipeline}/Logged/{ended['@id']}/{attempt_id}/"
    assert keys(s3, bucket, prefix) == [ACTIVITY_LOG, "stderr", "stdout"]
    assert read(s3, f"s3://{bucket}/{prefix}stdout") == "to stdout\n"
    activity_log = read(s3, f"s3://{bucket}/{prefix}{ACTIVITY_LOG}")
    assert "started command" in activity_log and "exit status 2" in activity_log
    # and the handler log names the failure with the secret masked
    assert f"using {MASK}" in activity_log
    assert SECRET not in activity_log


def test_the_attempt_log_masks_secrets_and_nests(
    bucket: str,
    s3: Any,
    s3server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a real task object with a *myPassword (from a local service), as a handler's context sees it, with
    # credentials where boto3's default chain finds them
    for name, value in {
        **CREDENTIALS,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO)
    service = EmulatorProcess(["--poll-wait", "1"]).start()
    try:
        dp = dp_client(service.url)
        logs = f"s3://{bucket}/ctx-logs"
        doc = ondemand_definition(
            shell_activity("Direct", **{"*myPassword": SECRET}), workerGroup="direct", pipelineLogUri=logs
        )
        start_pipeline(dp, doc)
        task = parse_task_object(wait_for_task(dp, "direct"))
        SECRETS.add(task.secrets)
        ctx = TaskContext(
            task,
            Settings(s3_endpoint_url=s3server.url),
            Boto3TaskApi(service.url, "us-east-1"),
            tmp_path,
            threading.Event(),
            logging.LoggerAdapter(logging.getLogger("workers.test"), {"task_key": task.key}),
        )
        extra = tmp_path / "extra.txt"
        extra.write_text("extra\n")

        # when lines are logged inside a capture (and a nested one, which ships nothing itself)
        with attempt_log(ctx) as outer:
            ctx.log.info("connecting with password %s", SECRET)
            with attempt_log(ctx) as inner:
                inner.add(extra, "stdout")
                assert inner.ship(ctx) == []
            logging.getLogger("elsewhere").info("same thread, other logger")
            threading.Thread(target=lambda: logging.getLogger("elsewhere").info("other thread")).start()
            shipped = outer.ship(ctx)
    finally:
        service.stop()

    # then the outer capture shipped the masked handler log and the nested one's file, in AWS's layout
    prefix = log_prefix(ctx)
    assert prefix == f"{logs}/{task.pipeline_id}/Direct/{task.instance_id}/{task.attempt_id}/"
    assert shipped == [f"{prefix}{ACTIVITY_LOG}", f"{prefix}stdout"]
    text = read(s3, f"{prefix}{ACTIVITY_LOG}")
    assert f"connecting with password {MASK}" in text and SECRET not in text
    assert "same thread, other logger" in text and "other thread" not in text
    assert read(s3, f"{prefix}stdout") == "extra\n"


def test_the_aws_staging_sample_runs_to_finished(stack: Stack, bucket: str, s3: Any) -> None:
    # given shell-command-s3-staging.json adapted as the samples README says (→ worker group), its staging path
    # and log path in moto, and the bashscript.sh it runs (not shipped with the sample) at the staging path
    staging, logs = f"s3://{bucket}/sample/staging", f"s3://{bucket}/sample/logs"
    s3.put_object(Bucket=bucket, Key="sample/staging/bashscript.sh", Body=b'echo "$# args: $*"\n')
    doc = with_values(to_worker_group(load_sample("shell-command-s3-staging.json"), GROUP), myS3StagingPath=staging)
    doc = with_values(doc, myS3LogsPath=logs)
    pipeline_id: str = stack.dp.create_pipeline(name="sample", uniqueId=str(uuid.uuid4()))["pipelineId"]
    result = put_definition(stack.dp, pipeline_id, doc)
    assert not result["errored"], result["validationErrors"]
    stack.dp.activate_pipeline(pipelineId=pipeline_id)

    # when its one scheduled run ends
    component = "Shell_Command_Staging_Activity"
    ended = wait_final(stack.dp, pipeline_id, component, timeout=90)

    # then it finished; its stdout (shipped under pipelineLogUri) shows the argument, which the sample's unquoted
    # $1 splits in two; its stderr holds bash -x's trace of the script
    assert ended["@status"] == "FINISHED", ended.get("errorMessage")
    prefix = f"sample/logs/{pipeline_id}/{component}/{ended['@id']}/{ended['@headAttempt']}/"
    assert read(s3, f"s3://{bucket}/{prefix}stdout") == "2 args: hello world\n"
    assert "+ echo '2 args: hello world'" in read(s3, f"s3://{bucket}/{prefix}stderr")
    assert instance(stack.dp, pipeline_id, component)["@status"] == "FINISHED"
    assert instance_of(stack.dp, pipeline_id, component) == ended["@id"]
