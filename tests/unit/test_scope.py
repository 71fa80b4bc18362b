"""Scopes for expressions: what names mean for components, instances, attempts and actions.

An in-process :class:`emulator.service.Service` (memory store) holds one activated on-demand
pipeline; the tests evaluate text in the context of its objects.
"""

from __future__ import annotations

from typing import Any

import pytest

from emulator.config import ServiceConfig
from emulator.definition import definition_file_to_api
from emulator.expressions import ExpressionError, evaluate
from emulator.model import Pipeline
from emulator.scope import UnknownObject, evaluate_for, resolver_for, scope_for
from emulator.service import Service
from emulator.store import MemoryStore

DOC: dict[str, Any] = {
    "objects": [
        {"id": "Default", "scheduleType": "ondemand", "workerGroup": "wg", "myShared": "from-default"},
        {"id": "Alarm", "type": "SnsAlarm", "topicArn": "arn:t", "role": "r", "subject": "#{node.name} failed"}
        | {"message": "#{node.@scheduledStartTime} #{node.input.directoryPath}"},
        {"id": "In", "type": "S3DataNode", "directoryPath": "s3://b/#{myDir}/#{format(@scheduledStartTime,'YYYY')}"},
        {"id": "Act", "name": "Nightly load", "type": "ShellCommandActivity", "command": "echo"}
        | {"input": {"ref": "In"}, "onFail": {"ref": "Alarm"}, "myList": ["one", "two"], "myCount": "#{myN + 1}"}
        | {"myA": "#{myB}", "myB": "#{myA}", "*password": "pa#{ss}", "myDb": "#{*myPassword}"},
    ],
    "parameters": [
        {"id": "myDir", "default": "dflt"},
        {"id": "myN", "type": "Integer", "default": "41"},
        {"id": "*myPassword"},
        {"id": "myGroups", "isArray": "true"},
    ],
    "values": {"myDir": "put", "*myPassword": "s3cr3t", "myGroups": ["g1", "g2"]},
}


@pytest.fixture
def service() -> Service:
    service = Service(ServiceConfig(poll_wait_s=0.001), store=MemoryStore())
    pipeline_id = service.call("CreatePipeline", {"name": "scope", "uniqueId": "scope"})["pipelineId"]
    objects, parameters, values = definition_file_to_api(DOC)
    put = service.call(
        "PutPipelineDefinition",
        {"pipelineId": pipeline_id, "pipelineObjects": objects, "parameterObjects": parameters}
        | {"parameterValues": values},
    )
    assert put["errored"] is False, put
    # ActivatePipeline's values replace the ones put with the definition.
    activation = [{"id": "myDir", "stringValue": "active"}, *(v for v in values if v["id"] != "myDir")]
    service.call("ActivatePipeline", {"pipelineId": pipeline_id, "parameterValues": activation})
    return service


def pipeline_of(service: Service) -> Pipeline:
    return next(iter(service.state.pipelines.values()))


def instance_id(service: Service, component_id: str) -> str:
    return next(i.instance_id for i in service.state.instances.values() if i.component_id == component_id)


def start_of(service: Service, component_id: str) -> str:
    instance = service.state.instances[(pipeline_of(service).pipeline_id, instance_id(service, component_id))]
    return evaluate("#{@scheduledStartTime}", scope_for(service.state, pipeline_of(service), instance.instance_id))


def test_parameters_fields_and_refs_resolve_in_an_instance(service: Service) -> None:
    pipeline, act = pipeline_of(service), instance_id(service, "Act")
    year = start_of(service, "Act")[:4]
    assert evaluate_for(service.state, pipeline, act, "#{myDir} #{myCount} #{myShared} #{name} #{@id}") == (
        f"active 42 from-default Nightly load {act}"
    )
    # a reference from an instance leads to the same run's instance of the data node
    assert evaluate_for(service.state, pipeline, act, "#{input.directoryPath}") == f"s3://b/active/{year}"
    assert evaluate_for(service.state, pipeline, act, "#{input.@id}") == instance_id(service, "In")
    assert evaluate_for(service.state, pipeline, act, "#{parent.@id}") == "Act"
    assert evaluate_for(service.state, pipeline, act, "#{myDb}") == "s3cr3t"


def test_a_component_has_no_run_times_unless_seen_from_a_run(service: Service) -> None:
    pipeline = pipeline_of(service)
    with pytest.raises(ExpressionError, match="unknown name '@scheduledStartTime'"):
        evaluate_for(service.state, pipeline, "In", "#{directoryPath}")
    seen = resolver_for(service.state, pipeline, "In", within=instance_id(service, "Act"))
    assert seen.object_id == instance_id(service, "In")
    assert seen.evaluate("#{directoryPath}") == f"s3://b/active/{start_of(service, 'Act')[:4]}"


def test_an_action_sees_the_object_it_runs_for_as_node(service: Service) -> None:
    pipeline, act = pipeline_of(service), instance_id(service, "Act")
    assert evaluate_for(service.state, pipeline, "Alarm", "#{subject}", node=act) == "Nightly load failed"
    assert evaluate_for(service.state, pipeline, "Alarm", "#{message}", node=act) == (
        f"{start_of(service, 'Act')} s3://b/active/{start_of(service, 'Act')[:4]}"
    )
    with pytest.raises(ExpressionError, match=r"unknown name 'node\.name'"):
        evaluate_for(service.state, pipeline, act, "#{node.name}")


def test_multi_valued_names_expand_and_otherwise_give_their_first_value(service: Service) -> None:
    resolver = resolver_for(service.state, pipeline_of(service), instance_id(service, "Act"))
    assert resolver.expand("#{'this is ' + myList}") == ["this is one", "this is two"]
    assert resolver.expand("#{myGroups}-#{myList}") == ["g1-one", "g1-two", "g2-one", "g2-two"]
    assert resolver.evaluate("#{myGroups}") == "g1"


def test_cycles_unknown_objects_and_encrypted_fields_give_clear_errors(service: Service) -> None:
    pipeline, act = pipeline_of(service), instance_id(service, "Act")
    with pytest.raises(ExpressionError, match=r"circular reference: myA of .* -> myB of .* -> myA of"):
        evaluate_for(service.state, pipeline, act, "#{myA}")
    with pytest.raises(ExpressionError) as caught:
        evaluate_for(service.state, pipeline, act, "#{*password}")
    assert "pa#{ss}" not in str(caught.value) and "hidden" in str(caught.value)
    with pytest.raises(UnknownObject):
        evaluate_for(service.state, pipeline, "Nowhere", "#{1}")
