"""Typed events: what happens in a run, as frozen records.

Every event is a frozen dataclass with `run_id`, `at` (UTC) and a stable `kind`, the name it is logged under.
Pure data: `batchpilot.bus` delivers them to subscribers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from .records import FailureInfo, TaskState
from .spec import CleanupPolicy


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """The base of every event: `run_id` (12 hex characters) names the run, `at` when it happened
    (timezone-aware UTC), and the class's `kind` the stable name it is logged and counted under."""

    kind: ClassVar[str] = "event"
    run_id: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    """A run has begun, its inputs read and checked: `input_count` inputs (one task each) will run in
    `job_id` on `pool_id`, reading from `input_container` and writing to `output_container`; outputs land in
    `download_to` (None: left in the container); `cleanup` is what a fully successful run deletes."""

    kind: ClassVar[str] = "run_started"
    workload: str
    job_id: str
    pool_id: str
    input_count: int
    input_container: str
    output_container: str
    download_to: Path | None
    cleanup: CleanupPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class InputUploaded(Event):
    """One input is in the input container: uploaded (`size` bytes), or `skipped` because the same
    content was already there or its task already ran."""

    kind: ClassVar[str] = "input_uploaded"
    blob_name: str
    size: int
    skipped: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolDeletionPending(Event):
    """The pool's id is still being deleted (a previous run's cleanup): the run waits until it is gone."""

    kind: ClassVar[str] = "pool_deletion_pending"
    pool_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolReady(Event):
    """The pool exists: `created` by this run, or reused; `warnings` say how a reused pool differs from
    what the workload asks (a different slot count, image or VM size), one line each."""

    kind: ClassVar[str] = "pool_ready"
    pool_id: str
    created: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodesReady(Event):
    """The pool has nodes that can run tasks (on Azure this can take minutes after PoolReady)."""

    kind: ClassVar[str] = "nodes_ready"
    pool_id: str
    nodes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobReady(Event):
    """The job exists: `created` by this run, or reused (a re-run resumes in it)."""

    kind: ClassVar[str] = "job_ready"
    job_id: str
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksSubmitted(Event):
    """One add-collection request (at most 100 tasks, Batch's limit) was answered: `added` new tasks,
    `existing` ones already in the job (TaskExists), and `rejected` ones as (task id, "code: message")."""

    kind: ClassVar[str] = "tasks_submitted"
    job_id: str
    added: int
    existing: int
    rejected: tuple[tuple[str, str], ...] = ()  # (task_id, reason)
    # Of the rejected, those the service could not take even after retries (5xx, throttling): a re-run
    # adds them.
    unsubmitted: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStateChanged(Event):
    """A task moved from `previous` (None: first seen) to `state`, as the service reports it; the
    other fields are those of its latest attempt (exit code, Batch's failure info, retry and requeue counts,
    timezone-aware UTC times)."""

    kind: ClassVar[str] = "task_state_changed"
    job_id: str
    task_id: str
    previous: TaskState | None
    state: TaskState
    node_id: str | None = None
    exit_code: int | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0
    # The service's times for the task's latest attempt (Batch: executionInfo.startTime/endTime) and for this
    # state (stateTransitionTime); the run report draws its timeline from them.
    start_time: datetime | None = None
    end_time: datetime | None = None
    transition_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(Event):
    """A task completed with success (exit code 0, no failure info); `duration_s` is its last attempt's
    run time in seconds, from the service's start and end times (None when it did not say)."""

    kind: ClassVar[str] = "task_succeeded"
    job_id: str
    task_id: str
    exit_code: int | None
    duration_s: float | None
    node_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(Event):
    """A task completed with failure, after any retries: its last `exit_code` (None when the command
    never ran or did not end on its own), Batch's `failure` info, its last attempt's `duration_s` in seconds,
    and the last lines of its stderr (`stderr_tail`, empty when it could not be read)."""

    kind: ClassVar[str] = "task_failed"
    job_id: str
    task_id: str
    exit_code: int | None
    failure: FailureInfo | None
    duration_s: float | None
    stderr_tail: str = ""
    node_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRequeued(Event):
    """A task went back to the queue from `previous` (running or preparing): a retry after a nonzero
    exit (`retry_count` grew) or an attempt cut short by a lost node (`requeue_count` grew)."""

    kind: ClassVar[str] = "task_requeued"
    job_id: str
    task_id: str
    previous: TaskState
    retry_count: int
    requeue_count: int
    # The service's times: the new state's stateTransitionTime (when the ended attempt went back, or the next
    # one started if that step was missed) and the end time its record holds (Batch keeps one only once a
    # task completes; the local backend keeps the ended attempt's).
    transition_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorDegraded(Event):
    """Several polls in a row failed: task states are unknown (not failed) until one succeeds again."""

    kind: ClassVar[str] = "monitor_degraded"
    job_id: str
    failed_polls: int
    error: str
    gives_up_in_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorRecovered(Event):
    """A poll succeeded again after `failed_polls` failed ones; the monitor was degraded for
    `degraded_s` seconds, during which task states were unknown, not failed."""

    kind: ClassVar[str] = "monitor_recovered"
    job_id: str
    failed_polls: int
    degraded_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputDownloaded(Event):
    """One output blob of a succeeded task is at `path` (`size` bytes): fetched, or `skipped` because
    a file with the same size (and MD5, where the store knows it) was already there."""

    kind: ClassVar[str] = "output_downloaded"
    job_id: str
    task_id: str
    blob_name: str
    path: Path
    size: int
    skipped: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputDownloadFailed(Event):
    """One output of a succeeded task could not be fetched: `error` is one line naming the path,
    the reason and the remedy. The run's summary counts it; the same command run again fetches it."""

    kind: ClassVar[str] = "output_download_failed"
    job_id: str
    task_id: str
    blob_name: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutputsMissing(Event):
    """A task the service says succeeded left no file for some of its output patterns (`patterns`, as
    rendered for it, not the optional ones): Batch then uploads nothing and still calls the task a success
    (azure-docs#37770), so the run counts the task as failed, with `reason` in one line."""

    kind: ClassVar[str] = "task_outputs_missing"
    job_id: str
    task_id: str
    patterns: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceDeleted(Event):
    """The run deleted a resource it no longer needs: `resource` is "container", "job" or "pool"."""

    kind: ClassVar[str] = "resource_deleted"
    resource: str  # "container" | "job" | "pool"
    resource_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceKept(Event):
    """A resource the run leaves in place, with the command that removes it (pools cost money)."""

    kind: ClassVar[str] = "resource_kept"
    resource: str
    resource_id: str
    reason: str
    delete_command: str


@dataclass(frozen=True, slots=True)
class FailedTask:
    """A task of the run that did not succeed: its last `exit_code` (None when it never ran or was not added),
    the `reason` in one line (Batch's failure code and message, the exit code, or why it was not added) and
    the last lines of its stderr (empty when unknown)."""

    task_id: str
    exit_code: int | None
    reason: str
    stderr_tail: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended, as `Orchestrator.run` returns it and `RunFinished` carries it.

    Counts are of tasks (one per input) and of files: `tasks` in the run, `succeeded`, `failed` (one record
    each), inputs `uploaded` or `upload_skipped`, tasks `tasks_added` by this run or `tasks_existing` already
    in the job, outputs `downloaded`, `download_skipped` or `download_failed`. `elapsed_s` is wall-clock
    seconds. `timed_out`: the workload's timeout ended the run; `stopped`: monitoring was stopped (a service
    shutting down); `lost_contact`: why polling gave up. `ok` says whether all went well.
    """

    run_id: str
    job_id: str
    workload: str
    tasks: int
    succeeded: int
    failed: tuple[FailedTask, ...]
    uploaded: int
    upload_skipped: int
    tasks_added: int
    tasks_existing: int
    downloaded: int
    download_skipped: int
    download_failed: int
    elapsed_s: float
    timed_out: bool = False
    stopped: bool = False  # monitoring was stopped (a service shutting down) before every task finished
    # Why monitoring gave up on a service that stopped answering; the tasks went on without us.
    lost_contact: str | None = None
    # Tasks the service could not take even after retries (5xx, throttling, lost connections): a re-run
    # adds them, unlike tasks it refused as invalid.
    unsubmitted: int = 0
    # Failed tasks run again by this run (a re-run retries what failed; Batch's Reactivate Task).
    tasks_retried: int = 0
    # Of `tasks_added`, those new because their definition (command, outputs, container, environment,
    # resource files) changed: the job had a task of the same input under another definition.
    tasks_changed: int = 0
    # What the user should know and act on, though the run went on: e.g. a reused pool past its image's end
    # of Batch support, or an image whose support ends soon.
    warnings: tuple[str, ...] = ()
    # The resources the run leaves in place (pools cost money), each with the command that removes it. Cleanup
    # acts on RunFinished, so these are in the summary `Orchestrator.run()` returns, not in that event's.
    kept: tuple[ResourceKept, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every task succeeded and every output was fetched, with no timeout, stop or lost
        contact; warnings do not count."""
        return (
            not self.timed_out
            and not self.stopped
            and self.lost_contact is None
            and self.succeeded == self.tasks
            and not self.failed
            and self.download_failed == 0
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """The run ended; `summary` says how (check `summary.ok`). The last event of every run."""

    kind: ClassVar[str] = "run_finished"
    summary: RunSummary
