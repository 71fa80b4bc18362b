"""The AWS sample definitions (``../shared/samples/``) on the local service and on a worker group.

Every strict-JSON sample, adapted only as the samples README says (→ worker group, values for required
parameters without one), validates and is stored over HTTP, by boto3 and by the AWS CLI; the two files that are
not strict JSON fail in the CLI's own parsing before anything is sent. Nine samples then activate and run to a
final status through the whole bridge: one module-wide stack of the local service, a private Redis, a real
Celery worker (threads, two slots) on ``dp.wg`` and ``bridge start -g wg``.

The service clock runs 8640 times faster than real time, so one scheduled day passes in ten real seconds:
recurring daily schedules recur and a one-day ``timeseries`` period ends while the test waits. Periods in
definitions are divided by 60 and the default retry delay is one minute, so the two retries a failing attempt
gets (``maximumRetries`` defaults to 2) come one real second apart.

Shell commands are swapped only where the README says to; where a test reads what a command wrote, the
activity's ``stdout`` is pointed at a local file. Commands see the AWS CLI on their ``PATH`` but no credentials
(``AWS_CONFIG_FILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` are ``/dev/null``, instance metadata is off), so a
sample's ``aws ...`` command can never reach a real account.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from emulator.definition import definition_file_to_api
from tests.integration.bridge_stack import FINAL, Stack, attempts, instances, running_stack, wait_final
from tests.samples_adapt import (
    DATETIME_FORMAT,
    NOT_STRICT_JSON,
    STRICT_SAMPLES,
    WORKER_GROUP,
    Obj,
    companion_paths,
    load_repaired,
    load_sample,
    read_sample,
    rename_parameter,
    starting_at,
    to_worker_group,
    with_fields,
    with_required_values,
    with_values,
)
from tests.support import BIN, SAMPLES, aws_cli, fields_of, free_port, put_definition, wait_for

#: One scheduled day in ten real seconds.
CLOCK_SPEED = 8640
DAY = timedelta(days=1)
LOGS = "s3://local-logs/samples"
#: The five ``scriptArgument``s of the EFS backup samples, from their parameters' defaults.
EFS_ARGUMENTS = ["10.0.1.32:/", "10.0.1.75:/", "daily", "7", "backup-fs-12345678"]

Activate = Callable[[Obj], str]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(
        WORKER_GROUP,
        ["--poll-wait", "2", "--time-scale", "60", "--clock-speed", str(CLOCK_SPEED), "--default-retry-delay", "60"],
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        BRIDGE_ENV_ALLOWLIST="AWS_CONFIG_FILE,AWS_SHARED_CREDENTIALS_FILE,AWS_EC2_METADATA_DISABLED",
        # No S3 in this module (test_handlers_copy.py runs the copies against one): a closed port fails fast,
        # where AWS's real endpoint would make the result depend on the network.
        BRIDGE_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
    ) as stack:
        yield stack


@pytest.fixture
def dp(stack: Stack) -> Any:
    return stack.dp


@pytest.fixture
def activate(dp: Any) -> Iterator[Activate]:
    """Create, put (it must validate) and activate a definition; every such pipeline is deactivated afterwards.

    Recurring schedules would otherwise go on creating instances for the rest of the module.
    """
    started: list[str] = []

    def run(doc: Obj) -> str:
        pipeline_id = new_pipeline(dp)
        result = put_definition(dp, pipeline_id, doc)
        assert not result["errored"], result["validationErrors"]
        started.append(pipeline_id)
        dp.activate_pipeline(pipelineId=pipeline_id)
        return pipeline_id

    yield run
    for pipeline_id in started:
        dp.deactivate_pipeline(pipelineId=pipeline_id)


# -- helpers ---------------------------------------------------------------------------------------------


def new_pipeline(dp: Any) -> str:
    pipeline_id: str = dp.create_pipeline(name="sample", uniqueId=str(uuid.uuid4()))["pipelineId"]
    return pipeline_id


def adapted(name: str) -> Obj:
    """A strict sample as the README adapts it for validation: → worker group, required values supplied."""
    return with_required_values(to_worker_group(load_sample(name)))


def api_definition(doc: Obj) -> dict[str, Any]:
    """A definition file's content as the keyword arguments of Validate/PutPipelineDefinition."""
    objects, parameters, values = definition_file_to_api(doc)
    return {"pipelineObjects": objects, "parameterObjects": parameters, "parameterValues": values}


def service_now(stack: Stack) -> datetime:
    """The service clock (it runs ``CLOCK_SPEED`` times faster than the host's)."""
    return when(stack.emulator.admin("clock")["now"])


def when(text: str) -> datetime:
    """A time the service shows (``YYYY-MM-DDTHH:MM:SS``, UTC)."""
    return datetime.strptime(text, DATETIME_FORMAT)


def write_json(path: Path, doc: Obj) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


def instances_of(dp: Any, pipeline_id: str, component_id: str) -> list[dict[str, Any]]:
    """Every instance of one component as DescribeObjects shows it, oldest scheduled start first."""
    query = {"selectors": [{"fieldName": "@componentParent", "operator": {"type": "REF_EQ", "values": [component_id]}}]}
    ids = dp.query_objects(pipelineId=pipeline_id, sphere="INSTANCE", query=query)["ids"]
    found = dp.describe_objects(pipelineId=pipeline_id, objectIds=ids)["pipelineObjects"] if ids else []
    return sorted(map(fields_of, found), key=lambda fields: fields["@scheduledStartTime"])


def wait_ended(dp: Any, pipeline_id: str, component_id: str, count: int = 1, timeout: float = 60.0) -> list[Obj]:
    """Wait until ``component_id`` has ``count`` instances that ended; returns those, oldest first.

    Unlike ``wait_final`` it also waits for instances the schedule has not created yet.
    """

    def ended() -> list[Obj] | None:
        found = instances_of(dp, pipeline_id, component_id)[:count]
        return found if len(found) == count and all(i["@status"] in FINAL for i in found) else None

    result: list[Obj] = wait_for(ended, timeout=timeout, interval=0.2, what=f"{count} ended {component_id}")
    return result


def evaluated(dp: Any, pipeline_id: str, object_id: str) -> dict[str, Any]:
    """An object's fields with their expressions evaluated (DescribeObjects ``evaluateExpressions``)."""
    found = dp.describe_objects(pipelineId=pipeline_id, objectIds=[object_id], evaluateExpressions=True)
    return fields_of(found["pipelineObjects"][0])


def cli_put(stack: Stack, pipeline_id: str, definition: Path, *options: str, check: bool = True) -> Any:
    """``aws datapipeline put-pipeline-definition`` against the stack's service."""
    args = ["put-pipeline-definition", "--pipeline-id", pipeline_id, "--pipeline-definition", f"file://{definition}"]
    return aws_cli(stack.emulator.url, *args, *options, check=check)


# -- every strict sample validates over HTTP ---------------------------------------------------------------


@pytest.mark.parametrize("name", STRICT_SAMPLES)
def test_every_strict_sample_validates_and_is_stored_over_http(dp: Any, name: str) -> None:
    # given an AWS sample adapted as the README says, as API objects
    definition = api_definition(adapted(name))
    objects, values = definition["pipelineObjects"], definition["parameterValues"]
    pipeline_id = new_pipeline(dp)

    # when the service validates it, then stores it
    validated = dp.validate_pipeline_definition(pipelineId=pipeline_id, **definition)
    stored = dp.put_pipeline_definition(pipelineId=pipeline_id, **definition)

    # then neither call finds an error (nor warns of unknown types or fields), and the service gives the
    # definition back as it was sent
    assert (validated["errored"], validated.get("validationErrors", [])) == (False, [])
    assert (stored["errored"], stored.get("validationErrors", [])) == (False, [])
    warned = {m.split(":")[0] for entry in stored.get("validationWarnings", []) for m in entry["warnings"]}
    assert warned <= {"INVALID_PARAMETER_VALUE"}, stored["validationWarnings"]
    got = dp.get_pipeline_definition(pipelineId=pipeline_id)
    assert sorted(o["id"] for o in got["pipelineObjects"]) == sorted(o["id"] for o in objects)
    assert sorted((v["id"], v["stringValue"]) for v in got.get("parameterValues", [])) == sorted(
        (v["id"], v["stringValue"]) for v in values
    )


@pytest.mark.parametrize("name", ["devguide-custom-template.json", "oracle-backup.json"])
def test_the_cli_puts_a_sample_with_its_parameter_and_value_files(
    stack: Stack, dp: Any, name: str, tmp_path: Path
) -> None:
    # given the definition file moved onto a worker group, its parameter objects file as shipped, and its values
    # file as shipped unless that leaves a required parameter empty (oracle's values are all "")
    definition = write_json(tmp_path / name, to_worker_group(read_sample(name)))
    parameters_path, values_path = companion_paths(name)
    shipped = {
        "parameters": json.loads(parameters_path.read_text())["parameters"],
        "values": json.loads(values_path.read_text())["values"],
    }
    needed = with_required_values(shipped)["values"]
    if needed != shipped["values"]:
        values_path = write_json(tmp_path / values_path.name, {"values": needed})
    pipeline_id = new_pipeline(dp)

    # when the AWS CLI puts the three files
    result = cli_put(
        stack,
        pipeline_id,
        definition,
        "--parameter-objects",
        f"file://{parameters_path}",
        "--parameter-values-uri",
        f"file://{values_path}",
    )

    # then the service found no error and stored the parameters and values from their own files
    assert json.loads(result.stdout)["errored"] is False
    got = dp.get_pipeline_definition(pipelineId=pipeline_id)
    assert {p["id"] for p in got["parameterObjects"]} == {p["id"] for p in shipped["parameters"]}
    assert {v["id"]: v["stringValue"] for v in got["parameterValues"]} == needed


def test_the_oracle_sample_with_its_empty_values_does_not_validate(stack: Stack, dp: Any, tmp_path: Path) -> None:
    # given the oracle definition on a worker group with its parameter and values files as shipped (all "")
    definition = write_json(tmp_path / "oracle.json", to_worker_group(read_sample("oracle-backup.json")))
    parameters_path, values_path = companion_paths("oracle-backup.json")

    # when the AWS CLI puts them
    result = cli_put(
        stack,
        new_pipeline(dp),
        definition,
        "--parameter-objects",
        f"file://{parameters_path}",
        "--parameter-values-uri",
        f"file://{values_path}",
    )

    # then the definition errored: each empty parameter the definition uses lacks a value
    reply = json.loads(result.stdout)
    assert reply["errored"] is True
    missing = {entry["id"] for entry in reply["validationErrors"]}
    assert {"myOracleHost", "myOraclePort", "myOracleTable", "myBackupLocation"} <= missing
    assert all("MISSING_PARAMETER_VALUE" in m for e in reply["validationErrors"] for m in e["errors"])


@pytest.mark.parametrize("name", sorted(NOT_STRICT_JSON))
def test_the_cli_rejects_a_non_strict_sample_before_sending_anything(stack: Stack, dp: Any, name: str) -> None:
    # given a sample with raw newlines inside strings, as shipped
    pipeline_id = new_pipeline(dp)
    puts_before = stack.counters("PutPipelineDefinition")

    # when the AWS CLI is asked to put it
    result = cli_put(stack, pipeline_id, SAMPLES / name, check=False)

    # then the CLI's own JSON parsing fails (exit 255) and the service never hears of it
    assert result.returncode == 255
    assert "Invalid control character at: line" in result.stderr
    assert stack.counters("PutPipelineDefinition") == puts_before


def test_shell_command_ftp_repaired_is_refused_only_for_its_parameter_ids(dp: Any) -> None:
    # given shell-command-ftp.json repaired (newlines in strings joined, trailing comma dropped), on the worker
    # group with values for its required parameters; two of them are named `user` and `host`
    doc = with_required_values(to_worker_group(load_repaired("shell-command-ftp.json")))
    renamed = rename_parameter(rename_parameter(doc, "user", "myUser"), "host", "myHost")
    pipeline_id = new_pipeline(dp)

    # when the service validates it as is, and with the parameters renamed as the README says
    as_is = dp.validate_pipeline_definition(pipelineId=pipeline_id, **api_definition(doc))
    fixed = dp.validate_pipeline_definition(pipelineId=pipeline_id, **api_definition(renamed))

    # then only the two parameter ids that do not start with "my" are errors, and once renamed it validates
    assert as_is["errored"] is True
    assert {e["id"]: [m.split(":")[0] for m in e["errors"]] for e in as_is["validationErrors"]} == {
        "user": ["INVALID_PARAMETER"],
        "host": ["INVALID_PARAMETER"],
    }
    assert (fixed["errored"], fixed.get("validationErrors", [])) == (False, [])


# -- samples that run on a worker group ------------------------------------------------------------------


def test_helloworld_runs_once_and_says_hello(stack: Stack, dp: Any, activate: Activate) -> None:
    # given helloworld.json on the worker group, with a value for myS3LogsPath and its stdout sent to a file
    out = stack.dir / "helloworld.out"
    doc = with_values(to_worker_group(load_sample("helloworld.json")), myS3LogsPath=LOGS)
    doc = with_fields(doc, "ShellCommandActivity_HelloWorld", stdout=str(out))

    # when it is activated, and once it has run the service clock moves two days on
    pipeline_id = activate(doc)
    ended = wait_final(dp, pipeline_id, "ShellCommandActivity_HelloWorld")
    stack.emulator.admin("advance-clock", {"seconds": 2 * DAY.total_seconds()})

    # then the one-occurrence cron schedule gave one instance a day long, and no more: it finished and said hello
    assert ended["@status"] == "FINISHED"
    assert when(ended["@scheduledEndTime"]) - when(ended["@scheduledStartTime"]) == DAY
    assert out.read_text() == "Hello World!\n"
    every = instances(dp, pipeline_id)
    assert sorted(every) == ["OutputData", "OutputData2", "ShellCommandActivity_HelloWorld"]
    assert len(instances_of(dp, pipeline_id, "ShellCommandActivity_HelloWorld")) == 1
    assert evaluated(dp, pipeline_id, ended["@id"])["pipelineLogUri"] == f"{LOGS}/HelloWorld"


def test_ondemand_lambda_repaired_is_put_by_the_cli_and_finishes(stack: Stack, dp: Any, tmp_path: Path) -> None:
    # given ondemand-lambda.json repaired as the README says (comment lines joined, trailing comma dropped),
    # moved onto the worker group, its stdout sent to a file
    out = stack.dir / "ondemand.out"
    doc = with_fields(
        to_worker_group(load_repaired("ondemand-lambda.json")), "ShellCommandActivity_HelloWorld", stdout=str(out)
    )
    definition = write_json(tmp_path / "ondemand-lambda.json", doc)
    pipeline_id = new_pipeline(dp)

    # when the AWS CLI puts it with a value for myS3LogsPath, and it is activated
    put = cli_put(stack, pipeline_id, definition, "--parameter-values", f"myS3LogsPath={LOGS}")
    dp.activate_pipeline(pipelineId=pipeline_id)
    ended = wait_final(dp, pipeline_id, "ShellCommandActivity_HelloWorld")

    # then the CLI accepted it, and the on-demand run finished and said hello
    assert json.loads(put.stdout)["errored"] is False
    assert ended["@status"] == "FINISHED"
    assert out.read_text() == "Hello World!\n"


def test_invoke_lambda_fails_with_the_cli_error_after_substituting_its_parameters(dp: Any, activate: Activate) -> None:
    # given invoke-lambda.json ("ONDEMAND" in upper case) on the worker group, with values for the two
    # parameters without a default; its command stays `aws lambda ...`, and the worker has no AWS credentials
    doc = with_values(
        to_worker_group(load_sample("invoke-lambda.json")), myS3LogsPath=LOGS, myLambdaFunction="local-no-such-fn"
    )

    # when it is activated
    pipeline_id = activate(doc)
    ended = wait_final(dp, pipeline_id, "Invoke_Lambda_Activity")

    # then it ran on demand and every try failed with the command's exit status and the end of its stderr
    tries = attempts(dp, pipeline_id, "Invoke_Lambda_Activity")
    assert ended["@status"] == "FAILED"
    assert ended["@scheduledStartTime"] == ended["@scheduledEndTime"]
    assert [t["attemptStatus"] for t in tries] == ["FAILED"] * 3
    for shown in (ended, *tries):
        assert shown["errorId"] == "BridgeCommandFailed"
        assert re.search(r"^Command exit status \d+; stderr", shown["errorMessage"])
        assert "Unable to locate credentials" in shown["errorMessage"]
    # and the command the worker was given had both parameters substituted
    assert evaluated(dp, pipeline_id, tries[0]["@id"])["command"] == (
        "aws lambda  --region us-east-1 invoke --function-name local-no-such-fn outfile.txt"
    )


def test_efs_backup_1_node_recurs_daily_with_its_five_arguments(stack: Stack, dp: Any, activate: Activate) -> None:
    # given efs-backup-1-node.json on the worker group, its recurring daily schedule as shipped, its command
    # (a download and an NFS mount) replaced by one that prints its arguments to a file
    out = stack.dir / "efs-1-node.out"
    doc = with_fields(
        to_worker_group(load_sample("efs-backup-1-node.json")),
        "ShellCommandActivityObj",
        command="printf '%s\\n' \"$@\"",
        stdout=str(out),
    )

    # when it is activated and the fast clock passes the next day
    pipeline_id = activate(doc)
    first, second = wait_ended(dp, pipeline_id, "ShellCommandActivityObj", count=2)

    # then the first two days each finished, one day apart, printing the five arguments from the parameters
    assert (first["@status"], second["@status"]) == ("FINISHED", "FINISHED")
    assert when(second["@scheduledStartTime"]) - when(first["@scheduledStartTime"]) == DAY
    assert out.read_text().splitlines()[:10] == EFS_ARGUMENTS * 2


def test_efs_backup_3_node_fans_out_and_in(stack: Stack, dp: Any, activate: Activate) -> None:
    # given efs-backup-3-node.json on the worker group, each command replaced by one that appends its name and
    # arguments to one file, and one occurrence of its daily schedule (the fast clock would start the next day)
    order = stack.dir / "efs-3-node.order"
    steps = ["InitBackup", "BackupPart1", "BackupPart2", "BackupPart3", "FinalizeBackup"]
    doc = with_fields(to_worker_group(load_sample("efs-backup-3-node.json")), "DefaultSchedule", occurrences="1")
    for step in steps:
        doc = with_fields(doc, step, command=f'echo "{step} $*" >> {order}')

    # when it is activated
    pipeline_id = activate(doc)
    ended = {step: wait_final(dp, pipeline_id, step) for step in steps}

    # then all five finished: InitBackup first, FinalizeBackup last, after all three parts had ended
    assert {step: fields["@status"] for step, fields in ended.items()} == dict.fromkeys(steps, "FINISHED")
    lines = order.read_text().splitlines()
    assert lines[0] == "InitBackup " + " ".join(EFS_ARGUMENTS)
    assert sorted(lines[1:4]) == [f"BackupPart{n} {' '.join(EFS_ARGUMENTS)} {n % 3} 3" for n in (1, 2, 3)]
    assert lines[4:] == ["FinalizeBackup daily backup-fs-12345678"]
    finalize_start = when(ended["FinalizeBackup"]["@actualStartTime"])
    for part in ("BackupPart1", "BackupPart2", "BackupPart3"):
        assert when(ended["InitBackup"]["@actualEndTime"]) <= when(ended[part]["@actualStartTime"])
        assert when(ended[part]["@actualEndTime"]) <= finalize_start


def test_schedule_via_parent_is_inherited(stack: Stack, dp: Any, activate: Activate) -> None:
    # given devguide-schedule-via-parent.json on the worker group: the activity's schedule comes through its
    # parent object, not through Default
    out = stack.dir / "via-parent.out"
    doc = with_fields(
        to_worker_group(load_sample("devguide-schedule-via-parent.json")),
        "ShellCommandActivity_HelloWorld",
        stdout=str(out),
    )

    # when it is activated
    pipeline_id = activate(doc)
    ended = wait_final(dp, pipeline_id, "ShellCommandActivity_HelloWorld")

    # then it ran once on the inherited one-day schedule and said hello
    assert ended["@status"] == "FINISHED"
    assert ended["schedule"] == "DefaultSchedule"
    assert when(ended["@scheduledEndTime"]) - when(ended["@scheduledStartTime"]) == DAY
    assert len(instances_of(dp, pipeline_id, "ShellCommandActivity_HelloWorld")) == 1
    assert out.read_text() == "Hello World!\n"


def test_copy_s3_to_s3_runs_its_one_day_on_the_worker_group(stack: Stack, dp: Any, activate: Activate) -> None:
    # given devguide-copy-s3-to-s3.json (no Default: timeseries) with workerGroup on the CopyActivity and its
    # fixed one-day schedule moved from 2013 to now
    start = service_now(stack)
    doc = starting_at(to_worker_group(load_sample("devguide-copy-s3-to-s3.json")), start)

    # when it is activated and the fast clock reaches the end of that day
    pipeline_id = activate(doc)
    (copy,) = wait_ended(dp, pipeline_id, "MyCopyActivity")

    # then the day's one instance ran on the worker group (this module has no S3, so the copy fails there; it runs
    # to FINISHED against an S3 server in test_handlers_copy.py)
    assert (copy["@scheduledStartTime"], copy["@scheduledEndTime"]) == (
        start.strftime(DATETIME_FORMAT),
        (start + DAY).strftime(DATETIME_FORMAT),
    )
    assert copy["@status"] == "FAILED"
    assert copy["errorId"].startswith("BridgeS3"), copy["errorId"]
    assert {c: f["@status"] for c, f in instances(dp, pipeline_id).items()} == {
        "S3Input": "FINISHED",
        "S3Output": "FINISHED",
        "MyCopyActivity": "FAILED",
    }


def test_copy_mysql_to_s3_needs_a_recent_start_then_fails_and_alarms(stack: Stack, dp: Any, activate: Activate) -> None:
    # given devguide-copy-mysql-to-s3.json on the worker group: daily timeseries from 2013, SnsAlarm on failure
    shipped = to_worker_group(load_sample("devguide-copy-mysql-to-s3.json"))
    old = new_pipeline(dp)
    assert not put_definition(dp, old, shipped)["errored"]

    # when it is activated as shipped, and again with its schedule starting now
    with pytest.raises(ClientError) as refused:
        dp.activate_pipeline(pipelineId=old)
    start = service_now(stack)
    pipeline_id = activate(starting_at(shipped, start))
    (copy,) = wait_ended(dp, pipeline_id, "CopyActivityId112")

    # then the 2013 start is refused (it would backfill years); the recent one runs its first day, which fails
    # on the worker group (the sample's MySQL host does not exist here) and fires the onFail alarm with the node's
    # fields filled in
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "ScheduleId113" in refused.value.response["Error"]["Message"]
    assert (copy["@status"], copy["errorId"]) == ("FAILED", "BridgeDatabaseUnavailable")
    fired = wait_for(
        lambda: stack.emulator.admin("actions", {"pipelineId": pipeline_id})["actions"], what="the onFail alarm"
    )
    assert (fired[0]["event"], fired[0]["actionId"], fired[0]["type"]) == ("onFail", "SnsAlarmId117", "SnsAlarm")
    assert fired[0]["message"] == (
        f"There was a problem executing My Copy at for period {start.strftime(DATETIME_FORMAT)}"
        f" to {(start + DAY).strftime(DATETIME_FORMAT)}"
    )


def test_redshift_to_rds_fails_unsupported_and_cascades(dp: Any, activate: Activate) -> None:
    # given redshift-to-rds.json on the worker group with values for its required parameters: a four-step
    # chain whose first step (RedshiftCopyActivity) has no local handler, and failureAndRerunMode CASCADE
    doc = adapted("redshift-to-rds.json")

    # when it is activated
    pipeline_id = activate(doc)
    steps = ["RedshiftToS3", "CreateTableActivity", "S3ToRdsCopyActivity", "S3CleanupActivity"]
    ended = {step: wait_final(dp, pipeline_id, step)["@status"] for step in steps}

    # then the first step failed as unsupported and the three after it were cascade-failed without running
    assert ended == dict(zip(steps, ["FAILED", "CASCADE_FAILED", "CASCADE_FAILED", "CASCADE_FAILED"], strict=True))
    assert wait_final(dp, pipeline_id, "RedshiftToS3")["errorId"] == "BridgeUnsupportedActivity"
    assert all(attempts(dp, pipeline_id, step) == [] for step in steps[1:])
