"""The pipeline object types the service knows, as data: kind, required and conflicting fields.

Sources: the Developer Guide's object reference pages, summarised in
``reference/datapipeline-protocol.md`` §4.6, §4.8 and §9. Field names are matched after
stripping the leading ``*`` that marks an encrypted field (``*password``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Kind(StrEnum):
    """What role an object type plays in a pipeline."""

    ACTIVITY = "activity"
    DATANODE = "datanode"
    RUNNER_PRECONDITION = "runner_precondition"
    SYSTEM_PRECONDITION = "system_precondition"
    DATABASE = "database"
    RESOURCE = "resource"
    SCHEDULE = "schedule"
    DATAFORMAT = "dataformat"
    ACTION = "action"
    DEFAULT = "default"


@dataclass(frozen=True)
class TypeSpec:
    """Field rules for one object type, checked against the object's effective (inherited) fields.

    Attributes:
        name: The ``type`` value, e.g. ``"ShellCommandActivity"``.
        kind: The role of the type.
        required: Fields that must be set.
        one_of: Groups of which at least one field must be set.
        exclusive: Groups of which at most one field may be set.
        forbidden: Fields the object itself may not set.
    """

    name: str
    kind: Kind
    required: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()
    exclusive: tuple[tuple[str, ...], ...] = ()
    forbidden: tuple[str, ...] = ()


#: The two ways to say where a runnable object runs (§4.8).
RUNNER_FIELDS = ("runsOn", "workerGroup")

#: Kinds a task runner executes, so they need ``runsOn`` or ``workerGroup``. A runner
#: precondition may instead get its worker group from the activity that uses it.
RUNNER_KINDS = frozenset({Kind.ACTIVITY, Kind.RUNNER_PRECONDITION})

_COMMAND = ("command", "scriptUri")
_SCRIPT = ("script", "scriptUri")


def _spec(
    name: str,
    kind: Kind,
    *required: str,
    one_of: tuple[tuple[str, ...], ...] = (),
    exclusive: tuple[tuple[str, ...], ...] = (),
    forbidden: tuple[str, ...] = (),
) -> TypeSpec:
    return TypeSpec(name, kind, required, one_of, exclusive, forbidden)


_SPECS = (
    _spec("Default", Kind.DEFAULT),
    _spec(
        "Schedule",
        Kind.SCHEDULE,
        "period",
        one_of=(("startDateTime", "startAt"),),
        exclusive=(("startDateTime", "startAt"), ("endDateTime", "occurrences")),
    ),
    # Activities
    _spec("ShellCommandActivity", Kind.ACTIVITY, one_of=(_COMMAND,), exclusive=(_COMMAND,)),
    _spec("CopyActivity", Kind.ACTIVITY, "input", "output"),
    _spec("SqlActivity", Kind.ACTIVITY, "database", one_of=(_SCRIPT,), exclusive=(_SCRIPT,)),
    _spec("EmrActivity", Kind.ACTIVITY, "step"),
    _spec(
        "HiveActivity", Kind.ACTIVITY, one_of=(("hiveScript", "scriptUri"),), exclusive=(("hiveScript", "scriptUri"),)
    ),
    _spec("PigActivity", Kind.ACTIVITY, one_of=(_SCRIPT,), exclusive=(_SCRIPT,)),
    _spec("HadoopActivity", Kind.ACTIVITY, "jarUri"),
    _spec("HiveCopyActivity", Kind.ACTIVITY),
    _spec("RedshiftCopyActivity", Kind.ACTIVITY, "insertMode", "input", "output"),
    # Data nodes
    _spec("S3DataNode", Kind.DATANODE, exclusive=(("filePath", "directoryPath"),)),
    _spec("SqlDataNode", Kind.DATANODE, "table"),
    _spec("MySqlDataNode", Kind.DATANODE, "table"),
    _spec("DynamoDBDataNode", Kind.DATANODE, "tableName"),
    _spec("RedshiftDataNode", Kind.DATANODE, "database", "tableName"),
    # Databases
    _spec("JdbcDatabase", Kind.DATABASE, "connectionString", "jdbcDriverClass", "username", "*password"),
    _spec("RdsDatabase", Kind.DATABASE, "rdsInstanceId", "username", "*password"),
    _spec(
        "RedshiftDatabase",
        Kind.DATABASE,
        "username",
        "*password",
        one_of=(("clusterId", "connectionString"),),
        exclusive=(("clusterId", "connectionString"),),
    ),
    # Resources: Data Pipeline launches them, so they cannot themselves run on anything.
    _spec("Ec2Resource", Kind.RESOURCE, "role", "resourceRole", forbidden=RUNNER_FIELDS),
    _spec("EmrCluster", Kind.RESOURCE, forbidden=RUNNER_FIELDS),
    # Preconditions
    _spec("ShellCommandPrecondition", Kind.RUNNER_PRECONDITION, one_of=(_COMMAND,), exclusive=(_COMMAND,)),
    _spec("Exists", Kind.RUNNER_PRECONDITION),
    _spec("S3KeyExists", Kind.SYSTEM_PRECONDITION, "s3Key", "role"),
    _spec("S3PrefixNotEmpty", Kind.SYSTEM_PRECONDITION, "s3Prefix", "role"),
    _spec("DynamoDBDataExists", Kind.SYSTEM_PRECONDITION, "tableName", "role"),
    _spec("DynamoDBTableExists", Kind.SYSTEM_PRECONDITION, "tableName", "role"),
    # Actions
    _spec("SnsAlarm", Kind.ACTION, "topicArn", "subject", "message", "role"),
    _spec("Terminate", Kind.ACTION),
    # Data formats
    *(
        _spec(name, Kind.DATAFORMAT)
        for name in ("CSV", "TSV", "Custom", "RegEx", "DynamoDBDataFormat", "DynamoDBExportDataFormat")
    ),
)

#: Every known type by its ``type`` value.
TYPES: Mapping[str, TypeSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})

#: Fields whose value is a reference (``refValue``) to another object.
REF_FIELDS = frozenset(
    {
        "parent", "schedule", "input", "output", "database", "precondition", "dependsOn", "runsOn",
        "dataFormat", "onFail", "onSuccess", "onLateAction",
    }
)  # fmt: skip

#: Fields whose value is a Period (``"15 minutes"``).
PERIOD_FIELDS = frozenset(
    {
        "period", "retryDelay", "attemptTimeout", "reportProgressTimeout", "preconditionTimeout",
        "lateAfterTimeout", "terminateAfter",
    }
)  # fmt: skip

#: Which kinds each reference field may point at; ``parent`` may point at anything.
REF_TARGET_KINDS: Mapping[str, frozenset[Kind]] = MappingProxyType(
    {
        "schedule": frozenset({Kind.SCHEDULE}),
        "input": frozenset({Kind.DATANODE}),
        "output": frozenset({Kind.DATANODE}),
        "database": frozenset({Kind.DATABASE}),
        "precondition": frozenset({Kind.RUNNER_PRECONDITION, Kind.SYSTEM_PRECONDITION}),
        "dependsOn": frozenset(
            {Kind.ACTIVITY, Kind.DATANODE, Kind.RUNNER_PRECONDITION, Kind.SYSTEM_PRECONDITION, Kind.RESOURCE}
        ),
        "runsOn": frozenset({Kind.RESOURCE}),
        "dataFormat": frozenset({Kind.DATAFORMAT}),
        "onFail": frozenset({Kind.ACTION}),
        "onSuccess": frozenset({Kind.ACTION}),
        "onLateAction": frozenset({Kind.ACTION}),
    }
)

#: Fields the service interprets as one value; repeating them is an error.
SINGLE_VALUED_FIELDS = frozenset(
    {
        "type", "parent", "schedule", "scheduleType", "failureAndRerunMode", "maximumRetries", "runsOn",
        "workerGroup", "startDateTime", "endDateTime", "startAt", "occurrences", "command", "scriptUri",
        "script", "database",
    }
) | PERIOD_FIELDS  # fmt: skip

#: Fields of the reference pages and the AWS samples. Deliberately generous: a field outside
#: this set only draws a warning, and then only if it is not a user field (``myX``).
KNOWN_FIELDS = (
    frozenset(
        {
            # common to runnable objects (§4.6, §9)
            "type", "name", "id", "scheduleType", "workerGroup", "maximumRetries", "failureAndRerunMode",
            "maxActiveInstances", "pipelineLogUri", "role", "resourceRole", "healthStatus", "attemptStatus",
            "region", "errorId", "errorMessage", "errorStackTrace", "hostname", "reportProgressTime",
            "cancellationReason",
            # schedules
            "startDateTime", "startAt", "endDateTime", "occurrences",
            # activities
            "command", "scriptUri", "scriptArgument", "stage", "stdout", "stderr", "script", "queue",
            "step", "preStepCommand", "postStepCommand", "hiveScript", "scriptVariable", "hadoopQueue",
            "hiveOptions", "generatedScriptsPath", "pigOptions", "jarUri", "mainClass", "argument",
            "preActivityTaskConfig", "postActivityTaskConfig", "filterSql", "insertMode", "commandOptions",
            "transformSql", "actionOnResourceFailure", "actionOnTaskFailure", "resizeClusterBeforeRunning",
            "resizeClusterMaxInstances", "inputs", "outputs", "sequence",
            # data nodes and databases
            "filePath", "directoryPath", "manifestFilePath", "compression", "s3EncryptionType", "table",
            "tableName", "selectQuery", "insertQuery", "createTableSql", "schemaName", "primaryKeys",
            "readThroughputPercent", "writeThroughputPercent", "connectionString", "jdbcDriverClass",
            "jdbcDriverJarUri", "jdbcProperties", "username", "password", "databaseName", "rdsInstanceId",
            "clusterId",
            # resources
            "instanceType", "imageId", "runAsUser", "securityGroupIds", "securityGroups", "subnetId",
            "keyPair", "spotBidPrice", "httpProxy", "initTimeout", "associatePublicIpAddress",
            "availabilityZone", "useOnDemandOnLastAttempt", "releaseLabel", "amiVersion", "applications",
            "configuration", "bootstrapAction", "masterInstanceType", "coreInstanceType", "coreInstanceCount",
            "taskInstanceType", "taskInstanceCount", "masterInstanceBidPrice", "coreInstanceBidPrice",
            "taskInstanceBidPrice", "enableDebugging", "hadoopSchedulerType", "supportedProducts",
            "emrManagedMasterSecurityGroupId", "emrManagedSlaveSecurityGroupId", "serviceAccessSecurityGroupId",
            "additionalMasterSecurityGroupIds", "additionalSlaveSecurityGroupIds", "ebsOptimized",
            "maximumRetriesOnResourceFailure", "logUri",
            # preconditions, actions, formats
            "s3Key", "s3Prefix", "topicArn", "subject", "message", "column", "escapeChar", "columnSeparator",
            "recordSeparator", "inputRegEx", "outputFormat",
        }
    )
    | REF_FIELDS
    | PERIOD_FIELDS
)  # fmt: skip


def kind_of(type_name: str) -> Kind | None:
    """The kind of a ``type`` value, or ``None`` when the type is unknown."""
    spec = TYPES.get(type_name)
    return spec.kind if spec is not None else None


def spec_of(type_name: str) -> TypeSpec | None:
    """The field rules of a ``type`` value, or ``None`` when the type is unknown."""
    return TYPES.get(type_name)
