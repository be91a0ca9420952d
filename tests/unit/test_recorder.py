"""The per-run recorder: a run's events in, its summary and a report's stages and task attempts out; and an
orchestrator that runs many batches keeps nothing per batch once they are done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.engine import POLL_STATS_KEPT
from batchpilot.events import (
    InputUploaded,
    OutputDownloaded,
    OutputDownloadFailed,
    ResourceKept,
    RunStarted,
    TaskFailed,
    TaskRequeued,
    TasksSubmitted,
    TaskStateChanged,
    TaskSucceeded,
)
from batchpilot.metrics import Metrics
from batchpilot.monitor.poller import INTERVALS_KEPT, PollStats
from batchpilot.recorder import AttemptOutcome, RunRecorder, Stage
from batchpilot.records import FailureInfo, TaskState
from batchpilot.spec import CleanupPolicy as Cleanup
from batchpilot.spec import JobLifetime
from batchpilot.testing import Fail, FakeClock, InMemoryBackend, Outcome, ScriptedTask, Succeed

T0 = datetime(2026, 3, 1, tzinfo=UTC)
R = "run-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(inputs: int = 3, download_to: Path | None = None) -> RunStarted:
    return RunStarted(
        run_id=R, at=at(0), workload="w", job_id="job", pool_id="pool", input_count=inputs,
        input_container="in", output_container="out", download_to=download_to, cleanup=Cleanup(),
    )  # fmt: skip


def changed(task_id: str, state: TaskState, t: float, **extra: object) -> TaskStateChanged:
    return TaskStateChanged(
        run_id=R,
        at=at(t),
        job_id="job",
        task_id=task_id,
        previous=None,
        state=state,
        **extra,  # type: ignore[arg-type]
    )


def downloaded(blob_name: str, *, skipped: bool, t: float = 0) -> OutputDownloaded:
    return OutputDownloaded(
        run_id=R, at=at(t), job_id="job", task_id="a", blob_name=blob_name, path=Path(blob_name), size=1,
        skipped=skipped,
    )  # fmt: skip


def test_the_summary_is_what_the_runs_events_say():
    recorder = RunRecorder()
    kept = ResourceKept(run_id=R, resource="pool", resource_id="pool", reason="kept", delete_command="rm")
    for event in (
        started(inputs=4),
        InputUploaded(run_id=R, blob_name="a", size=1, skipped=False),
        InputUploaded(run_id=R, blob_name="b", size=1, skipped=True),
        TasksSubmitted(
            run_id=R, job_id="job", added=2, existing=1,
            rejected=(("d", "ServerBusy: busy"),), unsubmitted=1,
        ),
        TaskSucceeded(run_id=R, job_id="job", task_id="a", exit_code=0, duration_s=1.0),
        TaskFailed(
            run_id=R, job_id="job", task_id="b", exit_code=3, duration_s=1.0, stderr_tail="boom",
            failure=FailureInfo("usererror", "FailureExitCode", "exit 3"),
        ),
        downloaded("a/x", skipped=False),
        downloaded("a/y", skipped=True),
        OutputDownloadFailed(run_id=R, job_id="job", task_id="a", blob_name="a/z", error="disk full"),
        kept,
    ):  # fmt: skip
        recorder.observe(event)
    recorder.found_in_job(1)
    summary = recorder.summary(elapsed_s=2.5, timed_out=False, monitoring_stopped=True, warnings=("old",))
    assert (summary.run_id, summary.job_id, summary.workload, summary.tasks) == (R, "job", "w", 4)
    assert (summary.uploaded, summary.upload_skipped) == (1, 1)
    assert (summary.tasks_added, summary.tasks_existing, summary.unsubmitted) == (2, 2, 1)
    assert summary.succeeded == 1
    assert [(f.task_id, f.exit_code, f.reason) for f in summary.failed] == [
        ("d", None, "not added: ServerBusy: busy"),
        ("b", 3, "FailureExitCode: exit 3"),
    ]
    assert (summary.downloaded, summary.download_skipped, summary.download_failed) == (1, 1, 1)
    assert summary.stopped  # told to stop, and one task (c) never finished
    assert summary.warnings == ("old",)
    assert summary.kept == (kept,)
    assert not summary.ok


def test_each_attempt_is_kept_with_its_node_times_outcome_and_counts():
    recorder = RunRecorder()
    recorder.observe(started())
    recorder.observe(changed("t", TaskState.RUNNING, 5, node_id="n1", start_time=at(4)))
    recorder.observe(
        TaskRequeued(run_id=R, at=at(9), job_id="job", task_id="t", previous=TaskState.RUNNING, retry_count=0,
                     requeue_count=1)
    )  # fmt: skip
    recorder.observe(changed("t", TaskState.ACTIVE, 9, requeue_count=1))
    recorder.observe(changed("t", TaskState.RUNNING, 12, node_id="n2", start_time=at(11), requeue_count=1))
    recorder.observe(changed("t", TaskState.COMPLETED, 20, node_id="n2", exit_code=0, requeue_count=1))
    recorder.observe(
        TaskSucceeded(run_id=R, at=at(20), job_id="job", task_id="t", exit_code=0, duration_s=8.0,
                      node_id="n2", start_time=at(11), end_time=at(19))
    )  # fmt: skip
    recorder.observe(changed("u", TaskState.RUNNING, 6, node_id="n3"))  # still running at the end
    record = recorder.record()
    assert [(a.task_id, a.node_id, a.start, a.end, a.outcome, a.requeue_count) for a in record.attempts] == [
        ("t", "n1", at(4), at(9), AttemptOutcome.REQUEUED, 0),
        ("t", "n2", at(11), at(19), AttemptOutcome.SUCCEEDED, 1),
        ("u", "n3", at(6), None, AttemptOutcome.UNFINISHED, 0),
    ]
    assert record.attempts[1].exit_code == 0
    assert recorder.tasks_by_state()[TaskState.RUNNING] == 1
    assert (record.run_id, record.job_id, record.pool_id, record.started) == (R, "job", "pool", at(0))


def test_attempts_are_bounded_and_the_rest_counted():
    recorder = RunRecorder(max_attempts=2)
    recorder.observe(started())
    for n, task_id in enumerate(("a", "b", "c")):
        recorder.observe(
            TaskSucceeded(run_id=R, at=at(n), job_id="job", task_id=task_id, exit_code=0, duration_s=1)
        )
    record = recorder.record()
    assert [a.task_id for a in record.attempts] == ["a", "b"]
    assert record.attempts_dropped == 1
    assert recorder.summary(elapsed_s=1, timed_out=False, monitoring_stopped=False).succeeded == 3


def test_a_task_run_again_after_it_completed_is_a_new_attempt_and_counted_by_its_state():
    recorder = RunRecorder()
    recorder.observe(started())
    recorder.observe(changed("t", TaskState.RUNNING, 1, node_id="n1", start_time=at(1)))
    recorder.observe(changed("t", TaskState.COMPLETED, 3, node_id="n1", exit_code=3, retry_count=0))
    recorder.observe(
        TaskFailed(run_id=R, at=at(3), job_id="job", task_id="t", exit_code=3, duration_s=2.0, failure=None,
                   stderr_tail="", node_id="n1", start_time=at(1), end_time=at(3))
    )  # fmt: skip
    recorder.observe(changed("u", TaskState.COMPLETED, 4, node_id="n2", exit_code=0))
    recorder.observe(TaskSucceeded(run_id=R, at=at(4), job_id="job", task_id="u", exit_code=0, duration_s=1))
    assert recorder.tasks_by_state()[TaskState.COMPLETED] == 2
    assert [a.outcome for a in recorder.record().attempts] == [
        AttemptOutcome.FAILED,
        AttemptOutcome.SUCCEEDED,
    ]
    # Reactivated: a new attempt from nothing, under way until it ends.
    recorder.observe(changed("t", TaskState.ACTIVE, 5, retry_count=1))
    recorder.observe(changed("t", TaskState.RUNNING, 6, node_id="n3", start_time=at(6), retry_count=1))
    assert recorder.tasks_by_state()[TaskState.RUNNING] == 1
    assert recorder.tasks_by_state()[TaskState.COMPLETED] == 1
    attempts = recorder.record().attempts
    assert [(a.task_id, a.node_id, a.start, a.outcome, a.retry_count) for a in attempts[2:]] == [
        ("t", "n3", at(6), AttemptOutcome.UNFINISHED, 1)
    ]
    recorder.observe(changed("t", TaskState.COMPLETED, 8, node_id="n3", exit_code=0, retry_count=1))
    recorder.observe(
        TaskSucceeded(run_id=R, at=at(8), job_id="job", task_id="t", exit_code=0, duration_s=2.0,
                      node_id="n3", start_time=at(6), end_time=at(8))
    )  # fmt: skip
    last = recorder.record().attempts[-1]
    assert (last.task_id, last.node_id, last.start, last.end, last.outcome, last.retry_count) == (
        "t",
        "n3",
        at(6),
        at(8),
        AttemptOutcome.SUCCEEDED,
        1,
    )
    assert recorder.summary(elapsed_s=1, timed_out=False, monitoring_stopped=False).succeeded == 2


def test_a_completed_task_costs_the_recorder_little_beyond_its_attempt():
    """What the recorder holds per task once the task completed: its attempt (bounded by max_attempts), its
    place among the succeeded and its last state, not the fields of an attempt under way (100,000 tasks:
    about 11 MB that nothing read)."""
    import gc
    import tracemalloc

    count = 5_000
    ids = [f"task-{n:06d}-0123abcd" for n in range(count)]
    recorder = RunRecorder(max_attempts=0)  # attempts counted only: what is left is per-task state
    recorder.observe(started(inputs=count))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, task_id in enumerate(ids):
            recorder.observe(changed(task_id, TaskState.RUNNING, n, node_id="n", start_time=at(n)))
            recorder.observe(changed(task_id, TaskState.COMPLETED, n + 1, node_id="n", exit_code=0))
            recorder.observe(
                TaskSucceeded(
                    run_id=R, at=at(n + 1), job_id="job", task_id=task_id, exit_code=0, duration_s=1
                )
            )
        gc.collect()
        per_task = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert recorder.tasks_by_state()[TaskState.COMPLETED] == count
    # Its last state (a dict entry) and its success (a set entry): 126 bytes at this count; with an attempt's
    # fields kept as if under way (a `_Current` each), 206.
    assert per_task < 160, per_task


def test_stages_are_spans_in_the_order_they_began_and_downloads_come_from_their_events():
    recorder = RunRecorder()
    recorder.observe(started(download_to=Path("out")))
    recorder.stage_started(Stage.POOL, at(0))
    recorder.stage_started(Stage.UPLOAD, at(1))
    recorder.stage_ended(Stage.POOL, at(3))
    recorder.stage_ended(Stage.UPLOAD, at(2))
    recorder.stage_started(Stage.MONITORING, at(4))
    # The first task to succeed starts the downloads (its outputs are fetched at once); the last output
    # ends them.
    first = TaskSucceeded(run_id=R, at=at(4.5), job_id="job", task_id="a", exit_code=0, duration_s=1)
    recorder.observe(first)
    for t in (5, 7):
        recorder.observe(downloaded("a/x", skipped=False, t=t))
    spans = [(span.stage, span.start, span.end) for span in recorder.record().stages]
    assert spans == [
        (Stage.POOL, at(0), at(3)),
        (Stage.UPLOAD, at(1), at(2)),
        (Stage.MONITORING, at(4), None),  # the run ended before monitoring did
        (Stage.DOWNLOADS, at(4.5), at(7)),
    ]


def _workload(folder: Path, out: Path, names: list[str], lifetime: JobLifetime = JobLifetime.RUN) -> Workload:
    for name in names:
        (folder / f"{name}.txt").write_text(name)
    return Workload(
        name="many",
        inputs=tuple(folder / f"{name}.txt" for name in names),
        template=TaskTemplate(command="upper {input} {stem}.up", outputs=("{stem}.up",)),
        pool=PoolSpec("many-pool", dedicated_nodes=2),
        download_to=out,
        cleanup=CleanupPolicy(delete_input_container=False),
        job_lifetime=lifetime,
    )


def _script(task: ScriptedTask) -> Outcome:
    [(name, content)] = task.inputs.items()
    if content.startswith(b"bad"):
        return Fail(exit_code=2, stderr="bad input")
    return Succeed(files={f"{Path(name).stem}.up": content.upper()})


async def test_a_callers_recorder_outlives_the_run_and_holds_its_stages_and_attempts(tmp_path: Path):
    (tmp_path / "in").mkdir()
    workload = _workload(tmp_path / "in", tmp_path / "out", ["a", "b", "bad"])
    recorder = RunRecorder()
    clock = FakeClock()
    async with Orchestrator(InMemoryBackend(script=_script, clock=clock), clock=clock) as orchestrator:
        summary = await orchestrator.run(workload, recorder=recorder)
        assert orchestrator.recorders() == {}
    assert (summary.succeeded, len(summary.failed), summary.downloaded) == (2, 1, 2)
    record = recorder.record()
    assert record.run_id == summary.run_id
    assert {span.stage for span in record.stages} == set(Stage)
    assert all(span.end is not None and span.end >= span.start for span in record.stages)
    outcomes = sorted(a.outcome for a in record.attempts)
    assert outcomes == [AttemptOutcome.FAILED, AttemptOutcome.SUCCEEDED, AttemptOutcome.SUCCEEDED]
    assert all(a.start is not None and a.end is not None and a.node_id for a in record.attempts)


def _series(metrics: Metrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


async def test_many_batches_through_one_orchestrator_leave_its_retained_state_flat(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    clock = FakeClock()
    backend = InMemoryBackend(script=_script, clock=clock)
    metrics = Metrics()
    sizes: list[tuple[int, ...]] = []
    async with Orchestrator(backend, subscribers=[metrics], clock=clock) as orchestrator:
        metrics.attach(orchestrator)
        for batch in range(200):
            names = [f"b{batch}-{n}" for n in range(3)] + ([f"bad{batch}"] if batch % 10 == 0 else [])
            # As `serve` runs its batches: one job for all, a run per batch.
            workload = _workload(folder, tmp_path / "out", names, JobLifetime.SERVICE)
            summary = await orchestrator.run(workload)
            assert summary.succeeded == 3
            if batch in (99, 199):
                sizes.append(
                    (
                        len(orchestrator.recorders()),
                        len(orchestrator.monitoring()),
                        len(orchestrator.poll_stats),
                        sum(orchestrator.queue_depths().values()),
                        len(orchestrator.queue_depths()),
                        len(orchestrator._downloader._runs),
                        len(orchestrator._bus._streams),
                        _series(metrics),
                    )
                )
    # After 100 batches and after 200: nothing grew with the batches (poll statistics stop at their bound).
    assert sizes[0] == sizes[1]
    assert sizes[1][:4] == (0, 0, POLL_STATS_KEPT, 0)
    assert metrics.count("runs_finished") == 200
    assert metrics.count("succeeded") == 600
    assert metrics.tasks_by_state()[TaskState.COMPLETED] == 620


def test_a_runs_poll_statistics_keep_only_the_latest_intervals():
    stats = PollStats()
    for n in range(INTERVALS_KEPT + 50):
        stats.intervals.append(float(n))
    assert len(stats.intervals) == INTERVALS_KEPT
    assert stats.intervals[-1] == INTERVALS_KEPT + 49


def test_tasks_in_the_job_not_seen_yet_count_as_queued():
    # Incremental listings leave out tasks added since and still queued: such a task is first seen running or
    # completed, and until then the tasks gauge counts it queued, not nowhere.
    recorder = RunRecorder()
    recorder.observe(started(inputs=6))
    recorder.observe(TasksSubmitted(run_id=R, job_id="job", added=4, existing=1, rejected=(("f", "x: y"),)))
    recorder.found_in_job(1)
    assert recorder.tasks_by_state()[TaskState.ACTIVE] == 6
    recorder.observe(changed("a", TaskState.RUNNING, 1, node_id="n1", start_time=at(1)))
    recorder.observe(changed("b", TaskState.COMPLETED, 2, node_id="n1", exit_code=0))
    by_state = recorder.tasks_by_state()
    seen = (by_state[TaskState.ACTIVE], by_state[TaskState.RUNNING], by_state[TaskState.COMPLETED])
    assert seen == (4, 1, 1)
    recorder.observe(changed("c", TaskState.ACTIVE, 3))  # seen queued: counted once, not twice
    assert recorder.tasks_by_state()[TaskState.ACTIVE] == 4
