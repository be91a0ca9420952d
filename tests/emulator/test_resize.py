"""Pool resize and stop-resize through the unmodified azure-batch SDK: node counts, allocation states, the
409 on a pool not steady, and what each nodeDeallocationOption does to a running task."""

from __future__ import annotations

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import ResourceExistsError

from tests.conftest import EmulatorFactory

from .support import add_tasks, batch_client, completed, eventually, job_options, pool_options, shell_task


async def steady(client: BatchClient, pool_id: str) -> m.BatchPool:
    async def probe() -> m.BatchPool | None:
        pool = await client.get_pool(pool_id)
        return pool if pool.allocation_state == "steady" else None

    return await eventually(probe)


async def node_states(client: BatchClient, pool_id: str) -> list[str]:
    # The SDK gives an enum member for a state it knows; its value is what went over the wire.
    return sorted(
        [str(getattr(node.state, "value", node.state)) async for node in client.list_nodes(pool_id)]
    )


def resize(dedicated: int, option: str = "requeue") -> m.BatchPoolResizeOptions:
    return m.BatchPoolResizeOptions(target_dedicated_nodes=dedicated, node_deallocation_option=option)


async def test_resize_up_then_to_zero_where_tasks_wait_until_nodes_return(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1))
    await steady(client, "p")

    await client.begin_resize_pool("p", resize(3))
    pool = await client.get_pool("p")
    assert (pool.allocation_state, pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (
        "resizing",
        3,
        1,
    )
    pool = await steady(client, "p")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (3, 3)
    assert await node_states(client, "p") == ["idle", "idle", "idle"]

    await client.begin_resize_pool("p", resize(0, "taskcompletion"))
    pool = await steady(client, "p")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (0, 0)
    assert await node_states(client, "p") == []

    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("t", "true")])
    assert (await client.get_task("j", "t")).state == "active"  # no node to run it on

    await client.begin_resize_pool("p", resize(1))
    await completed(client, "j", 1)
    task = await client.get_task("j", "t")
    assert task.execution_info is not None
    assert task.execution_info.exit_code == 0


async def test_a_pool_not_steady_refuses_a_resize_until_the_resize_is_stopped(
    start_emulator: EmulatorFactory,
) -> None:
    with start_emulator(allocation_delay_s=30) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("slow", nodes=2))
            with pytest.raises(ResourceExistsError) as refused:
                await client.begin_resize_pool("slow", resize(1))
            assert refused.value.error is not None
            assert refused.value.error.code == "PoolBeingResized"

            stop = await client.begin_stop_pool_resize("slow", polling_interval=1)
            await stop.result()
            # The nodes had not started: the pool settles where it stood, with none. As the recorded service
            # answers (scale_pools recording), the target stays and a ResizeStopped error says why.
            pool = await client.get_pool("slow")
            assert (pool.allocation_state, pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (
                "steady",
                2,
                0,
            )
            assert [error.code for error in pool.resize_errors or ()] == ["ResizeStopped"]
            await client.begin_resize_pool("slow", resize(1))
            assert (await client.get_pool("slow")).target_dedicated_nodes == 1


@pytest.mark.parametrize(
    ("option", "script", "state", "result", "requeues"),
    [
        # Left to finish: the node goes once the task is done.
        ("taskcompletion", "sleep 1", "completed", "success", 0),
        # Stopped and queued again: with no node left, it waits.
        ("requeue", "sleep 60", "active", None, 1),
        # Stopped and completed as failed.
        ("terminate", "sleep 60", "completed", "failure", 0),
    ],
)
async def test_a_node_removed_with_a_running_task_does_what_its_deallocation_option_says(
    client: BatchClient, option: str, script: str, state: str, result: str | None, requeues: int
) -> None:
    await client.create_pool(pool_options("p", nodes=1))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("t", script)])

    async def running() -> bool | None:
        return True if (await client.get_task("j", "t")).state == "running" else None

    await eventually(running)
    await client.begin_resize_pool("p", resize(0, option))
    pool = await steady(client, "p")

    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (0, 0)
    assert await node_states(client, "p") == []
    task = await client.get_task("j", "t")
    assert task.execution_info is not None
    assert (task.state, task.execution_info.result, task.execution_info.requeue_count) == (
        state,
        result,
        requeues,
    )


async def test_a_leaving_node_takes_no_new_task(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("first", "sleep 1")])

    async def running() -> bool | None:
        return True if (await client.get_task("j", "first")).state == "running" else None

    await eventually(running)
    await client.begin_resize_pool("p", resize(0, "taskcompletion"))
    assert await node_states(client, "p") == ["leavingpool"]
    await add_tasks(client, "j", [shell_task("second", "true")])
    await completed(client, "j", 1)
    await steady(client, "p")
    assert (await client.get_task("j", "second")).state == "active"
