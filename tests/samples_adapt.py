"""The AWS sample definitions in ``../shared/samples/``, adapted only as their README says.

The README's adaptations: "→ worker group" (``runsOn`` an Ec2Resource becomes ``workerGroup``, the resource
goes), values for required parameters that have none, a recent ``startDateTime``, and for the two files that
are not strict JSON, the repair it describes (join the comment lines, drop the trailing comma). Each helper
returns a new document and leaves its input alone.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support import SAMPLES

Obj = dict[str, Any]

#: The two files a strict ``json.loads`` (the AWS CLI's) rejects.
NOT_STRICT_JSON = frozenset({"ondemand-lambda.json", "shell-command-ftp.json"})
#: Definitions that come with ``<stem>.parameters.json`` and ``<stem>.values.json``.
COMPANIONS = frozenset({"oracle-backup.json", "devguide-custom-template.json"})
#: Every strict-JSON pipeline definition (companion files excluded): 14 of the 20 files.
STRICT_SAMPLES = sorted(
    p.name
    for p in SAMPLES.glob("*.json")
    if p.name not in NOT_STRICT_JSON and not p.name.endswith((".parameters.json", ".values.json"))
)
#: The worker group the adapted samples run on.
WORKER_GROUP = "wg"
#: Types that make the service launch a resource; a worker group replaces them.
RESOURCE_TYPES = ("Ec2Resource", "EmrCluster")
#: The service's datetime format (UTC).
DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: A value of each parameter type, for required parameters the samples leave without one.
TYPED_VALUES = {"Integer": "1", "Double": "1.5", "AWS::S3::ObjectKey": "s3://bucket/key"}


def companion_paths(name: str) -> tuple[Path, Path]:
    """The ``(parameters, values)`` files that come with ``name`` (one of ``COMPANIONS``)."""
    stem = name.removesuffix(".json")
    return SAMPLES / f"{stem}.parameters.json", SAMPLES / f"{stem}.values.json"


def read_sample(name: str) -> Obj:
    """One strict-JSON sample file as the CLI reads it (``json.loads``), alone."""
    doc: Obj = json.loads((SAMPLES / name).read_text())
    return doc


def load_sample(name: str) -> Obj:
    """A strict-JSON sample with its companion parameters and values merged in (when it has them)."""
    doc = read_sample(name)
    if name in COMPANIONS:
        parameters, values = companion_paths(name)
        doc["parameters"] = json.loads(parameters.read_text())["parameters"]
        doc["values"] = json.loads(values.read_text())["values"]
    return doc


def repair_json(text: str) -> str:
    """The README's repair of a non-strict sample: raw newlines inside strings joined, trailing commas dropped.

    A newline inside a string and the indentation after it become one space; a comma outside strings that is
    followed (after whitespace) by ``}`` or ``]`` goes. Nothing else changes.
    """
    out: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            elif char == "\n":
                while out and out[-1] in " \t":
                    out.pop()
                while i + 1 < len(text) and text[i + 1] in " \t":
                    i += 1
                char = " "
        elif char == '"':
            in_string = True
        elif char == "," and text[i + 1 :].lstrip()[:1] in ("}", "]"):
            char = ""
        out.append(char)
        i += 1
    return "".join(out)


def load_repaired(name: str) -> Obj:
    """A non-strict sample (one of ``NOT_STRICT_JSON``) after ``repair_json``."""
    doc: Obj = json.loads(repair_json((SAMPLES / name).read_text()))
    return doc


def to_worker_group(doc: Obj, group: str = WORKER_GROUP) -> Obj:
    """README's "→ worker group": drop Ec2Resource/EmrCluster objects, turn runsOn refs into workerGroup."""
    resources = {o["id"] for o in doc["objects"] if o.get("type") in RESOURCE_TYPES}
    objects = []
    for obj in doc["objects"]:
        if obj["id"] in resources:
            continue
        if "runsOn" in obj:
            obj = {k: v for k, v in obj.items() if k != "runsOn"} | {"workerGroup": group}
        objects.append(obj)
    return {**doc, "objects": objects}


def with_required_values(doc: Obj) -> Obj:
    """Give every non-optional parameter without a default a value of its type (replacing empty ones)."""
    values = dict(doc.get("values", {}))
    for parameter in doc.get("parameters", []):
        if "default" in parameter or parameter.get("optional") == "true" or values.get(parameter["id"]):
            continue
        typed = TYPED_VALUES.get(parameter.get("type", ""), "value")
        values[parameter["id"]] = parameter.get("allowedValues", [typed])[0]
    return {**doc, "values": values}


def rename_parameter(doc: Obj, old: str, new: str) -> Obj:
    """``doc`` with parameter ``old`` renamed to ``new``: its declaration, its value and every ``#{old}`` use."""

    def renamed(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(f"#{{{old}}}", f"#{{{new}}}")
        if isinstance(value, list):
            return [renamed(item) for item in value]
        return value

    objects = [{k: renamed(v) for k, v in o.items()} for o in doc["objects"]]
    parameters = [{**p, "id": new} if p["id"] == old else p for p in doc.get("parameters", [])]
    values = {new if k == old else k: v for k, v in doc.get("values", {}).items()}
    return {**doc, "objects": objects, "parameters": parameters, "values": values}


def with_values(doc: Obj, **values: str) -> Obj:
    """``doc`` with these parameter values added (replacing earlier values of the same parameters)."""
    return {**doc, "values": {**doc.get("values", {}), **values}}


def with_fields(doc: Obj, object_id: str, **fields: Any) -> Obj:
    """``doc`` with fields of one object set (``None`` removes a field).

    Raises:
        KeyError: ``doc`` has no object ``object_id``.
    """
    if not any(o["id"] == object_id for o in doc["objects"]):
        raise KeyError(object_id)
    objects = [
        {k: v for k, v in ({**o, **fields} if o["id"] == object_id else o).items() if v is not None}
        for o in doc["objects"]
    ]
    return {**doc, "objects": objects}


def starting_at(doc: Obj, start: datetime) -> Obj:
    """Every Schedule with a ``startDateTime`` moved to ``start`` (UTC), its ``endDateTime`` keeping its distance.

    The README's "move startDateTime to now": AWS refuses to activate a schedule that started more than a
    day ago, and backfilling from 2013 would create years of instances.
    """
    objects = []
    for obj in doc["objects"]:
        if obj.get("type") == "Schedule" and "startDateTime" in obj:
            old_start = datetime.strptime(obj["startDateTime"], DATETIME_FORMAT)
            obj = {**obj, "startDateTime": start.strftime(DATETIME_FORMAT)}
            if "endDateTime" in obj:
                length = datetime.strptime(obj["endDateTime"], DATETIME_FORMAT) - old_start
                obj["endDateTime"] = (start + length).strftime(DATETIME_FORMAT)
        objects.append(obj)
    return {**doc, "objects": objects}


def without_values(doc: Obj) -> Obj:
    """``doc`` without its ``values`` (for a CLI call that passes them in their own file)."""
    return {k: v for k, v in doc.items() if k != "values"}
