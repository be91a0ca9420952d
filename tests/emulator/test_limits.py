"""Every size and count a request sets is bounded where it enters the emulator, with the service's error;
a 4 MB command line is refused at once instead of holding the event loop for minutes."""

from __future__ import annotations

import json

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchpilot.emulator.limits import MAX_ARG_BYTES, MAX_BODY_BYTES, MAX_ENVIRONMENT_SETTINGS
from tests.waiting import eventually

from .support import add_tasks, job_options, pool_options, shell_task

FOUR_MB = 4 * 1024 * 1024
# aiohttp (the SDK's transport) warns when it sends a body over 1 MB from bytes; these tests do so on purpose.
LARGE_BODY = pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")


async def pool_and_job(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=0))
    await client.create_job(job_options("j", "p"))


def refused(error: HttpResponseError, status: int, code: str) -> None:
    assert error.status_code == status
    assert error.error is not None
    assert error.error.code == code


@LARGE_BODY
async def test_a_4mb_command_line_is_refused_while_the_server_keeps_answering(client: BatchClient) -> None:
    await pool_and_job(client)
    huge = m.BatchTaskCreateOptions(id="huge", command_line="/bin/sh -c '" + "x" * FOUR_MB + "'")
    outcome: dict[str, object] = {}

    async def add_huge() -> None:
        with pytest.raises(HttpResponseError) as error:
            await client.create_task("j", huge)
        outcome["huge"] = error.value

    async def meanwhile() -> None:
        outcome["pools"] = [pool.id async for pool in client.list_pools()]

    async with anyio.create_task_group() as tg:
        tg.start_soon(add_huge)
        tg.start_soon(meanwhile)
    error = outcome["huge"]
    assert isinstance(error, HttpResponseError)
    refused(error, 413, "RequestBodyTooLarge")
    assert outcome["pools"] == ["p"]
    with pytest.raises(HttpResponseError) as in_collection:
        await client.create_task_collection("j", m.BatchTaskGroup(task_values=[huge]))
    refused(in_collection.value, 413, "RequestBodyTooLarge")
    assert [task.id async for task in client.list_tasks("j")] == []


async def test_command_line_longer_than_a_node_can_run_is_refused(client: BatchClient) -> None:
    await pool_and_job(client)
    too_long = "x" * (MAX_ARG_BYTES + 1)  # under the 1 MB body limit, over what execve takes
    with pytest.raises(HttpResponseError) as single:
        await client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=too_long))
    refused(single.value, 400, "InvalidPropertyValue")
    statuses = await add_tasks(
        client,
        "j",
        [
            m.BatchTaskCreateOptions(id="long", command_line=too_long),
            m.BatchTaskCreateOptions(id="nul", command_line="echo a\x00b"),
            shell_task("fine", "true"),
        ],
    )
    assert statuses == ["InvalidPropertyValue", "InvalidPropertyValue", "success"]


async def test_a_long_command_line_within_the_limit_runs(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1))
    await client.create_job(job_options("j", "p"))
    word = "y" * (MAX_ARG_BYTES - 64)
    await client.create_task("j", shell_task("t", f"test ${{#1}} -gt 0 || echo {word} > out.txt"))

    async def done() -> m.BatchTask | None:
        task = await client.get_task("j", "t")
        return task if task.state == "completed" else None

    task = await eventually(done, within=20)
    assert task.execution_info is not None
    assert task.execution_info.exit_code == 0


@pytest.mark.parametrize(
    "environment",
    [
        [m.EnvironmentSetting(name="BIG", value="v" * (MAX_ARG_BYTES + 1))],
        [m.EnvironmentSetting(name=f"V{i}", value="1") for i in range(MAX_ENVIRONMENT_SETTINGS + 1)],
        [m.EnvironmentSetting(name="A=B", value="1")],
        [m.EnvironmentSetting(name="NUL", value="a\x00b")],
    ],
    ids=["value-too-long", "too-many", "equals-in-name", "nul-in-value"],
)
async def test_environment_settings_are_bounded(
    client: BatchClient, environment: list[m.EnvironmentSetting]
) -> None:
    await pool_and_job(client)
    task = shell_task("t", "true", environment_settings=environment)
    with pytest.raises(HttpResponseError) as error:
        await client.create_task("j", task)
    refused(error.value, 400, "InvalidPropertyValue")


async def test_display_names_and_pool_sizes_are_bounded(client: BatchClient) -> None:
    named = pool_options("p1", nodes=0)
    named.display_name = "n" * 1025
    with pytest.raises(HttpResponseError) as name:
        await client.create_pool(named)
    refused(name.value, 400, "InvalidPropertyValue")

    slots = pool_options("p2", nodes=0, slots=5)  # STANDARD_A1_v2 has 1 core: at most 4 slots
    with pytest.raises(HttpResponseError) as too_many_slots:
        await client.create_pool(slots)
    refused(too_many_slots.value, 400, "InvalidPropertyValue")
    await client.create_pool(pool_options("p3", nodes=0, slots=4))

    with pytest.raises(HttpResponseError) as huge_pool:
        await client.create_pool(pool_options("p4", nodes=10**9))
    refused(huge_pool.value, 400, "InvalidPropertyValue")
    with pytest.raises(HttpResponseError) as huge_resize:
        await client.begin_resize_pool("p3", m.BatchPoolResizeOptions(target_dedicated_nodes=10**9))
    refused(huge_resize.value, 400, "InvalidPropertyValue")
    assert sorted([pool.id async for pool in client.list_pools()]) == ["p3"]


@LARGE_BODY
async def test_bodies_over_1mb_and_deep_nesting_are_refused(client: BatchClient) -> None:
    await pool_and_job(client)
    big = json.dumps({"id": "j2", "poolInfo": {"poolId": "p"}, "pad": "x" * MAX_BODY_BYTES})
    with pytest.raises(HttpResponseError) as body:
        await client.send_request(
            HttpRequest(
                "POST",
                "/jobs?api-version=2025-06-01",
                content=big.encode(),
                headers={"Content-Type": "application/json; odata=minimalmetadata"},
            )
        )
    refused(body.value, 413, "RequestBodyTooLarge")
    nested = '{"id": "t", "commandLine": "true", "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    with pytest.raises(HttpResponseError) as deep:
        await client.send_request(
            HttpRequest(
                "POST",
                "/jobs/j/tasks?api-version=2025-06-01",
                content=nested.encode(),
                headers={"Content-Type": "application/json; odata=minimalmetadata"},
            )
        )
    refused(deep.value, 400, "InvalidRequestBody")
    assert [job.id async for job in client.list_jobs()] == ["j"]
