"""The chaos run's pipeline as a Data Pipeline client sees it: 40 on-demand timed commands, read through faults.

Each activity runs ``timed_command.py`` (START, a sleep of 1 to 3 s, END) on one worker group. ``Default`` sets
``maximumRetries: 5`` and a ``retryDelay`` of 2 minutes (AWS's minimum; 2 s under ``--time-scale 60``).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import botocore.exceptions

from emulator.definition import definition_file_to_api
from tests.integration.bridge_stack import FINAL
from tests.support import dp_client, fields_of, ondemand_definition, shell_activity

TASKS = 40
COMMAND = Path(__file__).with_name("timed_command.py")
#: Calls are retried this often (0.2 s apart) through 500s and dropped replies.
CALL_ATTEMPTS = 40


def task_seconds(index: int) -> float:
    """How long task ``index`` sleeps: 1 to 3 s."""
    return 1.0 + (index % 5) * 0.5


class ChaosPipeline:
    """Creates the run's pipeline and reads its instances' statuses.

    Args:
        url: The local service.
        worker_group: Where the activities run.
        log: The file every command appends its START/END lines to.
        tasks: How many activities.
    """

    def __init__(self, url: str, worker_group: str, log: Path, tasks: int = TASKS) -> None:
        self.dp = dp_client(url, read_timeout=30)
        self.worker_group = worker_group
        self.log = log
        self.components = [f"Task{i:02d}" for i in range(tasks)]
        self.pipeline_id = ""

    def call(self, operation: str, **params: Any) -> Any:
        """One API call, retried through 500s and dropped replies (the fault scenario injects both).

        Every call the harness makes is safe to repeat: CreatePipeline has a uniqueId, ActivatePipeline of a
        running on-demand pipeline only offers again what is not handed out, the rest only read.
        """
        for attempt in range(CALL_ATTEMPTS):
            try:
                return getattr(self.dp, operation)(**params)
            except botocore.exceptions.ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status < 500 or attempt == CALL_ATTEMPTS - 1:
                    raise
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError):
                if attempt == CALL_ATTEMPTS - 1:
                    raise
            time.sleep(0.2)
        raise AssertionError("unreachable")

    def activate(self, name: str) -> str:
        """Create, define and activate the pipeline; returns its id."""
        python = shlex.quote(sys.executable)
        script, log = shlex.quote(str(COMMAND)), shlex.quote(str(self.log))
        activities = [
            shell_activity(component, command=f"{python} -I -S {script} {log} {task_seconds(i):g}")
            for i, component in enumerate(self.components)
        ]
        doc = ondemand_definition(
            *activities, workerGroup=self.worker_group, maximumRetries="5", retryDelay="2 minutes"
        )
        self.pipeline_id = self.call("create_pipeline", name=name, uniqueId=self.worker_group)["pipelineId"]
        objects, params, values = definition_file_to_api(doc)
        result = self.call(
            "put_pipeline_definition",
            pipelineId=self.pipeline_id,
            pipelineObjects=objects,
            parameterObjects=params,
            parameterValues=values,
        )
        assert not result["errored"], result["validationErrors"]
        self.call("activate_pipeline", pipelineId=self.pipeline_id)
        return self.pipeline_id

    def objects(self, sphere: str, component: str | None = None) -> list[dict[str, Any]]:
        """Every object of ``sphere`` (of one component, if given), as DescribeObjects shows them."""
        ids: list[str] = []
        params: dict[str, Any] = {"pipelineId": self.pipeline_id, "sphere": sphere, "limit": 100}
        if component:
            selector = {"fieldName": "@componentParent", "operator": {"type": "REF_EQ", "values": [component]}}
            params["query"] = {"selectors": [selector]}
        while True:
            page = self.call("query_objects", **params)
            ids += page["ids"]
            if not page.get("hasMoreResults") or not page.get("marker"):
                break
            params["marker"] = page["marker"]
        found = []
        for start in range(0, len(ids), 25):
            reply = self.call("describe_objects", pipelineId=self.pipeline_id, objectIds=ids[start : start + 25])
            found += [fields_of(obj) for obj in reply["pipelineObjects"]]
        return found

    def statuses(self) -> dict[str, str]:
        """Each component's instance status (none before ``activate``)."""
        if not self.pipeline_id:
            return {}
        return {fields["@componentParent"]: fields["@status"] for fields in self.objects("INSTANCE")}

    def ended(self, statuses: dict[str, str]) -> bool:
        """Whether every instance is in a final status."""
        return len(statuses) == len(self.components) and all(s in FINAL for s in statuses.values())

    def progress(self, statuses: dict[str, str]) -> str:
        done = sum(s in FINAL for s in statuses.values())
        return f"{done}/{len(self.components)} instances ended {dict(sorted(Counter(statuses.values()).items()))}"

    def attempts(self, component: str) -> list[str]:
        """One line per attempt of ``component``'s instance: id, status and error."""
        lines = []
        for attempt in sorted(self.objects("ATTEMPT", component), key=lambda a: a["@id"]):
            error = attempt.get("errorMessage") or attempt.get("errorId") or ""
            lines.append(f"attempt {attempt['@id']}: {attempt.get('@status')} {error[:160]}")
        return lines

    def close(self) -> None:
        self.dp.close()
