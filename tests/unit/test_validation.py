"""Definition validation: each rule fires when it should and stays quiet when it should not."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.catalog import PERIOD_FIELDS, TYPES, Kind, kind_of
from emulator.definition import definition_file_to_api, effective_fields, object_type
from emulator.validation import Limits, ValidationResult, validate_definition
from tests.samples_adapt import NOT_STRICT_JSON, STRICT_SAMPLES, load_sample, to_worker_group, with_required_values
from tests.support import SAMPLES

Obj = dict[str, Any]

DEFAULT: Obj = {
    "id": "Default",
    "scheduleType": "cron",
    "failureAndRerunMode": "cascade",
    "workerGroup": "wg",
    "role": "DataPipelineDefaultRole",
    "resourceRole": "DataPipelineDefaultResourceRole",
    "schedule": {"ref": "Every15"},
}
SCHEDULE: Obj = {"id": "Every15", "type": "Schedule", "period": "15 minutes", "startAt": "FIRST_ACTIVATION_DATE_TIME"}
ACTIVITY: Obj = {"id": "Say", "type": "ShellCommandActivity", "command": "echo hi"}


def ref(target: str) -> dict[str, str]:
    return {"ref": target}


def check(
    *objects: Obj,
    parameters: list[Obj] | None = None,
    values: dict[str, Any] | None = None,
    limits: Limits | None = None,
) -> ValidationResult:
    doc: Obj = {"objects": list(objects), "parameters": parameters or [], "values": values or {}}
    return validate_definition(*definition_file_to_api(doc), limits or Limits())


def errors_of(result: ValidationResult, object_id: str) -> list[str]:
    return next((entry["errors"] for entry in result.errors if entry["id"] == object_id), [])


def warnings_of(result: ValidationResult, object_id: str) -> list[str]:
    return next((entry["warnings"] for entry in result.warnings if entry["id"] == object_id), [])


def base(*extra: Obj, **activity_fields: Any) -> list[Obj]:
    """A valid one-activity pipeline; ``activity_fields`` change the activity (None drops a field)."""
    activity = {**ACTIVITY, **activity_fields}
    return [DEFAULT, SCHEDULE, {k: v for k, v in activity.items() if v is not None}, *extra]


# --- definition files -------------------------------------------------------------------------


def test_definition_file_to_api_translates_like_awscli() -> None:
    # Given a definition with refs, lists, a missing name, parameters and array values
    doc = {
        "metadata": {"templateName": "ignored"},
        "objects": [{"id": "B", "type": "T", "dependsOn": [ref("X"), ref("Y")], "arg": ["1", "2"], "name": "Bee"}],
        "parameters": [{"id": "myP", "type": "String", "allowedValues": ["a", "b"]}],
        "values": {"myP": ["a", "b"], "myQ": "c"},
    }
    snapshot = copy.deepcopy(doc)
    # When it is translated
    objects, parameters, values = definition_file_to_api(doc)
    # Then refs become refValue, lists repeat the key, fields sort by key, and the input is untouched
    assert objects == [
        {
            "id": "B",
            "name": "Bee",
            "fields": [
                {"key": "arg", "stringValue": "1"},
                {"key": "arg", "stringValue": "2"},
                {"key": "dependsOn", "refValue": "X"},
                {"key": "dependsOn", "refValue": "Y"},
                {"key": "type", "stringValue": "T"},
            ],
        }
    ]
    assert parameters == [
        {
            "id": "myP",
            "attributes": [
                {"key": "allowedValues", "stringValue": "a"},
                {"key": "allowedValues", "stringValue": "b"},
                {"key": "type", "stringValue": "String"},
            ],
        }
    ]
    assert values == [
        {"id": "myP", "stringValue": "a"},
        {"id": "myP", "stringValue": "b"},
        {"id": "myQ", "stringValue": "c"},
    ]
    assert doc == snapshot
    assert definition_file_to_api({"objects": [{"id": "A"}]}) == ([{"id": "A", "name": "A", "fields": []}], [], [])


@pytest.mark.parametrize("doc", [{}, {"objects": [{"type": "T"}]}, {"objects": [], "parameters": [{"type": "String"}]}])
def test_definition_file_to_api_rejects_missing_keys(doc: Obj) -> None:
    with pytest.raises(ValueError, match="Missing"):
        definition_file_to_api(doc)


# --- inheritance ------------------------------------------------------------------------------


def _by_id(*objects: Obj) -> dict[str, Obj]:
    api, _, _ = definition_file_to_api({"objects": list(objects)})
    return {o["id"]: o for o in api}


def test_effective_fields_take_own_then_parent_chain_then_default() -> None:
    # Given Default <- P2 <- P1 <- Child, each setting some keys
    objects = _by_id(
        {"id": "Default", "workerGroup": "wg-default", "role": "R", "scriptArgument": ["d1", "d2"]},
        {"id": "P2", "stage": "false", "role": "P2Role"},
        {"id": "P1", "parent": ref("P2"), "stage": "true", "schedule": ref("S")},
        {"id": "Child", "parent": ref("P1"), "type": "ShellCommandActivity", "scriptArgument": ["c1", "c2"]},
    )
    # When the child's effective fields are computed
    fields = effective_fields(objects, "Child")
    # Then the nearest object wins each key, with all of its values, and Default comes last
    assert [(f.key, f.value, f.is_ref) for f in fields] == [
        ("parent", "P1", True),
        ("scriptArgument", "c1", False),
        ("scriptArgument", "c2", False),
        ("type", "ShellCommandActivity", False),
        ("schedule", "S", True),
        ("stage", "true", False),
        ("role", "P2Role", False),
        ("workerGroup", "wg-default", False),
    ]
    assert ("workerGroup", "wg-default", False) in effective_fields(objects, "P2")
    assert effective_fields(objects, "Missing") == []


def test_effective_fields_stop_at_cycles_and_type_is_not_inherited_from_default() -> None:
    objects = _by_id(
        {"id": "Default", "type": "Schedule", "workerGroup": "wg"},
        {"id": "A", "parent": ref("B"), "command": "a"},
        {"id": "B", "parent": ref("A"), "type": "ShellCommandActivity", "command": "b"},
    )
    assert {f.key: f.value for f in effective_fields(objects, "A")} == {
        "parent": "B",
        "command": "a",
        "type": "ShellCommandActivity",
        "workerGroup": "wg",
    }
    assert object_type(objects, "A") == "ShellCommandActivity"
    assert object_type(_by_id({"id": "Default", "type": "Schedule"}, {"id": "X"}), "X") is None


# --- objects ----------------------------------------------------------------------------------


def test_a_valid_pipeline_has_no_errors_and_no_warnings() -> None:
    result = check(*base())
    assert (result.errors, result.warnings, result.errored) == ([], [], False)


def test_duplicate_ids_are_errors() -> None:
    result = check(*base(dict(ACTIVITY)))
    assert errors_of(result, "Say") == ["DUPLICATE_OBJECT_ID: 2 objects have the id 'Say'."]


def test_type_is_required_except_on_default_and_abstract_parents() -> None:
    assert errors_of(check(*base(type=None)), "Say") == ["MISSING_REQUIRED_FIELD: 'type' is required."]
    abstract = {"id": "Common", "stage": "true"}
    assert check(*base(abstract, parent=ref("Common"))).errors == []


def test_an_unknown_type_is_a_warning_not_an_error() -> None:
    result = check(*base({"id": "Odd", "type": "QuantumActivity"}))
    assert result.errors == []
    assert warnings_of(result, "Odd") == [
        "UNKNOWN_OBJECT_TYPE: 'QuantumActivity' is not a known object type; its fields are not checked."
    ]


def test_references_must_point_at_existing_objects() -> None:
    result = check(*base(input=ref("X"), output=ref("#{myOut}")))
    assert errors_of(result, "Say") == [
        "INVALID_OBJECT_REFERENCE: 'input' refers to missing object 'X'.",
        "INVALID_OBJECT_REFERENCE: 'output' refers to missing object '#{myOut}' "
        "(references are not evaluated as expressions).",
    ]


def test_reference_fields_must_be_refs_and_plain_fields_must_not() -> None:
    result = check(*base(schedule="Every15", workerGroup=ref("Every15")))
    assert errors_of(result, "Say") == [
        "INVALID_FIELD_VALUE: 'schedule' must be a reference to an object, not a string value.",
        "INVALID_FIELD_VALUE: 'workerGroup' must be a string value, not a reference.",
    ]


def test_references_must_point_at_the_right_kind_of_object() -> None:
    node = {"id": "Node", "type": "S3DataNode", "filePath": "s3://b/k"}
    result = check(*base(node, schedule=ref("Node"), input=ref("Every15"), output=ref("Node")))
    assert errors_of(result, "Say") == [
        "INVALID_OBJECT_REFERENCE: 'input' refers to 'Every15', a schedule; expected a datanode.",
        "INVALID_OBJECT_REFERENCE: 'schedule' refers to 'Node', a datanode; expected a schedule.",
    ]


def test_parent_cycles_are_errors_on_every_object_in_the_cycle() -> None:
    result = check(
        *base({"id": "A", "parent": ref("B")}, {"id": "B", "parent": ref("A")}, {"id": "C", "parent": ref("C")})
    )
    assert errors_of(result, "A") == ["INVALID_OBJECT_REFERENCE: 'parent' chain is circular: A -> B -> A."]
    assert errors_of(result, "B") == ["INVALID_OBJECT_REFERENCE: 'parent' chain is circular: B -> A -> B."]
    assert errors_of(result, "C") == ["INVALID_OBJECT_REFERENCE: 'parent' chain is circular: C -> C."]
    assert errors_of(result, "Say") == []


#: A minimal valid object for every catalog type, in a pipeline that provides Default and targets.
MINIMAL: dict[str, Obj] = {
    "Default": {},
    "Schedule": {"period": "1 day", "startDateTime": "2024-01-01T00:00:00"},
    "ShellCommandActivity": {"scriptUri": "s3://b/run.sh"},
    "CopyActivity": {"input": ref("Node"), "output": ref("Node")},
    "SqlActivity": {"database": ref("Db"), "script": "select 1"},
    "EmrActivity": {"step": "s3://b/step.jar", "runsOn": ref("Cluster")},
    "HiveActivity": {"hiveScript": "select 1", "runsOn": ref("Cluster")},
    "PigActivity": {"scriptUri": "s3://b/x.pig", "runsOn": ref("Cluster")},
    "HadoopActivity": {"jarUri": "s3://b/x.jar", "runsOn": ref("Cluster")},
    "HiveCopyActivity": {"runsOn": ref("Cluster")},
    "RedshiftCopyActivity": {"insertMode": "KEEP_EXISTING", "input": ref("Node"), "output": ref("Node")},
    "S3DataNode": {"directoryPath": "s3://b/dir"},
    "SqlDataNode": {"table": "t"},
    "MySqlDataNode": {"table": "t"},
    "DynamoDBDataNode": {"tableName": "t"},
    "RedshiftDataNode": {"database": ref("Db"), "tableName": "t"},
    "JdbcDatabase": {"connectionString": "jdbc:x", "jdbcDriverClass": "D", "username": "u", "*password": "p"},
    "RdsDatabase": {"rdsInstanceId": "db-1", "username": "u", "*password": "p"},
    "RedshiftDatabase": {"clusterId": "c", "username": "u", "*password": "p"},
    "Ec2Resource": {"instanceType": "t1.micro"},
    "EmrCluster": {"releaseLabel": "emr-5.0.0"},
    "ShellCommandPrecondition": {"command": "true"},
    "Exists": {},
    "S3KeyExists": {"s3Key": "s3://b/k"},
    "S3PrefixNotEmpty": {"s3Prefix": "s3://b/p"},
    "DynamoDBDataExists": {"tableName": "t"},
    "DynamoDBTableExists": {"tableName": "t"},
    "SnsAlarm": {"topicArn": "arn:aws:sns:us-east-1:1:t", "subject": "s", "message": "m"},
    "Terminate": {},
    **{name: {} for name in ("CSV", "TSV", "Custom", "RegEx", "DynamoDBDataFormat", "DynamoDBExportDataFormat")},
}
TARGETS: list[Obj] = [
    {"id": "Node", "type": "S3DataNode", "filePath": "s3://b/k"},
    {"id": "Db", "type": "JdbcDatabase", **MINIMAL["JdbcDatabase"]},
    {"id": "Cluster", "type": "EmrCluster"},
]


def test_minimal_covers_the_whole_catalog() -> None:
    assert set(MINIMAL) == set(TYPES)
    assert kind_of("ShellCommandActivity") is Kind.ACTIVITY
    assert kind_of("Nope") is None


@pytest.mark.parametrize("type_name", sorted(MINIMAL))
def test_every_type_validates_with_its_required_fields(type_name: str) -> None:
    # Given the type's required fields, with workerGroup and role inherited from Default
    obj = {"id": "It", "type": type_name, **MINIMAL[type_name]}
    # When validated, Then nothing is reported against it
    result = check(DEFAULT, SCHEDULE, *TARGETS, obj)
    assert (result.errors, warnings_of(result, "It")) == ([], [])


@pytest.mark.parametrize(
    ("type_name", "drop", "add", "message"),
    [
        ("ShellCommandActivity", "scriptUri", {}, "one of 'command' or 'scriptUri' is required"),
        ("ShellCommandActivity", None, {"command": "x"}, "CONFLICTING_FIELDS: only one of 'command' or 'scriptUri'"),
        ("ShellCommandPrecondition", "command", {}, "one of 'command' or 'scriptUri' is required"),
        ("SqlActivity", "database", {}, "'database' is required for SqlActivity"),
        ("SqlActivity", "script", {}, "one of 'script' or 'scriptUri' is required"),
        ("SqlActivity", None, {"scriptUri": "s3://b/x.sql"}, "only one of 'script' or 'scriptUri'"),
        ("CopyActivity", "input", {}, "'input' is required for CopyActivity"),
        ("CopyActivity", "output", {}, "'output' is required for CopyActivity"),
        ("Schedule", "period", {}, "'period' is required for Schedule"),
        ("Schedule", "startDateTime", {}, "one of 'startDateTime' or 'startAt' is required"),
        ("Schedule", None, {"startAt": "FIRST_ACTIVATION_DATE_TIME"}, "only one of 'startDateTime' or 'startAt'"),
        ("Schedule", None, {"endDateTime": "2024-02-01T00:00:00", "occurrences": "3"}, "only one of 'endDateTime'"),
        ("JdbcDatabase", "*password", {}, "'*password' is required for JdbcDatabase"),
        ("JdbcDatabase", "jdbcDriverClass", {}, "'jdbcDriverClass' is required"),
        ("RdsDatabase", "rdsInstanceId", {}, "'rdsInstanceId' is required for RdsDatabase"),
        ("RedshiftDatabase", "clusterId", {}, "one of 'clusterId' or 'connectionString' is required"),
        ("S3KeyExists", "s3Key", {}, "'s3Key' is required for S3KeyExists"),
        ("S3PrefixNotEmpty", "s3Prefix", {}, "'s3Prefix' is required for S3PrefixNotEmpty"),
        ("SnsAlarm", "topicArn", {}, "'topicArn' is required for SnsAlarm"),
        ("SnsAlarm", "subject", {}, "'subject' is required for SnsAlarm"),
        ("SnsAlarm", "message", {}, "'message' is required for SnsAlarm"),
        ("SqlDataNode", "table", {}, "'table' is required for SqlDataNode"),
        ("RedshiftCopyActivity", "insertMode", {}, "'insertMode' is required"),
        ("Ec2Resource", None, {"runsOn": ref("Cluster")}, "FORBIDDEN_FIELD: 'runsOn' is not allowed on Ec2Resource."),
        ("Ec2Resource", None, {"workerGroup": "wg"}, "FORBIDDEN_FIELD: 'workerGroup' is not allowed on Ec2Resource."),
    ],
)
def test_missing_and_conflicting_fields_are_errors(type_name: str, drop: str | None, add: Obj, message: str) -> None:
    fields = {k: v for k, v in MINIMAL[type_name].items() if k != drop}
    result = check(DEFAULT, SCHEDULE, *TARGETS, {"id": "It", "type": type_name, **fields, **add})
    assert any(message in e for e in errors_of(result, "It")), errors_of(result, "It")


def test_required_fields_may_be_inherited_from_a_parent_or_default() -> None:
    no_role_default = {k: v for k, v in DEFAULT.items() if k != "role"}
    alarm = {"id": "Alarm", "type": "SnsAlarm", **MINIMAL["SnsAlarm"]}
    assert errors_of(check(no_role_default, SCHEDULE, alarm), "Alarm") == [
        "MISSING_REQUIRED_FIELD: 'role' is required for SnsAlarm."
    ]
    parent = {"id": "AlarmBase", "role": "R", "topicArn": "arn"}
    child = {"id": "Alarm", "type": "SnsAlarm", "parent": ref("AlarmBase"), "subject": "s", "message": "m"}
    assert check(no_role_default, SCHEDULE, parent, child).errors == []


def test_activities_need_a_worker_group_or_runs_on() -> None:
    no_group_default = {k: v for k, v in DEFAULT.items() if k != "workerGroup"}
    result = check(no_group_default, SCHEDULE, ACTIVITY)
    assert errors_of(result, "Say") == [
        "MISSING_REQUIRED_FIELD: one of 'runsOn' or 'workerGroup' is required for ShellCommandActivity."
    ]
    assert check(no_group_default, SCHEDULE, {**ACTIVITY, "workerGroup": "wg"}).errors == []
    ec2 = {"id": "Box", "type": "Ec2Resource"}
    assert check(no_group_default, SCHEDULE, ec2, {**ACTIVITY, "runsOn": ref("Box")}).errors == []


def test_a_runner_precondition_without_a_worker_group_is_only_a_warning() -> None:
    no_group_default = {k: v for k, v in DEFAULT.items() if k != "workerGroup"}
    check_obj = {"id": "Ready", "type": "ShellCommandPrecondition", "command": "true"}
    result = check(
        no_group_default, SCHEDULE, {**ACTIVITY, "workerGroup": "wg", "precondition": ref("Ready")}, check_obj
    )
    assert result.errors == []
    assert warnings_of(result, "Ready") == [
        "MISSING_REQUIRED_FIELD: one of 'runsOn' or 'workerGroup' is required for ShellCommandPrecondition"
        " unless the activity that uses it provides a worker group."
    ]


def test_runs_on_must_be_a_resource_and_wins_over_worker_group() -> None:
    node = {"id": "Node", "type": "S3DataNode"}
    result = check(*base(node, runsOn=ref("Node")))
    assert errors_of(result, "Say") == [
        "INVALID_OBJECT_REFERENCE: 'runsOn' refers to 'Node', a datanode; expected a resource."
    ]
    ec2 = {"id": "Box", "type": "Ec2Resource"}
    result = check(*base(ec2, runsOn=ref("Box"), workerGroup="wg"))
    assert result.errors == []
    assert warnings_of(result, "Say") == ["IGNORED_FIELD: workerGroup is ignored when runsOn is set."]
    # A workerGroup inherited from Default next to an own runsOn is the normal case, not a mistake.
    assert warnings_of(check(*base(ec2, runsOn=ref("Box"))), "Say") == []


@pytest.mark.parametrize("field", sorted(PERIOD_FIELDS))
def test_every_period_field_must_parse_unless_it_is_an_expression(field: str) -> None:
    result = check(*base(**{field: "5 fortnights"}))
    assert errors_of(result, "Say") == [
        f"INVALID_FIELD_VALUE: '{field}' value must be a period such as '15 minutes': invalid period "
        "'5 fortnights': unknown unit 'fortnights'; use one of minutes, hours, days, weeks, months, years."
    ]
    assert check(*base(**{field: "#{myTimeout}"}), parameters=[{"id": "myTimeout", "default": "1 hour"}]).errors == []


@pytest.mark.parametrize(
    ("period", "ok"),
    [
        ("15 minutes", True),
        ("14 minutes", False),
        ("1 Hour", True),
        ("3 years", True),
        ("36 months", True),
        ("37 months", False),
        ("4 years", False),
        ("1096 days", False),
        ("900 seconds", False),
    ],
)
def test_schedule_periods_must_be_from_15_minutes_to_3_years(period: str, ok: bool) -> None:
    result = check(DEFAULT, {**SCHEDULE, "period": period}, ACTIVITY)
    assert (errors_of(result, "Every15") == []) is ok


@pytest.mark.parametrize(("delay", "ok"), [("2 minutes", True), ("1 minute", False), ("1 hour", True)])
def test_retry_delay_must_be_at_least_2_minutes(delay: str, ok: bool) -> None:
    errors = errors_of(check(*base(retryDelay=delay)), "Say")
    assert errors == ([] if ok else [f"INVALID_FIELD_VALUE: 'retryDelay' must be at least 2 minutes, got '{delay}'."])


@pytest.mark.parametrize("value", ["2013-08-26", "2013-08-26 00:00:00", "2013-08-26T00:00:00Z", "tomorrow"])
def test_schedule_datetimes_must_be_literal(value: str) -> None:
    schedule = {"id": "S", "type": "Schedule", "period": "1 day", "startDateTime": value}
    assert errors_of(check(schedule), "S") == [
        "INVALID_FIELD_VALUE: 'startDateTime' value must be a literal datetime value."
    ]


def test_schedule_datetimes_may_be_expressions_and_must_be_in_order() -> None:
    expression = {"id": "S", "type": "Schedule", "period": "1 day", "startDateTime": "#{myStart}"}
    assert check(expression, parameters=[{"id": "myStart", "default": "2024-01-01T00:00:00"}]).errors == []
    backwards = {**expression, "startDateTime": "2024-01-02T00:00:00", "endDateTime": "2024-01-01T00:00:00"}
    assert errors_of(check(backwards), "S") == [
        "INVALID_FIELD_VALUE: 'endDateTime' must be later than 'startDateTime'."
    ]


@pytest.mark.parametrize(("value", "ok"), [("0", True), ("5", True), ("6", False), ("-1", False), ("two", False)])
def test_maximum_retries_is_an_integer_up_to_the_limit(value: str, ok: bool) -> None:
    errors = errors_of(check(*base(maximumRetries=value)), "Say")
    assert errors == ([] if ok else ["INVALID_FIELD_VALUE: 'maximumRetries' must be an integer from 0 to 5."])
    assert errors_of(check(*base(maximumRetries="3"), limits=Limits(max_retries=2)), "Say") != []


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("scheduleType", "CRON", True),
        ("scheduleType", "timeseries", True),
        ("scheduleType", "daily", False),
        ("failureAndRerunMode", "CASCADE", True),
        ("failureAndRerunMode", "none", True),
        ("failureAndRerunMode", "always", False),
    ],
)
def test_enumerations_are_case_insensitive(field: str, value: str, ok: bool) -> None:
    assert (check({**DEFAULT, field: value}, SCHEDULE, ACTIVITY).errors == []) is ok


def test_ondemand_must_be_set_on_default_and_then_everywhere() -> None:
    ondemand = {**DEFAULT, "scheduleType": "ONDEMAND"}
    assert check(ondemand, SCHEDULE, {**ACTIVITY, "scheduleType": "ondemand"}).errors == []
    message = "INVALID_FIELD_VALUE: 'scheduleType' ondemand is set on Default, and then on every object or none."
    assert errors_of(check(ondemand, SCHEDULE, {**ACTIVITY, "scheduleType": "cron"}), "Say") == [message]
    assert errors_of(check(*base(scheduleType="ondemand")), "Say") == [message]


def test_unknown_fields_are_warnings_and_user_fields_are_fine() -> None:
    result = check(*base(myComment="ok", my_thing="ok", mycomment="lower", colour="red"))
    assert result.errors == []
    assert warnings_of(result, "Say") == [
        "UNKNOWN_FIELD: 'colour' is not a known field.",
        "UNKNOWN_FIELD: 'mycomment' is not a known field (user-defined fields start with 'my' and an upper-case "
        "letter or '_').",
    ]


def test_single_valued_fields_may_not_repeat() -> None:
    result = check(*base(command=["echo a", "echo b"]))
    assert errors_of(result, "Say") == ["INVALID_FIELD_VALUE: 'command' may have only one value."]


# --- limits -----------------------------------------------------------------------------------


def test_object_count_over_the_limit_is_an_error() -> None:
    extra = [{"id": f"N{i}", "type": "S3DataNode"} for i in range(3)]
    result = check(*base(*extra), limits=Limits(objects_per_pipeline=5))
    assert errors_of(result, "N2") == ["LIMIT_EXCEEDED: the pipeline has 6 objects; the limit is 5."]
    assert check(*base(*extra[:2]), limits=Limits(objects_per_pipeline=5)).errors == []


def test_field_count_and_sizes_over_the_limits_are_errors() -> None:
    many = {f"myField{i}": "x" for i in range(50)}
    assert errors_of(check(*base(**many)), "Say") == ["LIMIT_EXCEEDED: the object has 52 fields; the limit is 50."]
    assert check(*base(**dict(list(many.items())[:48]))).errors == []
    # 5,121 two-byte characters are 10,242 UTF-8 bytes: over the field limit although under it in characters.
    assert errors_of(check(*base(command="é" * 5121)), "Say") == [
        "LIMIT_EXCEEDED: the value of 'command' is over 10240 UTF-8 bytes."
    ]
    assert check(*base(command="é" * 5120)).errors == []
    big = {"myA": "x" * 8000, "myB": "x" * 8000}
    assert errors_of(check(*base(**big)), "Say") == [
        "LIMIT_EXCEEDED: the object is 16044 UTF-8 bytes; the limit is 15360."
    ]
    long_name = "my" + "N" * 255
    assert errors_of(check(*base(**{long_name: "x"})), "Say") == [
        f"LIMIT_EXCEEDED: field name '{long_name[:40]}...' is over 256 UTF-8 bytes."
    ]


# --- parameters -------------------------------------------------------------------------------


def uses(*names: str) -> list[Obj]:
    return base(command=" ".join(f"#{{{n}}}" for n in names))


def test_parameter_ids_must_start_with_my() -> None:
    result = check(*uses("user"), parameters=[{"id": "user", "default": "u"}, {"id": "*myPw", "default": "p"}])
    assert errors_of(result, "user") == [
        "INVALID_PARAMETER: parameter id 'user' must start with 'my' (or '*my' when masked)."
    ]
    assert errors_of(result, "*myPw") == []


def test_parameter_types_are_checked_against_values_and_defaults() -> None:
    parameters = [
        {"id": "myBool", "type": "Boolean", "default": "x"},
        {"id": "myInt", "type": "Integer", "default": "7"},
        {"id": "myDouble", "type": "Double", "default": "1e3"},
    ]
    result = check(*uses(), parameters=parameters, values={"myInt": "seven", "myDouble": "nan"})
    assert errors_of(result, "myBool") == [
        "INVALID_PARAMETER: 'type' must be one of String, Integer, Double, AWS::S3::ObjectKey."
    ]
    assert errors_of(result, "myInt") == ["INVALID_PARAMETER_VALUE: the value 'seven' of 'myInt' is not an Integer."]
    assert errors_of(result, "myDouble") == ["INVALID_PARAMETER_VALUE: the value 'nan' of 'myDouble' is not a Double."]
    assert check(*uses(), parameters=parameters[1:], values={"myInt": "-3", "myDouble": "2.5"}).errors == []


def test_allowed_values_bind_values_and_defaults() -> None:
    parameter = {"id": "myInterval", "allowedValues": ["hourly", "daily"], "default": "weekly"}
    result = check(*uses("myInterval"), parameters=[parameter], values={"myInterval": "yearly"})
    assert errors_of(result, "myInterval") == [
        "INVALID_PARAMETER_VALUE: the default 'weekly' of 'myInterval' is not one of its allowedValues.",
        "INVALID_PARAMETER_VALUE: the value 'yearly' of 'myInterval' is not one of its allowedValues.",
    ]
    ok = {**parameter, "default": "daily"}
    assert check(*uses("myInterval"), parameters=[ok], values={"myInterval": "hourly"}).errors == []


def test_values_for_undeclared_parameters_are_errors() -> None:
    result = check(*uses(), parameters=[{"id": "myA"}], values={"myB": "x"})
    assert errors_of(result, "myB") == ["UNDECLARED_PARAMETER: 'myB' has a value but is not a declared parameter."]


def test_a_required_parameter_needs_a_value_only_when_it_is_used() -> None:
    parameters = [{"id": "myUsed"}, {"id": "*mySecret"}, {"id": "myUnused"}, {"id": "myOpt", "optional": "true"}]
    result = check(*uses("myUsed", "*mySecret", "myOpt"), parameters=parameters, values={"myUsed": ""})
    assert [e["id"] for e in result.errors] == ["myUsed", "*mySecret"]
    assert errors_of(result, "myUsed") == [
        "MISSING_PARAMETER_VALUE: 'myUsed' is used by the definition but has no value and no default."
    ]
    filled = check(*uses("myUsed", "*mySecret"), parameters=parameters, values={"myUsed": "a", "*mySecret": "b"})
    assert filled.errors == []
    assert check(*uses("myUsed"), parameters=[{"id": "myUsed", "default": "d"}]).errors == []


def test_only_array_parameters_take_several_values() -> None:
    parameters = [{"id": "myGroups", "isArray": "true"}, {"id": "myOne"}]
    result = check(
        *uses("myGroups", "myOne"), parameters=parameters, values={"myGroups": ["a", "b"], "myOne": ["a", "b"]}
    )
    assert errors_of(result, "myGroups") == []
    assert errors_of(result, "myOne") == [
        "INVALID_PARAMETER_VALUE: 'myOne' takes one value, not 2, unless isArray is true."
    ]


def test_too_many_parameters_is_an_error() -> None:
    parameters = [{"id": f"myP{i}", "optional": "true"} for i in range(4)]
    result = check(*uses(), parameters=parameters, limits=Limits(parameters=3))
    assert errors_of(result, "myP3") == ["LIMIT_EXCEEDED: the definition has 4 parameters; the limit is 3."]


def test_masked_values_and_encrypted_fields_never_appear_in_messages() -> None:
    parameters = [{"id": "*myPin", "type": "Integer", "allowedValues": ["1"]}]
    result = check(*uses("*myPin"), parameters=parameters, values={"*myPin": "hunter2"})
    db = {"id": "Db", "type": "RdsDatabase", "*password": "hunter2", "*retryDelay": "hunter2"}
    result2 = check(*base(db))
    text = json.dumps([result.errors, result.warnings, result2.errors, result2.warnings])
    assert "hunter2" not in text
    assert "(hidden)" in text


# --- expressions ------------------------------------------------------------------------------


def test_expressions_are_checked_but_refs_and_script_uri_are_not() -> None:
    result = check(*base(command="echo #{fromat(@scheduledStartTime,'YYYY')} #{1 +}", scriptUri=None))
    assert errors_of(result, "Say") == [
        "INVALID_FIELD_VALUE: 'command' has an invalid expression: unknown function 'fromat' (did you mean 'format'?)"
        " at position 7 in \"#{fromat(@scheduledStartTime,'YYYY')}\".",
        "INVALID_FIELD_VALUE: 'command' has an invalid expression: expected a value, found the end of the expression"
        " at position 48 in '#{1 +}'.",
    ]
    script = {"id": "Run", "type": "ShellCommandActivity", "scriptUri": "s3://b/#{fromat(}.sh"}
    assert errors_of(check(*base(script)), "Run") == []


def test_a_name_must_be_a_declared_parameter_or_a_field_of_the_object() -> None:
    command = "#{myParam} #{*mySecret} #{myOwn} #{@scheduledStartTime} #{name} #{input.x} #{myNope}"
    result = check(
        *base(command=command, myOwn="o"),
        parameters=[{"id": "myParam", "default": "p"}, {"id": "*mySecret", "default": "s"}],
    )
    assert errors_of(result, "Say") == [
        "UNDECLARED_PARAMETER: 'command' uses 'myNope', which is neither a declared parameter nor a field of 'Say'."
    ]
    shared = check({**DEFAULT, "myShared": "d"}, SCHEDULE, {**ACTIVITY, "command": "#{myShared} #{colour}"})
    assert shared.errors == []
    assert warnings_of(shared, "Say") == [
        "UNKNOWN_FIELD: 'command' uses 'colour', which is neither a field of 'Say' nor a parameter;"
        " evaluating it will fail."
    ]


def test_node_exists_only_in_actions_and_preconditions() -> None:
    alarm = {"id": "Alarm", "type": "SnsAlarm", "topicArn": "t", "role": "r", "subject": "#{node.name}"} | {
        "message": "m"
    }
    ready = {"id": "Ready", "type": "ShellCommandPrecondition", "command": "test #{node.@id}"}
    result = check(*base(alarm, ready, command="echo #{node.name}"))
    assert errors_of(result, "Say") == [
        "INVALID_FIELD_VALUE: 'command' uses 'node.name', but 'node' exists only in actions and preconditions."
    ]
    assert errors_of(result, "Alarm") == errors_of(result, "Ready") == []


def test_expression_messages_never_quote_secrets() -> None:
    db = {"id": "Db", "type": "JdbcDatabase", "connectionString": "c", "jdbcDriverClass": "D", "username": "u"}
    result = check(*base({**db, "*password": "hunter2#{oops"}, {**db, "id": "Db2", "*password": "x#{hunter2}"}))
    masked = check(*uses("*myPin"), parameters=[{"id": "*myPin"}], values={"*myPin": "hunter2#{"})
    text = json.dumps([result.errors, result.warnings, masked.errors, masked.warnings])
    assert "hunter2" not in text
    assert "(details hidden: encrypted field)" in text


def test_parameter_values_with_bad_expressions_are_errors() -> None:
    result = check(*uses("myCmd"), parameters=[{"id": "myCmd"}], values={"myCmd": "echo #{bogus(1)}"})
    assert errors_of(result, "myCmd") == [
        "INVALID_PARAMETER_VALUE: the value 'echo #{bogus(1)}' of 'myCmd' has an invalid expression:"
        " unknown function 'bogus' at position 7 in '#{bogus(1)}'."
    ]


# --- the AWS samples --------------------------------------------------------------------------


def test_the_samples_are_as_the_readme_describes() -> None:
    strict = [p for p in SAMPLES.glob("*.json") if p.name not in NOT_STRICT_JSON]
    assert (len(list(SAMPLES.glob("*.json"))), len(strict), len(STRICT_SAMPLES)) == (20, 18, 14)
    for name in NOT_STRICT_JSON:
        with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
            json.loads((SAMPLES / name).read_text())


@pytest.mark.parametrize("name", STRICT_SAMPLES)
def test_definition_file_to_api_matches_awscli_on_the_samples(name: str) -> None:
    translator = pytest.importorskip("awscli.customizations.datapipeline.translator")
    doc = load_sample(name)
    objects, parameters, values = definition_file_to_api(doc)
    assert objects == translator.definition_to_api_objects(copy.deepcopy(doc))
    assert parameters == (translator.definition_to_api_parameters(copy.deepcopy(doc)) or [])
    assert values == (translator.definition_to_parameter_values(copy.deepcopy(doc)) or [])


@pytest.mark.parametrize("name", STRICT_SAMPLES)
def test_every_strict_sample_validates_on_a_worker_group(name: str) -> None:
    # Given an AWS sample moved onto a worker group, with values for its required parameters
    doc = with_required_values(to_worker_group(load_sample(name)))
    # When it is validated
    result = validate_definition(*definition_file_to_api(doc), Limits())
    # Then it has no errors, and no warning calls its types or fields unknown
    assert result.errors == []
    codes = {message.split(":")[0] for entry in result.warnings for message in entry["warnings"]}
    assert codes <= {"INVALID_PARAMETER_VALUE"}, result.warnings


def test_samples_without_values_report_the_missing_parameters() -> None:
    result = validate_definition(*definition_file_to_api(load_sample("helloworld.json")), Limits())
    assert result.errors == [
        {
            "id": "myS3LogsPath",
            "errors": [
                "MISSING_PARAMETER_VALUE: 'myS3LogsPath' is used by the definition but has no value and no default."
            ],
        }
    ]
    # The oracle sample ships empty strings for every value: empty is not a value.
    oracle = validate_definition(*definition_file_to_api(to_worker_group(load_sample("oracle-backup.json"))), Limits())
    assert "myOracleHost" in {e["id"] for e in oracle.errors}


# --- robustness -------------------------------------------------------------------------------

_IDS = st.sampled_from(["Default", "A", "B", "C", "Sched", "", "#{myX}", "é"]) | st.text(max_size=8)
_KEYS = st.sampled_from(
    [
        *sorted(PERIOD_FIELDS),
        "type",
        "parent",
        "schedule",
        "runsOn",
        "workerGroup",
        "startDateTime",
        "endDateTime",
        "maximumRetries",
        "scheduleType",
        "occurrences",
        "command",
        "*password",
        "myX",
        "",
        "@status",
    ]
) | st.text(max_size=8)
_VALUES = st.sampled_from(
    [*sorted(TYPES), "15 minutes", "0 days", "2013-01-01T00:00:00", "#{myX}", "ONDEMAND", "7", "1" * 5000, "\ud800"]
) | st.text(max_size=20)
_FIELD = st.one_of(
    st.fixed_dictionaries({"key": _KEYS, "stringValue": _VALUES}),
    st.fixed_dictionaries({"key": _KEYS, "refValue": _IDS}),
    st.dictionaries(st.sampled_from(["key", "stringValue", "refValue"]), st.none() | st.integers() | _VALUES),
)
_OBJECT = st.fixed_dictionaries({"id": _IDS, "name": _IDS, "fields": st.lists(_FIELD, max_size=8)}) | st.dictionaries(
    st.sampled_from(["id", "name", "fields"]), st.none() | st.integers() | _VALUES | st.lists(st.integers())
)
_PARAMETER = st.fixed_dictionaries(
    {
        "id": _IDS | st.sampled_from(["myX", "*myX"]),
        "attributes": st.lists(
            st.fixed_dictionaries(
                {
                    "key": st.sampled_from(["type", "default", "optional", "isArray", "allowedValues"]) | _KEYS,
                    "stringValue": _VALUES | st.sampled_from(["Integer", "Double", "true", "false"]),
                }
            ),
            max_size=5,
        ),
    }
)
_VALUE = st.fixed_dictionaries({"id": _IDS | st.sampled_from(["myX", "*myX"]), "stringValue": _VALUES})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    objects=st.lists(_OBJECT, max_size=8),
    parameters=st.lists(_PARAMETER, max_size=4),
    values=st.lists(_VALUE, max_size=4),
    limits=st.builds(Limits, objects_per_pipeline=st.integers(0, 10), parameters=st.integers(0, 5)),
)
def test_random_definitions_always_get_a_result(
    objects: list[Obj], parameters: list[Obj], values: list[Obj], limits: Limits
) -> None:
    result = validate_definition(objects, parameters, values, limits)
    assert result.errored == bool(result.errors)
    json.dumps([result.errors, result.warnings])
    for entry in result.errors:
        assert entry["errors"] and all(isinstance(m, str) for m in entry["errors"])
