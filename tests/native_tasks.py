"""Celery tasks the integration tests run as Celery-native pipeline steps.

A worker imports this module with ``celery -A workers worker -I tests.native_tasks`` (and ``PYTHONPATH`` set to
the project root, since ``tests`` is not installed). Each task is an ordinary Celery task on the workers app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.app import app
from workers.native import StepContext


@app.task(name="tests.native_tasks.write_kwargs", bind=True)
def write_kwargs(self: Any, *, myOutput: str, context: StepContext, **fields: Any) -> dict[str, Any]:
    """Write what the step got (its ``my*`` fields, the context's ids, its request) as JSON to ``myOutput``."""
    context.progress("writing")
    record = {
        "fields": {"myOutput": myOutput, **fields},
        "pipeline_id": context.pipeline_id,
        "object_id": context.object_id,
        "attempt_id": context.attempt_id,
        "work_dir": str(context.work_dir),
        "called_directly": bool(self.request.called_directly),
        "cancelled": context.cancelled,
    }
    Path(myOutput).write_text(json.dumps(record))
    return {"written": myOutput}


@app.task(name="tests.native_tasks.fail")
def fail(*, myMessage: str, context: StepContext) -> None:
    """Raise ``ValueError(myMessage)``."""
    raise ValueError(myMessage)


@app.task(name="tests.native_tasks.wait_for_cancel")
def wait_for_cancel(*, myStarted: str, myStopped: str, context: StepContext) -> None:
    """Touch ``myStarted``, report progress until ``context.cancelled``, then write the count to ``myStopped``."""
    Path(myStarted).touch()
    beats = 0
    while not context.wait_cancelled(0.2):
        beats += 1
        context.progress(f"waited {beats}")
    Path(myStopped).write_text(str(beats))


@app.task(name="tests.native_tasks.child", ignore_result=False)
def child() -> str:
    """A subtask whose result a careless step would wait for."""
    return "child"


@app.task(name="tests.native_tasks.wait_on_child")
def wait_on_child(context: StepContext) -> Any:
    """The forbidden pattern: wait on another task's result from inside a task."""
    return child.delay().get(timeout=30)
