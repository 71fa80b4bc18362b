"""Actions: ``onSuccess``, ``onFail`` and ``onLateAction`` references to ``SnsAlarm`` and ``Terminate``.

An ``SnsAlarm`` is recorded, never sent: its ``topicArn``, ``subject`` and ``message`` are
evaluated with ``node`` the instance it fires for (``#{node.name}``,
``#{node.@scheduledStartTime}``), and the admin API's ``actions`` lists every record in order.
A ``Terminate`` cancels the instance if it has not finished. ``onLateAction`` fires when an
instance has not finished ``lateAfterTimeout`` after its scheduled start; as the reference says,
only when the schedule type is not ``ondemand``.

Called with ``state.lock`` held, like the lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from emulator.clock import stamp
from emulator.definition import effective_fields
from emulator.expressions import ExpressionError
from emulator.model import FINAL, FiredAction, Instance, Pipeline, Status
from emulator.periods import period_seconds
from emulator.state import Key, State

log = logging.getLogger(__name__)

#: The instance statuses whose actions fire, and which action field each fires.
EVENTS = {Status.FINISHED: "onSuccess", Status.FAILED: "onFail"}
LATE = "onLateAction"
ALARM_FIELDS = ("topicArn", "subject", "message")

Cancel = Callable[[Instance, str], None]
"""Cancels an unfinished instance with a reason (``Lifecycle.cancel``)."""


class Actions:
    """Fires and records the actions of instances.

    Args:
        state: Where fired actions are recorded (and persisted with the rest of the state).
        cancel: What a ``Terminate`` does to an unfinished instance.
    """

    def __init__(self, state: State, cancel: Cancel) -> None:
        self.state = state
        self.cancel = cancel

    # -- triggers ---------------------------------------------------------------------------------

    def on_final(self, instance: Instance, status: Status) -> None:
        """``instance`` just ended ``status``: fire its ``onSuccess`` / ``onFail`` actions."""
        event = EVENTS.get(status)
        if event is not None:
            self.fire(instance, event)

    def arm_late(self, instance: Instance) -> None:
        """Arm ``onLateAction`` at scheduled start + ``lateAfterTimeout`` (once per instance).

        Measured on the service clock, like the scheduled start it counts from.
        """
        if instance.late_at is not None or instance.late_fired or not instance.all(LATE):
            return
        if (instance.first("scheduleType") or "").lower() == "ondemand":
            return  # "triggered only when the schedule type is not set to ondemand"
        timeout = period_seconds(instance.first("lateAfterTimeout"))
        if timeout is None:
            return
        instance.late_at = instance.scheduled_start + timeout
        self.state.touch(instance)
        self.state.add_clock_timer(instance.late_at, "late", (instance.pipeline_id, instance.instance_id))

    def on_late(self, key: Key) -> None:
        """Timer handler: fire ``onLateAction`` if the instance is still unfinished."""
        instance = self.state.instances.get(key)
        if instance is None or instance.late_fired or instance.late_at is None:
            return
        if instance.late_at > self.state.clock.now() or instance.status in FINAL:
            return
        instance.late_fired = True
        self.state.touch(instance)
        log.info("instance %s of %s is late", instance.instance_id, instance.pipeline_id)
        self.fire(instance, LATE)

    def recover(self) -> None:
        """Re-arm late timers after a restart."""
        for key, instance in self.state.instances.items():
            if instance.late_at is not None and not instance.late_fired and instance.status not in FINAL:
                self.state.add_clock_timer(instance.late_at, "late", key)

    # -- firing -----------------------------------------------------------------------------------

    def fire(self, instance: Instance, event: str) -> None:
        """Run every action ``instance``'s ``event`` field refers to, in order, and record each."""
        pipeline = self.state.pipelines.get(instance.pipeline_id)
        if pipeline is None:
            return
        by_id = {obj["id"]: obj for obj in pipeline.active_objects or pipeline.objects}
        for action_id in instance.all(event):
            fields = effective_fields(by_id, action_id) if action_id in by_id else []
            values: dict[str, str] = {}
            for key, value, is_ref in fields:
                if not is_ref:
                    values.setdefault(key, value)
            record = FiredAction(
                seq=len(self.state.fired_actions) + 1,
                time=self.state.clock.now(),
                pipeline_id=instance.pipeline_id,
                component_id=instance.component_id,
                instance_id=instance.instance_id,
                event=event,
                action_id=action_id,
                action_type=values.get("type", "?"),
            )
            if record.action_type == "SnsAlarm":
                self._alarm(record, pipeline, instance, values)
            elif record.action_type == "Terminate":
                record.outcome = self._terminate(instance, event, action_id)
            else:
                record.outcome = f"Unknown action type {record.action_type!r}: nothing done."
            self.state.fired_actions.append(record)
            self.state.touch(record)
            log.info(
                "action %s (%s) fired for %s of %s on %s",
                action_id,
                record.action_type,
                instance.instance_id,
                instance.pipeline_id,
                event,
            )

    def _alarm(self, record: FiredAction, pipeline: Pipeline, instance: Instance, values: dict[str, str]) -> None:
        """Evaluate the alarm's fields with ``node`` = ``instance``; keep the text as written if that fails."""
        from emulator.scope import UnknownObject, evaluate_for  # here: scope imports views, which imports lifecycle

        problems: list[str] = []
        evaluated: dict[str, str | None] = {}
        for key in ALARM_FIELDS:
            text = values.get(key)
            if text is None or "#{" not in text:
                evaluated[key] = text
                continue
            try:
                evaluated[key] = evaluate_for(self.state, pipeline, record.action_id, text, node=instance.instance_id)
            except (ExpressionError, UnknownObject) as exc:
                evaluated[key] = text
                problems.append(f"{key}: {exc}")
        record.topic_arn, record.subject, record.message = (evaluated[k] for k in ALARM_FIELDS)
        record.outcome = "Recorded (not sent)." if not problems else "Not evaluated: " + "; ".join(problems)

    def _terminate(self, instance: Instance, event: str, action_id: str) -> str:
        if instance.status in FINAL:
            return f"Nothing to terminate: the instance is already {instance.status}."
        self.cancel(instance, f"Terminated by the {event} action {action_id}.")
        return "Canceled the instance."

    # -- listing ----------------------------------------------------------------------------------

    def listing(self, pipeline_id: str | None = None) -> list[dict[str, Any]]:
        """Fired actions in order, as the admin API shows them (optionally one pipeline's)."""
        return [
            {
                "seq": a.seq,
                "time": stamp(a.time),
                "pipelineId": a.pipeline_id,
                "objectId": a.component_id,
                "instanceId": a.instance_id,
                "event": a.event,
                "actionId": a.action_id,
                "type": a.action_type,
                "topicArn": a.topic_arn,
                "subject": a.subject,
                "message": a.message,
                "outcome": a.outcome,
            }
            for a in self.state.fired_actions
            if pipeline_id is None or a.pipeline_id == pipeline_id
        ]
