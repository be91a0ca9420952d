"""The account's pools, jobs and tasks, and the rules the service enforces on them.

Pure bookkeeping: no I/O and no clock of its own (callers pass `at`). Handlers and the runner mutate these
objects from the one event loop thread, so no locks are needed. A rule broken here raises `ServiceError`,
which the wire layer turns into Batch's error body.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..backends.base import FailureInfo, TaskResult, TaskState
from ..spec import TaskSpec


class ServiceError(Exception):
    """A Batch error response: HTTP status, service code and message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class PoolState(enum.StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"


class AllocationState(enum.StrEnum):
    STEADY = "steady"
    RESIZING = "resizing"


class NodeState(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"


class JobState(enum.StrEnum):
    ACTIVE = "active"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    DELETING = "deleting"


class OnAllTasksComplete(enum.StrEnum):
    NO_ACTION = "noaction"
    TERMINATE_JOB = "terminatejob"


@dataclass(slots=True, eq=False)
class Node:
    node_id: str
    dedicated: bool
    state: NodeState
    state_transition_time: datetime
    running_tasks: int = 0
    total_tasks_run: int = 0
    total_tasks_succeeded: int = 0

    def set_state(self, state: NodeState, at: datetime) -> None:
        if state is not self.state:
            self.state = state
            self.state_transition_time = at


@dataclass(slots=True, eq=False)
class Pool:
    pool_id: str
    body: dict[str, Any]
    creation_time: datetime
    task_slots_per_node: int
    nodes: list[Node]
    state: PoolState = PoolState.ACTIVE
    state_transition_time: datetime = field(init=False)
    allocation_state: AllocationState = AllocationState.RESIZING
    allocation_state_transition_time: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.state_transition_time = self.creation_time
        self.allocation_state_transition_time = self.creation_time

    @property
    def slots(self) -> int:
        return len(self.nodes) * self.task_slots_per_node

    def nodes_ready(self, at: datetime) -> None:
        for node in self.nodes:
            node.set_state(NodeState.IDLE, at)
        self.allocation_state = AllocationState.STEADY
        self.allocation_state_transition_time = at


def node_id_for(pool_id: str, index: int, dedicated: bool) -> str:
    digest = hashlib.sha256(f"{pool_id}/{index}".encode()).hexdigest()[:24]
    return f"tvmps_{digest}_{'d' if dedicated else 'p'}"


@dataclass(slots=True, eq=False)
class Task:
    job_id: str
    spec: TaskSpec
    body: dict[str, Any]
    seq: int
    creation_time: datetime
    state: TaskState = TaskState.ACTIVE
    state_transition_time: datetime = field(init=False)
    previous_state: TaskState | None = None
    previous_state_transition_time: datetime | None = None
    version: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    last_retry_time: datetime | None = None
    requeue_count: int = 0
    last_requeue_time: datetime | None = None
    pool_id: str | None = None
    node_id: str | None = None
    task_dir: Path | None = None

    def __post_init__(self) -> None:
        self.state_transition_time = self.creation_time

    @property
    def task_id(self) -> str:
        return self.spec.task_id


@dataclass(slots=True)
class Counts:
    active: int = 0
    running: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0

    def copy(self) -> Counts:
        return Counts(self.active, self.running, self.completed, self.succeeded, self.failed)


@dataclass(slots=True, eq=False)
class Job:
    job_id: str
    pool_id: str
    body: dict[str, Any]
    creation_time: datetime
    on_all_tasks_complete: OnAllTasksComplete
    state: JobState = JobState.ACTIVE
    state_transition_time: datetime = field(init=False)
    previous_state: JobState | None = None
    previous_state_transition_time: datetime | None = None
    end_time: datetime | None = None
    terminate_reason: str | None = None
    counts: Counts = field(default_factory=Counts)
    # Tasks by lower-cased id (Batch ids are case-insensitive) and, for paging, in the order they were added.
    _tasks: dict[str, Task] = field(default_factory=dict)
    _by_seq: list[Task] = field(default_factory=list)
    _seqs: list[int] = field(default_factory=list)
    _next_seq: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.state_transition_time = self.creation_time

    def set_state(self, state: JobState, at: datetime) -> None:
        self.previous_state, self.previous_state_transition_time = self.state, self.state_transition_time
        self.state, self.state_transition_time = state, at

    def finish(self, reason: str, at: datetime) -> None:
        self.set_state(JobState.COMPLETED, at)
        self.end_time = at
        self.terminate_reason = reason

    def task(self, task_id: str) -> Task:
        found = self._tasks.get(task_id.lower())
        if found is None:
            raise ServiceError(404, "TaskNotFound", f"The specified task {task_id} does not exist.")
        return found

    def has_task(self, task_id: str) -> bool:
        return task_id.lower() in self._tasks

    def add_task(self, spec: TaskSpec, body: dict[str, Any], at: datetime) -> Task:
        if self.state is not JobState.ACTIVE:
            raise ServiceError(
                409,
                "JobCompleted" if self.state is JobState.COMPLETED else "JobNotActive",
                f"The job {self.job_id} is {self.state}; no tasks can be added.",
            )
        if self.has_task(spec.task_id):
            raise ServiceError(409, "TaskExists", "The specified task already exists.")
        task = Task(self.job_id, spec, body, next(self._next_seq), at)
        self._tasks[spec.task_id.lower()] = task
        self._by_seq.append(task)
        self._seqs.append(task.seq)
        self.counts.active += 1
        return task

    def tasks_after(self, seq: int) -> Iterator[Task]:
        """Tasks added after the one numbered `seq`, oldest first: stable paging while states change."""
        start = bisect.bisect_right(self._seqs, seq)
        return itertools.islice(self._by_seq, start, None)

    def transition(self, task: Task, state: TaskState, at: datetime) -> None:
        """Move a task to `state`, keeping the job's counts in step."""
        self._count(task, -1)
        task.previous_state, task.previous_state_transition_time = task.state, task.state_transition_time
        task.state, task.state_transition_time = state, at
        task.version += 1
        self._count(task, +1)

    def all_complete(self) -> bool:
        return self.counts.completed == len(self._tasks)

    def _count(self, task: Task, delta: int) -> None:
        if task.state is TaskState.ACTIVE:
            self.counts.active += delta
        elif task.state is TaskState.COMPLETED:
            self.counts.completed += delta
            if task.result is TaskResult.SUCCESS:
                self.counts.succeeded += delta
            else:
                self.counts.failed += delta
        else:
            # Batch counts preparing tasks as running.
            self.counts.running += delta


@dataclass(slots=True)
class Account:
    pools: dict[str, Pool] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    def pool(self, pool_id: str) -> Pool:
        found = self.pools.get(pool_id.lower())
        if found is None:
            raise ServiceError(404, "PoolNotFound", f"The specified pool {pool_id} does not exist.")
        return found

    def add_pool(self, pool: Pool) -> None:
        if pool.pool_id.lower() in self.pools:
            raise ServiceError(409, "PoolExists", "The specified pool already exists.")
        self.pools[pool.pool_id.lower()] = pool

    def remove_pool(self, pool: Pool) -> None:
        if self.pools.get(pool.pool_id.lower()) is pool:
            del self.pools[pool.pool_id.lower()]

    def job(self, job_id: str) -> Job:
        found = self.jobs.get(job_id.lower())
        if found is None:
            raise ServiceError(404, "JobNotFound", f"The specified job {job_id} does not exist.")
        return found

    def add_job(self, job: Job) -> None:
        if job.job_id.lower() in self.jobs:
            raise ServiceError(409, "JobExists", "The specified job already exists.")
        self.jobs[job.job_id.lower()] = job

    def remove_job(self, job: Job) -> None:
        if self.jobs.get(job.job_id.lower()) is job:
            del self.jobs[job.job_id.lower()]
