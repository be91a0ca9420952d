"""What the engine asks of a job so that it outlives no dead orchestrator, and how long task tokens last."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.cli_errors import backend_error_line
from batchpilot.engine import JOB_GRACE, MAX_JOB_GENERATIONS, SAS_MARGIN, job_wall_clock, sas_lifetime
from batchpilot.errors import JobEndedError
from batchpilot.records import AddStatus
from batchpilot.spec import JobLifetime, JobSpec, TaskConstraints, job_generation_id
from batchpilot.testing import InMemoryBackend, Succeed

JOB_CALLS = ("ensure_job", "add_tasks", "end_job_when_done")


def workload(tmp_path: Path, lifetime: JobLifetime) -> Workload:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for n in range(3):
        (folder / f"f{n}.txt").write_text(str(n))
    return Workload(
        name="lifetime",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="/bin/cp {input} {stem}.copy", outputs=("{stem}.copy",)),
        pool=PoolSpec("lifetime-pool", dedicated_nodes=2),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
        timeout=timedelta(minutes=20),
        job_lifetime=lifetime,
    )


def copies(task) -> Succeed:  # what the template's `cp {input} {stem}.copy` leaves
    [(name, content)] = task.inputs.items()
    return Succeed(files={f"{Path(name).stem}.copy": content})


async def run_recorded(tmp_path: Path, job: Workload) -> list[tuple[str, object]]:
    """The job-related calls the engine makes, in order."""
    backend = InMemoryBackend(script=copies)
    async with Orchestrator(backend) as orchestrator:
        summary = await orchestrator.run(job)
    assert summary.ok
    return [(name, argument) for name, argument in backend.compute.calls if name in JOB_CALLS]


async def test_a_one_shot_run_bounds_its_job_and_lets_it_end_after_the_last_task_is_added(tmp_path: Path):
    calls = await run_recorded(tmp_path, workload(tmp_path, JobLifetime.RUN))
    spec = calls[0][1]
    assert isinstance(spec, JobSpec)
    assert spec.max_wall_clock == timedelta(minutes=20) + JOB_GRACE
    # Told only once every task is in: a job whose first tasks finish before the next collection would end.
    assert [name for name, _ in calls] == ["ensure_job", "add_tasks", "end_job_when_done"]


async def test_a_service_job_has_no_end(tmp_path: Path):
    calls = await run_recorded(tmp_path, workload(tmp_path, JobLifetime.SERVICE))
    assert calls[0] == ("ensure_job", JobSpec("batchpilot-lifetime", "lifetime-pool", max_wall_clock=None))
    assert "end_job_when_done" not in [name for name, _ in calls]


def test_task_tokens_outlive_everything_that_can_still_run(tmp_path: Path):
    one_shot = workload(tmp_path, JobLifetime.RUN)
    wall_clock = job_wall_clock(one_shot)
    assert wall_clock is not None
    assert sas_lifetime(one_shot) == wall_clock + SAS_MARGIN
    # A service's task has the batch's timeout to start, then its own wall clock to run.
    service = workload(tmp_path, JobLifetime.SERVICE)
    long_tasks = replace(
        service,
        template=replace(service.template, constraints=TaskConstraints(max_wall_clock=timedelta(hours=5))),
    )
    assert sas_lifetime(long_tasks) == timedelta(minutes=20) + timedelta(hours=5) + SAS_MARGIN


async def test_new_inputs_for_a_job_that_has_ended_go_on_in_its_next_generation(tmp_path: Path):
    # Batch takes no task into an ended job: the run goes on in `<job>-g2`, and a re-run finds it there.
    job = workload(tmp_path, JobLifetime.RUN)
    backend = InMemoryBackend(script=copies)
    await backend.compute.ensure_pool(job.pool)
    await backend.compute.ensure_job(JobSpec(job.job_id, job.pool.pool_id))
    backend.compute.end_job(job.job_id, "AllTasksComplete")
    async with Orchestrator(backend) as orchestrator:
        first = await orchestrator.run(job)
        again = await orchestrator.run(job)
    assert (first.ok, first.job_id, first.tasks_added) == (True, "batchpilot-lifetime-g2", 3)
    assert (again.ok, again.job_id, again.tasks_added, again.tasks_existing) == (
        True, "batchpilot-lifetime-g2", 0, 3,
    )  # fmt: skip
    assert "batchpilot-lifetime-g3" not in backend.compute.jobs


async def test_a_job_whose_generations_have_all_ended_is_a_clear_error(tmp_path: Path):
    job = workload(tmp_path, JobLifetime.RUN)
    backend = InMemoryBackend(script=copies)
    await backend.compute.ensure_pool(job.pool)
    for generation in range(1, MAX_JOB_GENERATIONS + 1):
        job_id = job_generation_id(job.job_id, generation)
        await backend.compute.ensure_job(JobSpec(job_id, job.pool.pool_id))
        backend.compute.end_job(job_id, "AllTasksComplete")
    async with Orchestrator(backend) as orchestrator:
        with pytest.raises(JobEndedError, match="job batchpilot-lifetime has ended") as raised:
            await orchestrator.run(job)
    message = str(raised.value)
    assert "\n" not in message
    assert (raised.value.job_id, raised.value.reason) == ("batchpilot-lifetime", "AllTasksComplete")
    assert "batchpilot cleanup" not in message  # an embedder gets what happened; the remedy is the CLI's
    assert raised.value.generations == tuple(
        job_generation_id(job.job_id, n) for n in range(1, MAX_JOB_GENERATIONS + 1)
    )
    line = backend_error_line(raised.value, "local")
    assert line.startswith(
        f"batchpilot: BackendError: {message}; delete them (batchpilot cleanup --backend local"
    )
    assert job_generation_id(job.job_id, MAX_JOB_GENERATIONS) in line


async def test_a_one_shot_run_whose_tasks_the_service_could_not_take_leaves_its_job_open_for_the_rerun(
    tmp_path: Path,
):
    job = workload(tmp_path, JobLifetime.RUN)
    backend = InMemoryBackend(script=copies)
    # Every attempt of the submitter fails with a server error: nothing is added.
    backend.compute.refuse_adds(5, status=AddStatus.SERVER_ERROR, code="ServerBusy")
    async with Orchestrator(backend) as orchestrator:
        first = await orchestrator.run(job)
        assert (first.ok, first.unsubmitted) == (False, 3)
        # Told to end when done, a job with no task ends at once (as on Batch): the re-run could add nothing.
        assert "end_job_when_done" not in [name for name, _ in backend.compute.calls]
        again = await orchestrator.run(job)
    assert again.ok, again
    assert (again.tasks_added, again.succeeded) == (3, 3)
    assert [name for name, _ in backend.compute.calls].count("end_job_when_done") == 1
