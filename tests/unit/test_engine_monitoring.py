"""The engine monitors a run's job from the start of submission: the first tasks are seen (and end) while the
last are still being added; tasks the service refuses are not waited for; a run is not done before its last
collection is answered."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import anyio

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.engine import EngineSettings
from batchpilot.events import Event, TasksSubmitted, TaskSucceeded
from batchpilot.recorder import RunRecorder, Stage
from batchpilot.records import AddStatus, AddTaskResult
from batchpilot.spec import TaskSpec
from batchpilot.testing import InMemoryBackend

# One collection at a time, so that the second is sent only once the first is answered.
ONE_AT_A_TIME = EngineSettings(submit_in_flight=1)
DEADLOCK_GUARD_S = 30  # a guard against waiting forever, not a measured time


def workload(tmp_path: Path, count: int) -> Workload:
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(count):
        (folder / f"f{n:03d}.txt").write_text(str(n))
    return Workload(
        name="early",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="/bin/true {input}", outputs=()),
        pool=PoolSpec("early-pool", dedicated_nodes=2),
        cleanup=CleanupPolicy(delete_input_container=False),
        timeout=timedelta(minutes=5),
    )


class Events:
    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.first_success = anyio.Event()

    async def __call__(self, event: Event) -> None:
        self.seen.append(event)
        if isinstance(event, TaskSucceeded):
            self.first_success.set()


async def test_tasks_of_the_first_collection_are_seen_completed_before_the_last_collection_is_sent(
    tmp_path: Path,
):
    backend = InMemoryBackend()
    events = Events()
    add_tasks = backend.compute.add_tasks
    sent = 0

    async def add_after_a_success(job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        # The second collection (tasks 100-149) waits for a task of the first to be reported succeeded:
        # a monitor that started only after submission would never report one, and the guard fails the test.
        nonlocal sent
        sent += 1
        if sent == 2:
            with anyio.fail_after(DEADLOCK_GUARD_S):
                await events.first_success.wait()
        return await add_tasks(job_id, tasks)

    backend.compute.add_tasks = add_after_a_success  # type: ignore[method-assign]
    recorder = RunRecorder()
    async with Orchestrator(backend, subscribers=[events], settings=ONE_AT_A_TIME) as orchestrator:
        summary = await orchestrator.run(workload(tmp_path, 150), recorder=recorder)
    assert summary.ok
    assert summary.succeeded == 150
    submitted = [i for i, e in enumerate(events.seen) if isinstance(e, TasksSubmitted)]
    succeeded = [i for i, e in enumerate(events.seen) if isinstance(e, TaskSucceeded)]
    assert succeeded[0] < submitted[-1]
    # The monitoring stage starts with submission, not after it.
    spans = {span.stage: span for span in recorder.record().stages}
    assert spans[Stage.MONITORING].start <= spans[Stage.SUBMISSION].end  # type: ignore[operator]


async def test_a_run_whose_last_collection_is_refused_ends_once_its_other_tasks_have(tmp_path: Path):
    # The first 100 tasks complete while the last collection is in flight; the service refuses that one
    # (a client error: not retried). The run must not wait for the refused tasks, nor end before them.
    backend = InMemoryBackend()
    events = Events()
    add_tasks = backend.compute.add_tasks
    sent = 0

    async def refuse_the_second(job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        nonlocal sent
        sent += 1
        if sent == 2:
            with anyio.fail_after(DEADLOCK_GUARD_S):
                await events.first_success.wait()
            for _ in range(DEADLOCK_GUARD_S * 100):  # until the monitor has seen all of the first 100 end
                if sum(isinstance(e, TaskSucceeded) for e in events.seen) == 100:
                    break
                await anyio.sleep(0.01)
            backend.compute.refuse_adds(1, status=AddStatus.CLIENT_ERROR, code="InvalidPropertyValue")
        return await add_tasks(job_id, tasks)

    backend.compute.add_tasks = refuse_the_second  # type: ignore[method-assign]
    async with Orchestrator(backend, subscribers=[events], settings=ONE_AT_A_TIME) as orchestrator:
        with anyio.fail_after(DEADLOCK_GUARD_S):
            summary = await orchestrator.run(workload(tmp_path, 150))
    assert not summary.ok
    assert summary.succeeded == 100
    assert len(summary.failed) == 50
    assert all("not added" in failed.reason for failed in summary.failed)


async def test_monitoring_stopped_during_submission_lets_submission_finish(tmp_path: Path):
    backend = InMemoryBackend()
    add_tasks = backend.compute.add_tasks
    orchestrator = Orchestrator(backend, settings=ONE_AT_A_TIME)
    sent = 0

    async def stop_at_the_second(job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        nonlocal sent
        sent += 1
        if sent == 2:
            orchestrator.stop_monitoring()
        return await add_tasks(job_id, tasks)

    backend.compute.add_tasks = stop_at_the_second  # type: ignore[method-assign]
    async with orchestrator:
        with anyio.fail_after(DEADLOCK_GUARD_S):
            summary = await orchestrator.run(workload(tmp_path, 150))
    assert summary.stopped
    assert len(backend.compute.jobs[summary.job_id].tasks) == 150  # every task added all the same


async def test_tasks_seen_in_the_job_are_added_though_every_answer_to_their_request_was_lost(tmp_path: Path):
    # The request is applied but its answers never arrive (each attempt: a server error), while the monitor,
    # running alongside, already sees its tasks end. The service is the source of truth: the run added them,
    # waits for them and counts them; it does not report them unsubmitted (serve would add them again).
    backend = InMemoryBackend()
    events = Events()
    add_tasks = backend.compute.add_tasks

    async def applied_but_answers_lost(job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        if not backend.compute.jobs[job_id].tasks:
            await add_tasks(job_id, tasks)
            with anyio.fail_after(DEADLOCK_GUARD_S):
                await events.first_success.wait()
        return [AddTaskResult(task.task_id, AddStatus.SERVER_ERROR, "ServerBusy", "lost") for task in tasks]

    backend.compute.add_tasks = applied_but_answers_lost  # type: ignore[method-assign]
    async with Orchestrator(backend, subscribers=[events], settings=ONE_AT_A_TIME) as orchestrator:
        with anyio.fail_after(DEADLOCK_GUARD_S * 2):
            summary = await orchestrator.run(workload(tmp_path, 10))
    assert summary.ok, summary.failed
    assert (summary.succeeded, summary.tasks_added, summary.unsubmitted) == (10, 10, 0)
