"""Pools, jobs and tasks through the unmodified azure-batch SDK: status codes, error codes, paging, counts."""

from __future__ import annotations

import json

import aiohttp
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported by the SDK
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.rest import HttpRequest

from batchpilot.emulator import RunningEmulator
from tests.conftest import EmulatorFactory

from .support import (
    add_tasks,
    batch_client,
    completed,
    eventually,
    job_options,
    pool_options,
    shell_task,
    stats,
)


async def test_pool_lifecycle_and_errors(client: BatchClient) -> None:
    await client.create_pool(pool_options("pool-a", nodes=2, slots=3))

    with pytest.raises(ResourceExistsError) as exists:
        await client.create_pool(pool_options("POOL-A"))  # ids are case-insensitive, as in Batch
    assert exists.value.error is not None
    assert exists.value.error.code == "PoolExists"

    pool = await client.get_pool("pool-a")
    assert (pool.id, pool.state, pool.task_slots_per_node, pool.target_dedicated_nodes) == (
        "pool-a",
        "active",
        3,
        2,
    )
    assert await client.pool_exists("pool-a") is True

    with pytest.raises(ResourceNotFoundError) as missing:
        await client.get_pool("nope")
    assert missing.value.status_code == 404
    assert missing.value.error is not None
    assert missing.value.error.code == "PoolNotFound"

    poller = await client.begin_delete_pool("pool-a", polling_interval=1)
    assert (await client.get_pool("pool-a")).state == "deleting"
    await poller.result()
    with pytest.raises(ResourceNotFoundError):
        await client.get_pool("pool-a")


async def test_pool_exists_404_is_the_sdk_trap(client: BatchClient) -> None:
    # The SDK raises instead of returning False (a known SDK bug); the emulator's answer is a plain 404.
    with pytest.raises(ResourceNotFoundError):
        await client.pool_exists("absent")


async def test_nodes_start_then_turn_idle_after_slow_allocation(start_emulator: EmulatorFactory) -> None:
    with start_emulator(allocation_delay_s=0.6) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("slow", nodes=3))
            nodes = [node async for node in client.list_nodes("slow")]
            assert [node.state for node in nodes] == ["starting"] * 3
            assert (await client.get_pool("slow")).allocation_state == "resizing"

            async def idle() -> list[m.BatchNode] | None:
                found = [node async for node in client.list_nodes("slow")]
                return found if all(node.state == "idle" for node in found) else None

            ready = await eventually(idle, within=5)
            assert len({node.id for node in ready}) == 3
            assert (await client.get_pool("slow")).allocation_state == "steady"


async def test_job_lifecycle_and_errors(client: BatchClient) -> None:
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("job-1", "p"))
    with pytest.raises(ResourceExistsError) as exists:
        await client.create_job(job_options("job-1", "p"))
    assert exists.value.error is not None
    assert exists.value.error.code == "JobExists"
    with pytest.raises(ResourceNotFoundError) as missing:
        await client.get_job("job-2")
    assert missing.value.error is not None
    assert missing.value.error.code == "JobNotFound"

    job = await client.get_job("job-1")
    assert (job.state, job.pool_info.pool_id) == ("active", "p")

    terminate = await client.begin_terminate_job(
        "job-1", options=BatchJobTerminateOptions(termination_reason="done"), polling_interval=1
    )
    await terminate.result()
    ended = await client.get_job("job-1")
    assert ended.state == "completed"
    assert ended.execution_info is not None
    assert ended.execution_info.termination_reason == "done"
    with pytest.raises(ResourceExistsError) as closed:
        await add_tasks(client, "job-1", [shell_task("late", "true")])
    assert closed.value.error is not None
    assert closed.value.error.code == "JobCompleted"

    deletion = await client.begin_delete_job("job-1", polling_interval=1)
    await deletion.result()
    with pytest.raises(ResourceNotFoundError):
        await client.get_job("job-1")


async def test_add_collection_reports_task_exists_per_task(client: BatchClient) -> None:
    await client.create_job(job_options("j", "no-pool-yet"))
    assert await add_tasks(client, "j", [shell_task("a", "true"), shell_task("b", "true")]) == ["success"] * 2
    statuses = await add_tasks(client, "j", [shell_task("b", "true"), shell_task("c", "true")])
    assert statuses == ["TaskExists", "success"]
    assert [task.id async for task in client.list_tasks("j")] == ["a", "b", "c"]


# aiohttp (client side) warns about any body over 1 MB; sending one is the point here.
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_add_collection_limits_answer_413(client: BatchClient) -> None:
    await client.create_job(job_options("j", "p"))
    with pytest.raises(HttpResponseError) as too_many:
        await add_tasks(client, "j", [shell_task(f"t{i}", "true") for i in range(101)])
    assert too_many.value.status_code == 413
    assert too_many.value.error is not None
    assert too_many.value.error.code == "RequestBodyTooLarge"

    big = "x" * 20_000
    with pytest.raises(HttpResponseError) as too_big:
        await add_tasks(client, "j", [shell_task(f"t{i}", f"echo {big}") for i in range(60)])
    assert too_big.value.status_code == 413
    assert [task async for task in client.list_tasks("j")] == []

    assert (
        await add_tasks(client, "j", [shell_task(f"t{i}", "true") for i in range(100)]) == ["success"] * 100
    )


async def test_list_pages_keep_filter_and_select_through_next_link(
    client: BatchClient, emulator: RunningEmulator
) -> None:
    await client.create_pool(pool_options("p", nodes=2, slots=4))
    await client.create_job(job_options("j", "p"))
    failing = {f"t{i:02d}" for i in range(0, 25, 3)}
    tasks = [shell_task(f"t{i:02d}", "exit 3" if f"t{i:02d}" in failing else "true") for i in range(25)]
    assert await add_tasks(client, "j", tasks) == ["success"] * 25
    await completed(client, "j", 25)
    before = (await stats(emulator))["requests"]

    pages = client.list_tasks(
        "j",
        filter="state eq 'completed' and executionInfo/result eq 'failure'",
        select=["id", "state"],
        max_results=2,
    )
    found = [task async for task in pages]

    assert sorted(task.id for task in found) == sorted(failing)
    # $select held on every page: nothing but the selected properties came back.
    assert all(task.execution_info is None and task.command_line is None for task in found)
    after = (await stats(emulator))["requests"]
    assert isinstance(before, dict)
    assert isinstance(after, dict)
    assert after["task.list"] - before.get("task.list", 0) == 5  # ceil(9 / 2) pages


async def test_list_filters_on_state_transition_time(client: BatchClient) -> None:
    await client.create_job(job_options("j", "no-pool"))
    await add_tasks(client, "j", [shell_task("old", "true")])
    old = await client.get_task("j", "old")
    await add_tasks(client, "j", [shell_task("new", "true")])
    new = await client.get_task("j", "new")
    assert new.state_transition_time > old.state_transition_time

    since = new.state_transition_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    changed = [
        task.id async for task in client.list_tasks("j", filter=f"stateTransitionTime ge datetime'{since}'")
    ]
    assert changed == ["new"]
    every = "stateTransitionTime ge datetime'2000-01-01T00:00:00Z' and state eq 'active'"
    assert [task.id async for task in client.list_tasks("j", filter=every)] == ["old", "new"]

    with pytest.raises(HttpResponseError) as bad:
        [task async for task in client.list_tasks("j", filter="colour eq 'blue'")]
    assert bad.value.status_code == 400


async def test_task_counts_and_get_task(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1, slots=2))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("ok", "true"), shell_task("bad", "exit 1")])
    await completed(client, "j", 2)
    counts = await client.get_job_task_counts("j")
    assert (counts.task_counts.active, counts.task_counts.running) == (0, 0)
    assert (counts.task_counts.succeeded, counts.task_counts.failed) == (1, 1)
    assert counts.task_slot_counts.completed == 2

    bad = await client.get_task("j", "bad")
    assert bad.execution_info is not None
    assert (bad.execution_info.exit_code, bad.execution_info.result) == (1, "failure")
    assert bad.execution_info.failure_info is not None
    assert bad.execution_info.failure_info.code == "FailureExitCode"
    with pytest.raises(ResourceNotFoundError) as missing:
        await client.get_task("j", "absent")
    assert missing.value.error is not None
    assert missing.value.error.code == "TaskNotFound"


async def test_job_with_terminatejob_ends_when_its_tasks_complete(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1, slots=2))
    # As in Batch, a job with no tasks and terminatejob ends soon; set it after adding tasks instead.
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("a", "sleep 0.3"), shell_task("b", "true")])
    await client.update_job("j", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))

    async def ended() -> m.BatchJob | None:
        job = await client.get_job("j")
        return job if job.state == "completed" else None

    job = await eventually(ended)
    assert job.execution_info is not None
    assert job.execution_info.termination_reason == "AllTasksComplete"

    # A job with no tasks counts as having completed them all, but as the recorded service shows (jobs
    # recording: a terminatejob job read back right after its add), it is ended a moment later, not at once.
    await client.create_job(job_options("empty", "p", terminate_when_done=True))
    assert (await client.get_job("empty")).state == "active"

    async def empty_ended() -> m.BatchJob | None:
        job = await client.get_job("empty")
        return job if job.state == "completed" else None

    assert (await eventually(empty_ended)).execution_info.termination_reason == "AllTasksComplete"  # type: ignore[union-attr]


async def test_errors_are_json_with_codes_for_unknown_urls(
    emulator: RunningEmulator, client: BatchClient
) -> None:
    # A signed request for a path the service does not have: the SDK's own escape hatch signs it.
    # Batch answers an unknown path 400 InvalidUri (Batch status and error codes).
    with pytest.raises(HttpResponseError) as missing:
        await client.send_request(
            HttpRequest("GET", f"{emulator.endpoint}/nothing/here?api-version=2025-06-01")
        )
    assert missing.value.status_code == 400
    assert missing.value.error is not None
    assert missing.value.error.code == "InvalidUri"
    assert missing.value.response is not None
    assert missing.value.response.headers["Content-Type"].startswith("application/json")
    body = json.loads(missing.value.response.text())
    assert body["message"]["lang"] == "en-US"

    async with aiohttp.ClientSession() as session, session.get(f"{emulator.endpoint}/pools") as unsigned:
        assert unsigned.status == 403
        assert (await unsigned.json(content_type=None))["code"] == "AuthenticationFailed"
