"""The records the core and every backend share: task states and views, add results, blobs, permissions.

Plain frozen dataclasses and enums, no I/O and no backend. A backend returns these (never SDK models); the
monitor's state machine, the events and the engine read them. Names follow Batch's REST API (task states,
`executionInfo.result`, `failureInfo`, the add-collection statuses) and Storage's (blob, container SAS).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import BatchpilotError


class TaskState(enum.StrEnum):
    """Batch's task states (REST: TaskState), in the order a task goes through them; a retried or requeued
    task goes back to ACTIVE."""

    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class TaskResult(enum.StrEnum):
    """How a completed task ended (REST: TaskExecutionInformation.result): success is exit code 0 with no
    failure info."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """Why a task failed, in Batch's terms (REST: TaskFailureInformation): `category` is `usererror` or
    `servererror`, `code` a short identifier such as `FileUploadFailed`, `message` one human-readable line."""

    category: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as the service reports it (REST: CloudTask), trimmed to the fields the monitor uses.

    `state_transition_time` (timezone-aware UTC) is when it entered `state`; `exit_code`, `result` and
    `failure` describe its last attempt; `retry_count` counts retries after a nonzero exit, `requeue_count`
    attempts cut short by a lost node (spot preemption) that did not count as retries. `start_time` and
    `end_time` are those of the last attempt, None until it started or ended.
    """

    task_id: str
    state: TaskState
    state_transition_time: datetime
    node_id: str | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None

    def __post_init__(self) -> None:
        # The monitor keeps the last view of each of a run's tasks (100,000 of them), and each listing gives
        # every task its own copy of its node's id (80 characters on Batch) and of its times: a view holds
        # one shared object per node id, and a completed task's end time as its transition time when they
        # are equal (the service reports them so).
        if self.node_id is not None:
            object.__setattr__(self, "node_id", _shared_node_id(self.node_id))
        end, entered = self.end_time, self.state_transition_time
        if end is not None and end is not entered and end.tzinfo is entered.tzinfo and end == entered:
            object.__setattr__(self, "end_time", entered)


# Node ids seen lately, each as one object: a pool has far fewer nodes than a run has tasks. Bounded (emptied
# when full), so a long-lived process that meets ever new nodes keeps no more than this many.
_NODE_IDS_KEPT = 4096
_node_ids: dict[str, str] = {}


def _shared_node_id(node_id: str) -> str:
    shared = _node_ids.get(node_id)
    if shared is None:
        if len(_node_ids) >= _NODE_IDS_KEPT:
            _node_ids.clear()
        shared = _node_ids[node_id] = node_id
    return shared


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """A job's tasks by state (REST: Get Task Counts); `running` includes preparing tasks, and completed
    tasks split into `succeeded` and `failed`. The service may report these a few seconds behind a listing."""

    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        """Every task in the job: active + running + completed."""
        return self.active + self.running + self.completed


class AddStatus(enum.StrEnum):
    """The status of one task in an add-collection answer (REST: TaskAddStatus): `EXISTS` is Batch's
    `TaskExists` error, reported here as its own status because a re-run expects it."""

    ADDED = "added"
    EXISTS = "exists"
    CLIENT_ERROR = "clienterror"
    SERVER_ERROR = "servererror"


@dataclass(frozen=True, slots=True)
class AddTaskResult:
    """The outcome for one task of an add-collection request (REST: TaskAddResult); `error_code` and
    `message` are the service's, None when the task was added."""

    task_id: str
    status: AddStatus
    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Ensured:
    """A pool or job that now exists; `created` is False when it was already there and is reused."""

    resource_id: str
    created: bool
    warnings: tuple[str, ...] = ()
    # A job that has completed (its tasks all done, or its wall clock reached): readable, but takes no tasks.
    ended: str | None = None


class Permission(enum.Flag):
    """What a SAS URL lets its holder do (Storage's `sp` letters r, c, w, l); combine with `|`."""

    READ = enum.auto()
    CREATE = enum.auto()
    WRITE = enum.auto()
    LIST = enum.auto()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One blob: its full `name` in the container, its `size` in bytes and the MD5 Blob Storage keeps for
    it (hex), None when the store has none (a blob uploaded in blocks)."""

    name: str
    size: int
    md5_hex: str | None


@dataclass(frozen=True, slots=True)
class BlobDownload:
    """What `Storage.download_prefix` did with one blob it was asked for: wrote `blob` to `path`, or left a
    file already there (`skipped`: the blob's size and content), or failed with `error` (a BackendError from
    the store, or the OSError of writing `path`: a full disk, an unwritable folder)."""

    blob: BlobInfo
    path: Path
    skipped: bool = False
    error: BatchpilotError | OSError | None = None


class UploadOutcome(enum.StrEnum):
    """What `Storage.upload` did: sent the file, or skipped it because a blob of the same size and MD5 was
    already there."""

    UPLOADED = "uploaded"
    SKIPPED = "skipped"
