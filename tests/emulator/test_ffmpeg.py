"""The tutorial's task end to end: an MP4 in Azurite, ffmpeg on an emulated node, the MP3 back in Azurite."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import imageio_ffmpeg
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from .support import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, add_tasks, completed, job_options, pool_options


def make_mp4(path: Path) -> None:
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
        "-f", "lavfi", "-i", "color=c=black:s=64x64:d=2",
        "-shortest", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=60)


async def test_ffmpeg_task_reads_from_and_writes_to_azurite(
    client: BatchClient, blobs: BlobServiceClient, azurite: Azurite, tmp_path: Path
) -> None:
    mp4 = tmp_path / "clip one.mp4"
    await anyio.to_thread.run_sync(make_mp4, mp4)
    inputs = blobs.get_container_client("ffmpeg-input")
    outputs = blobs.get_container_client("ffmpeg-output")
    await inputs.create_container()
    await outputs.create_container()
    await inputs.upload_blob(mp4.name, await anyio.Path(mp4).read_bytes())
    expiry = datetime.now(UTC) + timedelta(hours=1)
    blob_sas = generate_blob_sas(
        AZURITE_ACCOUNT, "ffmpeg-input", mp4.name, account_key=AZURITE_KEY,
        permission=BlobSasPermissions(read=True), expiry=expiry,
    )  # fmt: skip
    container_sas = generate_container_sas(
        AZURITE_ACCOUNT, "ffmpeg-output", account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(write=True, create=True), expiry=expiry,
    )  # fmt: skip
    input_url = f"{inputs.url}/clip%20one.mp4?{blob_sas}"
    output_url = f"{outputs.url}?{container_sas}"

    await client.create_pool(pool_options("ffmpeg-pool", start_task=True))
    await client.create_job(job_options("ffmpeg-job", "ffmpeg-pool"))
    task = m.BatchTaskCreateOptions(
        id="clip-one",
        command_line='/bin/bash -c "ffmpeg -loglevel error -i \\"clip one.mp4\\" clip-one.mp3"',
        resource_files=[m.ResourceFile(http_url=input_url, file_path="clip one.mp4")],
        output_files=[
            m.OutputFile(
                file_pattern="*.mp3",
                destination=m.OutputFileDestination(
                    container=m.OutputFileBlobContainerDestination(container_url=output_url, path="audio")
                ),
                upload_options=m.OutputFileUploadConfiguration(upload_condition="tasksuccess"),
            ),
            m.OutputFile(
                file_pattern="../std*.txt",
                destination=m.OutputFileDestination(
                    container=m.OutputFileBlobContainerDestination(container_url=output_url, path="logs")
                ),
                upload_options=m.OutputFileUploadConfiguration(upload_condition="taskfailure"),
            ),
        ],
    )
    assert await add_tasks(client, "ffmpeg-job", [task]) == ["success"]
    await completed(client, "ffmpeg-job", 1, within=30)

    info = (await client.get_task("ffmpeg-job", "clip-one")).execution_info
    assert info is not None
    assert (info.exit_code, info.result, info.failure_info) == (0, "success", None)
    names = [blob.name async for blob in outputs.list_blobs()]
    assert names == ["audio/clip-one.mp3"]  # logs were for failure only
    mp3 = await (await outputs.download_blob("audio/clip-one.mp3")).readall()
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF  # an MP3: ID3 tag or an MPEG frame sync
    assert len(mp3) > 1000


async def test_unreachable_resource_file_fails_the_task(client: BatchClient, azurite: Azurite) -> None:
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("j", "p"))
    missing = f"http://127.0.0.1:{azurite.port}/{AZURITE_ACCOUNT}/nowhere/absent.mp4"
    task = m.BatchTaskCreateOptions(
        id="t", command_line="true", resource_files=[m.ResourceFile(http_url=missing, file_path="in.mp4")]
    )
    await add_tasks(client, "j", [task])
    await completed(client, "j", 1)
    info = (await client.get_task("j", "t")).execution_info
    assert info is not None
    assert info.failure_info is not None
    assert (info.result, info.failure_info.code, info.exit_code) == ("failure", "ResourceFileDownload", None)
