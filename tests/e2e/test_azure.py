"""`batchpilot run --backend azure` end to end: the real azure-batch and azure-storage-blob SDKs over real
HTTP, against the Batch emulator and Azurite, with real ffmpeg. Faults injected at the emulator."""

from __future__ import annotations

from pathlib import Path

from batchpilot.emulator.faults import FaultConfig
from tests.conftest import EmulatorFactory
from tests.e2e.support import (
    JOB,
    assert_playable_mp3,
    azure_env,
    cli_command,
    containers,
    delete_run_containers,
    emulator_stats,
    events,
    kill_when_logged,
    leaked_secrets,
    leftovers,
    run_azure,
)
from tests.emulator.support import Azurite


def test_the_tutorial_flow_on_azure(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    out = tmp_path / "out"
    # Nodes idle at once: the run's first node check then always finds them. With a delay, that check can
    # come first and the tasks finish before the next one, so the run ends without a nodes_ready event.
    with start_emulator(allocation_delay_s=0) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), out)
        stats = emulator_stats(emulator)
    assert result.returncode == 0, result.stderr
    mp3s = sorted(out.glob("*.mp3"))
    assert len(mp3s) == 5
    for mp3 in mp3s:
        assert_playable_mp3(mp3)
    assert f"{JOB}-input" not in containers(azurite)  # deleted, as in the tutorial
    assert f"{JOB}-output" in containers(azurite)
    kinds = [event["event"] for event in events(result)]
    assert kinds.count("task_succeeded") == 5
    assert "nodes_ready" in kinds
    assert stats["requests"]["task.addcollection"] == 1  # five tasks, one collection
    assert "Delete it now: batchpilot cleanup --backend azure --pool batchpilot-azure-pool" in result.stderr
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_faults_are_retried_and_every_task_is_added_once(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    out = tmp_path / "out"
    faults = FaultConfig(
        seed=3, rate_429=0.3, retry_after_s=1, rate_500=0.2, drop_after_apply=1.0, preempt=1.0,
        preempt_after_s=0.01, budget=1,
    )  # fmt: skip
    with start_emulator(faults=faults) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), out)
        stats = emulator_stats(emulator)
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.mp3"))) == 5
    for mp3 in out.glob("*.mp3"):
        assert_playable_mp3(mp3)
    assert stats["faults"] == {"dropped_after_apply": 1, "preempted": 1, "server_error": 1, "throttled": 1}
    lines = events(result)
    retried = {line["status"] for line in lines if line["event"] == "service_retryable_response"}
    assert retried == {429, 500}
    assert any(line["event"] == "add_tasks_retry" for line in lines)  # the dropped add-collection, sent again
    # The preempted task ran twice; whether the monitor saw it between runs depends on timing, its count not.
    completed = [
        line for line in lines if line["event"] == "task_state_changed" and line["state"] == "completed"
    ]
    assert sorted(line["requeue_count"] for line in completed) == [0, 0, 0, 0, 1]
    submitted = [line for line in lines if line["event"] == "tasks_submitted"]
    # The resent collection found the dropped request's tasks in the job: this run added them, and says so
    # ("5 added", not "0 added, 5 already in the job"), with no task added twice.
    assert sum(line["added"] for line in submitted) == 5
    assert sum(line["existing"] for line in submitted) == 0
    assert stats["tasks_completed"] == 5  # each task ran to completion once
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_a_killed_orchestrator_is_resumed_by_the_same_command(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    out = tmp_path / "out"
    # Slow node allocation keeps the tasks queued, so the orchestrator dies with all of them in flight.
    with start_emulator(allocation_delay_s=2.0) as emulator:
        env = azure_env(home, emulator, azurite)
        args = cli_command("run", "--backend", "azure", "--sample", "5", "--out", str(out))
        kill_when_logged(args, env, tmp_path / "killed.log", '"tasks_submitted"')
        resumed = run_azure(env, out)
        stats = emulator_stats(emulator)
    assert resumed.returncode == 0, resumed.stderr
    assert "5 already in the job and skipped" in resumed.stderr
    assert "0 added" in resumed.stderr
    assert len(list(out.glob("*.mp3"))) == 5
    assert leftovers(out) == []
    assert stats["requests"]["task.addcollection"] == 1  # the second run added nothing
    assert stats["tasks_completed"] == 5
