"""Expressions and parameters over HTTP: hand-outs, DescribeObjects, EvaluateExpression, validation.

Each test starts its own ``bridge emulator`` process and talks to it with boto3 (and once with the AWS CLI).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support import (
    SAMPLES,
    EmulatorProcess,
    aws_cli,
    describe,
    dp_client,
    fields_of,
    instance_of,
    ondemand_definition,
    poll_task,
    put_definition,
    shell_activity,
    start_pipeline,
    task_fields,
    wait_for_status,
    wait_for_task,
)

Factory = Callable[..., EmulatorProcess]


def error_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


def scheduled_start(task: dict[str, Any]) -> datetime:
    return datetime.strptime(fields_of(task["objects"][task["attemptId"]])["@scheduledStartTime"], "%Y-%m-%dT%H:%M:%S")


def values_of(task: dict[str, Any], key: str, object_id: str | None = None) -> list[str]:
    return [v for k, v in task_fields(task, object_id) if k == key]


def etl_definition(worker_group: str) -> dict[str, Any]:
    """An activity reading an S3 input, writing a SQL table through a JDBC database, driven by parameters."""
    return {
        **ondemand_definition(
            {
                "id": "In",
                "type": "S3DataNode",
                "directoryPath": "s3://in/#{myDir}/#{format(@scheduledStartTime, 'YYYY-MM-dd')}",
            },
            {"id": "Out", "type": "SqlDataNode", "table": "events", "selectQuery": "select * from #{table}"}
            | {"database": {"ref": "Db"}},
            {"id": "Db", "type": "JdbcDatabase", "connectionString": "jdbc:mysql://db/#{myDir}"}
            | {"jdbcDriverClass": "Driver", "username": "etl", "*password": "#{*myPassword}"},
            shell_activity(
                "Load",
                input={"ref": "In"},
                output={"ref": "Out"},
                command="echo #{myGreeting} #{input.directoryPath}"
                " #{format(minusDays(@scheduledStartTime, myDays), 'YYYY-MM-dd')} #{myDays * 10 + 1}",
                scriptArgument=["#{myGroups}", "#{@id}"],
            ),
            {"id": "Script", "type": "ShellCommandActivity", "scriptUri": "s3://scripts/#{myDir}/run.sh"}
            | {"myNote": "report for #{format(@scheduledStartTime, 'YYYY')}"},
            workerGroup=worker_group,
        ),
        "parameters": [
            {"id": "myGreeting", "type": "String"},
            {"id": "myDir", "type": "String", "default": "daily"},
            {"id": "myDays", "type": "Integer", "default": "1"},
            {"id": "*myPassword", "type": "String"},
            {"id": "myGroups", "type": "String", "isArray": "true"},
        ],
        "values": {"myGreeting": "hello", "*myPassword": "s3cr3t", "myGroups": ["blue", "green"]},
    }


def tasks_by_component(dp: Any, worker_group: str, count: int) -> dict[str, dict[str, Any]]:
    tasks = [wait_for_task(dp, worker_group) for _ in range(count)]
    return {fields_of(t["objects"][t["attemptId"]])["@componentParent"]: t for t in tasks}


# -- hand-out ------------------------------------------------------------------------------------


def test_parameters_and_expressions_are_evaluated_in_the_handed_out_task(dp: Any) -> None:
    # given a pipeline whose fields use parameters (given, defaulted, masked, array), refs, dates and arithmetic
    start_pipeline(dp, etl_definition("wg-expr-etl"))

    # when a runner polls
    tasks = tasks_by_component(dp, "wg-expr-etl", 2)

    # then the attempt's fields arrive evaluated
    load = tasks["Load"]
    start = scheduled_start(load)
    day, day_before = start.strftime("%Y-%m-%d"), (start - timedelta(days=1)).strftime("%Y-%m-%d")
    assert values_of(load, "command") == [f"echo hello s3://in/daily/{day} {day_before} 11"]
    # an isArray parameter with two values makes two values of the field
    assert values_of(load, "scriptArgument") == ["blue", "green", load["attemptId"]]
    # and so do the objects it refers to, each in its own context
    assert values_of(load, "directoryPath", "In") == [f"s3://in/daily/{day}"]
    assert values_of(load, "selectQuery", "Out") == ["select * from events"]
    assert values_of(load, "connectionString", "Db") == ["jdbc:mysql://db/daily"]
    # the masked parameter reaches the encrypted field of the database it is meant for
    assert values_of(load, "*password", "Db") == ["s3cr3t"]
    # refs stay refs
    assert ("input", "In") in task_fields(load)
    # scriptUri takes no parameters: it is handed out as written
    script = tasks["Script"]
    assert values_of(script, "scriptUri") == ["s3://scripts/#{myDir}/run.sh"]
    assert values_of(script, "myNote") == [f"report for {start.year}"]


def test_the_activation_values_are_the_ones_used_and_kept(dp: Any) -> None:
    # given a definition put with one greeting
    doc = {
        **ondemand_definition(shell_activity("Greet", command="echo #{myGreeting}"), workerGroup="wg-expr-act"),
        "parameters": [{"id": "myGreeting", "type": "String", "description": "what to say"}],
    }
    pipeline_id = start_pipeline(dp, {**doc, "values": {"myGreeting": "hello"}}, activate=False)

    # when it is activated with another
    dp.activate_pipeline(pipelineId=pipeline_id, parameterValues=[{"id": "myGreeting", "stringValue": "bonjour"}])
    task = wait_for_task(dp, "wg-expr-act")

    # then the task uses the activation's value
    assert values_of(task, "command") == ["echo bonjour"]
    # and after a new definition is put, version=active still shows what ran
    put_definition(
        dp,
        pipeline_id,
        {**doc, "parameters": [{"id": "myGreeting", "type": "String", "description": "changed"}]},
        values={"myGreeting": "hi"},
    )
    active = dp.get_pipeline_definition(pipelineId=pipeline_id, version="active")
    latest = dp.get_pipeline_definition(pipelineId=pipeline_id, version="latest")
    assert active["parameterValues"] == [{"id": "myGreeting", "stringValue": "bonjour"}]
    assert {"key": "description", "stringValue": "what to say"} in active["parameterObjects"][0]["attributes"]
    assert latest["parameterValues"] == [{"id": "myGreeting", "stringValue": "hi"}]
    assert {"key": "description", "stringValue": "changed"} in latest["parameterObjects"][0]["attributes"]


def test_a_precondition_sees_the_object_it_guards_as_node(dp: Any) -> None:
    # given an activity guarded by a runner precondition that names its node
    doc = ondemand_definition(
        {
            "id": "Ready",
            "type": "ShellCommandPrecondition",
            "command": "test #{node.name} = #{node.@scheduledStartTime}",
        },
        shell_activity("Guarded", precondition={"ref": "Ready"}),
        workerGroup="wg-expr-node",
    )
    start_pipeline(dp, doc)

    # when the precondition's task is handed out
    task = wait_for_task(dp, "wg-expr-node")

    # then node is the guarded activity's instance
    stamp = fields_of(task["objects"][task["attemptId"]])["@scheduledStartTime"]
    assert values_of(task, "command") == [f"test Guarded = {stamp}"]


def test_an_expression_that_fails_at_hand_out_fails_the_attempt(dp: Any) -> None:
    # given an activity whose expression is well formed but cannot be evaluated (the date is not a date)
    doc = {
        **ondemand_definition(
            shell_activity("Broken", command="echo #{format(myWhen, 'YYYY')}", maximumRetries="0"),
            workerGroup="wg-expr-broken",
        ),
        "parameters": [{"id": "myWhen", "type": "String", "default": "soon"}],
    }
    pipeline_id = start_pipeline(dp, doc)

    # when a runner polls, it gets nothing, and the attempt and its instance end FAILED with the reason
    assert poll_task(dp, "wg-expr-broken") is None
    wait_for_status(dp, pipeline_id, "Broken", "FAILED")
    instance = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Broken"))
    assert instance["errorId"] == "ExpressionError"
    assert "command" in instance["errorMessage"] and "must be a DateTime" in instance["errorMessage"]
    attempt = describe(dp, pipeline_id, instance["@headAttempt"])
    assert (attempt["@status"], attempt["errorId"]) == ("FAILED", "ExpressionError")


# -- DescribeObjects and EvaluateExpression ------------------------------------------------------


def test_describe_objects_evaluates_expressions_on_request(dp: Any) -> None:
    # given a running pipeline whose activity uses parameters and refs
    doc = etl_definition("wg-expr-describe")
    pipeline_id = start_pipeline(dp, doc)
    load = tasks_by_component(dp, "wg-expr-describe", 2)["Load"]
    instance_id = instance_of(dp, pipeline_id, "Load")

    def shown(object_id: str, evaluate: bool) -> dict[str, Any]:
        found = dp.describe_objects(pipelineId=pipeline_id, objectIds=[object_id], evaluateExpressions=evaluate)
        return fields_of(found["pipelineObjects"][0])

    # then without evaluateExpressions the fields are as written
    assert shown(instance_id, False)["command"].startswith("echo #{myGreeting}")
    # and with it, instances and attempts are evaluated as in the task
    expected = values_of(load, "command")[0]
    assert shown(instance_id, True)["command"] == expected
    assert shown(load["attemptId"], True)["command"] == expected
    # components too, where they can be; a component has no @scheduledStartTime, so that value stays as written
    assert shown("Db", True)["connectionString"] == "jdbc:mysql://db/daily"
    assert shown("In", True)["directoryPath"] == "s3://in/#{myDir}/#{format(@scheduledStartTime, 'YYYY-MM-dd')}"


def test_evaluate_expression_works_as_in_the_api_reference(dp: Any) -> None:
    # given the API Reference's PutPipelineDefinition example
    pipeline_id = dp.create_pipeline(name="example", uniqueId=str(uuid.uuid4()))["pipelineId"]
    example = {
        "objects": [
            {"id": "Default", "workerGroup": "wg-expr-example"},
            {"id": "Schedule", "type": "Schedule", "period": "1 hour"}
            | {"startDateTime": "2012-12-12T00:00:00", "endDateTime": "2012-12-21T18:00:00"},
            {"id": "SayHello", "type": "ShellCommandActivity", "command": "echo hello"}
            | {"parent": {"ref": "Default"}, "schedule": {"ref": "Schedule"}},
        ]
    }
    assert put_definition(dp, pipeline_id, example)["errored"] is False

    # when the runner evaluates its example expression on Schedule
    result = dp.evaluate_expression(
        pipelineId=pipeline_id,
        objectId="Schedule",
        expression="Transform started at #{startDateTime} and finished at #{endDateTime}",
    )

    # then it gets the API Reference's answer
    assert result["evaluatedExpression"] == (
        "Transform started at 2012-12-12T00:00:00 and finished at 2012-12-21T18:00:00"
    )
    assert (
        dp.evaluate_expression(
            pipelineId=pipeline_id,
            objectId="SayHello",
            expression="#{schedule.period} #{plusDays(schedule.startDateTime, 1)}",
        )["evaluatedExpression"]
        == "1 hour 2012-12-13T00:00:00"
    )


def test_evaluate_expression_on_instances_and_its_errors(dp: Any) -> None:
    # given a handed-out task
    pipeline_id = start_pipeline(dp, etl_definition("wg-expr-eval"))
    load = tasks_by_component(dp, "wg-expr-eval", 2)["Load"]
    day = scheduled_start(load).strftime("%Y-%m-%d")

    def evaluate(object_id: str, expression: str) -> str:
        result: str = dp.evaluate_expression(pipelineId=pipeline_id, objectId=object_id, expression=expression)[
            "evaluatedExpression"
        ]
        return result

    # then a runner can evaluate a script body it fetched itself, in the attempt's or the instance's context
    script = "insert into t select * from #{output.table} where day = '#{format(@scheduledStartTime,'YYYY-MM-dd')}'"
    assert evaluate(load["attemptId"], script) == f"insert into t select * from events where day = '{day}'"
    assert evaluate(instance_of(dp, pipeline_id, "Load"), "#{input.directoryPath}") == f"s3://in/daily/{day}"
    assert evaluate(load["attemptId"], "#{*myPassword}") == "s3cr3t"
    assert evaluate("Load", "no expressions here") == "no expressions here"

    # and mistakes are InvalidRequestException with a message that says what is wrong
    code, message = error_of(lambda: evaluate("Load", "#{fromat(@scheduledStartTime, 'YYYY')}"))
    assert code == "InvalidRequestException" and "unknown function 'fromat'" in message
    code, message = error_of(lambda: evaluate(load["attemptId"], "#{myNope}"))
    assert code == "InvalidRequestException" and "unknown name 'myNope'" in message
    code, message = error_of(lambda: evaluate("Nowhere", "#{1}"))
    assert code == "InvalidRequestException" and "Nowhere" in message
    code, _ = error_of(lambda: dp.evaluate_expression(pipelineId="df-NOSUCHPIPELINE0000", objectId="x", expression="x"))
    assert code == "PipelineNotFoundException"


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("echo #{fromat(@scheduledStartTime, 'YYYY')}", "unknown function 'fromat' (did you mean 'format'?)"),
        ("echo #{1 +}", "expected a value, found the end of the expression"),
        ("echo #{myGreeting", "unterminated expression"),
        ("echo #{minusDays(@scheduledStartTime)}", "takes 2 argument(s), got 1"),
        ("echo #{myMissing}", "UNDECLARED_PARAMETER: 'command' uses 'myMissing'"),
        ("echo #{node.name}", "'node' exists only in actions and preconditions"),
    ],
)
def test_bad_expressions_are_rejected_when_the_definition_is_put(dp: Any, command: str, message: str) -> None:
    # given a definition with a mistake in an expression
    pipeline_id = dp.create_pipeline(name="bad", uniqueId=str(uuid.uuid4()))["pipelineId"]
    doc = {
        **ondemand_definition(shell_activity("Say", command=command), workerGroup="wg-expr-bad"),
        "parameters": [{"id": "myGreeting", "default": "hi"}],
    }

    # when it is put
    result = put_definition(dp, pipeline_id, doc)

    # then it is errored, the message names the problem, and the pipeline cannot be activated
    assert result["errored"] is True
    errors = {e["id"]: e["errors"] for e in result["validationErrors"]}
    assert any(message in m for m in errors["Say"]), errors
    code, _ = error_of(lambda: dp.activate_pipeline(pipelineId=pipeline_id))
    assert code == "InvalidRequestException"


def test_fields_of_the_object_and_declared_parameters_are_not_undeclared(dp: Any) -> None:
    # given expressions naming an own field, an inherited field, a declared parameter and a masked one
    pipeline_id = dp.create_pipeline(name="ok", uniqueId=str(uuid.uuid4()))["pipelineId"]
    doc = {
        **ondemand_definition(
            shell_activity("Say", command="echo #{myOwn} #{myInherited} #{myParam} #{*mySecret}", myOwn="x"),
            workerGroup="wg-expr-ok",
            myInherited="y",
        ),
        "parameters": [{"id": "myParam", "default": "p"}, {"id": "*mySecret", "default": "s"}],
    }

    # then the definition is valid
    result = put_definition(dp, pipeline_id, doc)
    assert (result["errored"], result["validationErrors"]) == (False, [])


# -- the AWS sample and the AWS CLI --------------------------------------------------------------


def test_the_devguide_custom_template_is_handed_out_fully_evaluated(emulator: EmulatorProcess, tmp_path: Path) -> None:
    # given the Developer Guide's parametrised template, moved onto a worker group, put with the AWS CLI
    # and its parameter and value files, as the guide does
    doc = json.loads((SAMPLES / "devguide-custom-template.json").read_text())
    objects = []
    for obj in doc["objects"]:
        if obj.get("type") == "Ec2Resource":
            continue
        if "runsOn" in obj:
            obj = {k: v for k, v in obj.items() if k != "runsOn"} | {"workerGroup": "wg-expr-template"}
        objects.append(obj)
    definition = tmp_path / "template.json"
    definition.write_text(json.dumps({"objects": objects}))
    dp = dp_client(emulator.url)
    pipeline_id = dp.create_pipeline(name="template", uniqueId=str(uuid.uuid4()))["pipelineId"]
    put = aws_cli(
        emulator.url,
        "put-pipeline-definition",
        "--pipeline-id",
        pipeline_id,
        "--pipeline-definition",
        f"file://{definition}",
        "--parameter-objects",
        f"file://{SAMPLES / 'devguide-custom-template.parameters.json'}",
        "--parameter-values-uri",
        f"file://{SAMPLES / 'devguide-custom-template.values.json'}",
    )
    assert json.loads(put.stdout)["errored"] is False

    # when it is activated and a runner polls
    dp.activate_pipeline(pipelineId=pipeline_id)
    task = wait_for_task(dp, "wg-expr-template")

    # then nothing in the task is left unevaluated
    assert "#{" not in json.dumps(task)
    parameters = json.loads((SAMPLES / "devguide-custom-template.parameters.json").read_text())["parameters"]
    defaults = {p["id"]: p.get("default") for p in parameters}
    assert values_of(task, "command") == [defaults["myShellCmd"]]
    assert values_of(task, "directoryPath", "S3InputLocation") == [defaults["myS3InputLoc"]]
    stamp = scheduled_start(task).strftime("%Y-%m-%d-%H-%M-%S")
    assert values_of(task, "directoryPath", "S3OutputLocation") == [f"myOutputLocation/{stamp}"]


def test_parameter_values_given_on_the_aws_cli_command_line(emulator: EmulatorProcess, tmp_path: Path) -> None:
    # given a definition with a parameter, put with --parameter-values
    doc = {
        "objects": [
            {"id": "Default", "scheduleType": "ondemand", "workerGroup": "wg-expr-cli"},
            {"id": "Greet", "type": "ShellCommandActivity", "command": "echo #{myGreeting} #{myName}"},
        ],
        "parameters": [{"id": "myGreeting"}, {"id": "myName", "default": "world"}],
    }
    definition = tmp_path / "greet.json"
    definition.write_text(json.dumps(doc))
    dp = dp_client(emulator.url)
    pipeline_id = dp.create_pipeline(name="greet", uniqueId=str(uuid.uuid4()))["pipelineId"]
    aws_cli(
        emulator.url,
        "put-pipeline-definition",
        "--pipeline-id",
        pipeline_id,
        "--pipeline-definition",
        f"file://{definition}",
        "--parameter-values",
        "myGreeting=hello there",
    )

    # when it runs
    dp.activate_pipeline(pipelineId=pipeline_id)
    task = wait_for_task(dp, "wg-expr-cli")

    # then the command has the command-line value and the default
    assert values_of(task, "command") == ["echo hello there world"]


def test_fields_the_service_enforces_may_be_expressions(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    # given maximumRetries taken from a parameter whose value is 0
    dp = dp_client(emulator_factory("--poll-wait", "1", "--time-scale", "60").url)
    doc = {
        **ondemand_definition(shell_activity("Once", maximumRetries="#{myRetries}"), workerGroup="enforced"),
        "parameters": [{"id": "myRetries", "type": "Integer", "default": "2"}],
    }
    pipeline_id = dp.create_pipeline(name="enforced", uniqueId="enforced-1")["pipelineId"]
    assert not put_definition(dp, pipeline_id, doc, values={"myRetries": "0"})["errored"]
    dp.activate_pipeline(pipelineId=pipeline_id)
    # when its only attempt fails
    task = wait_for_task(dp, "enforced")
    dp.report_task_progress(taskId=task["taskId"])
    dp.set_task_status(taskId=task["taskId"], taskStatus="FAILED", errorId="Boom", errorMessage="boom")
    # then no retry follows: the evaluated 0, not the default of 2, was applied
    wait_for_status(dp, pipeline_id, "Once", "FAILED")
    instance = describe(dp, pipeline_id, instance_of(dp, pipeline_id, "Once"))
    assert instance["errorId"] == "Boom" and instance["@attemptCount"] == "1"
