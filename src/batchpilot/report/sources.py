"""Where a report's data comes from: a run's recorder, a service's latest runs, or the job's task records.

`of_run` and `RollingRuns` are pure (the caller passes the time). `of_job` asks the service (the `Compute`
protocol: `list_tasks`, and `read_task_file` for failed tasks' stderr), so it works after the orchestrator
died or on another machine; it feeds the task records through the same state machine and recorder as a live
run, so both draw the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from ..backends.base import Compute
from ..events import FailedTask, RunSummary, TaskFailed
from ..monitor.poller import read_stderr_tail
from ..monitor.state import TaskTracker
from ..recorder import RunRecorder
from ..recorder import Stage as RunStage
from ..records import TaskState
from .model import (
    MAX_ATTEMPTS,
    MAX_FAILURES,
    MAX_RUNS,
    ReportData,
    RunInfo,
    attempts_of,
    build_report,
    failure_of,
    stages_of,
)


def _node_window(recorders: Sequence[RunRecorder], now: datetime) -> tuple[datetime, datetime] | None:
    """From the first run's nodes being ready (or its start) to the end of the last (or now)."""
    if not recorders:
        return None
    first = recorders[0].record()
    spans = {span.stage: span for span in first.stages}
    nodes = spans.get(RunStage.NODES)
    start = (nodes.end if nodes is not None else None) or first.started
    if start is None:
        return None
    return (start, max(start, now))


def of_run(
    recorder: RunRecorder,
    info: RunInfo,
    *,
    generated_at: datetime,
    summary: RunSummary | None,
    summary_lines: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> ReportData:
    """The report of one run from its recorder (also a run that failed, timed out or was interrupted:
    `summary` is then None, and attempts under way are drawn up to `generated_at`)."""
    record = recorder.record()
    info = _named(info, record.workload, record.job_id, record.pool_id, record.run_id)
    failed: Sequence[FailedTask] = summary.failed if summary is not None else ()
    return build_report(
        info,
        attempts=attempts_of(record.attempts),
        stages=stages_of(record.stages, generated_at),
        failures=[failure_of(task) for task in failed],
        summary_lines=summary_lines,
        generated_at=generated_at,
        node_window=_node_window([recorder], generated_at),
        attempts_dropped=record.attempts_dropped,
        notes=_dropped_note(record.attempts_dropped, notes),
    )


class RollingRuns:
    """The latest runs of a `serve`, for its rolling report: a recorder per run, the oldest dropped beyond
    `MAX_RUNS` runs or `MAX_ATTEMPTS` attempts, so nothing grows with the number of batches."""

    def __init__(self, max_runs: int = MAX_RUNS, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._recorders: deque[RunRecorder] = deque(maxlen=max_runs)
        self._max_attempts = max_attempts
        self.runs_dropped = 0

    def new_recorder(self) -> RunRecorder:
        """A recorder for the next run, kept here after the run returns."""
        if len(self._recorders) == self._recorders.maxlen:
            self.runs_dropped += 1
        recorder = RunRecorder(max_attempts=self._max_attempts)
        self._recorders.append(recorder)
        return recorder

    def data(self, info: RunInfo, *, generated_at: datetime, summary_lines: Sequence[str] = ()) -> ReportData:
        records = [recorder.record() for recorder in self._recorders]
        while len(records) > 1 and sum(len(record.attempts) for record in records) > self._max_attempts:
            records.pop(0)
            self._recorders.popleft()
            self.runs_dropped += 1
        kept = list(self._recorders)
        first = records[0] if records else None
        if first is not None:
            info = _named(info, first.workload, first.job_id, first.pool_id, "")
        latest = "the latest batch" if len(records) == 1 else f"the latest {len(records)} batches"
        notes = [latest] if records else ["no batch yet"]
        if self.runs_dropped:
            notes.append(f"{self.runs_dropped} earlier batches are not drawn")
        dropped = sum(record.attempts_dropped for record in records)
        return build_report(
            info,
            attempts=attempts_of(attempt for record in records for attempt in record.attempts),
            stages=[stage for record in records for stage in stages_of(record.stages, generated_at)],
            failures=[
                failure_of(failed)
                for recorder in kept
                if recorder.run_id is not None
                for failed in _failed(recorder)
            ][-MAX_FAILURES:],
            summary_lines=summary_lines,
            generated_at=generated_at,
            node_window=_node_window(list(kept), generated_at),
            attempts_dropped=dropped,
            notes=_dropped_note(dropped, notes),
        )


def _failed(recorder: RunRecorder) -> tuple[FailedTask, ...]:
    return recorder.summary(elapsed_s=0.0, timed_out=False, monitoring_stopped=False).failed


async def of_job(compute: Compute, job_id: str, info: RunInfo, *, generated_at: datetime) -> ReportData:
    """The report of a job from the task records the service keeps: each task's latest attempt (node,
    start, end, exit code, retry and requeue counts) and the stderr tail of up to `MAX_FAILURES` failed
    tasks. Raises NotFoundError when there is no such job, BackendError when the service cannot answer."""
    views = await compute.list_tasks(job_id)
    tracker = TaskTracker("report", job_id, [view.task_id for view in views])
    recorder = RunRecorder()
    failed: list[FailedTask] = []
    for event in tracker.observe(views, at=generated_at):
        if isinstance(event, TaskFailed) and len(failed) < MAX_FAILURES:
            event = _with_stderr(event, await read_stderr_tail(compute, job_id, event.task_id))
            reason = f"{event.failure.code}: {event.failure.message}" if event.failure else ""
            failed.append(FailedTask(event.task_id, event.exit_code, reason or "failed", event.stderr_tail))
        recorder.observe(event)
    record = recorder.record()
    progress = tracker.progress()
    by_state = progress.by_state
    lines = [
        f"job {job_id}: {len(views)} tasks: {progress.succeeded} succeeded, {progress.failed} failed,"
        f" {by_state[TaskState.RUNNING] + by_state[TaskState.PREPARING]} running,"
        f" {by_state[TaskState.ACTIVE]} waiting",
    ]
    retried = sum(1 for view in views if view.retry_count or view.requeue_count)
    notes = []
    if retried:
        notes.append(
            f"{retried} tasks ran more than once; the service keeps only each task's latest attempt, so only"
            " that one is drawn (its retry and requeue counts say how many came before)"
        )
    return build_report(
        _named(info, "", job_id, "", ""),
        attempts=attempts_of(record.attempts),
        failures=[failure_of(task) for task in failed],
        summary_lines=lines,
        generated_at=generated_at,
        notes=notes,
    )


def _with_stderr(event: TaskFailed, tail: str) -> TaskFailed:
    return replace(event, stderr_tail=tail)


def _named(info: RunInfo, workload: str, job_id: str, pool_id: str, run_id: str) -> RunInfo:
    return replace(
        info,
        workload=info.workload or workload,
        job_id=info.job_id or job_id,
        pool_id=info.pool_id or pool_id,
        run_id=info.run_id or run_id,
    )


def _dropped_note(dropped: int, notes: Sequence[str]) -> list[str]:
    return [*notes, f"{dropped} attempts are not drawn (over the bound)"] if dropped else list(notes)
