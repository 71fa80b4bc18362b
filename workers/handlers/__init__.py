"""Handlers per activity type. Adding a type is one module here that calls ``register``.

Third-party packages add handlers for new activity types through the entry-point group ``dp_bridge.handlers``
(see :func:`load_plugins`); a ShellCommandActivity carrying ``myCeleryTask`` runs a Celery task's body instead of
its command (:func:`handler_for`, ``workers/handlers/celery_task.py``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from workers.context import Outcome, TaskContext

if TYPE_CHECKING:
    from bridge.taskmodel import TaskObject

log = logging.getLogger(__name__)

#: The entry-point group third-party handler packages declare (``[project.entry-points."dp_bridge.handlers"]``).
ENTRY_POINT_GROUP = "dp_bridge.handlers"

Handler = Callable[[TaskContext], Outcome]

#: Object type -> handler. Every type here gets a Celery task named ``dp.<Type>``.
HANDLERS: dict[str, Handler] = {}


def register(*type_names: str) -> Callable[[Handler], Handler]:
    """Register a handler for one or more object types."""

    def decorate(fn: Handler) -> Handler:
        for name in type_names:
            HANDLERS[name] = fn
        return fn

    return decorate


def load_builtin() -> dict[str, Handler]:
    """Import the built-in handler modules (each registers itself), then the plugins; return the registry."""
    from workers.handlers import (  # noqa: F401
        copy,
        exists,
        shell,
        sql_activity,
    )

    load_plugins()
    return HANDLERS


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load third-party handlers from the entry points of ``group``.

    Each entry point names a module (importing it registers its handlers) or a callable taking :func:`register`
    (``mypkg.handlers:setup``). A plugin that fails is logged loudly and skipped, none of what it registered kept:
    the worker starts without it.

    Returns:
        The names of the entry points loaded.
    """
    loaded: list[str] = []
    for entry in importlib.metadata.entry_points(group=group):
        before = dict(HANDLERS)
        try:
            target = entry.load()
            if not isinstance(target, types.ModuleType):
                if not callable(target):
                    raise TypeError(f"{entry.value} is neither a module nor a callable")
                target(register)
        except Exception:  # a broken plugin must never stop the worker
            HANDLERS.clear()
            HANDLERS.update(before)
            log.critical("handler plugin %s = %s is broken and was skipped", entry.name, entry.value, exc_info=True)
            continue
        added = sorted(name for name in HANDLERS if name not in before)
        replaced = sorted(name for name in before if HANDLERS[name] is not before[name])
        log.info("loaded handler plugin %s = %s: types %s", entry.name, entry.value, ", ".join(added) or "none new")
        if replaced:
            log.warning("handler plugin %s replaced the handlers of %s", entry.name, ", ".join(replaced))
        loaded.append(entry.name)
    return loaded


def handler_for(task: TaskObject, handlers: Mapping[str, Handler] | None = None) -> Handler | None:
    """The handler that runs ``task`` (``None``: no handler for its type).

    A ShellCommandActivity carrying ``myCeleryTask`` is a Celery-native step; anything else gets the handler
    registered for its type.

    Args:
        task: The task object.
        handlers: Type -> handler (by default :data:`HANDLERS`).
    """
    from workers.handlers import celery_task

    if celery_task.wants_celery_task(task):
        return celery_task.run_celery_task
    return (HANDLERS if handlers is None else handlers).get(task.object_type)
