"""The bridge end to end: pipelines on the local service run by `bridge start` and a real Celery worker.

One stack for the module: the local service (periods scaled 60x, a 5 s progress timeout), a private Redis,
one threads-pool worker with two slots on ``dp.wg`` and ``bridge start -g wg`` with a 5 s progress deadline
(so everything heartbeats every ~1.7 s). Outcomes are read back the way a user reads them: DescribeObjects,
the files commands wrote, the service's call counters and the processes' own log lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.bridge_stack import (
    FINAL,
    Stack,
    alive,
    attempts,
    group_alive,
    instance,
    instances,
    logged,
    read_pids,
    run_pipeline,
    running_stack,
    status,
    wait_final,
)
from tests.support import shell_activity, wait_for

GROUP = "wg"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(
        GROUP,
        ["--poll-wait", "2", "--time-scale", "60", "--progress-timeout", "5"],
        BRIDGE_PROGRESS_DEADLINE_S="5",
        BRIDGE_KILL_GRACE_S="2",
    ) as stack:
        yield stack


@pytest.fixture
def dp(stack: Stack) -> Any:
    return stack.dp


def test_dependent_activities_run_in_order_and_write_their_outputs(stack: Stack, dp: Any) -> None:
    # given three activities, each depending on the previous one, with stdout sent to local files
    out, order = stack.dir / "chain", stack.dir / "chain.order"
    out.mkdir()
    pipeline = run_pipeline(
        dp,
        GROUP,
        shell_activity(
            "Extract",
            command=f"printf '<%s>' \"$@\"; echo; echo Extract >> {order}",
            scriptArgument=["first", "second arg"],
            stdout=f"{out}/extract.txt",
        ),
        shell_activity(
            "Transform",
            command=f"cat {out}/extract.txt; echo transformed; echo Transform >> {order}",
            stdout=f"{out}/transform.txt",
            dependsOn={"ref": "Extract"},
        ),
        shell_activity(
            "Load",
            command=f"cat {out}/transform.txt; echo loaded; echo Load >> {order}",
            stdout=f"{out}/load.txt",
            dependsOn={"ref": "Transform"},
        ),
    )

    # when the bridge and the worker run them
    ended = {name: wait_final(dp, pipeline, name)["@status"] for name in ("Extract", "Transform", "Load")}

    # then all finished, one after the other, each reading the previous one's output
    assert ended == {"Extract": "FINISHED", "Transform": "FINISHED", "Load": "FINISHED"}
    assert order.read_text().split() == ["Extract", "Transform", "Load"]
    assert (out / "extract.txt").read_text() == "<first><second arg>\n"
    assert (out / "load.txt").read_text() == "<first><second arg>\ntransformed\nloaded\n"


def test_a_failing_command_ends_failed_with_its_exit_status_and_stderr_tail(stack: Stack, dp: Any) -> None:
    # given a command that writes to stderr and exits 3
    pipeline = run_pipeline(
        dp,
        GROUP,
        shell_activity("Broken", command="echo working; echo 'warming up' >&2; echo 'fatal: disk full' >&2; exit 3"),
    )

    # when it runs
    ended = wait_final(dp, pipeline, "Broken")

    # then the instance and its attempt show the failure, its exit status and the end of its stderr
    attempt = attempts(dp, pipeline, "Broken")[-1]
    assert ended["@status"] == "FAILED"
    for shown in (ended, attempt):
        assert shown["errorId"] == "BridgeCommandFailed"
        assert "exit status 3" in shown["errorMessage"]
        assert "warming up\nfatal: disk full" in shown["errorMessage"]
        assert "fatal: disk full" in shown["errorStackTrace"]
    assert attempt["attemptStatus"] == "FAILED"


def test_coloured_stderr_still_ends_the_task_failed_once(stack: Stack, dp: Any) -> None:
    # given a command whose stderr holds terminal colour codes (control characters the API refuses)
    pipeline = run_pipeline(dp, GROUP, shell_activity("Colour", command="printf '\\033[31mboom\\033[0m' >&2; exit 1"))

    # when it runs
    ended = wait_final(dp, pipeline, "Colour")

    # then its failure is reported on the first attempt (not lost, and so not handed out again and again)
    assert ended["@status"] == "FAILED"
    assert ended["@attemptCount"] == "1"
    assert "boom" in ended["errorStackTrace"] and "\x1b" not in ended["errorStackTrace"]


def test_a_false_precondition_holds_its_activity_until_it_holds(stack: Stack, dp: Any) -> None:
    # given an activity guarded by a precondition that is false until a gate file exists
    gate, log = stack.dir / "gate", stack.dir / "precondition.log"
    pipeline = run_pipeline(
        dp,
        GROUP,
        {
            "id": "GateOpen",
            "type": "ShellCommandPrecondition",
            "command": f"echo check >> {log}; test -e {gate}",
            "retryDelay": "2 minutes",
        },
        shell_activity("Guarded", command=f"echo ran >> {log}", precondition={"ref": "GateOpen"}),
    )

    # when the precondition is first checked
    first = wait_for(
        lambda: next((a for a in attempts(dp, pipeline, "GateOpen") if a.get("attemptStatus")), None),
        timeout=60,
        what="the first precondition check to end",
    )

    # then it ended FALSE: the precondition is checked again later, and the activity has not run
    assert first["attemptStatus"] == "FALSE"
    assert status(dp, pipeline, "GateOpen") not in ("FINISHED", "FAILED")
    assert status(dp, pipeline, "Guarded") == "WAITING_ON_DEPENDENCIES"
    assert "ran" not in log.read_text().split()

    # when the gate opens (the check exits 0)
    gate.touch()

    # then the activity runs, after the last check
    assert wait_final(dp, pipeline, "Guarded")["@status"] == "FINISHED"
    checks = attempts(dp, pipeline, "GateOpen")
    assert len(checks) >= 2
    assert [a["attemptStatus"] for a in checks] == ["FALSE"] * (len(checks) - 1) + ["FINISHED"]
    assert instance(dp, pipeline, "GateOpen")["@status"] == "FINISHED"
    assert log.read_text().split() == ["check"] * len(checks) + ["ran"]


def test_a_precondition_whose_command_is_missing_fails(stack: Stack, dp: Any) -> None:
    # given a precondition exiting 127 (command not found) guarding an activity that cascades failures
    marker = stack.dir / "never-ran"
    pipeline = run_pipeline(
        dp,
        GROUP,
        {"id": "Probe", "type": "ShellCommandPrecondition", "command": "no-such-command-anywhere"},
        shell_activity(
            "Guarded", command=f"touch {marker}", precondition={"ref": "Probe"}, failureAndRerunMode="CASCADE"
        ),
    )

    # when it is checked
    probe = wait_final(dp, pipeline, "Probe")

    # then the precondition FAILED (not FALSE) with its exit status, and the activity never ran
    assert probe["@status"] == "FAILED"
    assert probe["errorId"] == "BridgePreconditionError"
    assert "exit status 127" in probe["errorMessage"]
    assert attempts(dp, pipeline, "Probe")[-1]["attemptStatus"] == "FAILED"
    assert wait_final(dp, pipeline, "Guarded")["@status"] == "CASCADE_FAILED"
    assert not marker.exists()


def test_an_activity_type_without_a_handler_ends_failed_unsupported(stack: Stack, dp: Any) -> None:
    # given a HiveActivity (it needs an EMR cluster), which no worker of this fleet can run
    pipeline = run_pipeline(
        dp,
        GROUP,
        {"id": "In", "type": "S3DataNode", "filePath": "s3://bucket/in.csv"},
        {"id": "Out", "type": "S3DataNode", "filePath": "s3://bucket/out.csv"},
        {
            "id": "Hive",
            "type": "HiveActivity",
            "hiveScript": "select 1",
            "input": {"ref": "In"},
            "output": {"ref": "Out"},
        },
    )

    # when the bridge enqueues it as dp.HiveActivity
    ended = wait_final(dp, pipeline, "Hive")

    # then the worker's unknown-task handler failed it, saying so
    assert ended["@status"] == "FAILED"
    assert ended["errorId"] == "BridgeUnsupportedActivity"
    assert "HiveActivity" in ended["errorMessage"]


def test_a_canceled_task_kills_its_command_group_and_reports_nothing(stack: Stack, dp: Any) -> None:
    # given a running command whose shell started a child shell with two background sleeps
    pid_file = stack.dir / "cancel.pids"
    command = (
        f"echo $$ > {pid_file}; "
        f"bash -c 'echo $$ >> {pid_file}; sleep 300 & echo $! >> {pid_file}; sleep 300 & echo $! >> {pid_file}; wait'; "
        "echo not reached"
    )
    set_task_status_before = stack.counters("SetTaskStatus")
    pipeline = run_pipeline(dp, GROUP, shell_activity("Sleeper", command=command))
    pids = wait_for(lambda: len(read_pids(pid_file)) == 4 and read_pids(pid_file), timeout=60, what="the pids")
    pgid = pids[0]
    assert all(alive(pid) for pid in pids)

    # when the instance is canceled
    target = instance(dp, pipeline, "Sleeper")["@id"]
    dp.set_status(pipelineId=pipeline, objectIds=[target], status="TRY_CANCEL")

    # then the whole group is gone, the worker says canceled, and no SetTaskStatus was sent
    wait_for(lambda: not any(alive(pid) for pid in pids) and not group_alive(pgid), timeout=30, what="the group to end")
    worker = stack.workers[0]
    logged(worker, "canceled worker_group=wg", pipeline)
    logged(worker, "succeeded", pipeline, "'canceled'")
    assert status(dp, pipeline, "Sleeper") == "CANCELED"
    assert stack.counters("SetTaskStatus") == set_task_status_before


def test_thirty_short_tasks_on_two_slots_each_run_exactly_once(stack: Stack, dp: Any) -> None:
    # given 30 two-second tasks for 2 worker slots, heartbeated against a 5 s progress timeout
    journal = stack.dir / "journal"
    names = [f"Task{n:02d}" for n in range(1, 31)]
    command = f'echo "START $DP_OBJECT_ID $DP_ATTEMPT_ID" >> {journal}; sleep 2; echo "END $DP_OBJECT_ID" >> {journal}'
    pipeline = run_pipeline(dp, GROUP, *(shell_activity(name, command=command) for name in names))

    # when they have all ended
    wait_for(
        lambda: len(found := instances(dp, pipeline)) == 30 and all(i["@status"] in FINAL for i in found.values()),
        timeout=110,
        interval=1,
        what="30 tasks to end",
    )

    # then each started once, on its first attempt, and finished
    lines = [line.split() for line in journal.read_text().splitlines()]
    starts = Counter(words[1] for words in lines if words[0] == "START")
    ends = Counter(words[1] for words in lines if words[0] == "END")
    assert sorted(starts) == names
    assert set(starts.values()) == {1}
    assert ends == starts
    assert all(words[2].endswith("_Attempt=1") for words in lines if words[0] == "START")
    ended = instances(dp, pipeline)
    assert {name: ended[name]["@status"] for name in names} == dict.fromkeys(names, "FINISHED")
    assert {ended[name]["@headAttempt"].rpartition("_")[2] for name in names} == {"Attempt=1"}
