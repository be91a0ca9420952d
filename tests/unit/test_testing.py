"""The public test seam (`batchpilot.testing`): the in-memory backend keeps Batch's rules the engine relies
on, its tasks do what the test scripts, and the fake clock moves only when told; an orchestrator runs on
them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.errors import BackendError, NotFoundError, RequestTooLargeError
from batchpilot.events import Event, TaskFailed
from batchpilot.records import AddStatus, Permission, TaskResult, TaskState, UploadOutcome
from batchpilot.spec import JobSpec, OutputFile, ResourceFile, TaskConstraints, TaskSpec, UploadCondition
from batchpilot.testing import (
    Fail,
    FakeClock,
    Hold,
    InMemoryBackend,
    InMemoryCompute,
    InMemoryStorage,
    Outcome,
    Preempt,
    ScriptedTask,
    Succeed,
)

HOUR = timedelta(hours=1)


async def opened_compute(script=None) -> InMemoryCompute:
    compute = InMemoryCompute(InMemoryStorage(), **({"script": script} if script else {}))
    await compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
    await compute.ensure_job(JobSpec("job", "pool"))
    return compute


async def test_storage_uploads_skips_the_same_content_lists_by_prefix_and_downloads_whole_files(
    tmp_path: Path,
):
    storage = InMemoryStorage()
    source = tmp_path / "a.txt"
    source.write_bytes(b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    with pytest.raises(NotFoundError):
        await storage.upload("in", "a.txt", source, md5)
    assert await storage.ensure_container("in") is True
    assert await storage.ensure_container("in") is False
    assert await storage.upload("in", "x/a.txt", source, md5) is UploadOutcome.UPLOADED
    assert await storage.upload("in", "x/a.txt", source, md5) is UploadOutcome.SKIPPED
    assert await storage.upload("in", "x/a.txt", source, md5, check_existing=False) is UploadOutcome.UPLOADED
    storage.put("in", "y/b.txt", b"bb")
    assert [(b.name, b.size, b.md5_hex) for b in await storage.list_blobs("in", "x/")] == [
        ("x/a.txt", 5, md5)
    ]
    assert [b.name for b in await storage.list_blobs("in")] == ["x/a.txt", "y/b.txt"]
    dest = tmp_path / "down" / "b.txt"
    await storage.download("in", "y/b.txt", dest)
    assert dest.read_bytes() == b"bb"
    assert [p.name for p in dest.parent.iterdir()] == ["b.txt"]  # no temporary name left behind
    with pytest.raises(NotFoundError):
        await storage.download("in", "missing", dest)
    url = await storage.container_url("in", Permission.CREATE | Permission.WRITE, HOUR)
    assert url == "memory://in?sp=cw&se=3600"
    await storage.delete_container("in")
    with pytest.raises(NotFoundError):
        await storage.list_blobs("in")


async def test_a_task_runs_on_its_inputs_and_its_outputs_land_as_batch_names_them():
    def upper(task: ScriptedTask) -> Outcome:
        text = task.inputs["in.txt"].upper()
        return Succeed(files={"a.up": text, "sub/b.up": b"b", "c.other": b"c"}, stdout="said")

    compute = await opened_compute(upper)
    storage = compute.storage
    storage.put("in", "in.txt", b"hello")
    await storage.ensure_container("out")
    out = await storage.container_url("out", Permission.WRITE, HOUR)
    task = TaskSpec(
        "t1",
        "upper in.txt",
        resource_files=(
            ResourceFile(await storage.blob_url("in", "in.txt", Permission.READ, HOUR), "in.txt"),
        ),
        output_files=(
            OutputFile("*.up", out, "t1"),  # a wildcard: `path` is a virtual folder
            OutputFile("a.up", out, "single/name.txt"),  # one file: `path` is the blob's name
            OutputFile("**/*.up", out, "deep"),
            OutputFile("../std*.txt", out, "logs/t1", UploadCondition.TASK_FAILURE),
        ),
    )
    [added] = await compute.add_tasks("job", [task])
    assert added.status is AddStatus.ADDED
    [view] = await compute.list_tasks("job")
    assert (view.state, view.result, view.exit_code) == (TaskState.COMPLETED, TaskResult.SUCCESS, 0)
    assert storage.containers["out"] == {
        "t1/a.up": b"HELLO",
        "single/name.txt": b"HELLO",
        "deep/a.up": b"HELLO",
        "deep/b.up": b"b",
    }
    assert await compute.read_task_file("job", "t1", "stdout.txt") == b"said"
    with pytest.raises(NotFoundError):
        await compute.read_task_file("job", "t1", "other.txt")


async def test_output_patterns_skip_hidden_files_unless_they_name_them_as_batch_does():
    # Batch REST, OutputFile.filePattern: a name starting with "." is ignored by default but matched when the
    # pattern says so ("*.gif will not match .a.gif, but .*.gif will"); `**` matches any directory.
    files = {"a.txt": b"a", ".h.txt": b"h", "sub/b.txt": b"b", "sub/.h2.txt": b"h2", ".cache/c.txt": b"c"}
    compute = await opened_compute(lambda task: Succeed(files=files))
    storage = compute.storage
    await storage.ensure_container("out")
    out = await storage.container_url("out", Permission.WRITE, HOUR)
    outputs = (
        OutputFile("*.txt", out, "star"),
        OutputFile("**/*.txt", out, "deep"),
        OutputFile(".*.txt", out, "dot"),
        OutputFile(".cache/*.txt", out, "named"),
    )
    await compute.add_tasks("job", [TaskSpec("t1", "make", output_files=outputs)])
    assert sorted(storage.containers["out"]) == [
        "deep/a.txt", "deep/b.txt", "dot/.h.txt", "named/c.txt", "star/a.txt",
    ]  # fmt: skip


async def test_a_failed_task_is_retried_as_its_constraints_allow_and_uploads_its_logs():
    attempts: list[int] = []

    def fails_twice(task: ScriptedTask) -> Outcome:
        attempts.append(task.attempt)
        return Fail(exit_code=3, stderr="boom") if task.attempt < 2 else Succeed()

    compute = await opened_compute(fails_twice)
    await compute.storage.ensure_container("out")
    out = await compute.storage.container_url("out", Permission.WRITE, HOUR)
    logs = (OutputFile("../std*.txt", out, "logs", UploadCondition.TASK_FAILURE),)
    await compute.add_tasks(
        "job",
        [
            TaskSpec("once", "x", output_files=logs, constraints=TaskConstraints(max_task_retry_count=1)),
            TaskSpec("forever", "x", constraints=TaskConstraints(max_task_retry_count=-1)),
        ],
    )
    # A retry runs when the job is next looked at, as a node takes the requeued task a moment later.
    for _ in range(3):
        views = {view.task_id: view for view in await compute.list_tasks("job")}
    once, forever = views["once"], views["forever"]
    assert (once.result, once.exit_code, once.retry_count) == (TaskResult.FAILURE, 3, 1)
    assert (forever.result, forever.retry_count) == (TaskResult.SUCCESS, 2)  # -1: without limit, as Batch
    assert compute.storage.containers["out"] == {"logs/stdout.txt": b"", "logs/stderr.txt": b"boom"}
    counts = await compute.task_counts("job")
    assert (counts.completed, counts.succeeded, counts.failed) == (2, 1, 1)


async def test_a_missing_input_or_output_container_fails_the_task_as_batch_reports_it():
    compute = await opened_compute(lambda task: Succeed(files={"f": b"1"}))
    missing = "memory://in/nothing.txt"
    out = await compute.storage.container_url("never-created", Permission.WRITE, HOUR)
    await compute.add_tasks(
        "job",
        [
            TaskSpec("no-input", "x", resource_files=(ResourceFile(missing, "in.txt"),)),
            TaskSpec("no-output", "x", output_files=(OutputFile("*", out, "o"),)),
        ],
    )
    views = {view.task_id: view for view in await compute.list_tasks("job")}
    failures = {task_id: view.failure.code for task_id, view in views.items() if view.failure is not None}
    assert failures == {"no-input": "ResourceFileDownload", "no-output": "FileUploadFailed"}
    assert {view.result for view in views.values()} == {TaskResult.FAILURE}


async def test_a_held_task_runs_until_released_and_a_job_ends_once_its_tasks_are_done():
    compute = await opened_compute(lambda task: Hold())
    await compute.add_tasks("job", [TaskSpec("a", "x"), TaskSpec("b", "x")])
    assert compute.held("job") == ["a", "b"]
    assert (await compute.task_counts("job")).running == 2
    await compute.end_job_when_done("job")
    compute.release("job", "a")
    compute.release("job", "b", Fail(exit_code=7))
    with pytest.raises(ValueError, match="not held"):
        compute.release("job", "b")
    views = {view.task_id: view for view in await compute.list_tasks("job")}
    assert (views["a"].result, views["b"].result, views["b"].exit_code) == (
        TaskResult.SUCCESS,
        TaskResult.FAILURE,
        7,
    )
    again = await compute.ensure_job(JobSpec("job", "pool"))
    assert (again.created, again.ended) == (False, "AllTasksComplete")
    with pytest.raises(BackendError) as raised:
        await compute.add_tasks("job", [TaskSpec("c", "x")])
    assert raised.value.code == "JobCompleted"


async def test_collections_follow_batch_limits_and_report_tasks_already_there():
    compute = await opened_compute()
    with pytest.raises(RequestTooLargeError):
        await compute.add_tasks("job", [TaskSpec(f"t{n}", "x") for n in range(101)])
    await compute.add_tasks("job", [TaskSpec("t1", "x")])
    [result] = await compute.add_tasks("job", [TaskSpec("t1", "x")])
    assert (result.status, result.error_code) == (AddStatus.EXISTS, "TaskExists")
    with pytest.raises(NotFoundError):
        await compute.add_tasks("nojob", [TaskSpec("t1", "x")])
    await compute.resize_pool("pool", 0, 3)
    assert await compute.wait_for_nodes("pool") == 3
    await compute.delete_pool("pool")
    with pytest.raises(NotFoundError):
        await compute.wait_for_nodes("pool")
    assert compute.calls_named("resize_pool") == [("pool", 0, 3)]


def test_a_failed_outcome_needs_a_reason():
    with pytest.raises(ValueError, match="non-zero exit code or a failure"):
        Fail(exit_code=0)


async def test_task_times_come_from_the_clock_and_always_move_forward():
    clock = FakeClock(datetime(2030, 5, 1, tzinfo=UTC))
    compute = InMemoryCompute(InMemoryStorage(), clock=clock, script=lambda task: Hold())
    await compute.ensure_pool(PoolSpec("pool"))
    await compute.ensure_job(JobSpec("job", "pool"))
    await compute.add_tasks("job", [TaskSpec("a", "x")])
    [running] = await compute.list_tasks("job")
    clock.advance(10)
    compute.release("job", "a")
    [done] = await compute.list_tasks("job")
    assert running.start_time == clock.current - timedelta(seconds=10)
    assert done.end_time == clock.current
    assert done.state_transition_time > running.state_transition_time
    assert await compute.list_tasks("job", changed_since=clock.current + timedelta(seconds=1)) == []


async def test_the_fake_clock_moves_only_when_something_sleeps():
    clock = FakeClock()
    start = clock.now()
    assert start.tzinfo is not None
    seen: list[float] = []
    clock.on_sleep = seen.append
    await clock.sleep(90)
    await clock.sleep(0.5)
    assert clock.now() - start == timedelta(seconds=90.5)
    assert clock.sleeps == seen == [90, 0.5]
    with pytest.raises(ValueError, match="cannot sleep"):
        await clock.sleep(-1)


async def test_a_stepped_fake_clock_wakes_sleepers_only_once_time_passes_their_deadline():
    clock = FakeClock(auto_advance=False)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper, "short", 5)
        group.start_soon(sleeper, "long", 60)
        await anyio.wait_all_tasks_blocked()
        assert clock.sleeping == 2
        clock.advance(4)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        clock.advance(1)
        await anyio.wait_all_tasks_blocked()
        assert woke == ["short"]
        clock.advance(100)
    assert woke == ["short", "long"]
    assert clock.sleeping == 0


def workload(tmp_path: Path, names: list[str]) -> Workload:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(name)
    return Workload(
        name="memory",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="upper {input} {stem}.up", outputs=("{stem}.up",)),
        pool=PoolSpec("memory-pool", dedicated_nodes=2),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
    )


async def test_an_orchestrator_runs_a_workload_end_to_end_on_the_in_memory_backend(tmp_path: Path):
    def script(task: ScriptedTask) -> Outcome:
        [(name, content)] = task.inputs.items()
        if content == b"bad":
            return Fail(exit_code=2, stderr="bad input")
        return Succeed(files={f"{Path(name).stem}.up": content.upper()})

    backend = InMemoryBackend(script=script, clock=FakeClock())
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    job = workload(tmp_path, ["a", "b", "bad"])
    async with Orchestrator(backend, subscribers=[record], clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(job)
    assert (summary.tasks, summary.succeeded, summary.downloaded) == (3, 2, 2)
    assert [failed.exit_code for failed in summary.failed] == [2]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.up", "b.up"]
    assert (tmp_path / "out" / "a.up").read_bytes() == b"A"
    [failed] = [event for event in events if isinstance(event, TaskFailed)]
    assert "bad input" in failed.stderr_tail
    assert backend.opened == backend.closed == 1
    # Run again: the job is the service's record; nothing is added and nothing fetched again, and the task
    # that failed is retried (the job has ended with its tasks: in the job's next generation).
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        again = await orchestrator.run(job)
    assert (again.tasks_added, again.tasks_existing, again.download_skipped) == (0, 2, 2)
    assert (again.tasks_retried, again.job_id, len(again.failed)) == (1, f"{job.job_id}-g2", 1)


async def test_a_preempted_attempt_is_requeued_without_counting_a_retry():
    compute = await opened_compute(lambda task: Preempt() if task.attempt == 0 else Succeed())
    await compute.add_tasks("job", [TaskSpec("spot", "x")])  # no retries allowed: a requeue is not one
    [requeued] = await compute.list_tasks("job")  # the next attempt runs when the job is next looked at
    [done] = await compute.list_tasks("job")
    assert (requeued.state, requeued.requeue_count) == (TaskState.ACTIVE, 1)
    assert (done.result, done.retry_count, done.requeue_count) == (TaskResult.SUCCESS, 0, 1)


async def test_refused_collections_add_nothing_until_the_refusals_run_out():
    compute = await opened_compute()
    compute.refuse_adds(1)
    [refused] = await compute.add_tasks("job", [TaskSpec("t", "x")])
    assert (refused.status, refused.error_code) == (AddStatus.SERVER_ERROR, "ServerBusy")
    assert await compute.list_tasks("job") == []
    [added] = await compute.add_tasks("job", [TaskSpec("t", "x")])
    assert added.status is AddStatus.ADDED
