"""Celery-native steps (a ShellCommandActivity with ``myCeleryTask``) and handler plugins from entry points.

The steps run on a Celery app of the test's own (in-memory broker), called the way a worker slot calls them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from bridge.errors import Canceled, InvalidTask
from bridge.settings import Settings
from bridge.taskmodel import parse_task_object
from workers import handlers
from workers.context import Outcome, TaskContext, TaskStatus
from workers.handlers import HANDLERS, handler_for, load_plugins
from workers.handlers.celery_task import run_celery_task, step_kwargs
from workers.handlers.shell import run_shell
from workers.native import StepContext

ATTEMPT = "@Step_2026-01-01T00:00:00_Attempt=1"
PREFIX = "unit.steps."


def string(key: str, value: str) -> dict[str, str]:
    return {"key": key, "stringValue": value}


def ref(key: str, value: str) -> dict[str, str]:
    return {"key": key, "refValue": value}


def task_of(*fields: dict[str, str], object_type: str = "ShellCommandActivity") -> Any:
    """A parsed task object whose attempt has ``fields`` (plus type, command and parents)."""
    return parse_task_object(
        {
            "taskId": "opaque-task-id:1",
            "pipelineId": "df-NATIVE",
            "attemptId": ATTEMPT,
            "objects": {
                ATTEMPT: {
                    "id": ATTEMPT,
                    "name": ATTEMPT,
                    "fields": [
                        string("type", object_type),
                        string("command", "echo never"),
                        ref("@componentParent", "Step"),
                        *fields,
                    ],
                }
            },
        }
    )


def context_of(work_dir: Path, *fields: dict[str, str], cancel: threading.Event | None = None) -> TaskContext:
    return TaskContext(
        task_of(*fields),
        Settings(),
        None,  # type: ignore[arg-type]  # steps never call Data Pipeline themselves
        work_dir,
        cancel or threading.Event(),
        logging.LoggerAdapter(logging.getLogger("test.native"), {}),
    )


@pytest.fixture(scope="module")
def app() -> Celery:
    """A Celery app with the steps the tests run (in-memory broker, results kept: the worst case for ``get``)."""
    app = Celery("native-unit", broker="memory://", set_as_current=False)
    app.conf.update(task_ignore_result=False, worker_send_task_events=True)
    seen: dict[str, Any] = {}

    @app.task(name=PREFIX + "record", bind=True)
    def record(self: Any, *, context: StepContext, **fields: Any) -> str:
        seen.update(fields=fields, context=context, request=self.request, same_thread=threading.current_thread())
        return "recorded"

    @app.task(name=PREFIX + "plain")
    def plain(myTable: str) -> None:
        seen.update(plain=myTable)

    @app.task(name=PREFIX + "boom")
    def boom(*, mySecret: str, context: StepContext) -> None:
        raise ValueError(f"cannot load table with {mySecret}")

    @app.task(name=PREFIX + "until_cancelled")
    def until_cancelled(context: StepContext) -> str:
        seen["started"].set()
        while not context.wait_cancelled(0.05):
            context.progress("waiting")
        seen["saw_cancel"] = True
        return "stopped"

    @app.task(name=PREFIX + "child")
    def child() -> str:
        return "child"

    @app.task(name=PREFIX + "waits_on_child")
    def waits_on_child(context: StepContext) -> Any:
        return child.delay().get(timeout=5)

    @app.task(name=PREFIX + "reports")
    def reports(context: StepContext) -> None:
        context.progress("half way")

    @app.task(name="outer.dp_task", bind=True)
    def outer(self: Any, work_dir: str, name: str) -> dict[str, Any]:
        outcome = run_celery_task(context_of(Path(work_dir), string("myCeleryTask", name)))
        return {"status": str(outcome.status), "error_id": outcome.error_id, "request_id": self.request.id}

    app.seen = seen
    return app


def step(app: Celery, ctx: TaskContext) -> Outcome:
    return run_celery_task(ctx, app)


# -- which handler runs a task ----------------------------------------------------------------------


def test_a_shell_activity_with_my_celery_task_is_a_celery_native_step() -> None:
    # given the built-in handlers and three tasks
    handlers.load_builtin()
    native = task_of(string("myCeleryTask", "pkg.mod.task"))
    shell = task_of()
    precondition = task_of(string("myCeleryTask", "pkg.mod.task"), object_type="ShellCommandPrecondition")

    # then only the activity carrying myCeleryTask runs as a Celery task; the others keep their handlers
    assert handler_for(native) is run_celery_task
    assert handler_for(shell) is run_shell
    assert handler_for(precondition) is run_shell
    assert handler_for(task_of(object_type="NoSuchActivity")) is None
    assert handler_for(shell, {}) is None


def test_my_fields_become_keyword_arguments_under_their_own_names() -> None:
    # given an attempt with user fields (one repeated, one secret, one a reference) and ordinary fields
    task = task_of(
        string("myCeleryTask", "pkg.mod.task"),
        string("myTable", "events"),
        string("myColumn", "a"),
        string("myColumn", "b"),
        string("*myPassword", "pw-1"),
        ref("myInput", "InputNode"),
        string("stdout", "/tmp/out"),
        string("scriptArgument", "x"),
    )

    # when they are mapped
    kwargs = step_kwargs(task.attempt)

    # then only my* fields, but myCeleryTask, arrive: as str, a list when repeated, a secret without its star
    assert kwargs == {"myTable": "events", "myColumn": ["a", "b"], "myPassword": "pw-1", "myInput": "InputNode"}


def test_a_field_set_both_plainly_and_as_a_secret_is_refused() -> None:
    task = task_of(string("myCeleryTask", "t"), string("myPassword", "a"), string("*myPassword", "b"))
    with pytest.raises(InvalidTask, match="both as a secret"):
        step_kwargs(task.attempt)


# -- running a step ---------------------------------------------------------------------------------


def test_a_step_gets_its_fields_and_a_context_and_finishes(app: Celery, tmp_path: Path) -> None:
    # given a bound task named by myCeleryTask, with fields
    ctx = context_of(tmp_path, string("myCeleryTask", PREFIX + "record"), string("myTable", "events"))

    # when the step runs
    outcome = step(app, ctx)

    # then the body ran here, with the fields, a context naming the attempt, and a local request
    seen = app.seen
    assert outcome == Outcome.finished()
    assert seen["fields"] == {"myTable": "events"}
    assert seen["same_thread"] is threading.current_thread()
    context: StepContext = seen["context"]
    assert (context.pipeline_id, context.object_id, context.attempt_id) == ("df-NATIVE", "Step", ATTEMPT)
    assert context.work_dir == tmp_path
    assert context.cancelled is False
    assert seen["request"].called_directly
    assert seen["request"].kwargs["myTable"] == "events"


def test_a_body_without_a_context_parameter_gets_only_its_fields(app: Celery, tmp_path: Path) -> None:
    outcome = step(app, context_of(tmp_path, string("myCeleryTask", PREFIX + "plain"), string("myTable", "t1")))
    assert outcome.status == TaskStatus.FINISHED
    assert app.seen["plain"] == "t1"


def test_fields_the_body_does_not_take_fail_before_it_runs(app: Celery, tmp_path: Path) -> None:
    # given a step with a field its task has no parameter for
    ctx = context_of(tmp_path, string("myCeleryTask", PREFIX + "plain"), string("myTable", "t"), string("myExtra", "x"))

    # when it runs, then it fails, naming the field
    outcome = step(app, ctx)
    assert outcome.status == TaskStatus.FAILED
    assert outcome.error_id == "BridgeCeleryTaskError"
    assert "myExtra" in (outcome.error_message or "")


def test_an_unknown_task_fails_naming_the_close_matches(app: Celery, tmp_path: Path) -> None:
    # given a misspelt task name
    outcome = step(app, context_of(tmp_path, string("myCeleryTask", PREFIX + "recrod")))

    # then the step fails with a clear errorId and a suggestion
    assert outcome.status == TaskStatus.FAILED
    assert outcome.error_id == "BridgeUnknownCeleryTask"
    assert f"did you mean {PREFIX}record" in (outcome.error_message or "")
    assert f"{PREFIX}boom" not in (outcome.error_message or "")


@pytest.mark.parametrize("name", ["", "celery.backend_cleanup", "dp.ShellCommandActivity", "nothing.like.it"])
def test_empty_reserved_and_far_off_names_are_unknown(app: Celery, tmp_path: Path, name: str) -> None:
    outcome = step(app, context_of(tmp_path, string("myCeleryTask", name)))
    assert outcome.error_id == "BridgeUnknownCeleryTask"
    assert "myCeleryTask" in (outcome.error_message or "")


def test_a_raising_body_fails_with_its_message_and_traceback(app: Celery, tmp_path: Path) -> None:
    # given a body that raises, with a secret in its message
    ctx = context_of(tmp_path, string("myCeleryTask", PREFIX + "boom"), string("*mySecret", "s3cret-unit-native"))
    from bridge.masking import SECRETS

    SECRETS.add(ctx.task.secrets)

    # when it runs
    outcome = step(app, ctx)

    # then it ended FAILED BridgeCeleryTaskError with "TypeName: message" (masked) and the traceback's tail
    assert outcome.status == TaskStatus.FAILED
    assert outcome.error_id == "BridgeCeleryTaskError"
    assert outcome.error_message == "ValueError: cannot load table with ****"
    assert "raise ValueError" in (outcome.error_stack_trace or "")
    assert "s3cret-unit-native" not in (outcome.error_stack_trace or "")


def test_a_canceled_step_sees_cancelled_and_reports_nothing(app: Celery, tmp_path: Path) -> None:
    # given a body that waits until cancelled
    cancel = threading.Event()
    app.seen["started"] = threading.Event()
    ctx = context_of(tmp_path, string("myCeleryTask", PREFIX + "until_cancelled"), cancel=cancel)
    ended: list[BaseException | Outcome] = []

    def run() -> None:
        try:
            ended.append(step(app, ctx))
        except Canceled as exc:
            ended.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    assert app.seen["started"].wait(5)

    # when Data Pipeline cancels it
    cancel.set()
    runner.join(5)

    # then the body saw it and returned, and the handler raised Canceled (no outcome to report)
    assert not runner.is_alive()
    assert app.seen["saw_cancel"] is True
    assert len(ended) == 1 and isinstance(ended[0], Canceled)


def test_a_step_past_its_attempt_timeout_is_told_to_stop_and_fails(app: Celery, tmp_path: Path) -> None:
    # given a body that waits until cancelled, with a one-second attemptTimeout
    app.seen["started"] = threading.Event()
    ctx = context_of(
        tmp_path, string("myCeleryTask", PREFIX + "until_cancelled"), string("attemptTimeout", "1 seconds")
    )

    # when it runs, then the deadline told it to stop and it ended FAILED BridgeAttemptTimeout
    outcome = step(app, ctx)
    assert outcome.error_id == "BridgeAttemptTimeout"


def test_waiting_on_another_tasks_result_fails_instead_of_blocking_the_slot(app: Celery, tmp_path: Path) -> None:
    # given a body that calls .delay().get() on a task whose result is kept
    outcome = step(app, context_of(tmp_path, string("myCeleryTask", PREFIX + "waits_on_child")))

    # then Celery's guard raised at once: FAILED, saying why
    assert outcome.error_id == "BridgeCeleryTaskError"
    assert "Never call result.get() within a task" in (outcome.error_message or "")


def test_inside_a_worker_task_the_step_is_found_on_its_app_and_reports_progress_events(
    app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given progress events captured at the dispatcher, and a dp.<Type>-like task that runs the step
    sent: list[tuple[str, dict[str, Any]]] = []

    class Dispatcher:
        def send(self, type_: str, **fields: Any) -> None:
            sent.append((type_, fields))

    @contextlib.contextmanager
    def dispatcher(hostname: str | None = None) -> Iterator[Dispatcher]:
        yield Dispatcher()

    monkeypatch.setattr(app.events, "default_dispatcher", dispatcher)

    # when the outer task runs (no app given: the step is looked up on the running task's app)
    result = app.tasks["outer.dp_task"].apply(args=(str(tmp_path), PREFIX + "reports"), task_id="dp-task-id-1").get()

    # then the step finished and its progress went out as a task-progress event of the outer task
    assert result == {"status": "FINISHED", "error_id": None, "request_id": "dp-task-id-1"}
    assert [(t, f["uuid"], f["progress"]) for t, f in sent] == [("task-progress", "dp-task-id-1", "half way")]


# -- the context ------------------------------------------------------------------------------------


def test_progress_is_throttled_masked_and_never_raises(tmp_path: Path) -> None:
    # given a context whose event sender always fails
    from bridge.masking import SECRETS

    SECRETS.add(["progress-secret-42"])
    attempts: list[Any] = []

    def broken(fields: Any) -> None:
        attempts.append(fields)
        raise ConnectionError("broker away")

    context = StepContext(
        pipeline_id="df-1",
        object_id="Step",
        attempt_id="a1",
        task_key="df-1:a1:k",
        work_dir=tmp_path,
        log=logging.LoggerAdapter(logging.getLogger("test.native"), {}),
        cancel=threading.Event(),
        send_event=broken,
    )

    # when the body reports progress many times in a row
    for n in range(50):
        context.progress(f"row {n} with progress-secret-42")

    # then nothing raised, every report was counted, one event was tried, and the secret never left
    assert context.progress_count == 50
    assert context.last_progress == "row 49 with ****"
    assert len(attempts) == 1 and "****" in attempts[0]["progress"]


# -- handler plugins (entry points) ---------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for plugin distributions; the handler registry and modules are restored after."""
    saved = dict(HANDLERS)
    modules = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    HANDLERS.clear()
    HANDLERS.update(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("dpplug_"):
            del sys.modules[name]


def install_plugin(where: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution as pip would leave it: a dist-info with METADATA and entry_points.txt, plus its modules."""
    info = where / f"{dist.replace('-', '_')}-0.1.dist-info"  # as pip names it: the name's '-' would end it
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dp_bridge.handlers]\n{lines}")
    for module, source in modules.items():
        (where / f"{module}.py").write_text(textwrap.dedent(source))


def test_plugins_register_handlers_and_a_broken_one_is_skipped(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given three plugins: a module that registers on import, a setup callable, and one that fails halfway
    install_plugin(
        plugin_dir,
        "dpplug-good",
        {"module": "dpplug_module", "setup": "dpplug_setup:setup"},
        {
            "dpplug_module": """
                from workers.context import Outcome
                from workers.handlers import register

                @register("MyModuleActivity")
                def run(ctx):
                    return Outcome.finished()
            """,
            "dpplug_setup": """
                from workers.context import Outcome

                def setup(register):
                    register("MySetupActivity")(lambda ctx: Outcome.finished())
            """,
        },
    )
    install_plugin(
        plugin_dir,
        "dpplug-broken",
        {"broken": "dpplug_broken:setup", "missing": "dpplug_nowhere"},
        {
            "dpplug_broken": """
                def setup(register):
                    register("MyHalfActivity")(lambda ctx: None)
                    raise RuntimeError("plugin bug")
            """,
        },
    )

    # when the plugins are loaded
    with caplog.at_level(logging.INFO, logger="workers.handlers"):
        loaded = load_plugins()

    # then the good ones registered their types, the broken ones left nothing behind and were logged loudly
    assert sorted(loaded) == ["module", "setup"]
    assert "MyModuleActivity" in HANDLERS and "MySetupActivity" in HANDLERS
    assert "MyHalfActivity" not in HANDLERS
    assert HANDLERS["MySetupActivity"](None).status == TaskStatus.FINISHED  # type: ignore[arg-type]
    broken = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert sorted(r.getMessage().split()[2] for r in broken) == ["broken", "missing"]
    assert "RuntimeError: plugin bug" in caplog.text and "No module named 'dpplug_nowhere'" in caplog.text


def test_load_builtin_includes_plugins(plugin_dir: Path) -> None:
    install_plugin(
        plugin_dir,
        "dpplug-builtin",
        {"extra": "dpplug_extra:setup"},
        {"dpplug_extra": "def setup(register):\n    register('MyExtraActivity')(lambda ctx: None)\n"},
    )
    registry = handlers.load_builtin()
    assert "ShellCommandActivity" in registry and "MyExtraActivity" in registry


def test_a_plugin_replacing_a_builtin_handler_is_logged(plugin_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    handlers.load_builtin()
    install_plugin(
        plugin_dir,
        "dpplug-override",
        {"override": "dpplug_override:setup"},
        {"dpplug_override": "def setup(register):\n    register('ShellCommandActivity')(lambda ctx: None)\n"},
    )
    with caplog.at_level(logging.INFO, logger="workers.handlers"):
        load_plugins()
    assert HANDLERS["ShellCommandActivity"] is not run_shell
    assert any("replaced the handlers of ShellCommandActivity" in r.getMessage() for r in caplog.records)
