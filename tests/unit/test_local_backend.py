"""The local backend keeps Batch's semantics: staging, upload conditions, states, retries, limits, resume."""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from batchpilot.backends.local import LocalBackend
from batchpilot.errors import NotFoundError, RequestTooLargeError
from batchpilot.files import md5_of
from batchpilot.records import AddStatus, Permission, TaskResult, TaskState, UploadOutcome
from batchpilot.spec import (
    JobSpec,
    OutputFile,
    PoolSpec,
    ResourceFile,
    TaskConstraints,
    TaskSpec,
    UploadCondition,
)
from tests.waiting import eventually

PY = shlex.quote(sys.executable)
HOUR = timedelta(hours=1)


async def wait_completed(backend: LocalBackend, job: str, count: int) -> dict:
    """Wait for `count` completed tasks, with a bound; the backend has no events of its own to wait on."""

    async def completed() -> dict | None:
        views = {v.task_id: v for v in await backend.compute.list_tasks(job)}
        return views if sum(v.state is TaskState.COMPLETED for v in views.values()) >= count else None

    return await eventually(completed, f"{count} completed tasks", within=30)


@asynccontextmanager
async def opened(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    """A backend with a two-slot pool and a job. (Not a fixture: its task group must stay in one task.)"""
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        yield backend


async def test_stage_in_run_stage_out_by_pattern_and_condition(tmp_path: Path):
    async with opened(tmp_path) as backend:
        source = tmp_path / "in.txt"
        source.write_text("hello")
        storage = backend.storage
        await storage.ensure_container("in")
        await storage.ensure_container("out")
        assert await storage.upload("in", "in.txt", source, md5_of(source)) is UploadOutcome.UPLOADED
        assert await storage.upload("in", "in.txt", source, md5_of(source)) is UploadOutcome.SKIPPED
        out_url = await storage.container_url("out", Permission.WRITE, HOUR)
        task = TaskSpec(
            "t1",
            f"{PY} -c \"import pathlib; t = pathlib.Path('in.txt').read_text(); "
            "pathlib.Path('a.up').write_text(t.upper()); "
            "pathlib.Path('b.up').write_text('b'); print('said')\"",
            resource_files=(
                ResourceFile(await storage.blob_url("in", "in.txt", Permission.READ, HOUR), "in.txt"),
            ),
            output_files=(
                OutputFile("*.up", out_url, "t1"),
                OutputFile("a.up", out_url, "single/name.txt"),
                OutputFile("../std*.txt", out_url, "logs/t1", UploadCondition.TASK_FAILURE),
            ),
        )
        (result,) = await backend.compute.add_tasks("job", [task])
        assert result.status is AddStatus.ADDED
        views = await wait_completed(backend, "job", 1)
        assert views["t1"].result is TaskResult.SUCCESS
        assert views["t1"].exit_code == 0
        names = sorted(blob.name for blob in await storage.list_blobs("out"))
        assert names == ["single/name.txt", "t1/a.up", "t1/b.up"]  # no logs: the task succeeded
        assert await backend.compute.read_task_file("job", "t1", "stdout.txt") == b"said\n"
        dest = tmp_path / "fetched" / "a.up"
        await storage.download("out", "t1/a.up", dest)
        assert dest.read_text() == "HELLO"


async def test_a_double_star_pattern_matches_any_directory_as_batch_documents(tmp_path: Path):
    # Batch: "** matches any directory"; "**/*.txt matches any file that does not start in '.' and ends with
    # .txt in the task working directory or any subdirectory" (OutputFile.filePattern).
    async with opened(tmp_path) as backend:
        storage = backend.storage
        await storage.ensure_container("out")
        out_url = await storage.container_url("out", Permission.WRITE, HOUR)
        script = (
            "import pathlib; p = pathlib.Path; p('a/b').mkdir(parents=True); p('.h').mkdir(); "
            "[p(n).write_text(n) for n in ('top.txt', 'a/mid.txt', 'a/b/deep.txt', '.hid.txt', '.h/x.txt')]"
        )
        task = TaskSpec("t2", f'{PY} -c "{script}"', output_files=(OutputFile("**/*.txt", out_url, "t2"),))
        await backend.compute.add_tasks("job", [task])
        views = await wait_completed(backend, "job", 1)
        assert views["t2"].result is TaskResult.SUCCESS
        names = sorted(blob.name for blob in await storage.list_blobs("out"))
        assert names == ["t2/deep.txt", "t2/mid.txt", "t2/top.txt"]  # hidden files and folders left out


async def test_a_failing_task_keeps_its_stderr_and_uploads_logs_on_failure(tmp_path: Path):
    async with opened(tmp_path) as backend:
        await backend.storage.ensure_container("out")
        out_url = await backend.storage.container_url("out", Permission.WRITE, HOUR)
        task = TaskSpec(
            "bad",
            f"{PY} -c \"import sys; sys.stderr.write('broken input\\n'); sys.exit(3)\"",
            output_files=(OutputFile("../std*.txt", out_url, "logs/bad", UploadCondition.TASK_FAILURE),),
        )
        await backend.compute.add_tasks("job", [task])
        view = (await wait_completed(backend, "job", 1))["bad"]
        assert (view.exit_code, view.result, view.failure.code) == (3, TaskResult.FAILURE, "FailureExitCode")
        assert await backend.compute.read_task_file("job", "bad", "stderr.txt") == b"broken input\n"
        assert sorted(b.name for b in await backend.storage.list_blobs("out")) == [
            "logs/bad/stderr.txt",
            "logs/bad/stdout.txt",
        ]


async def test_commands_run_without_a_shell_unless_asked(tmp_path: Path):
    async with opened(tmp_path) as backend:
        tasks = [
            TaskSpec("literal", f"{PY} -c \"import sys; print(sys.argv[1])\" '$HOME'"),
            TaskSpec("shell", "/bin/bash -c 'echo $((6 * 7))'"),
            TaskSpec("missing", "no-such-program-anywhere --flag"),
        ]
        await backend.compute.add_tasks("job", tasks)
        views = await wait_completed(backend, "job", 3)
        assert await backend.compute.read_task_file("job", "literal", "stdout.txt") == b"$HOME\n"
        assert await backend.compute.read_task_file("job", "shell", "stdout.txt") == b"42\n"
        assert views["missing"].failure.code == "CommandProgramNotFound"


async def test_retries_then_succeeds_and_counts_the_retry(tmp_path: Path):
    async with opened(tmp_path) as backend:
        marker = tmp_path / "marker"
        command = (
            f'{PY} -c "import pathlib, sys; m = pathlib.Path({str(marker)!r}); '
            f'sys.exit(0) if m.exists() else (m.touch(), sys.exit(1))"'
        )
        task = TaskSpec("flaky", command, constraints=TaskConstraints(max_task_retry_count=2))
        await backend.compute.add_tasks("job", [task])
        view = (await wait_completed(backend, "job", 1))["flaky"]
        assert (view.result, view.retry_count) == (TaskResult.SUCCESS, 1)


async def test_minus_one_retries_without_limit_as_batch_does(tmp_path: Path):
    async with opened(tmp_path) as backend:
        counter = tmp_path / "attempts"
        # Fails four times, then succeeds: more tries than any small limit would allow.
        command = (
            f'{PY} -c "import pathlib, sys; c = pathlib.Path({str(counter)!r}); '
            f"n = len(c.read_text()) if c.exists() else 0; c.write_text('x' * (n + 1)); "
            f'sys.exit(0 if n >= 4 else 1)"'
        )
        task = TaskSpec("stubborn", command, constraints=TaskConstraints(max_task_retry_count=-1))
        await backend.compute.add_tasks("job", [task])
        view = (await wait_completed(backend, "job", 1))["stubborn"]
        assert (view.result, view.retry_count) == (TaskResult.SUCCESS, 4)


async def test_zero_retries_fails_after_the_first_attempt(tmp_path: Path):
    async with opened(tmp_path) as backend:
        task = TaskSpec("once", "false", constraints=TaskConstraints(max_task_retry_count=0))
        await backend.compute.add_tasks("job", [task])
        view = (await wait_completed(backend, "job", 1))["once"]
        assert (view.result, view.retry_count, view.exit_code) == (TaskResult.FAILURE, 0, 1)


async def test_wall_clock_limit_kills_the_task(tmp_path: Path):
    async with opened(tmp_path) as backend:
        task = TaskSpec(
            "slow", f"{PY} -c \"import time; time.sleep(60)\"",
            constraints=TaskConstraints(max_wall_clock=timedelta(seconds=0.5)),
        )  # fmt: skip
        await backend.compute.add_tasks("job", [task])
        view = (await wait_completed(backend, "job", 1))["slow"]
        assert view.failure.code == "MaxWallClockTimeExpiry"
        assert view.result is TaskResult.FAILURE


async def test_existing_ids_report_task_exists_and_over_100_is_too_large(tmp_path: Path):
    async with opened(tmp_path) as backend:
        await backend.compute.add_tasks("job", [TaskSpec("same", "true")])
        (again,) = await backend.compute.add_tasks("job", [TaskSpec("same", "true")])
        assert (again.status, again.error_code) == (AddStatus.EXISTS, "TaskExists")
        with pytest.raises(RequestTooLargeError):
            await backend.compute.add_tasks("job", [TaskSpec(f"t{i}", "true") for i in range(101)])
        with pytest.raises(NotFoundError):
            await backend.compute.task_counts("nope")


async def test_slots_bound_parallelism(tmp_path: Path):
    async with opened(tmp_path) as backend:
        # Each task records how many were running at its start, through files in a shared folder.
        running = tmp_path / "running"
        running.mkdir()
        script = (
            "import os, time, pathlib; d = pathlib.Path(os.environ['RUNNING_DIR']);"
            " me = d / os.environ['AZ_BATCH_TASK_ID']; me.touch(); n = len(list(d.iterdir()));"
            " time.sleep(0.3); me.unlink(); print(n)"
        )
        tasks = [
            TaskSpec(f"t{i}", f"{PY} -c {shlex.quote(script)}", environment=(("RUNNING_DIR", str(running)),))
            for i in range(6)
        ]
        await backend.compute.add_tasks("job", tasks)
        await wait_completed(backend, "job", 6)
        peaks = [int(await backend.compute.read_task_file("job", f"t{i}", "stdout.txt")) for i in range(6)]
        assert max(peaks) <= 2  # the pool has two slots
        counts = await backend.compute.task_counts("job")
        assert (counts.completed, counts.succeeded, counts.active) == (6, 6, 0)


async def test_a_restarted_backend_finds_its_job_and_requeues_the_task_cut_short(tmp_path: Path):
    root = tmp_path / "state"
    started = tmp_path / "started"
    command = f'{PY} -c "import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"'
    async with LocalBackend(root) as first:
        await first.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        await first.compute.ensure_job(JobSpec("job", "pool"))
        await first.compute.add_tasks("job", [TaskSpec("long", command), TaskSpec("queued", "true")])
        await eventually(started.exists, "the task to start", within=30)  # another process makes the file
    # Closing the backend killed the running task; on disk it is queued again, like a preempted task.
    async with LocalBackend(root) as second:
        await second.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        job = await second.compute.ensure_job(JobSpec("job", "pool"))
        assert not job.created
        views = {v.task_id: v for v in await second.compute.list_tasks("job")}
        assert views["long"].requeue_count == 1
        assert views["long"].state in (TaskState.ACTIVE, TaskState.PREPARING, TaskState.RUNNING)
        await second.compute.delete_job("job")
    with pytest.raises(NotFoundError):
        await second.compute.list_tasks("job")


async def test_resize_to_zero_lets_the_running_task_finish_and_queued_ones_wait(tmp_path: Path):
    started, release = tmp_path / "started", tmp_path / "release"
    script = (
        "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch()\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.02)"
    )
    waits = f"{PY} -c {shlex.quote(script)} {shlex.quote(str(started))} {shlex.quote(str(release))}"
    async with LocalBackend(tmp_path / "state") as backend:
        compute = backend.compute
        await compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await compute.ensure_job(JobSpec("job", "pool"))
        await compute.add_tasks("job", [TaskSpec("running", waits)])
        await eventually(started.exists, "the task to start", within=30)  # another process makes the file

        await compute.resize_pool("pool", 0, 0)
        assert compute.slots("pool") == 0
        await compute.add_tasks("job", [TaskSpec("queued", "true")])
        await anyio.wait_all_tasks_blocked()
        views = {view.task_id: view for view in await compute.list_tasks("job")}
        assert views["queued"].state is TaskState.ACTIVE  # no slot takes it
        release.touch()
        finished = await wait_completed(backend, "job", 1)
        assert (finished["running"].result, finished["running"].requeue_count) == (TaskResult.SUCCESS, 0)
        assert finished["queued"].state is TaskState.ACTIVE

        await compute.resize_pool("pool", 1, 1)
        assert compute.slots("pool") == 2
        finished = await wait_completed(backend, "job", 2)
        assert finished["queued"].result is TaskResult.SUCCESS
        with pytest.raises(NotFoundError):
            await compute.resize_pool("nope", 1, 0)
