"""SqlActivity: run a SQL script (``script``, or ``scriptUri`` on S3) on its ``database``, in one transaction.

- ``script`` arrives already expression-evaluated by Data Pipeline. A ``scriptUri`` script is downloaded and then
  evaluated with EvaluateExpression in the context of the attempt (AWS: "a task runner can evaluate SQL queries
  stored in Amazon S3"); a script without ``#{`` is used as downloaded, with no call.
- ``scriptArgument`` values bind to the script's ``?`` placeholders in order (see :mod:`workers.sql`).
- ``queue`` (Redshift's query group) and ``output`` / ``input`` (references for expressions) need nothing here.
- Outcomes: FINISHED; FAILED ``BridgeSqlError`` (the database's message), ``BridgeDatabaseUnavailable``,
  ``BridgeUnsupportedDatabase``, ``BridgeAttemptTimeout``, ``BridgeInvalidTask``; a canceled task sends nothing.
"""

from __future__ import annotations

from bridge.errors import InvalidTask, RemoteError, TaskFailure
from workers.context import Outcome, TaskContext
from workers.handlers import register
from workers.sql import engine, run_script

#: Where a ``scriptUri`` script is saved in the attempt's work directory.
SCRIPT_FILE = "script.sql"


def script_text(ctx: TaskContext) -> str:
    """The SQL to run: ``script``, or the ``scriptUri`` object downloaded and expression-evaluated.

    Raises:
        InvalidTask: neither or both of ``script`` and ``scriptUri``; a script that is not UTF-8.
        TaskFailure: the download failed (``BridgeS3...``) or EvaluateExpression refused the script
            (``BridgeExpressionError``).
    """
    script, script_uri = ctx.attempt.get("script"), ctx.attempt.get("scriptUri")
    if script and script_uri:
        raise InvalidTask("set either 'script' or 'scriptUri', not both")
    if script:
        return script
    if not script_uri:
        raise InvalidTask("SqlActivity needs 'script' or 'scriptUri'")
    from workers import storage  # S3 only when a script lives there

    path = storage.download(ctx.settings, script_uri, ctx.work_dir / SCRIPT_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTask(f"the SQL script {script_uri} is not UTF-8 text") from exc
    if "#{" not in text:
        return text
    try:
        return ctx.api.evaluate_expression(ctx.task.pipeline_id, ctx.task.attempt_id, text)
    except RemoteError as exc:
        raise TaskFailure(
            f"EvaluateExpression of the SQL script {script_uri} failed: {exc}", "BridgeExpressionError"
        ) from exc


@register("SqlActivity")
def run_sql_activity(ctx: TaskContext) -> Outcome:
    """Run the activity's script on its database.

    Raises:
        Canceled: Data Pipeline canceled the task while the script ran.
        TaskFailure: every failure, with the error ids listed in the module docstring.
    """
    database = ctx.ref("database")
    assert database is not None  # required=True
    sql_text = script_text(ctx)
    arguments = ctx.attempt.get_all("scriptArgument")
    eng = engine(ctx, database)
    ctx.log.info(
        "running SQL script on %s (database %s, %d argument(s))",
        eng.url.render_as_string(hide_password=True),
        database.id,
        len(arguments),
    )
    try:
        result = run_script(ctx, eng, sql_text, arguments)
    finally:
        eng.dispose()
    ctx.log.info("SQL script done: %d statement(s), rows %s", result.statements, list(result.rowcounts))
    return Outcome.finished()
