"""Definition files and inheritance: how an object's effective fields come from ``parent`` and ``Default``.

Shared by validation (PutPipelineDefinition) and the engine (instances carry effective fields).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

#: The id of the object every parentless object inherits from.
DEFAULT_OBJECT_ID = "Default"


class EffectiveField(NamedTuple):
    """One field value as an object sees it: ``(key, value, is_ref)``."""

    key: str
    value: str
    is_ref: bool


# --- Definition files and inheritance -------------------------------------------------------


def definition_file_to_api(
    doc: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Turn a definition file into ``(pipelineObjects, parameterObjects, parameterValues)`` as awscli does.

    ``{"ref": X}`` becomes a ``refValue``, a list becomes repeated fields, ``name`` defaults to
    ``id``, fields are sorted by key; ``values`` lists expand to one entry per value. Other
    top-level keys (such as a console template's ``metadata``) are ignored. ``doc`` is not changed.

    Raises:
        ValueError: ``objects`` is missing, or an object or parameter has no ``id``.
    """
    if "objects" not in doc:
        raise ValueError('Error in pipeline definition: Missing "objects" key')
    objects = []
    for element in doc["objects"]:
        if "id" not in element:
            raise ValueError(f'Error in pipeline definition: Missing "id" key of element: {element!r}')
        rest = {k: v for k, v in element.items() if k not in ("id", "name")}
        fields = [_api_field(key, item) for key, value in sorted(rest.items()) for item in _as_list(value)]
        objects.append({"id": element["id"], "name": element.get("name", element["id"]), "fields": fields})
    parameters = []
    for element in doc.get("parameters", []):
        if "id" not in element:
            raise ValueError(f'Error in pipeline definition: Missing "id" key of parameter: {element!r}')
        rest = {k: v for k, v in element.items() if k != "id"}
        attributes = [_api_field(key, item) for key, value in sorted(rest.items()) for item in _as_list(value)]
        parameters.append({"id": element["id"], "attributes": attributes})
    values = [
        {"id": key, "stringValue": item} for key, value in doc.get("values", {}).items() for item in _as_list(value)
    ]
    return objects, parameters, values


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _api_field(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and list(value) == ["ref"]:
        return {"key": key, "refValue": value["ref"]}
    return {"key": key, "stringValue": value}


def own_fields(obj: Mapping[str, Any]) -> list[EffectiveField]:
    """The fields an API-shape object sets itself, in order; malformed entries are skipped."""
    raw = obj.get("fields") if isinstance(obj, Mapping) else None
    fields = []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, Mapping):
            is_ref = "refValue" in entry
            value = entry.get("refValue" if is_ref else "stringValue")
            fields.append(EffectiveField(as_text(entry.get("key")), as_text(value), is_ref))
    return fields


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


class ParsedObjects(Mapping[str, list[EffectiveField]]):
    """Own fields of API-shape objects by id, each parsed once on first use."""

    def __init__(self, objects_by_id: Mapping[str, Mapping[str, Any]]) -> None:
        self._raw = objects_by_id
        self._cache: dict[str, list[EffectiveField]] = {}

    def __getitem__(self, object_id: str) -> list[EffectiveField]:
        if object_id not in self._cache:
            self._cache[object_id] = own_fields(self._raw[object_id])
        return self._cache[object_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def parent_of(fields: Sequence[EffectiveField]) -> str | None:
    return next((f.value for f in fields if f.key == "parent" and f.is_ref), None)


def chain_of(own: Mapping[str, Sequence[EffectiveField]], object_id: str) -> list[str]:
    chain: dict[str, None] = {}
    current: str | None = object_id
    while current is not None and current in own and current not in chain:
        chain[current] = None
        current = parent_of(own[current])
    if chain and DEFAULT_OBJECT_ID in own:
        chain.setdefault(DEFAULT_OBJECT_ID)
    return list(chain)


def effective_of(own: Mapping[str, Sequence[EffectiveField]], object_id: str) -> list[EffectiveField]:
    fields: list[EffectiveField] = []
    seen: set[str] = set()
    for ancestor in chain_of(own, object_id):
        fields.extend(f for f in own[ancestor] if f.key not in seen)
        seen.update(f.key for f in own[ancestor])
    return fields


def type_of(own: Mapping[str, Sequence[EffectiveField]], object_id: str) -> str | None:
    for ancestor in chain_of(own, object_id):
        if ancestor == DEFAULT_OBJECT_ID and ancestor != object_id:
            break
        found = next((f.value for f in own[ancestor] if f.key == "type" and not f.is_ref), None)
        if found is not None:
            return found
    return None


def inheritance_chain(objects_by_id: Mapping[str, Mapping[str, Any]], object_id: str) -> list[str]:
    """Ids ``object_id`` inherits from, nearest first: itself, its ``parent`` chain, then ``Default``.

    A chain stops at a missing parent or a cycle; ``Default`` ends every chain when it exists.
    """
    return chain_of(ParsedObjects(objects_by_id), object_id)


def effective_fields(objects_by_id: Mapping[str, Mapping[str, Any]], object_id: str) -> list[EffectiveField]:
    """The fields ``object_id`` sees: its own, then its ``parent`` chain's, then ``Default``'s.

    The nearest object that sets a key wins that key outright, with all of its values in order
    (so a multi-valued ``scriptArgument`` is never merged across objects).
    """
    return effective_of(ParsedObjects(objects_by_id), object_id)


def object_type(objects_by_id: Mapping[str, Mapping[str, Any]], object_id: str) -> str | None:
    """The ``type`` of an object, inherited through ``parent`` but never from ``Default``."""
    return type_of(ParsedObjects(objects_by_id), object_id)
