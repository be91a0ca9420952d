"""Simulated execution: thousands of tasks through the real SDK, with no processes started."""

from __future__ import annotations

import anyio
from azure.batch import models as m

from tests.conftest import EmulatorFactory

from .support import add_tasks, batch_client, completed, job_options, pool_options, stats

TASKS = 2000


async def test_two_thousand_simulated_tasks_complete_and_page(start_emulator: EmulatorFactory) -> None:
    with start_emulator(simulate_s=(0.01, 0.05)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("p", nodes=50, slots=4))
            await client.create_job(job_options("j", "p"))
            statuses: list[str] = []

            async def submit(first: int) -> None:
                chunk = [
                    m.BatchTaskCreateOptions(id=f"t{i:05d}", command_line="ffmpeg -i in.mp4 out.mp3")
                    for i in range(first, first + 100)
                ]
                statuses.extend(await add_tasks(client, "j", chunk))

            async with anyio.create_task_group() as tg:
                for first in range(0, TASKS, 100):
                    tg.start_soon(submit, first)
            assert statuses == ["success"] * TASKS

            await completed(client, "j", TASKS, within=60)
            counts = (await client.get_job_task_counts("j")).task_counts
            assert (counts.succeeded, counts.failed, counts.active, counts.running) == (TASKS, 0, 0, 0)
            done = [
                task.id async for task in client.list_tasks("j", filter="state eq 'completed'", select=["id"])
            ]
            served = await stats(emulator)

    assert sorted(done) == [f"t{i:05d}" for i in range(TASKS)]  # listed in the order they were added
    assert served["tasks_completed"] == TASKS
    assert served["attempts_started"] == TASKS
    requests = served["requests"]
    assert isinstance(requests, dict)
    assert requests["task.addcollection"] == TASKS // 100
    assert requests["task.list"] == 2  # 1,000 per page
