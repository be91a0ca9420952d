"""One run's record, fed by the run's events: its summary, and what a report of it needs, bounded.

Pure: no I/O and no clock of its own. `Orchestrator.run()` creates one `RunRecorder` per run (or takes the
caller's), hands it every event of that run as it is published, tells it where each stage starts and ends,
and drops it when the run returns. A caller that passes its own recorder keeps it after the run, to read
`record()` (a report of the run, including one that failed or was interrupted).

    recorder.observe(event)                       # every event of the run, in publish order
    recorder.stage_started(Stage.UPLOAD, at)      # the engine's stage marks (UTC datetimes)
    recorder.stage_ended(Stage.UPLOAD, at)
    summary = recorder.summary(elapsed_s=12.5, timed_out=False, monitoring_stopped=False)
    record = recorder.record()                    # stages and task attempts, for a report

What is kept grows with the run's tasks (their last state, the failed ones, one `TaskAttempt` per attempt up
to `max_attempts`; later attempts are counted in `attempts_dropped`), never with the number of runs: the
recorder goes with its run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from .events import (
    Event,
    FailedTask,
    InputUploaded,
    JobReady,
    OutputDownloaded,
    OutputDownloadFailed,
    ResourceKept,
    RunStarted,
    RunSummary,
    TaskFailed,
    TaskOutputsMissing,
    TaskRequeued,
    TasksSubmitted,
    TaskStateChanged,
    TaskSucceeded,
)
from .records import TaskState

# Warnings kept for a run's summary, each cut to a line's worth.
MAX_WARNINGS = 20
MAX_WARNING_CHARS = 500
# Attempts kept per run for a report: 10,000 tasks with a retry each fit; beyond, attempts are only counted.
MAX_ATTEMPTS = 50_000


class Stage(enum.StrEnum):
    """A run's stages, in the order they begin."""

    POOL = "pool"  # the pool and the job created or reused (a pool id being deleted is waited out here)
    UPLOAD = "upload"  # the inputs uploaded (or found unchanged)
    NODES = "nodes"  # from when tasks can be submitted until the pool has a node that can run them
    SUBMISSION = "submission"  # the tasks added to the job
    MONITORING = "monitoring"  # from the start of submission (alongside it) until every task completed
    DOWNLOADS = "downloads"  # from the first task succeeded (its outputs are fetched) to the last output


@dataclass(frozen=True, slots=True)
class StageSpan:
    """When a stage ran, UTC; `end` is None when the run ended (timed out, failed) before it did."""

    stage: Stage
    start: datetime
    end: datetime | None


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a task ended, as the run's report shows it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"  # failed, and the service tried the task again (its retry count grew)
    REQUEUED = "requeued"  # cut short (a node preempted or removed): back to the queue, not a retry
    UNFINISHED = "unfinished"  # still queued or running when the run ended


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    """One attempt of a task, as the run saw it.

    `start`/`end` are the service's times (Batch's executionInfo.startTime/endTime, UTC) when the events carry
    them, otherwise when the run saw the attempt running and ended; None when never seen. `retry_count` and
    `requeue_count` are the service's counts for this attempt (0 for a first attempt).
    """

    task_id: str
    node_id: str | None
    start: datetime | None
    end: datetime | None
    outcome: AttemptOutcome
    exit_code: int | None
    retry_count: int
    requeue_count: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What a report of one run reads: identity, stage spans, task attempts (at most `MAX_ATTEMPTS`)."""

    run_id: str
    workload: str
    job_id: str
    pool_id: str
    started: datetime | None  # when the run started (its RunStarted event), UTC
    stages: tuple[StageSpan, ...]
    attempts: tuple[TaskAttempt, ...]
    attempts_dropped: int  # attempts not kept, over the bound


@dataclass(slots=True)
class _Current:
    """The attempt of a task now under way (or last seen), from its state changes."""

    state: TaskState
    node_id: str | None = None
    start: datetime | None = None
    exit_code: int | None = None
    retry_count: int = 0
    requeue_count: int = 0


# What `RunRecorder` keeps of a task whose last attempt ended completed: its state alone.
_ENDED = TaskState.COMPLETED


@dataclass(slots=True)
class _Counts:
    uploaded: int = 0
    upload_skipped: int = 0
    added: int = 0
    existing: int = 0
    unsubmitted: int = 0
    retried: int = 0  # failed tasks run again: reactivated, or added again to a later job generation
    readded: int = 0  # of `retried`, those added again (their adds are in `added` too)
    changed: int = 0  # tasks added because their definition changed
    downloaded: int = 0
    download_skipped: int = 0
    download_failed: int = 0


@dataclass(slots=True)
class _Stages:
    starts: dict[Stage, datetime] = field(default_factory=dict)
    ends: dict[Stage, datetime] = field(default_factory=dict)


class RunRecorder:
    """Everything one run's events say that its summary or a report needs. See the module's docstring."""

    def __init__(self, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._max_attempts = max_attempts
        self._started: RunStarted | None = None
        self._counts = _Counts()
        self._succeeded: set[str] = set()
        self._failed: dict[str, FailedTask] = {}
        # A task's attempt under way, or only its state (`_ENDED`) once its attempt ended completed: 100,000
        # completed tasks keep no attempt fields each.
        self._current: dict[str, _Current | TaskState] = {}
        self._attempts: list[TaskAttempt] = []
        self._attempts_dropped = 0
        self._stages = _Stages()
        self._lost_contact: str | None = None
        self._kept: list[ResourceKept] = []
        self._warnings: list[str] = []
        self._job_id: str | None = None  # the job the run went on in, when not the workload's (a generation)

    # --- fed by the engine --------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Take in one event of the run (events of other runs must not be given)."""
        counts = self._counts
        if isinstance(event, RunStarted):
            self._started = event
        elif isinstance(event, JobReady):
            self._job_id = event.job_id
        elif isinstance(event, InputUploaded):
            if event.skipped:
                counts.upload_skipped += 1
            else:
                counts.uploaded += 1
        elif isinstance(event, TasksSubmitted):
            counts.added += event.added
            counts.existing += event.existing
            counts.unsubmitted += event.unsubmitted
            for task_id, reason in event.rejected:
                self._failed[task_id] = FailedTask(task_id, None, f"not added: {reason}", "")
        elif isinstance(event, TaskStateChanged):
            self._state_changed(event)
        elif isinstance(event, TaskRequeued):
            current = self._attempt(event.task_id)
            retried = current is not None and event.retry_count > current.retry_count
            start = current.start if current is not None else None
            # The service's times: the ended attempt's own end where its record still holds it, else when
            # the task went back to the queue.
            end = event.end_time
            if end is None or (start is not None and end < start):
                end = event.transition_time or event.at
            outcome = AttemptOutcome.RETRIED if retried else AttemptOutcome.REQUEUED
            self._end_attempt(event.task_id, outcome, end, None, None)
        elif isinstance(event, TaskSucceeded):
            if self._started is not None and self._started.download_to is not None:
                self._stages.starts.setdefault(Stage.DOWNLOADS, event.at)  # its outputs are fetched now
            self._succeeded.add(event.task_id)
            self._failed.pop(event.task_id, None)
            self._end_attempt(
                event.task_id, AttemptOutcome.SUCCEEDED, event.end_time or event.at, event, event.exit_code
            )
        elif isinstance(event, TaskFailed):
            self._succeeded.discard(event.task_id)
            failure = event.failure
            reason = f"{failure.code}: {failure.message}" if failure else f"exit code {event.exit_code}"
            failed = FailedTask(event.task_id, event.exit_code, reason, event.stderr_tail)
            self._failed[event.task_id] = failed
            self._end_attempt(
                event.task_id, AttemptOutcome.FAILED, event.end_time or event.at, event, event.exit_code
            )
        elif isinstance(event, TaskOutputsMissing):
            # The service called it a success; without its declared outputs it is not one.
            self._succeeded.discard(event.task_id)
            self._failed[event.task_id] = FailedTask(event.task_id, 0, event.reason, "")
        elif isinstance(event, OutputDownloaded | OutputDownloadFailed):
            if isinstance(event, OutputDownloadFailed):
                counts.download_failed += 1
            elif event.skipped:
                counts.download_skipped += 1
            else:
                counts.downloaded += 1
            self._stages.starts.setdefault(Stage.DOWNLOADS, event.at)
            self._stages.ends[Stage.DOWNLOADS] = event.at
        elif isinstance(event, ResourceKept):
            self._kept.append(event)

    def stage_started(self, stage: Stage, at: datetime) -> None:
        """Mark the start of `stage` at `at` (UTC); the first mark counts."""
        self._stages.starts.setdefault(stage, at)

    def stage_ended(self, stage: Stage, at: datetime) -> None:
        """Mark the end of `stage` at `at` (UTC); the last mark counts."""
        self._stages.ends[stage] = at

    def found_in_job(self, count: int) -> None:
        """`count` tasks were in the job already before submission (a re-run): not added again."""
        self._counts.existing += count

    def retried(self, *, retried: int, readded: int = 0) -> None:
        """`retried` failed tasks are run again, `readded` of them added again (to a later generation of the
        job, their adds counted by their TasksSubmitted events too)."""
        self._counts.retried += retried
        self._counts.readded += readded

    def definitions_changed(self, count: int) -> None:
        """`count` of the tasks to add are new because their definition changed (the job has their input)."""
        self._counts.changed += count

    def warn(self, warning: str) -> None:
        """A warning for the run's summary (one line; the first MAX_WARNINGS are kept, then a count)."""
        if len(self._warnings) < MAX_WARNINGS:
            self._warnings.append(warning[:MAX_WARNING_CHARS])
        elif len(self._warnings) == MAX_WARNINGS:
            self._warnings.append("more warnings: see the log")

    def lost_contact(self, reason: str) -> None:
        """Monitoring gave up: the service stopped answering (`reason`); the tasks went on without us."""
        self._lost_contact = reason

    # --- read ---------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The run's id, once its RunStarted event is observed."""
        return self._started.run_id if self._started is not None else None

    @property
    def finished(self) -> int:
        """Tasks that succeeded or failed (refused ones included)."""
        return len(self._succeeded) + len(self._failed)

    @property
    def unsubmitted(self) -> int:
        """Tasks the service could not take even after retries (5xx, throttling): a re-run adds them."""
        return self._counts.unsubmitted

    def failed_ids(self) -> frozenset[str]:
        """The tasks failed so far, those the service refused to add included."""
        return frozenset(self._failed)

    def tasks_by_state(self) -> dict[TaskState, int]:
        """The run's tasks by their last seen state; a task in the job that the monitor has not seen yet
        counts as queued (`active`): incremental listings leave out tasks added since and still queued, so
        many of 100,000 tasks are first seen running or completed."""
        counts = dict.fromkeys(TaskState, 0)
        for current in self._current.values():
            counts[current.state if isinstance(current, _Current) else current] += 1
        tally = self._counts
        in_job = tally.added + tally.existing + tally.retried - tally.readded
        counts[TaskState.ACTIVE] += max(0, in_job - len(self._current))
        return counts

    def kept(self) -> tuple[ResourceKept, ...]:
        """The resources the run left in place (pools cost money), each with the command that removes it."""
        return tuple(self._kept)

    def summary(
        self,
        *,
        elapsed_s: float,
        timed_out: bool,
        monitoring_stopped: bool,
        warnings: tuple[str, ...] = (),
    ) -> RunSummary:
        """The run's summary. `elapsed_s` in seconds; `monitoring_stopped`: the orchestrator was told to stop
        monitoring (a service shutting down), so a run whose tasks did not all finish says `stopped`;
        `warnings`: what the user should know though the run went on (e.g. an image near its end of support).

        Raises RuntimeError before the run's RunStarted event was observed.
        """
        started = self._started
        if started is None:
            raise RuntimeError("a summary needs the run's RunStarted event")
        counts = self._counts
        stopped = monitoring_stopped and not timed_out and self.finished < started.input_count
        return RunSummary(
            run_id=started.run_id,
            job_id=self._job_id or started.job_id,
            workload=started.workload,
            tasks=started.input_count,
            succeeded=len(self._succeeded),
            failed=tuple(self._failed.values()),
            uploaded=counts.uploaded,
            upload_skipped=counts.upload_skipped,
            tasks_added=max(0, counts.added - counts.readded),
            tasks_existing=counts.existing,
            tasks_retried=counts.retried,
            tasks_changed=counts.changed,
            downloaded=counts.downloaded,
            download_skipped=counts.download_skipped,
            download_failed=counts.download_failed,
            elapsed_s=elapsed_s,
            timed_out=timed_out,
            stopped=stopped,
            lost_contact=self._lost_contact,
            unsubmitted=counts.unsubmitted,
            warnings=(*warnings, *self._warnings),
            kept=tuple(self._kept),
        )

    def record(self) -> RunRecord:
        """A report's view of the run so far: stages in the order they began, then every attempt kept, in
        the order they ended; attempts still under way come last as UNFINISHED."""
        started = self._started
        stages = self._stages
        spans = sorted(
            (StageSpan(stage, start, stages.ends.get(stage)) for stage, start in stages.starts.items()),
            key=lambda span: span.start,
        )
        unfinished = [
            TaskAttempt(
                task_id, current.node_id, current.start, None, AttemptOutcome.UNFINISHED,
                current.exit_code, current.retry_count, current.requeue_count,
            )
            for task_id, current in self._current.items()
            if isinstance(current, _Current) and current.state is not TaskState.COMPLETED
        ]  # fmt: skip
        room = max(0, self._max_attempts - len(self._attempts))
        return RunRecord(
            run_id=started.run_id if started else "",
            workload=started.workload if started else "",
            job_id=started.job_id if started else "",
            pool_id=started.pool_id if started else "",
            started=started.at if started else None,
            stages=tuple(spans),
            attempts=(*self._attempts, *unfinished[:room]),
            attempts_dropped=self._attempts_dropped + max(0, len(unfinished) - room),
        )

    # --- attempts -----------------------------------------------------------------------------------------

    def _attempt(self, task_id: str) -> _Current | None:
        """The task's attempt under way or last seen; None when it was never seen, or its last attempt
        ended completed (its fields were let go)."""
        current = self._current.get(task_id)
        return current if isinstance(current, _Current) else None

    def _state_changed(self, event: TaskStateChanged) -> None:
        current = self._attempt(event.task_id)
        new_attempt_after_completion = (
            current is not None and current.state is TaskState.COMPLETED and event.state is not current.state
        )
        if current is None or new_attempt_after_completion:
            current = self._current[event.task_id] = _Current(event.state)
        current.state = event.state
        current.node_id = event.node_id or current.node_id
        current.exit_code = event.exit_code
        current.retry_count = event.retry_count
        current.requeue_count = event.requeue_count
        if event.state in (TaskState.PREPARING, TaskState.RUNNING):
            current.start = event.start_time or current.start or event.transition_time or event.at
        elif event.state is TaskState.COMPLETED and event.start_time is not None:
            current.start = event.start_time

    def _end_attempt(
        self,
        task_id: str,
        outcome: AttemptOutcome,
        at: datetime,
        completion: TaskSucceeded | TaskFailed | None,
        exit_code: int | None,
    ) -> None:
        current = self._attempt(task_id)
        if current is None:
            if outcome in (AttemptOutcome.RETRIED, AttemptOutcome.REQUEUED):
                self._current.setdefault(task_id, _ENDED)
                return  # the attempt was never seen under way: nothing to draw
            current = _Current(TaskState.COMPLETED)
        if outcome in (AttemptOutcome.RETRIED, AttemptOutcome.REQUEUED) and current.start is None:
            return  # the attempt was never seen under way: nothing to draw
        start = current.start
        node_id = current.node_id
        if completion is not None:
            start = completion.start_time or start
            node_id = completion.node_id or node_id
        attempt = TaskAttempt(
            task_id=task_id,
            node_id=node_id,
            start=start,
            end=at,
            outcome=outcome,
            exit_code=exit_code if exit_code is not None else current.exit_code,
            retry_count=current.retry_count,
            requeue_count=current.requeue_count,
        )
        # The next attempt starts afresh; the task's last state stays for tasks_by_state(). An attempt that
        # ended completed leaves only that state: a later one (a reactivated task) starts from nothing.
        current.start = None
        if current.state is TaskState.COMPLETED and outcome in (
            AttemptOutcome.SUCCEEDED,
            AttemptOutcome.FAILED,
        ):
            self._current[task_id] = _ENDED
        if len(self._attempts) < self._max_attempts:
            self._attempts.append(attempt)
        else:
            self._attempts_dropped += 1
