"""The records the core and every backend share: task states and views, add results, blobs, permissions.

Plain frozen dataclasses and enums, no I/O and no backend. A backend returns these (never SDK models); the
monitor's state machine, the events and the engine read them. Names follow Batch's REST API (task states,
`executionInfo.result`, `failureInfo`, the add-collection statuses) and Storage's (blob, container SAS).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class TaskState(enum.StrEnum):
    """Batch's task states."""

    ACTIVE = "active"
    PREPARING = "preparing"
    RUNNING = "running"
    COMPLETED = "completed"


class TaskResult(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """Why a task failed, in Batch's terms: category (usererror/servererror), code and message."""

    category: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class TaskView:
    """One task as the service reports it: the fields the monitor uses and nothing else."""

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


@dataclass(frozen=True, slots=True)
class TaskCounts:
    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.active + self.running + self.completed


class AddStatus(enum.StrEnum):
    ADDED = "added"
    EXISTS = "exists"
    CLIENT_ERROR = "clienterror"
    SERVER_ERROR = "servererror"


@dataclass(frozen=True, slots=True)
class AddTaskResult:
    """The outcome for one task of an add-collection request."""

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
    READ = enum.auto()
    CREATE = enum.auto()
    WRITE = enum.auto()
    LIST = enum.auto()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    size: int
    md5_hex: str | None


class UploadOutcome(enum.StrEnum):
    UPLOADED = "uploaded"
    SKIPPED = "skipped"
