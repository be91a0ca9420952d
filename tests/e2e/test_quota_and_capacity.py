"""`batchpilot run --backend azure` on an account out of quota, as the user sees it: the exit code, one line
on stderr naming the quota and the fix, what the run created and the command that removes it; no traceback,
no secret. The Batch emulator enforces the quotas as Batch does; Azurite stands in for Storage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio

from batchpilot.emulator import FaultConfig, RunningEmulator
from tests.conftest import EmulatorFactory
from tests.e2e.support import (
    azure_env,
    delete_run_containers,
    emulator_stats,
    events,
    leaked_secrets,
    run_azure,
)
from tests.emulator.support import Azurite, batch_client, job_options, pool_options

POOL = "batchpilot-azure-pool"
CLEANUP_POOL = f"batchpilot cleanup --backend azure --pool {POOL}"


def the_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exit code 1 and said why in one line, with no traceback anywhere."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("batchpilot: BackendError: ")
    return line


def existing(emulator: RunningEmulator, *, pool: str | None = None, job: str | None = None) -> None:
    """Another pool or job already in the account, using up its quota."""

    async def create() -> None:
        async with batch_client(emulator) as client:
            if pool:
                await client.create_pool(pool_options(pool))
            if job:
                await client.create_job(job_options(job, "other-pool"))

    anyio.run(create)


def test_pool_quota_reached(start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path):
    delete_run_containers(azurite)
    with start_emulator(faults=FaultConfig(pool_quota=1)) as emulator:
        existing(emulator, pool="other-pool")
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")
        stats = emulator_stats(emulator)

    line = the_error_line(result)
    assert f"create pool {POOL}: the Batch account's pool quota is reached (409 PoolQuotaReached)" in line
    assert "raise the pool quota in the Azure portal (Batch account > Quotas)" in line
    assert "or delete unused pools: batchpilot cleanup --backend azure --pool ID" in line
    # Refused before anything was created in Batch: no pool of ours, no job.
    assert stats["requests"]["pool.add"] == 2
    assert "job.add" not in stats["requests"]
    assert stats["faults"] == {"pool_quota_reached": 1}
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_job_quota_reached(start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path):
    delete_run_containers(azurite)
    with start_emulator(faults=FaultConfig(job_quota=1)) as emulator:
        existing(emulator, job="other-job")
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")
        stats = emulator_stats(emulator)

    line = the_error_line(result)
    assert "quota of active jobs is reached (409 ActiveJobAndScheduleQuotaReached)" in line
    assert "raise the job quota in the Azure portal (Batch account > Quotas)" in line
    assert "or delete jobs you no longer need: batchpilot cleanup --backend azure --job ID" in line
    # The pool was created before the job was refused: the line names it and how to remove it.
    assert line.endswith(f"pool {POOL} is kept, to remove it: {CLEANUP_POOL}")
    assert stats["faults"] == {"job_quota_reached": 1}
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_dedicated_core_quota_leaves_the_pool_without_nodes(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    with start_emulator(faults=FaultConfig(core_quota=0), allocation_delay_s=0) as emulator:
        env = azure_env(home, emulator, azurite)
        result = run_azure(env, tmp_path / "out", "--nodes", "2")
        stats = emulator_stats(emulator)

    line = the_error_line(result)
    assert f"pool {POOL} got no nodes: the Batch account's dedicated core quota is reached" in line
    assert "(AccountCoreQuotaReached: The specified account has reached core quota)" in line
    assert "raise the dedicated core quota in the Azure portal (Batch account > Quotas)" in line
    assert "--nodes, --spot-nodes, --vm-size" in line
    assert line.endswith(f"pool {POOL} is kept, to remove it: {CLEANUP_POOL}")
    assert stats["faults"] == {"core_quota_reached": 1}
    assert stats["attempts_started"] == 0
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_spot_core_quota_leaves_the_pool_without_nodes(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    # The default Azure pool is the tutorial's: five spot nodes.
    with start_emulator(faults=FaultConfig(spot_core_quota=0), allocation_delay_s=0) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")
        stats = emulator_stats(emulator)

    line = the_error_line(result)
    assert f"pool {POOL} got no nodes: the Batch account's spot (low-priority) core quota is reached" in line
    assert "(AccountLowPriorityCoreQuotaReached: The specified account has reached low priority core" in line
    assert "raise the spot core quota in the Azure portal (Batch account > Quotas)" in line
    assert "use dedicated nodes instead" in line
    assert line.endswith(f"pool {POOL} is kept, to remove it: {CLEANUP_POOL}")
    assert stats["faults"] == {"spot_core_quota_reached": 1}
    assert leaked_secrets(result.stdout + result.stderr) == []


def test_a_pool_short_of_nodes_runs_on_those_it_got(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    out = tmp_path / "out"
    # Room for one node of two: the default size, Standard_D2s_v5, has 2 cores.
    with start_emulator(faults=FaultConfig(core_quota=2), allocation_delay_s=0) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), out, "--nodes", "2")
        stats = emulator_stats(emulator)

    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.mp3"))) == 5
    [short] = [line for line in events(result) if line["event"] == "pool_short_of_nodes"]
    assert (short["pool_id"], short["nodes"]) == (POOL, 1)
    assert "dedicated core quota is reached (AccountCoreQuotaReached" in short["reason"]
    assert "raise the dedicated core quota" in short["fix"]
    assert stats["faults"] == {"core_quota_reached": 1}
    assert stats["tasks_completed"] == 5
    assert leaked_secrets(result.stdout + result.stderr) == []
