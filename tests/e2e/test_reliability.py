"""The faults users of Batch orchestrators hit, through the CLI against the emulator and Azurite: a pool id
still being deleted, an orchestrator killed mid-run, a service that stops answering polls."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import anyio
from azure.core.exceptions import HttpResponseError

from batchpilot.emulator import RunningEmulator
from batchpilot.emulator.faults import FaultConfig
from batchpilot.engine import JOB_GRACE, SAS_MARGIN
from tests.conftest import EmulatorFactory
from tests.e2e.support import (
    JOB,
    azure_env,
    cli_command,
    delete_run_containers,
    events,
    kill_when_logged,
    leaked_secrets,
    run_azure,
)
from tests.emulator.support import AZURITE_KEY, CANARY_BATCH_KEY, Azurite, batch_client, eventually

POOL = "batchpilot-azure-pool"


def test_the_leak_check_finds_canaries_and_signatures_but_not_redacted_ones():
    assert leaked_secrets("all fine: ...?se=2026&sig=REDACTED") == []
    found = leaked_secrets(f"key={CANARY_BATCH_KEY} conn=AccountKey={AZURITE_KEY} url=?sv=1&sig=abc%3D")
    assert len(found) == 3


def test_a_run_waits_while_its_pool_id_is_still_being_deleted(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    # Long enough that the second run asks for the pool while it is still being deleted.
    with start_emulator(deletion_delay_s=8.0) as emulator:
        env = azure_env(home, emulator, azurite)
        first = run_azure(env, tmp_path / "first")
        assert first.returncode == 0, first.stderr
        cleanup = subprocess.run(
            cli_command("cleanup", "--backend", "azure", "--pool", POOL, "--job", JOB),
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert cleanup.returncode == 0, cleanup.stderr
        delete_run_containers(azurite)
        second = run_azure(env, tmp_path / "second")
    assert second.returncode == 0, second.stderr
    kinds = [event["event"] for event in events(second)]
    # Said once, before the pool is created again, not a failure.
    assert kinds.count("pool_deletion_pending") == 1
    assert kinds.index("pool_deletion_pending") < kinds.index("pool_ready")
    assert len(list((tmp_path / "second").glob("*.mp3"))) == 5


def test_a_job_whose_orchestrator_was_killed_ends_by_itself_once_its_tasks_are_done(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    # Slow nodes keep the tasks queued while the orchestrator dies.
    with start_emulator(allocation_delay_s=1.5) as emulator:
        env = azure_env(home, emulator, azurite)
        args = cli_command("run", "--backend", "azure", "--sample", "5", "--out", str(tmp_path / "out"))
        # Once every task is in and the job was told no more will come (monitoring began with submission).
        kill_when_logged(args, env, tmp_path / "killed.log", '"job_ends_when_done"')

        async def ended() -> tuple[str, int]:
            async with batch_client(emulator) as client:

                async def probe() -> tuple[str, int] | None:
                    job = await client.get_job(JOB)
                    if job.state != "completed":
                        return None
                    assert job.execution_info is not None
                    counts = (await client.get_job_task_counts(JOB)).task_counts
                    return job.execution_info.termination_reason or "", counts.succeeded

                return await eventually(probe, within=60)

        reason, succeeded = anyio.run(ended)
    assert (reason, succeeded) == ("AllTasksComplete", 5)


def test_polls_failing_past_the_deadline_stop_the_run_and_the_same_command_resumes_it(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    out = tmp_path / "out"
    # Every list and count request fails from the first task added on, for 20 s: the tasks run regardless.
    outage = FaultConfig(outage_after_s=0.0, outage_s=20.0)
    with start_emulator(faults=outage) as emulator:
        env = azure_env(home, emulator, azurite)
        lost = run_azure(env, out, "--give-up-after", "2s")

        async def outage_over() -> None:
            async with batch_client(emulator) as client:

                async def probe() -> bool | None:
                    try:
                        await client.get_job_task_counts(JOB)
                    except HttpResponseError:
                        return None
                    return True

                await eventually(probe, within=60)

        anyio.run(outage_over)
        resumed = run_azure(env, out)
    assert lost.returncode == 1, lost.stderr
    assert "LOST CONTACT" in lost.stderr
    assert f"could not read the tasks of job {JOB}" in lost.stderr
    assert "run the same command again to resume" in lost.stderr
    lost_kinds = [event["event"] for event in events(lost)]
    assert "task_failed" not in lost_kinds  # unknown is not failed
    assert resumed.returncode == 0, resumed.stderr
    assert "0 added, 5 already in the job" in resumed.stderr
    assert len(list(out.glob("*.mp3"))) == 5


def test_a_pool_scaled_to_zero_after_a_run_gets_its_nodes_back_from_the_next(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    with start_emulator() as emulator:
        env = azure_env(home, emulator, azurite)
        first = run_azure(env, tmp_path / "first", "--pool-after", "scale-to-zero")
        after_first = anyio.run(pool_targets, emulator)
        delete_run_containers(azurite)  # a new job's worth of work, on the same pool
        second = run_azure(env, tmp_path / "second", "--name", "again")
        after_second = anyio.run(pool_targets, emulator)
    assert first.returncode == 0, first.stderr
    assert f"pool:    {POOL}: scaled to zero nodes" in first.stderr
    assert after_first == (0, 0)
    assert second.returncode == 0, second.stderr
    assert after_second != (0, 0)  # the workload's node counts again
    assert f"pool:    {POOL}: kept with its nodes" in second.stderr
    assert len(list((tmp_path / "second").glob("*.mp3"))) == 5


async def pool_targets(emulator: RunningEmulator) -> tuple[int, int]:
    async with batch_client(emulator) as client:
        pool = await client.get_pool(POOL)
        return pool.target_dedicated_nodes or 0, pool.target_low_priority_nodes or 0


def test_task_tokens_hold_for_as_long_as_the_job_can_run_and_no_longer(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    # Nodes judge every token as if the task had run until the job's max wall clock (timeout 1h + grace):
    # nothing of the job can run longer, so every upload must still be allowed.
    wall_clock = (timedelta(hours=1) + JOB_GRACE).total_seconds()
    with start_emulator(faults=FaultConfig(sas_clock_ahead_s=wall_clock)) as emulator:
        delete_run_containers(azurite)
        held = run_azure(azure_env(home, emulator, azurite), tmp_path / "held", "--timeout", "1h")
    # The control: a little past the tokens' own end, the same nodes refuse them, so the check is real.
    beyond = (timedelta(hours=1) + JOB_GRACE + SAS_MARGIN + timedelta(minutes=1)).total_seconds()
    with start_emulator(faults=FaultConfig(sas_clock_ahead_s=beyond)) as emulator:
        delete_run_containers(azurite)
        refused = run_azure(azure_env(home, emulator, azurite), tmp_path / "refused", "--timeout", "1h")
    assert held.returncode == 0, held.stderr
    assert len(list((tmp_path / "held").glob("*.mp3"))) == 5
    assert refused.returncode == 1
    assert "AccessDenied" in refused.stderr


def test_an_outage_shorter_than_the_deadline_degrades_the_run_which_then_recovers_and_succeeds(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    # Long enough for three failed polls (each one the SDK's retries long), short of --give-up-after.
    outage = FaultConfig(outage_after_s=0.0, outage_s=25.0)
    with start_emulator(faults=outage) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    kinds = [event["event"] for event in events(result)]
    assert kinds.count("monitor_degraded") == 1
    assert kinds.index("monitor_degraded") < kinds.index("monitor_recovered")
    assert kinds.count("task_succeeded") == 5
    assert "task_failed" not in kinds
    degraded = next(event for event in events(result) if event["event"] == "monitor_degraded")
    assert degraded["level"] == "warning"
    assert degraded["failed_polls"] == 3
