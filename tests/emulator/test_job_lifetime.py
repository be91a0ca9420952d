"""A one-shot run's job ends by itself, through the Azure backend against the emulator: at its max wall clock,
or once every task is done; a resumed run's job gets its time again."""

from __future__ import annotations

from datetime import timedelta

from azure.batch.aio import BatchClient

from batchpilot.backends.azure import AzureBackend
from batchpilot.config import AzureSettings, BatchSettings, StorageSettings
from batchpilot.emulator import RunningEmulator
from batchpilot.spec import JobSpec

from .support import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, add_tasks, eventually, pool_options, shell_task


def backend_for(emulator: RunningEmulator, azurite: Azurite) -> AzureBackend:
    settings = AzureSettings(
        batch=BatchSettings(endpoint=emulator.endpoint, account=emulator.account, access_key=emulator.key),
        storage=StorageSettings(AZURITE_ACCOUNT, azurite.blob_endpoint, AZURITE_KEY),
    )
    return AzureBackend(settings, retry_total=0)


async def job_end(client: BatchClient, job_id: str, within: float = 15.0) -> str:
    """Wait for the job to complete; its terminate reason."""

    async def probe() -> str | None:
        job = await client.get_job(job_id)
        if job.state != "completed":
            return None
        assert job.execution_info is not None
        return job.execution_info.termination_reason or ""

    return await eventually(probe, within=within)


async def test_a_job_ends_at_its_max_wall_clock_and_ends_its_tasks(
    client: BatchClient, emulator: RunningEmulator, azurite: Azurite
) -> None:
    await client.create_pool(pool_options("p"))
    async with backend_for(emulator, azurite) as backend:
        await backend.compute.ensure_job(JobSpec("j", "p", max_wall_clock=timedelta(seconds=0.5)))
    await add_tasks(client, "j", [shell_task("sleeper", "sleep 60")])

    assert await job_end(client, "j") == "MaxWallClockTimeExpiry"
    task = await client.get_task("j", "sleeper")
    assert task.state == "completed"
    assert task.execution_info is not None
    assert task.execution_info.failure_info is not None


async def test_a_job_told_no_more_tasks_come_ends_once_they_are_done(
    client: BatchClient, emulator: RunningEmulator, azurite: Azurite
) -> None:
    await client.create_pool(pool_options("p", slots=2))
    async with backend_for(emulator, azurite) as backend:
        await backend.compute.ensure_job(JobSpec("j", "p"))
        await add_tasks(client, "j", [shell_task("a", "sleep 0.2"), shell_task("b", "true")])
        await backend.compute.end_job_when_done("j")

    assert await job_end(client, "j") == "AllTasksComplete"
    counts = (await client.get_job_task_counts("j")).task_counts
    assert (counts.completed, counts.succeeded) == (2, 2)


async def test_a_reused_job_gets_its_wall_clock_again_from_now(
    client: BatchClient, emulator: RunningEmulator, azurite: Azurite
) -> None:
    await client.create_pool(pool_options("p"))
    async with backend_for(emulator, azurite) as backend:
        await backend.compute.ensure_job(JobSpec("j", "p", max_wall_clock=timedelta(seconds=1)))
        ensured = await backend.compute.ensure_job(JobSpec("j", "p", max_wall_clock=timedelta(minutes=10)))
    assert ensured.created is False
    job = await client.get_job("j")
    assert job.constraints is not None
    assert job.constraints.max_wall_clock_time is not None
    assert job.constraints.max_wall_clock_time >= timedelta(minutes=10)
    await add_tasks(client, "j", [shell_task("late", "sleep 1.5")])

    async def finished() -> bool | None:
        return True if (await client.get_task("j", "late")).state == "completed" else None

    await eventually(finished)
    assert (await client.get_job("j")).state == "active"  # the first second has long passed
    assert (await client.get_task("j", "late")).execution_info.exit_code == 0
