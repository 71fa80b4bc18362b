"""The ``Exists`` precondition: FINISHED when the data node it guards exists, FALSE (checked again later) if not.

A precondition is referenced *from* the data node (``"precondition": {"ref": "Ready"}``), so its own task object
does not name the node. The node is found, in order:

1. among the task's objects, a data node whose ``precondition`` refers to this precondition's component;
2. through Data Pipeline: ``#{node.@id}`` evaluated for the attempt (``node`` is, for a precondition, the
   instance it guards), then that instance fetched with DescribeObjects (expressions evaluated).

S3DataNode: ``filePath`` is an object, ``directoryPath`` a non-empty prefix. SqlDataNode / MySqlDataNode: the
``table`` exists (``workers.sql.table_exists``).
"""

from __future__ import annotations

from bridge.errors import InvalidTask, RemoteError, TaskFailure
from bridge.taskmodel import PipelineObject
from workers import storage
from workers.context import Outcome, TaskContext, TaskStatus
from workers.handlers import register

SQL_NODES = frozenset({"SqlDataNode", "MySqlDataNode"})


def guarded_node(ctx: TaskContext) -> PipelineObject:
    """The data node this precondition attempt checks.

    Raises:
        InvalidTask: it cannot be found.
    """
    component = ctx.task.component_id
    candidates = [
        obj
        for obj in ctx.task.objects.values()
        if obj.id != ctx.task.attempt_id and component in obj.refs("precondition") and _is_data_node(obj)
    ]
    if len(candidates) == 1:
        return candidates[0]
    try:
        node_id = ctx.api.evaluate_expression(ctx.task.pipeline_id, ctx.task.attempt_id, "#{node.@id}").strip()
    except RemoteError as exc:
        raise InvalidTask(f"cannot find the data node {component} guards: {exc}") from exc
    if not node_id:
        raise InvalidTask(f"cannot find the data node {component} guards: #{{node.@id}} is empty")
    return ctx.resolve(node_id)


def _is_data_node(obj: PipelineObject) -> bool:
    return (obj.type or "").endswith("DataNode")


@register("Exists")
def check_exists(ctx: TaskContext) -> Outcome:
    """FINISHED if the guarded data node exists, else FALSE (Data Pipeline checks again after ``retryDelay``).

    Raises:
        InvalidTask: no data node, or one without a location.
        TaskFailure: the node's type cannot be checked (``BridgeUnsupportedPrecondition``), or S3 / the database
            could not answer.
    """
    node = guarded_node(ctx)
    node_type = node.type or "untyped"
    if node_type == "S3DataNode":
        directory, file_path = node.get("directoryPath"), node.get("filePath") or node.get("manifestFilePath")
        if directory:
            uri, what = directory.rstrip("/") + "/", "S3 directory"
        elif file_path:
            uri, what = file_path, "S3 object"
        else:
            raise InvalidTask(f"Exists: S3DataNode {node.id!r} has neither 'filePath' nor 'directoryPath'")
        found = storage.exists(ctx.settings, uri)
        where = f"{what} {uri}" + ("" if found or not directory else " (no objects under it)")
    elif node_type in SQL_NODES:
        table = node.get("table") or "?"
        try:
            from workers.sql import table_exists
        except ImportError as exc:
            message = f"Exists on {node_type} needs workers.sql: {exc}"
            raise TaskFailure(message, "BridgeUnsupportedPrecondition") from exc
        found = table_exists(ctx, node)
        where = f"table {table} of {node.id}"
    else:
        raise TaskFailure(
            f"Exists cannot check {node.id!r}: a {node_type} (it checks S3DataNode, SqlDataNode and MySqlDataNode)",
            "BridgeUnsupportedPrecondition",
        )
    ctx.log.info("Exists %s: %s %s", ctx.task.component_id, where, "exists" if found else "does not exist")
    if found:
        return Outcome.finished()
    return Outcome(TaskStatus.FALSE, None, f"Precondition not met: {where} does not exist")
