"""The tutorial's flow (batch_python_tutorial_ffmpeg.py), re-implemented with today's synchronous SDKs.

Faithful in shape: containers, then one upload after another (each followed by a blob SAS, as the tutorial's
`upload_file_to_container` does), pool, job, tasks, then a loop that lists every task with every field once a
second until all are completed. One deviation, forced: the tutorial adds all tasks in a single
`add_collection` call, which the service refuses above 100 tasks (RequestBodyTooLarge), so the tasks go in
collections of 100, one request after another.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from .common import BLOB_SAS_HOURS, SideConfig, SideResult

_COLLECTION_LIMIT = 100


def run(config: SideConfig) -> SideResult:
    result = SideResult(side="baseline", started=time.time())
    input_container, output_container = f"{config.name}-input", f"{config.name}-output"
    pool_id, job_id = f"{config.name}-pool", f"{config.name}-job"
    blobs = BlobServiceClient.from_connection_string(config.storage_connection_string)
    account = blobs.credential.account_name
    key = blobs.credential.account_key
    expiry = datetime.now(UTC) + timedelta(hours=BLOB_SAS_HOURS)
    for container in (input_container, output_container):
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(container)

    def upload_file_to_container(path: Path) -> bm.ResourceFile:
        blob = blobs.get_blob_client(input_container, path.name)
        if config.upload:
            with path.open("rb") as data:
                blob.upload_blob(data, overwrite=True)
        sas = generate_blob_sas(
            account, input_container, path.name, account_key=key,
            permission=BlobSasPermissions(read=True), expiry=expiry,
        )  # fmt: skip
        return bm.ResourceFile(http_url=f"{blob.url}?{sas}", file_path=path.name)

    input_files = [upload_file_to_container(Path(name)) for name in config.inputs]
    result.uploaded = time.time()
    output_sas = generate_container_sas(
        account, output_container, account_key=key,
        permission=ContainerSasPermissions(write=True), expiry=expiry,
    )  # fmt: skip
    output_url = f"{blobs.get_container_client(output_container).url}?{output_sas}"

    batch = BatchClient(config.endpoint, AzureNamedKeyCredential(config.account, config.key))
    batch.create_pool(
        bm.BatchPoolCreateOptions(
            id=pool_id,
            # The tutorial's pool (Ubuntu 20.04, A1_v2) is refused since the 20.04 node agent's retirement
            # (2025-04-23, Azure/Batch#174); Microsoft samples moved to 24.04 gen1 (azure-batch-samples#328).
            vm_size="STANDARD_A1_v2",
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(
                    publisher="canonical", offer="ubuntu-24_04-lts", sku="server-gen1"
                ),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
            target_dedicated_nodes=config.nodes,
            task_slots_per_node=config.slots,
            start_task=bm.BatchStartTask(
                command_line='/bin/bash -c "apt-get update && apt-get install -y ffmpeg"',
                wait_for_success=True,
                user_identity=bm.UserIdentity(
                    auto_user=bm.AutoUserSpecification(
                        scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.ADMIN
                    )
                ),
            ),
        )
    )
    batch.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id)))

    tasks = []
    for index, input_file in enumerate(input_files):
        input_path = input_file.file_path or ""
        output_path = "".join(input_path.split(".")[:-1]) + ".mp3"
        tasks.append(
            bm.BatchTaskCreateOptions(
                id=f"Task{index}",
                command_line=f'/bin/bash -c "ffmpeg -i {input_path} {output_path} "',
                resource_files=[input_file],
                output_files=[]
                if not config.outputs
                else [
                    bm.OutputFile(
                        file_pattern=output_path,
                        destination=bm.OutputFileDestination(
                            container=bm.OutputFileBlobContainerDestination(container_url=output_url)
                        ),
                        upload_options=bm.OutputFileUploadConfiguration(
                            upload_condition=bm.OutputFileUploadCondition.TASK_SUCCESS
                        ),
                    )
                ],
            )
        )
    submit_started = time.time()
    cpu_started = time.process_time()
    for first in range(0, len(tasks), _COLLECTION_LIMIT):
        batch.create_task_collection(
            job_id, bm.BatchTaskGroup(task_values=tasks[first : first + _COLLECTION_LIMIT])
        )
    result.submitted = time.time()
    result.submit_cpu_s = time.process_time() - cpu_started
    result.note = f"pool and job: {submit_started - result.uploaded:.2f}s"
    if config.submit_only:
        result.finished = result.submitted
        batch.close()
        return result

    # wait_for_tasks_to_complete: every task, every field, once a second.
    while True:
        listed = list(batch.list_tasks(job_id))
        now = time.time()
        result.monitor_loops += 1
        result.tasks_listed += len(listed)
        incomplete = 0
        for task in listed:
            if task.state == bm.BatchTaskState.COMPLETED:
                result.seen.setdefault(task.id, now)
            else:
                incomplete += 1
        if not incomplete and len(listed) == len(tasks):
            break
        time.sleep(1)
    result.finished = time.time()
    batch.close()
    blobs.close()
    return result
