"""Ids that end in a newline (or hold a CR or NUL) are refused, never created: `$` matches before a trailing
newline, and such an id made it into a job whose answer (its Location header) could not be sent."""

from __future__ import annotations

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from .support import add_tasks, job_options, pool_options, shell_task

BAD_ENDINGS = ["\n", "\r\n", "\x00", "\r", " ", "\n\n"]


def refused_as_invalid(error: HttpResponseError) -> None:
    assert error.status_code == 400
    assert error.error is not None
    assert error.error.code == "InvalidPropertyValue"


@pytest.mark.parametrize("ending", BAD_ENDINGS)
async def test_pool_and_job_ids_end_where_they_end(client: BatchClient, ending: str) -> None:
    with pytest.raises(HttpResponseError) as pool:
        await client.create_pool(pool_options("p" + ending))
    refused_as_invalid(pool.value)
    await client.create_pool(pool_options("p"))
    with pytest.raises(HttpResponseError) as job:
        await client.create_job(job_options("j" + ending, "p"))
    refused_as_invalid(job.value)
    # Nothing was created, and the emulator still answers.
    assert [pool.id async for pool in client.list_pools()] == ["p"]
    assert [job.id async for job in client.list_jobs()] == []


@pytest.mark.parametrize("ending", BAD_ENDINGS)
async def test_task_ids_end_where_they_end(client: BatchClient, ending: str) -> None:
    await client.create_pool(pool_options("p", nodes=0))
    await client.create_job(job_options("j", "p"))
    with pytest.raises(HttpResponseError) as single:
        await client.create_task("j", shell_task("t" + ending, "true"))
    refused_as_invalid(single.value)
    statuses = await add_tasks(client, "j", [shell_task("ok", "true"), shell_task("u" + ending, "true")])
    assert statuses == ["success", "InvalidPropertyValue"]
    assert [task.id async for task in client.list_tasks("j")] == ["ok"]


async def test_longest_id_is_64_characters(client: BatchClient) -> None:
    await client.create_pool(pool_options("p" * 64, nodes=0))
    with pytest.raises(HttpResponseError) as too_long:
        await client.create_pool(pool_options("p" * 65, nodes=0))
    refused_as_invalid(too_long.value)
    await client.create_job(job_options("j", "p" * 64))
    await client.create_task("j", m.BatchTaskCreateOptions(id="t" * 64, command_line="true"))
    with pytest.raises(HttpResponseError) as task_too_long:
        await client.create_task("j", m.BatchTaskCreateOptions(id="t" * 65, command_line="true"))
    refused_as_invalid(task_too_long.value)
