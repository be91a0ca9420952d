"""Helpers for the emulator tests: Azurite's coordinates, SDK clients, statistics, polling with a deadline."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import aiohttp
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from batchpilot.emulator import RunningEmulator
from tests.waiting import eventually  # the emulator reports only over HTTP: there is no event to wait on

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The Batch key of every test emulator: recognisable wherever it leaks ("CANARY-batch-key..." decoded).
CANARY_BATCH_KEY = base64.b64encode(b"CANARY-batch-key-never-to-be-printed-by-batchpilot").decode()


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


def batch_client(emulator: RunningEmulator, key: str | None = None, **kwargs: object) -> BatchClient:
    credential = AzureNamedKeyCredential(emulator.account, key or emulator.key)
    return BatchClient(emulator.endpoint, credential, **kwargs)


async def stats(emulator: RunningEmulator) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(emulator.stats_url) as response:
        response.raise_for_status()
        body: dict[str, object] = await response.json()
        return body


def pool_options(
    pool_id: str, *, nodes: int = 1, slots: int = 1, start_task: bool = False
) -> m.BatchPoolCreateOptions:
    # Ubuntu 24.04 (Generation 1, as STANDARD_A1_v2 boots): the emulator refuses 20.04's retired agent.
    image = m.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server-gen1")
    return m.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="STANDARD_A1_v2",
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=image, node_agent_sku_id="batch.node.ubuntu 24.04"
        ),
        target_dedicated_nodes=nodes,
        task_slots_per_node=slots,
        start_task=m.BatchStartTask(command_line="apt-get install -y ffmpeg") if start_task else None,
    )


def job_options(job_id: str, pool_id: str, *, terminate_when_done: bool = False) -> m.BatchJobCreateOptions:
    return m.BatchJobCreateOptions(
        id=job_id,
        pool_info=m.BatchPoolInfo(pool_id=pool_id),
        all_tasks_complete_mode="terminatejob" if terminate_when_done else None,
    )


def shell_task(task_id: str, script: str, **options: object) -> m.BatchTaskCreateOptions:
    return m.BatchTaskCreateOptions(id=task_id, command_line=f"/bin/sh -c '{script}'", **options)


async def add_tasks(client: BatchClient, job_id: str, tasks: list[m.BatchTaskCreateOptions]) -> list[str]:
    """Add a collection and return each task's status (`success`, or the error code)."""
    result = await client.create_task_collection(job_id, m.BatchTaskGroup(task_values=tasks))
    return [
        entry.status
        if entry.status == "success"
        else (entry.error.code if entry.error else str(entry.status))
        for entry in result.result_values or ()
    ]


async def completed(client: BatchClient, job_id: str, expected: int, *, within: float = 15.0) -> None:
    async def probe() -> bool | None:
        counts = (await client.get_job_task_counts(job_id)).task_counts
        return True if counts.completed == expected else None

    await eventually(probe, within=within)
