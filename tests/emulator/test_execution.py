"""Tasks run on the pool's slots through the executor: environment, files, retries, wall clock, FIFO."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import EmulatorFactory

from .support import add_tasks, batch_client, completed, eventually, job_options, pool_options, shell_task


async def read_file(client: BatchClient, job_id: str, task_id: str, name: str) -> str:
    return b"".join(
        [chunk async for chunk in await client.download_task_file(job_id, task_id, name)]
    ).decode()


async def test_task_sees_batch_environment_and_bundled_ffmpeg(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", start_task=True))
    await client.create_job(job_options("j", "p"))
    script = (
        'echo "$AZ_BATCH_JOB_ID $AZ_BATCH_TASK_ID $AZ_BATCH_POOL_ID $AZ_BATCH_NODE_ID"; '
        'test "$AZ_BATCH_TASK_WORKING_DIR" = "$(pwd)"; test -d "$AZ_BATCH_TASK_DIR"; '
        'echo "$GREETING"; ffmpeg -version | head -n 1; echo oops >&2'
    )
    env = [m.EnvironmentSetting(name="GREETING", value="hello")]
    await add_tasks(client, "j", [shell_task("t1", script, environment_settings=env)])
    await completed(client, "j", 1)

    task = await client.get_task("j", "t1")
    assert task.execution_info is not None
    assert task.execution_info.exit_code == 0
    assert task.node_info is not None
    stdout = (await read_file(client, "j", "t1", "stdout.txt")).splitlines()
    assert stdout[0] == f"j t1 p {task.node_info.node_id}"
    assert stdout[1] == "hello"
    assert stdout[2].startswith("ffmpeg version")
    assert await read_file(client, "j", "t1", "stderr.txt") == "oops\n"
    await client.get_task_file_properties("j", "t1", "stdout.txt")  # HEAD on a file that exists
    with pytest.raises(ResourceNotFoundError):
        await client.get_task_file_properties("j", "t1", "missing.txt")


async def test_states_and_times_are_reported(client: BatchClient) -> None:
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("t", "true")])
    await completed(client, "j", 1)
    task = await client.get_task("j", "t")
    info = task.execution_info
    assert info is not None
    assert (task.state, task.previous_state, info.result, info.retry_count, info.requeue_count) == (
        "completed",
        "running",
        "success",
        0,
        0,
    )
    assert info.start_time is not None
    assert info.end_time is not None
    # Completed once its outputs are uploaded, as in Batch: at or after the process's end.
    assert task.creation_time <= info.start_time <= info.end_time <= task.state_transition_time


async def test_failed_task_is_retried_up_to_max_task_retry_count(client: BatchClient) -> None:
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("j", "p"))
    # Succeeds on the third attempt: a marker file in the shared dir counts attempts across retries.
    script = 'n=$(cat "$AZ_BATCH_NODE_SHARED_DIR/n" 2>/dev/null || echo 0); n=$((n+1)); ' + (
        'mkdir -p "$AZ_BATCH_NODE_SHARED_DIR"; echo $n > "$AZ_BATCH_NODE_SHARED_DIR/n"; test $n -ge 3'
    )
    flaky = shell_task("flaky", script, constraints=m.BatchTaskConstraints(max_task_retry_count=2))
    hopeless = shell_task("hopeless", "exit 7", constraints=m.BatchTaskConstraints(max_task_retry_count=1))
    await add_tasks(client, "j", [flaky, hopeless])
    await completed(client, "j", 2)

    flaky_info = (await client.get_task("j", "flaky")).execution_info
    assert flaky_info is not None
    assert (flaky_info.result, flaky_info.retry_count, flaky_info.exit_code) == ("success", 2, 0)
    hopeless_info = (await client.get_task("j", "hopeless")).execution_info
    assert hopeless_info is not None
    assert (hopeless_info.result, hopeless_info.retry_count, hopeless_info.exit_code) == ("failure", 1, 7)


async def test_wall_clock_limit_ends_the_task(client: BatchClient) -> None:
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("j", "p"))
    limit = m.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=0.5), max_task_retry_count=3)
    await add_tasks(client, "j", [shell_task("slow", "sleep 30", constraints=limit)])
    await completed(client, "j", 1, within=10)
    info = (await client.get_task("j", "slow")).execution_info
    assert info is not None
    assert info.failure_info is not None
    assert info.failure_info.code == "MaxWallClockTimeExpiry"
    assert (info.result, info.retry_count) == ("failure", 0)


async def test_tasks_run_fifo_within_the_pool_slots(client: BatchClient) -> None:
    await client.create_pool(pool_options("p", nodes=1, slots=2))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task(f"t{i}", "sleep 0.3") for i in range(4)])
    await completed(client, "j", 4)
    tasks = sorted([task async for task in client.list_tasks("j")], key=lambda task: task.id)
    infos = [task.execution_info for task in tasks]
    assert all(info is not None and info.start_time and info.end_time for info in infos)
    starts = [info.start_time for info in infos if info is not None and info.start_time]
    ends = [info.end_time for info in infos if info is not None and info.end_time]
    # First in, first started: the first two tasks took the two slots; the others waited for them.
    assert max(starts[:2]) < min(starts[2:])
    # Two slots: the third task starts only after one of the first two has ended.
    assert starts[2] >= min(ends[:2])
    assert len({task.node_info.node_id for task in tasks if task.node_info}) == 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def running_pid(pid_file: Path) -> int:
    """The pid a task wrote on start; it then execs into a long sleep."""

    async def probe() -> int | None:
        path = anyio.Path(pid_file)
        text = await path.read_text() if await path.exists() else ""
        return int(text) if text.strip() else None

    return await eventually(probe)


async def start_sleeping_task(client: BatchClient, pid_file: Path) -> int:
    """Pool "p", job "j" and a task "t" that sleeps; returns the pid of its running process."""
    await client.create_pool(pool_options("p"))
    await client.create_job(job_options("j", "p"))
    await add_tasks(client, "j", [shell_task("t", f"echo $$ > {pid_file}; exec sleep 30")])
    return await running_pid(pid_file)


async def test_deleting_the_pool_kills_and_requeues_running_tasks(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    with start_emulator() as emulator:
        async with batch_client(emulator) as client:
            pid = await start_sleeping_task(client, tmp_path / "pid")
            await (await client.begin_delete_pool("p", polling_interval=1)).result()

            task = await client.get_task("j", "t")
            assert task.state == "active"
            assert task.execution_info is not None
            assert task.execution_info.requeue_count == 1
            assert not alive(pid)


async def test_stopping_the_emulator_kills_running_tasks(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    with start_emulator() as emulator:
        async with batch_client(emulator) as client:
            pid = await start_sleeping_task(client, tmp_path / "pid")
    assert not alive(pid)
