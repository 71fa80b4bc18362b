"""What the names in ``#{...}`` mean for one component, instance or attempt of a pipeline.

A :class:`Resolver` answers the expression evaluator's questions for one object:

- ``@id`` is the object's id and ``name`` its component's name (the name written in the
  definition, also for instances and attempts, so an alarm's ``#{node.name}`` reads well).
- A declared parameter (``myParam``, ``*myPassword``) is its value: the activation's
  ``parameterValues`` (the ones ``ActivatePipeline`` was given, else those put with the
  definition), else the parameter's ``default``. ``Integer`` and ``Double`` parameters are
  numbers. A parameter with no value at all is the empty string. Parameters win over fields.
- Any other name is a field of the object: its own or inherited fields and its runtime fields
  (``@scheduledStartTime``, ``@status``, ``@pipelineId``...). The ``@...Time`` fields are
  DateTimes. A field whose value holds ``#{...}`` is evaluated first, in the same object.
- A dotted name goes through a reference field: ``#{input.directoryPath}``,
  ``#{parent.@id}``, ``#{output.@scheduledStartTime}``. From an instance or attempt, a
  reference to a component leads to that component's instance in the same run when it has
  one (AWS's instance-level references point at instances), else to the component seen with
  the run's ``@scheduledStartTime`` and ``@scheduledEndTime``.
- ``node`` is only known where AWS defines it: for an action it is the object the action
  runs for (given by the caller), for a precondition's instance or attempt the instance it
  guards.

Values of masked parameters are used as they are, never evaluated further (a password may hold
``#{``), and never appear in an error message. A name that refers back to itself through
fields is an error, not a hang.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from emulator.clock import stamp
from emulator.definition import as_text, effective_fields
from emulator.expressions import ExpressionError, Scope, Value, evaluate, names, parameter_value
from emulator.model import Field, Instance, Pipeline
from emulator.periods import parse_datetime
from emulator.state import State
from emulator.views import attempt_fields, component_fields, instance_fields

__all__ = ["Resolver", "UnknownObject", "evaluate_for", "resolver_for", "scope_for"]

#: Runtime fields that are DateTimes in expressions.
DATETIME_FIELDS = frozenset({"@scheduledStartTime", "@scheduledEndTime", "@actualStartTime", "@actualEndTime"})
#: The run's times a component gets when it is seen from an instance or attempt of that run.
_RUN_FIELDS = ("@scheduledStartTime", "@scheduledEndTime")
#: Kinds of instance for which ``node`` is the instance they guard.
_PRECONDITION_KINDS = ("runner_precondition", "system_precondition")
#: References that lead from an instance to its own component, never to a same-run instance.
_COMPONENT_REFS = ("parent", "@componentParent")
#: How deep field-through-field evaluation may go before it is reported as too deep.
_MAX_NESTING = 16
#: How many values one field may expand to through multi-valued names.
MAX_EXPANDED_VALUES = 256


class UnknownObject(LookupError):
    """The pipeline has no component, instance or attempt with that id."""


@dataclass(frozen=True)
class _Parameter:
    type: str
    masked: bool
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Target:
    """One object as expressions see it."""

    object_id: str
    name: str
    fields: list[Field]
    #: (scheduled start, scheduled end) of the run the object belongs to, if any.
    run: tuple[float, float] | None
    guards: tuple[str, ...] = ()


@dataclass
class _Context:
    """What every resolver of one evaluation shares: the definition, the state, the cycle guard."""

    state: State
    pipeline: Pipeline
    objects: dict[str, dict[str, Any]]
    parameters: dict[str, _Parameter]
    in_progress: list[tuple[str, str]] = field(default_factory=list)
    _by_run: dict[tuple[str, float], Instance] | None = None

    @contextmanager
    def guard(self, object_id: str, key: str) -> Iterator[None]:
        if (object_id, key) in self.in_progress:
            chain = " -> ".join(f"{k} of {o}" for o, k in [*self.in_progress, (object_id, key)])
            raise ExpressionError(f"circular reference: {chain}")
        if len(self.in_progress) >= _MAX_NESTING:
            raise ExpressionError(f"fields refer to fields more than {_MAX_NESTING} levels deep")
        self.in_progress.append((object_id, key))
        try:
            yield
        finally:
            self.in_progress.pop()

    def target(self, object_id: str, run: tuple[float, float] | None = None) -> _Target | None:
        """A component, instance or attempt by id (a component seen within ``run`` if given)."""
        pipeline_id = self.pipeline.pipeline_id
        instance = self.state.instances.get((pipeline_id, object_id))
        if instance is not None:
            return self._instance_target(instance, instance_fields(self.state, instance), object_id)
        attempt = self.state.attempts.get((pipeline_id, object_id))
        if attempt is not None:
            owner = self.state.instances.get((pipeline_id, attempt.instance_id))
            if owner is None:
                return None
            return self._instance_target(owner, attempt_fields(owner, attempt), object_id)
        if object_id not in self.objects:
            return None
        own = [f for f in effective_fields(self.objects, object_id) if f.key != "parent"]
        # ``parent`` (Default when unset) and the runtime fields, as DescribeObjects shows them.
        shown = component_fields(self.pipeline, self.objects, object_id)
        runtime = [f for f in shown if f.key == "parent" or f.key.startswith("@")]
        times = [] if run is None else [Field(k, stamp(t), False) for k, t in zip(_RUN_FIELDS, run, strict=True)]
        name = as_text(self.objects[object_id].get("name")) or object_id
        return _Target(object_id, name, [*own, *runtime, *times], run)

    def _instance_target(self, instance: Instance, fields: list[Field], object_id: str) -> _Target:
        component = self.objects.get(instance.component_id, {})
        name = as_text(component.get("name")) or instance.component_id
        guards = tuple(instance.guards) if instance.kind in _PRECONDITION_KINDS else ()
        return _Target(object_id, name, fields, (instance.scheduled_start, instance.scheduled_end), guards)

    def related(self, origin: _Target, key: str, ref_id: str) -> _Target | None:
        """Where reference field ``key`` of ``origin`` leads."""
        if origin.run is not None and key not in _COMPONENT_REFS and ref_id in self.objects:
            same_run = self._same_run(ref_id, origin.run[0])
            if same_run is not None:
                return self.target(same_run.instance_id)
        return self.target(ref_id, origin.run)

    def _same_run(self, component_id: str, scheduled_start: float) -> Instance | None:
        if self._by_run is None:
            self._by_run = {
                (i.component_id, i.scheduled_start): i
                for (pid, _), i in self.state.instances.items()
                if pid == self.pipeline.pipeline_id
            }
        return self._by_run.get((component_id, scheduled_start))


class Resolver:
    """Resolves names for one object and evaluates text in its context.

    Built by :func:`resolver_for`; :attr:`scope` is what :func:`emulator.expressions.evaluate` takes.
    """

    def __init__(
        self, ctx: _Context, target: _Target, node: _Target | None, pinned: Mapping[str, Value] | None = None
    ) -> None:
        self._ctx = ctx
        self._target = target
        self._node = node
        self._pinned = dict(pinned or {})

    @property
    def object_id(self) -> str:
        """The id of the object whose context this is."""
        return self._target.object_id

    @property
    def scope(self) -> Scope:
        """The names as this object sees them."""
        return Scope(self.lookup, self.follow)

    def evaluate(self, text: str) -> str:
        """``text`` with every ``#{...}`` replaced; a multi-valued name gives its first value.

        Raises:
            ExpressionError: an expression cannot be evaluated here.
        """
        try:
            return evaluate(text, self.scope)
        except RecursionError:
            # Deeply nested expressions inside fields nested in fields: report, never crash.
            raise ExpressionError("expressions nested too deeply") from None

    def expand(self, text: str) -> list[str]:
        """``text`` evaluated once per value of the multi-valued names it uses (an ``isArray``
        parameter, a repeated field): ``"#{myGroups}"`` with two groups gives two values.

        Raises:
            ExpressionError: an expression cannot be evaluated here.
        """
        for name in names(text):
            if "." in name or name in self._pinned or name in ("@id", "name"):
                continue
            values = self._values(name)
            if values is not None and len(values) > 1:
                pinned = [Resolver(self._ctx, self._target, self._node, {**self._pinned, name: v}) for v in values]
                expanded: list[str] = []
                for resolver in pinned:
                    expanded += resolver.expand(text)
                    if len(expanded) > MAX_EXPANDED_VALUES:
                        raise ExpressionError(f"the value expands to more than {MAX_EXPANDED_VALUES} values")
                return expanded
        return [self.evaluate(text)]

    def lookup(self, name: str) -> Value | None:
        """A plain name: a pinned value, ``@id``, ``name``, a parameter or a field (first value)."""
        if name in self._pinned:
            return self._pinned[name]
        if name == "@id":
            return self._target.object_id
        if name == "name":
            return self._target.name
        values = self._values(name)
        return values[0] if values else None

    def follow(self, ref: str, rest: str) -> Value | None:
        """A dotted name: ``rest`` resolved in the object that reference field ``ref`` points at."""
        if ref == "node":
            target = self._node
        else:
            ids = [v for k, v, is_ref in self._target.fields if k == ref and is_ref]
            target = self._ctx.related(self._target, ref, ids[0]) if ids else None
        if target is None:
            return None
        there = Resolver(self._ctx, target, None)
        head, _, tail = rest.partition(".")
        return there.follow(head, tail) if tail else there.lookup(head)

    def _values(self, name: str) -> list[Value] | None:
        parameter = self._ctx.parameters.get(name.removeprefix("*"))
        if parameter is not None:
            texts = parameter.values or ("",)
            return [self._parameter_value(name, parameter, text) for text in texts]
        found = [v for k, v, _ in self._target.fields if k == name]
        if not found:
            return None
        return [self._field_value(name, value) for value in found]

    def _parameter_value(self, name: str, parameter: _Parameter, text: str) -> Value:
        if "#{" in text and not parameter.masked:
            with self._ctx.guard("parameter", name):
                text = self.evaluate(text)
        return parameter_value(text, parameter.type)

    def _field_value(self, key: str, value: str) -> Value:
        if key in DATETIME_FIELDS:
            try:
                return parse_datetime(value)
            except ValueError:
                return value
        if "#{" not in value:
            return value
        with self._ctx.guard(self._target.object_id, key):
            try:
                return self.evaluate(value)
            except ExpressionError as exc:
                detail = "(details hidden: encrypted field)" if key.startswith("*") else str(exc)
                raise ExpressionError(f"in '{key}' of {self._target.object_id}: {detail}") from None


def _parameters(
    parameter_objects: Sequence[Mapping[str, Any]], parameter_values: Sequence[Mapping[str, Any]]
) -> dict[str, _Parameter]:
    given: dict[str, list[str]] = {}
    for entry in parameter_values:
        if isinstance(entry, Mapping):
            given.setdefault(as_text(entry.get("id")).removeprefix("*"), []).append(as_text(entry.get("stringValue")))
    out: dict[str, _Parameter] = {}
    for raw in parameter_objects:
        if not isinstance(raw, Mapping):
            continue
        parameter_id = as_text(raw.get("id"))
        attributes: dict[str, list[str]] = {}
        entries = raw.get("attributes")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping):
                attributes.setdefault(as_text(entry.get("key")), []).append(as_text(entry.get("stringValue")))
        name = parameter_id.removeprefix("*")
        values = [v for v in given.get(name, []) if v != ""] or attributes.get("default", [])
        parameter_type = (attributes.get("type") or ["String"])[0] or "String"
        out.setdefault(name, _Parameter(parameter_type, parameter_id.startswith("*"), tuple(values)))
    return out


def _context(state: State, pipeline: Pipeline, object_id: str) -> _Context:
    """The definition in force: the active one once activated (unless only the latest has the object)."""
    active = pipeline.active_objects
    is_run_object = (pipeline.pipeline_id, object_id) in state.instances or (
        pipeline.pipeline_id,
        object_id,
    ) in state.attempts
    if active is not None and (is_run_object or any(o.get("id") == object_id for o in active)):
        parameter_objects = pipeline.active_parameter_objects
        if parameter_objects is None:
            parameter_objects = pipeline.parameter_objects
        objects, parameters = active, _parameters(parameter_objects, pipeline.active_parameter_values)
    else:
        objects, parameters = pipeline.objects, _parameters(pipeline.parameter_objects, pipeline.parameter_values)
    return _Context(state, pipeline, {o["id"]: o for o in objects if isinstance(o, Mapping)}, parameters)


def resolver_for(
    state: State, pipeline: Pipeline, object_id: str, *, node: str | None = None, within: str | None = None
) -> Resolver:
    """A resolver for a component, instance or attempt of ``pipeline``.

    Args:
        state: The service state (read only; call with its lock held).
        pipeline: The pipeline the object belongs to.
        object_id: A component, instance or attempt id.
        node: For an action: the object it runs for. Preconditions' instances and attempts get
            the instance they guard without it.
        within: An instance or attempt id: ``object_id`` is a component seen from that object's
            run (its same-run instance if it has one, else the component with the run's times).

    Raises:
        UnknownObject: no such object (or ``node``/``within`` object) in the pipeline.
    """
    ctx = _context(state, pipeline, within or object_id)
    run: tuple[float, float] | None = None
    if within is not None:
        origin = ctx.target(within)
        if origin is None:
            raise UnknownObject(f"Object {within!r} is not part of pipeline {pipeline.pipeline_id}.")
        run = origin.run
        target = ctx.related(origin, "", object_id)
    else:
        target = ctx.target(object_id)
    if target is None:
        raise UnknownObject(f"Object {object_id!r} is not part of pipeline {pipeline.pipeline_id}.")
    node_target: _Target | None = None
    node_id = node if node is not None else (target.guards[0] if target.guards else None)
    if node_id is not None:
        node_target = ctx.target(node_id, run)
        if node_target is None:
            raise UnknownObject(f"Object {node_id!r} is not part of pipeline {pipeline.pipeline_id}.")
    return Resolver(ctx, target, node_target)


def scope_for(state: State, pipeline: Pipeline, object_id: str, *, node: str | None = None) -> Scope:
    """The :class:`~emulator.expressions.Scope` of a component, instance or attempt (see the module doc).

    Raises:
        UnknownObject: no such object in the pipeline.
    """
    return resolver_for(state, pipeline, object_id, node=node).scope


def evaluate_for(state: State, pipeline: Pipeline, object_id: str, text: str, node: str | None = None) -> str:
    """``text`` evaluated in the context of ``object_id``; for actions, ``node`` is the object they run for.

    For example an SnsAlarm's ``message`` with ``node`` the failed instance:
    ``evaluate_for(state, pipeline, "FailureAlarm", message, node="@Copy_2024-01-01T00:00:00")``.

    Raises:
        UnknownObject: no such object (or node) in the pipeline.
        ExpressionError: an expression cannot be evaluated there.
    """
    return resolver_for(state, pipeline, object_id, node=node).evaluate(text)
