"""State read from the service is judged for freshness (issue 15 item 6; nextflow#7312, #4792): a reused pool
stuck at zero nodes with an old resize error (a core quota since freed) was refused for ever, every run
repeating AccountCoreQuotaReached without asking for nodes again. On the Batch emulator (which keeps resize
errors until the next resize, as Batch does) with Azurite."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
from azure.core.exceptions import ResourceNotFoundError

from batchpilot.emulator import FaultConfig, RunningEmulator
from tests.conftest import EmulatorFactory
from tests.e2e.support import azure_env, cli_command, emulator_stats, events, wait_for
from tests.emulator.support import Azurite, batch_client


def _workload(folder: Path, pool_id: str) -> Path:
    inputs = folder / f"in-{pool_id}"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a\n")
    path = folder / f"{pool_id}.toml"
    path.write_text(
        "[workload]\n"
        f'name = "fresh-{pool_id}"\n'
        f'inputs = "{inputs}/*.txt"\n'
        'command = "gzip -k {input}"\n'
        'outputs = ["{input_name}.gz"]\n'
        "[workload.pool]\n"
        f'id = "{pool_id}"\n'
        "dedicated_nodes = 2\n"
        "spot_nodes = 0\n"
    )
    return path


def _gone(emulator: RunningEmulator, pool_id: str) -> bool:
    async def look() -> bool:
        async with batch_client(emulator) as client:
            try:
                await client.get_pool(pool_id)
            except ResourceNotFoundError:
                return True
            return False

    return anyio.run(look)


def test_the_repro_a_quota_since_freed_no_longer_refuses_the_pool_for_ever(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    # Standard_D2s_v5 (the default) has 2 cores: 4 cores hold one pool of 2 nodes, not two.
    with start_emulator(faults=FaultConfig(core_quota=4), allocation_delay_s=0) as emulator:
        env = azure_env(home, emulator, azurite)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                cli_command(*args), env=env, capture_output=True, text=True, timeout=180,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

        def run_workload(path: Path, out: str) -> subprocess.CompletedProcess[str]:
            return run("run", "--backend", "azure", "--workload", str(path), "--out", str(tmp_path / out))

        a, b = _workload(tmp_path, "pool-a"), _workload(tmp_path, "pool-b")
        first = run_workload(a, "out-a")
        assert first.returncode == 0, first.stderr
        refused = run_workload(b, "out-b")
        assert refused.returncode == 1, refused.stderr
        assert "pool pool-b got no nodes" in refused.stderr
        assert "AccountCoreQuotaReached" in refused.stderr

        cleanup = run("cleanup", "--backend", "azure", "--pool", "pool-a")
        assert cleanup.returncode == 0, cleanup.stderr
        wait_for(lambda: _gone(emulator, "pool-a"), "pool-a to be deleted")

        again = run_workload(b, "out-b")
        assert again.returncode == 0, again.stderr
        assert "batchpilot: done: 1 of 1 tasks succeeded" in again.stderr
        assert (tmp_path / "out-b" / "a.txt.gz").exists()
        resized = [line for line in events(again) if line["event"] == "pool_resized_again"]
        assert [line["pool_id"] for line in resized] == ["pool-b"]
        assert "AccountCoreQuotaReached" in resized[0]["reason"]


def test_a_quota_still_reached_is_reported_from_the_new_resize(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """The quota is still taken: the pool is asked again, and the new resize's error is what the run says."""
    with start_emulator(faults=FaultConfig(core_quota=1), allocation_delay_s=0) as emulator:
        env = azure_env(home, emulator, azurite)
        path = _workload(tmp_path, "pool-c")
        command = cli_command(
            "run", "--backend", "azure", "--workload", str(path), "--out", str(tmp_path / "o")
        )
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        stats = emulator_stats(emulator)
    for result in (first, again):
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "pool pool-c got no nodes" in result.stderr
    assert "pool_resized_again" not in first.stdout
    assert "pool_resized_again" in again.stdout
    assert stats["requests"]["pool.resize"] == 1  # asked again once, by the second run
    assert stats["faults"] == {"core_quota_reached": 2}  # the first allocation's error, then the new one's


def test_a_reused_pool_s_other_image_is_named_as_plan_names_images() -> None:
    """The summary's warning showed the images as Python tuples: "('canonical', 'ubuntu-24_04-lts', ...)"."""
    from azure.batch import models as bm

    from batchpilot.backends.azure.models import pool_differences
    from batchpilot.spec import ImageReference, PoolSpec

    pool = bm.BatchPool(
        id="p", vm_size="standard_d2s_v5", target_dedicated_nodes=1, target_low_priority_nodes=0,
        task_slots_per_node=1,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
            ),
            node_agent_sku_id="batch.node.ubuntu 24.04",
        ),
    )  # fmt: skip
    jammy = ImageReference("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts")
    spec = PoolSpec("p", image=jammy, node_agent_sku_id="batch.node.ubuntu 24.04", dedicated_nodes=1)
    [line] = pool_differences(spec, pool)
    assert line == (
        "pool p exists with image 'canonical/ubuntu-24_04-lts/server/latest', the spec asks for"
        " 'canonical/0001-com-ubuntu-server-jammy/22_04-lts/latest'; reusing it as it is"
    )
