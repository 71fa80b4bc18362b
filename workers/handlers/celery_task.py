"""Celery-native steps: a ShellCommandActivity with ``myCeleryTask`` runs that Celery task's body, not its command.

The rules, as a pipeline author sees them:

- ``myCeleryTask: "pkg.module.task_name"`` names a task registered on the worker's own Celery app. The worker must
  import its module (``celery -A workers worker -I pkg.module``); names are never imported on demand, so a
  pipeline definition cannot make a worker import arbitrary code. Celery's own tasks (``celery.*``) and the
  bridge's (``dp.*``) cannot be named. An unknown name ends FAILED ``BridgeUnknownCeleryTask``, listing close
  matches. The ``command`` is never run; it only satisfies validation (for example ``echo #{myCeleryTask}``).
- The body runs in this worker slot, in this thread, called like a function (``task(**kwargs)``: a bound task's
  ``self.request`` is a local context with ``called_directly`` true). Its keyword arguments are every other field
  of the attempt whose key starts with ``my``, under the field's own name (``myTable`` -> ``myTable``): a key that
  appears once is a ``str``, a repeated key a ``list[str]`` in order, a reference the referenced object's id. A
  secret field ``*myPassword`` arrives as ``myPassword`` (its value is masked in every log line, event and error,
  and argument values are never logged). The body also gets ``context`` (:class:`workers.native.StepContext`) if
  it takes a ``context`` parameter or ``**kwargs``.
- Returning ends the task FINISHED. The return value is ignored (a ``str`` or ``dict`` is logged, masked and cut).
  Raising ends it FAILED ``BridgeCeleryTaskError`` with ``TypeName: message`` and the traceback's tail; arguments
  the body does not take end it FAILED ``BridgeCeleryTaskError`` before it runs. A body that returns after the
  attempt's ``attemptTimeout`` ends FAILED ``BridgeAttemptTimeout``.
- A canceled (or lost) attempt sends no status, whatever the body does; the body learns of it only through
  ``context.cancelled`` and must return promptly (nothing can kill a Python function; until it returns, its slot
  stays busy and its instance stays locked).
- Waiting on another task's result (``.delay().get()``) would hold this slot while the other task may need one:
  it raises Celery's "Never call result.get() within a task" here, which ends the task FAILED. With the fleet's
  default ``task_ignore_result`` such a ``get()`` returns ``None`` at once instead (there are no results to wait
  for); ``.delay()`` alone, fire and forget, is fine.
"""

from __future__ import annotations

import difflib
import inspect
import traceback
from typing import Any

from celery import current_app
from celery._state import get_current_task
from celery.result import denied_join_result

from bridge.errors import Canceled, InvalidTask
from bridge.masking import SECRETS
from bridge.messages import TASK_PREFIX
from bridge.taskmodel import PipelineObject, TaskObject
from workers.context import Outcome, TaskContext
from workers.native import EventSender, StepContext

#: The attempt field that names the Celery task to run.
TASK_FIELD = "myCeleryTask"
#: The only activity type that becomes a Celery-native step when it carries ``myCeleryTask``.
ACTIVITY = "ShellCommandActivity"
#: User-defined fields start with this; they become the body's keyword arguments.
USER_PREFIX = "my"
#: Task names a pipeline may not run: Celery's built-ins and the bridge's own ``dp.<Type>`` tasks.
RESERVED_PREFIXES = ("celery.", TASK_PREFIX)
UNKNOWN_ID = "BridgeUnknownCeleryTask"
ERROR_ID = "BridgeCeleryTaskError"
STACK_LIMIT = 1024
RESULT_LOG_LIMIT = 500
#: How many registered names an unknown-name message lists when none is close.
LISTED_NAMES = 20


def wants_celery_task(task: TaskObject) -> bool:
    """Whether ``task`` is a Celery-native step (a ShellCommandActivity carrying ``myCeleryTask``)."""
    return task.object_type == ACTIVITY and task.attempt.get(TASK_FIELD) is not None


def step_kwargs(attempt: PipelineObject) -> dict[str, str | list[str]]:
    """The body's keyword arguments: the attempt's ``my*`` fields but ``myCeleryTask`` (see the module docstring).

    Raises:
        InvalidTask: a field is set both plainly and as a secret (``myKey`` and ``*myKey``).
    """
    values: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for f in attempt.fields:
        name = f.key.removeprefix("*")
        if not name.startswith(USER_PREFIX) or name == TASK_FIELD:
            continue
        if origin.setdefault(name, f.key) != f.key:
            raise InvalidTask(f"'{name}' is set both as a secret ('*{name}') and plainly; keep one")
        values.setdefault(name, []).append(f.value)
    return {name: found[0] if len(found) == 1 else found for name, found in values.items()}


def unknown_task_message(name: str, registered: list[str]) -> str:
    """Why ``name`` cannot run, naming the registered tasks it is closest to."""
    if not name:
        return f"{TASK_FIELD} is empty: name a Celery task registered on the worker (pkg.module.task_name)"
    if name.startswith(RESERVED_PREFIXES):
        return f"{TASK_FIELD} {name!r} names a Celery or bridge task; name a task of your own"
    message = f"{TASK_FIELD} {name!r} is not a Celery task registered on this worker"
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.8)
    if close:
        message += f"; did you mean {', '.join(close)}?"
    elif registered:
        shown = ", ".join(registered[:LISTED_NAMES]) + (", ..." if len(registered) > LISTED_NAMES else "")
        message += f"; registered: {shown}"
    else:
        message += "; it has none of its own"
    return message + " (the worker imports task modules given to celery worker -I/--include)"


def find_task(app: Any, name: str) -> Any | None:
    """The task ``name`` registered on ``app``, or ``None`` (reserved names included)."""
    if not name or name.startswith(RESERVED_PREFIXES):
        return None
    return app.tasks.get(name)


def _worker_app() -> Any:
    # The app of the dp.<Type> task this handler runs in: in a threads-pool thread, current_app is Celery's
    # fallback app (only prefork children set the default), so it would know none of the worker's tasks.
    outer = get_current_task()
    return outer.app if outer is not None else current_app._get_current_object()


def _event_sender(app: Any) -> EventSender | None:
    """Sends ``task-progress`` events for the dp.<Type> Celery task this handler runs in (what Flower shows)."""
    outer = get_current_task()
    request: Any = getattr(outer, "request", None)
    task_id = getattr(request, "id", None)
    if not task_id or not app.conf.worker_send_task_events:
        return None
    hostname = request.hostname

    def send(fields: Any) -> None:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send("task-progress", uuid=task_id, retry=False, **fields)

    return send


def _signature_error(fn: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``fn`` cannot take ``kwargs`` (``None`` when it can, or when its signature is unknown)."""
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        return str(exc)
    except ValueError:  # no signature (a builtin): let the call say
        return None
    return None


def _takes_context(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "context" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _describe_result(result: object) -> str | None:
    if isinstance(result, str | dict):
        return SECRETS.mask(str(result))[:RESULT_LOG_LIMIT]
    return None


def run_celery_task(ctx: TaskContext, app: Any = None) -> Outcome:
    """Run the Celery task named by ``myCeleryTask`` in this slot; its return or exception is the outcome.

    Args:
        ctx: The attempt.
        app: The Celery app whose registry names the task; by default the worker's own.

    Raises:
        Canceled: Data Pipeline canceled the task (or it was lost) while the body ran.
        InvalidTask: the attempt's ``my*`` fields cannot be passed (see :func:`step_kwargs`).
    """
    app = app if app is not None else _worker_app()
    name = (ctx.attempt.get(TASK_FIELD) or "").strip()
    task = find_task(app, name)
    if task is None:
        registered = sorted(n for n in app.tasks if not n.startswith(RESERVED_PREFIXES))
        message = unknown_task_message(name, registered)
        ctx.log.warning("unknown Celery task task_key=%s: %s", ctx.task.key, message)
        return Outcome.failed(UNKNOWN_ID, message)
    kwargs: dict[str, Any] = dict(step_kwargs(ctx.attempt))
    step = StepContext(
        pipeline_id=ctx.task.pipeline_id,
        object_id=ctx.task.component_id,
        attempt_id=ctx.task.attempt_id,
        task_key=ctx.task.key,
        work_dir=ctx.work_dir,
        log=ctx.log,
        cancel=ctx.cancel,
        timeout_s=ctx.task.attempt_timeout_s,
        send_event=_event_sender(app),
    )
    if _takes_context(task.run):
        kwargs["context"] = step
    refused = _signature_error(task.run, kwargs)
    if refused is not None:
        return Outcome.failed(ERROR_ID, f"{name} cannot take this step's arguments: {refused}")
    ctx.log.info("running Celery task %s task_key=%s arguments=%s", name, ctx.task.key, sorted(kwargs))
    try:
        # Waiting on another task's result from here could hold every slot: Celery's guard raises instead.
        with denied_join_result():
            result = task(**kwargs)
    except Exception as exc:  # the body's own failure is the task's outcome
        if ctx.cancel.is_set():
            raise Canceled(ctx.cancel_reason or "canceled") from exc
        message = SECRETS.mask(f"{type(exc).__name__}: {exc}")
        stack = SECRETS.mask("".join(traceback.format_exception(exc)))[-STACK_LIMIT:]
        ctx.log.warning("Celery task %s raised task_key=%s: %s", name, ctx.task.key, message)
        return Outcome.failed(ERROR_ID, message, stack)
    if ctx.cancel.is_set():
        raise Canceled(ctx.cancel_reason or "canceled")
    described = _describe_result(result)
    ctx.log.info(
        "Celery task %s returned task_key=%s progress_reports=%d%s",
        name,
        ctx.task.key,
        step.progress_count,
        f": {described}" if described is not None else "",
    )
    if step.timed_out:
        return Outcome.failed(
            "BridgeAttemptTimeout", f"Celery task {name} returned after the attempt's attemptTimeout had passed"
        )
    return Outcome.finished()
