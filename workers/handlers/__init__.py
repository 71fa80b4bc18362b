"""Handlers per activity type. Adding a type is one module here that calls ``register``."""

from __future__ import annotations

from collections.abc import Callable

from workers.context import Outcome, TaskContext

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
    """Import the built-in handler modules (each registers itself) and return the registry."""
    from workers.handlers import shell  # noqa: F401

    return HANDLERS
