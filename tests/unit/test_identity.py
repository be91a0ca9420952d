"""A task's identity covers everything that decides its result (issue 15 item 1, aztk#270), and a re-run
retries what failed (item 2); the smaller items of 7 (a resend's TaskExists, warnings in the summary, a
pool of spot nodes only). Pure parts directly, the engine on the in-memory backend."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.errors import BackendError, ConfigError, JobEndedError, TransientBackendError
from batchpilot.events import Event, OutputDownloaded
from batchpilot.metrics import Metrics
from batchpilot.records import AddStatus, AddTaskResult
from batchpilot.service import FolderSource, Service, WatchSettings
from batchpilot.spec import (
    BATCH_ID_MAX_LENGTH,
    ContainerSettings,
    JobLifetime,
    JobSpec,
    StagedInput,
    TaskConstraints,
    TaskSpec,
    job_generation_id,
)
from batchpilot.submit import Submitter
from batchpilot.tasks import (
    changed_definitions,
    definition_hash,
    identify,
    input_key_of,
    task_id_for,
)
from batchpilot.testing import (
    Fail,
    FakeClock,
    InMemoryBackend,
    InMemoryCompute,
    InMemoryStorage,
    Outcome,
    ScriptedTask,
    Succeed,
)

_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def base_workload(tmp_path: Path, **changes: object) -> Workload:
    workload = Workload(
        name="identity",
        inputs=(tmp_path / "a.txt",),
        template=TaskTemplate(command="rev {input} > {input_name}.out", outputs=("{input_name}.out",)),
        pool=PoolSpec("identity-pool"),
        environment=(("MODE", "fast"),),
    )
    return replace(workload, **changes)  # type: ignore[arg-type]


def staged(name: str = "a.txt", md5: str = "0" * 32, folder: str = "") -> StagedInput:
    return StagedInput.for_path(Path("/in") / name, md5, 6, folder=folder)


def the_id(workload: Workload, item: StagedInput | None = None) -> str:
    [identified] = identify(workload, [item or staged()])
    return identified.task_id


# --- the definition hash ----------------------------------------------------------------------------------


def test_each_part_of_a_task_s_definition_changes_its_id(tmp_path: Path) -> None:
    workload = base_workload(tmp_path)
    template = workload.template
    original = the_id(workload)
    changed = {
        "command": replace(
            workload, template=replace(template, command="tr a-z A-Z {input} {input_name}.out")
        ),
        "outputs": replace(workload, template=replace(template, outputs=("{stem}.out",))),
        "optional outputs": replace(
            workload, template=replace(template, optional_outputs=("{input_name}.out",))
        ),
        "output dir": replace(workload, template=replace(template, output_dir="out")),
        "container image": replace(workload, template=replace(template, container=ContainerSettings("a:1"))),
        "environment": replace(workload, environment=(("MODE", "slow"),)),
        "another variable": replace(workload, environment=(("MODE", "fast"), ("X", "1"))),
        "input container": replace(workload, input_container="other-input"),
    }
    ids = {what: the_id(changed_workload) for what, changed_workload in changed.items()}
    assert all(task_id != original for task_id in ids.values()), ids
    assert len(set(ids.values())) == len(ids)  # and no two changes meet
    with_image = changed["container image"]
    run_options = replace(
        with_image,
        template=replace(with_image.template, container=ContainerSettings("a:1", "--network none")),
    )
    assert the_id(run_options) != the_id(with_image)


def test_the_input_s_name_folder_and_content_change_its_id(tmp_path: Path) -> None:
    workload = base_workload(tmp_path)
    ids = {
        the_id(workload, staged()),
        the_id(workload, staged(md5="1" * 32)),
        the_id(workload, staged("b.txt")),
        the_id(workload, staged(folder="d1")),
        the_id(workload, staged(folder="d2")),
    }
    assert len(ids) == 5


def test_what_does_not_decide_the_result_keeps_the_id(tmp_path: Path) -> None:
    """Constraints, timeout, cleanup, the pool and where outputs go do not change what a task computes; nor
    does the machine (local paths) or the run (SAS tokens are not part of the hash)."""
    workload = base_workload(tmp_path)
    original = the_id(workload)
    template = workload.template
    limits = TaskConstraints(max_wall_clock=timedelta(minutes=3), max_task_retry_count=2)
    same = [
        replace(workload, template=replace(template, constraints=limits)),
        replace(workload, timeout=timedelta(hours=5)),
        replace(workload, cleanup=CleanupPolicy(delete_job=True)),
        replace(workload, pool=PoolSpec("another-pool", dedicated_nodes=3)),
        replace(workload, download_to=tmp_path / "elsewhere"),
        replace(workload, retry_failed=False),
    ]
    assert [the_id(other) for other in same] == [original] * len(same)
    moved = StagedInput.for_path(Path("/another/machine/a.txt"), "0" * 32, 6)
    assert the_id(workload, moved) == original


def test_ids_are_batch_ids_readable_and_stable(tmp_path: Path) -> None:
    workload = base_workload(tmp_path)
    long_name = "x" * 300 + ".txt"
    hostile = "a b+c'$(id)é.txt"
    for item in (staged(), staged(long_name), staged(hostile), staged(folder="d1/d2")):
        task_id = the_id(workload, item)
        assert _BATCH_ID.fullmatch(task_id), task_id
        assert len(task_id) <= BATCH_ID_MAX_LENGTH
        assert input_key_of(task_id) == item.input_key
    assert the_id(workload).startswith("a-")  # the input's name leads
    # The same definition hashes the same, run after run (the hash covers no time, token or path).
    assert definition_hash(workload, staged()) == definition_hash(base_workload(tmp_path), staged())
    assert task_id_for(staged(), "f" * 64) == f"{staged().input_key}-ffffffff"


def test_task_id_placeholder_renders_the_final_id(tmp_path: Path) -> None:
    workload = base_workload(tmp_path)
    workload = replace(workload, template=replace(workload.template, command="echo {task_id} > x"))
    [item] = identify(workload, [staged()])
    assert item.template_values()["task_id"] == item.task_id
    assert item.task_id.startswith(item.input_key)


def test_changed_definitions_are_told_from_new_inputs(tmp_path: Path) -> None:
    old = base_workload(tmp_path)
    new = replace(old, template=replace(old.template, command="tr a-z A-Z {input} {input_name}.out"))
    a, b = staged(), staged("b.txt")
    existing = [item.task_id for item in identify(old, [a])] + ["not-one-of-ours", "x-zzzzzzzz"]
    assert changed_definitions(identify(new, [a, b]), existing) == 1  # a changed; b is a new input
    assert changed_definitions(identify(old, [a, b]), existing) == 0  # a is in the job already
    # A task added before ids covered the definition had the input key as its id: its input, changed.
    assert changed_definitions(identify(new, [a]), [a.input_key]) == 1
    assert input_key_of("no-hash-here") is None
    assert input_key_of("x-ABCDEF12") is None  # ours are lower-case hex


def test_job_generations_are_batch_ids() -> None:
    assert job_generation_id("batchpilot-run", 1) == "batchpilot-run"
    assert job_generation_id("batchpilot-run", 2) == "batchpilot-run-g2"
    long = "j" * 64
    assert job_generation_id(long, 20) == "j" * 60 + "-g20"
    assert _BATCH_ID.fullmatch(job_generation_id(long, 20))


# --- the engine: a changed definition, retries ------------------------------------------------------------


def memory_workload(tmp_path: Path, command: str, *, lifetime: JobLifetime = JobLifetime.RUN) -> Workload:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in ("a", "bad"):
        (folder / f"{name}.txt").write_bytes(name.encode())
    return Workload(
        name="identity",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command=command, outputs=("{stem}.up",)),
        pool=PoolSpec("identity-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
        job_lifetime=lifetime,
    )


class Flaky:
    """`bad.txt` fails until `fixed`; every other input succeeds (its content upper-cased)."""

    def __init__(self) -> None:
        self.fixed = False
        self.attempts: list[str] = []

    def __call__(self, task: ScriptedTask) -> Outcome:
        self.attempts.append(task.spec.task_id)
        [(name, content)] = task.inputs.items()
        if content == b"bad" and not self.fixed:
            return Fail(exit_code=3, stderr="flaky")
        return Succeed(files={f"{Path(name).stem}.up": content.upper()})


async def test_a_changed_command_adds_new_tasks_and_says_why(tmp_path: Path) -> None:
    script = Flaky()
    script.fixed = True
    backend = InMemoryBackend(script=script, clock=FakeClock())
    first_workload = memory_workload(tmp_path, "upper {input}", lifetime=JobLifetime.SERVICE)
    changed_workload = replace(
        first_workload, template=replace(first_workload.template, command="lower {input}")
    )
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        first = await orchestrator.run(first_workload)
        changed = await orchestrator.run(changed_workload)
        again = await orchestrator.run(changed_workload)
    assert (first.tasks_added, first.tasks_changed) == (2, 0)
    assert (changed.ok, changed.tasks_added, changed.tasks_changed, changed.tasks_existing) == (True, 2, 2, 0)
    assert (again.tasks_added, again.tasks_changed, again.tasks_existing) == (0, 0, 2)
    assert len(script.attempts) == 4


@pytest.mark.parametrize("lifetime", [JobLifetime.SERVICE, JobLifetime.RUN])
async def test_a_rerun_retries_the_failed_tasks(tmp_path: Path, lifetime: JobLifetime) -> None:
    script = Flaky()
    backend = InMemoryBackend(script=script, clock=FakeClock())
    workload = memory_workload(tmp_path, "upper {input}", lifetime=lifetime)
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        first = await orchestrator.run(workload)
        assert (first.ok, first.succeeded, first.tasks_retried) == (False, 1, 0)
        script.fixed = True
        again = await orchestrator.run(workload)
    assert (again.ok, again.succeeded, again.tasks_retried) == (True, 2, 1)
    assert (again.tasks_added, again.tasks_existing) == (0, 1)
    assert (tmp_path / "out" / "bad.up").read_bytes() == b"BAD"
    # What the run keeps is the job it went on in.
    assert [kept.resource_id for kept in again.kept if kept.resource == "job"] == [again.job_id]
    reactivated = backend.compute.calls_named("reactivate_task")
    if lifetime is JobLifetime.SERVICE:
        # A job that never ends: Batch's Reactivate Task, the same id in the same job.
        assert len(reactivated) == 1
        assert again.job_id == workload.job_id
    else:
        # A one-shot job has ended, and Batch reactivates nothing there: the task goes on in the next
        # generation; the task that succeeded stays where it is and is not run again.
        assert reactivated == []
        assert again.job_id == f"{workload.job_id}-g2"
        [bad] = {task_id for task_id in script.attempts if task_id.startswith("bad-")}
        assert list(backend.compute.jobs[again.job_id].tasks) == [bad]
    # The task that succeeded ran once.
    [good] = {task_id for task_id in script.attempts if task_id.startswith("a-")}
    assert script.attempts.count(good) == 1


async def test_no_retry_failed_reports_the_failure_again_and_runs_nothing(tmp_path: Path) -> None:
    script = Flaky()
    backend = InMemoryBackend(script=script, clock=FakeClock())
    workload = memory_workload(tmp_path, "upper {input}", lifetime=JobLifetime.SERVICE)
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        await orchestrator.run(workload)
        script.fixed = True
        attempts = len(script.attempts)
        again = await orchestrator.run(replace(workload, retry_failed=False))
    assert (again.ok, again.tasks_retried, len(again.failed)) == (False, 0, 1)
    assert len(script.attempts) == attempts


async def test_reactivate_task_follows_batch(tmp_path: Path) -> None:
    def script(task: ScriptedTask) -> Outcome:
        return Fail(exit_code=1) if task.spec.task_id == "t" else Succeed()

    compute = InMemoryCompute(InMemoryStorage(), script=script)
    await compute.ensure_pool(PoolSpec("p"))
    await compute.ensure_job(JobSpec("j", "p"))
    await compute.add_tasks("j", [TaskSpec("t", "false"), TaskSpec("u", "true")])
    await compute.reactivate_task("j", "t")
    view = compute.jobs["j"].tasks["t"].view()  # as it is now, before the job is looked at
    assert (view.state.value, view.exit_code, view.retry_count) == ("active", None, 0)
    with pytest.raises(BackendError) as not_completed:
        await compute.reactivate_task("j", "t")  # active: not completed
    assert not_completed.value.code == "TaskNotCompleted"
    with pytest.raises(BackendError) as succeeded:
        await compute.reactivate_task("j", "u")
    assert succeeded.value.code == "TaskSucceeded"
    await compute.list_tasks("j")  # the reactivated task runs (and fails) again when the job is looked at
    compute.end_job("j", "AllTasksComplete")
    with pytest.raises(JobEndedError):
        await compute.reactivate_task("j", "t")


# --- 7: a resend's TaskExists, warnings, spot-only pools ---------------------------------------------------


class LosesFirstAnswer:
    """Adds the tasks, then loses the answer (a dropped connection): the request was applied."""

    def __init__(self) -> None:
        self.compute = InMemoryCompute(InMemoryStorage())
        self.lost = False

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        results = await self.compute.add_tasks(job_id, tasks)
        if not self.lost:
            self.lost = True
            raise TransientBackendError("connection reset", code="ConnectionReset")
        return results


async def test_tasks_added_by_a_request_whose_answer_was_lost_count_as_added() -> None:
    lossy = LosesFirstAnswer()
    await lossy.compute.ensure_pool(PoolSpec("p"))
    await lossy.compute.ensure_job(JobSpec("j", "p"))
    submitter = Submitter(lossy, clock=FakeClock(), draw=lambda: 0.0)  # type: ignore[arg-type]
    report = await submitter.submit("j", [TaskSpec(f"t{i}", "true") for i in range(3)])
    assert (sorted(report.added), report.existing) == (["t0", "t1", "t2"], [])
    # A task that was there before this run is still "already in the job".
    report = await submitter.submit("j", [TaskSpec("t0", "true")])
    assert (report.added, report.existing) == ([], ["t0"])
    assert all(
        r.status is AddStatus.EXISTS for r in await lossy.compute.add_tasks("j", [TaskSpec("t1", "x")])
    )


async def test_a_reused_pool_that_differs_is_a_warning_of_the_summary(tmp_path: Path) -> None:
    backend = InMemoryBackend(clock=FakeClock())
    workload = memory_workload(tmp_path, "upper {input}", lifetime=JobLifetime.SERVICE)
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        first = await orchestrator.run(workload)
        bigger = await orchestrator.run(replace(workload, pool=replace(workload.pool, dedicated_nodes=3)))
    assert first.warnings == ()
    [warning] = bigger.warnings
    assert "identity-pool" in warning
    assert "slots" in warning


def test_a_pool_of_spot_nodes_only_is_a_pool() -> None:
    assert PoolSpec("p", dedicated_nodes=0, spot_nodes=2).total_slots == 2
    with pytest.raises(ConfigError, match="at least one node"):
        PoolSpec("p", dedicated_nodes=0, spot_nodes=0)


# --- serve: a long-lived job ------------------------------------------------------------------------------


async def test_a_service_restarted_with_a_changed_command_runs_new_tasks_in_its_job(tmp_path: Path) -> None:
    """A service's job never ends; restarted with another command, it takes every file present again, and
    each is a new task (in the same job), whose outputs replace the old ones in the download folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("abc")

    def script(task: ScriptedTask) -> Outcome:
        [(name, content)] = task.inputs.items()
        done = content.upper() if task.spec.command_line.startswith("upper") else content[::-1]
        return Succeed(files={f"{Path(name).stem}.out": done})

    backend = InMemoryBackend(script=script)
    workload = Workload(
        name="serve-identity",
        inputs=(),
        template=TaskTemplate("upper {input}", outputs=("{stem}.out",)),
        pool=PoolSpec("serve-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
        job_lifetime=JobLifetime.SERVICE,
    )
    settings = WatchSettings(settle_s=0.0, min_interval_s=0.01, max_interval_s=0.05)

    async def serve(served: Workload) -> None:
        fetched = anyio.Event()

        async def on_fetched(event: Event) -> None:
            if isinstance(event, OutputDownloaded) and not event.skipped:
                fetched.set()

        metrics = Metrics()
        clock = FakeClock()
        async with Orchestrator(backend, subscribers=[metrics, on_fetched], clock=clock) as orchestrator:
            stop = anyio.Event()
            service = Service(orchestrator, served, FolderSource(folder), metrics, settings, clock=clock)
            async with anyio.create_task_group() as group:
                group.start_soon(service.run, stop)
                with anyio.fail_after(30):
                    await fetched.wait()
                stop.set()

    await serve(workload)
    assert (tmp_path / "out" / "a.out").read_bytes() == b"ABC"
    changed = replace(workload, template=replace(workload.template, command="reverse {input}"))
    await serve(changed)
    assert (tmp_path / "out" / "a.out").read_bytes() == b"cba"
    [job] = backend.compute.jobs.values()
    assert len(job.tasks) == 2  # one per definition of a.txt, in the service's one job


def _reference_definition_hash(workload: Workload, item: StagedInput) -> str:
    """The definition as one JSON document with sorted keys, as ids have been made since they covered it:
    `tasks.definition_hash` must give the same text, or every task of every job would be new after an
    upgrade."""
    import hashlib
    import json

    template = workload.template
    keyed = replace(item, task_id=item.input_key)
    on_node = keyed.node_values()
    container = template.container
    definition = {
        "version": 1,
        "input": [item.blob_name, item.fingerprint],
        "command": template.render_command(on_node),
        "outputs": [template.in_working_dir(p) for p in template.render_outputs(on_node)],
        "output_names": list(template.render_outputs(keyed.template_values())),
        "optional_outputs": sorted(template.optional_outputs),
        "container": [container.image, container.run_options] if container is not None else None,
        "environment": sorted([name, value] for name, value in workload.environment),
        "resource_files": [[workload.input_container, item.blob_name, keyed.safe_path]],
    }
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_the_definition_hash_is_that_of_the_definitions_json_document(tmp_path: Path) -> None:
    items = [
        staged(),
        staged("ü ñ \"quoted\" 'x'.log", "1" * 32, folder="d1/é"),
        staged("a'$(id)'b.tar.gz", "2" * 32),
        staged("\udcff raw.bin", "3" * 32),  # a name with a byte that is no UTF-8
        StagedInput.for_blob("2024/a/x.txt", None, 12, prefix="2024/"),
    ]
    template = TaskTemplate(
        command="sh -c 'cat {input} > {output_dir}/{stem}.out; echo {task_id} {input_name}'",
        outputs=("{stem}.out", "logs/*.txt", "{input_name}.sum"),
        optional_outputs=("logs/*.txt",),
        output_dir="out",
        container=ContainerSettings("python:3.12-slim", "--network none"),
    )
    workloads = [
        base_workload(tmp_path),
        base_workload(tmp_path, environment=()),
        base_workload(tmp_path, template=template, environment=(("Z", "1"), ("A", 'ß\u2028"x"'), ("M", ""))),
    ]
    for workload in workloads:
        for item in items:
            assert definition_hash(workload, item) == _reference_definition_hash(workload, item)
        identified = identify(workload, items)
        assert [i.task_id for i in identified] == [
            task_id_for(i, _reference_definition_hash(workload, i)) for i in items
        ]
