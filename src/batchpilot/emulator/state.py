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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..attempts import reactivation_refused
from ..records import FailureInfo, TaskResult, TaskState
from ..spec import TaskSpec

POOL_BEING_DELETED = "The specified pool has been marked for deletion and is being reclaimed."
JOB_BEING_DELETED = "The specified job has been marked for deletion and is being garbage collected."
# The vCPUs of a VM size, as Azure spells them in its name: Standard_D4s_v3 has 4, Standard_A1_v2 has 1.
_VM_CORES = re.compile(r"^(?:standard|basic)_[a-z]+?(\d+)", re.IGNORECASE)


# The service's messages for Reactivate Task's refusals (`attempts.reactivation_refused`).
_REACTIVATION_REFUSALS = {
    "TaskNotCompleted": "The specified task is not in a completed state, and the requested operation can be "
    "performed only on completed tasks.",
    "TaskSucceeded": "The specified task has already completed successfully, and the requested operation "
    "cannot be performed on successful tasks.",
}


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
    STOPPING = "stopping"


class NodeState(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    LEAVING_POOL = "leavingpool"


class NodeDeallocationOption(enum.StrEnum):
    """What happens to the tasks of a node a resize removes."""

    REQUEUE = "requeue"  # stopped at once, and queued again
    TERMINATE = "terminate"  # stopped at once, and completed as failed
    TASK_COMPLETION = "taskcompletion"  # left to finish; the node takes no new task
    RETAINED_DATA = "retaineddata"  # as taskcompletion (the emulator keeps no data after the task)


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
    boot_time: datetime | None = None  # when it turned idle the first time (lastBootTime)

    def set_state(self, state: NodeState, at: datetime) -> None:
        if state is not self.state:
            if self.state is NodeState.STARTING and state is NodeState.IDLE:
                self.boot_time = at
            self.state = state
            self.state_transition_time = at


@dataclass(frozen=True, slots=True)
class ResizeError:
    """Why a pool has fewer nodes than its target, as Batch reports it in `resizeErrors`."""

    code: str
    message: str


@dataclass(slots=True, eq=False)
class Pool:
    """`nodes` are the nodes allocated; `*_shortfall` counts nodes of the target the account's core quota
    kept away, each kind with its `resize_errors` entry."""

    pool_id: str
    body: dict[str, Any]
    creation_time: datetime
    task_slots_per_node: int
    nodes: list[Node]
    dedicated_shortfall: int = 0
    spot_shortfall: int = 0
    resize_errors: tuple[ResizeError, ...] = ()
    state: PoolState = PoolState.ACTIVE
    state_transition_time: datetime = field(init=False)
    allocation_state: AllocationState = AllocationState.RESIZING
    allocation_state_transition_time: datetime = field(init=False)

    _node_numbers: Iterator[int] = field(init=False)

    def __post_init__(self) -> None:
        self.state_transition_time = self.creation_time
        self.allocation_state_transition_time = self.creation_time
        self._node_numbers = itertools.count(len(self.nodes))

    @property
    def slots(self) -> int:
        return len(self.nodes) * self.task_slots_per_node

    def cores(self, *, dedicated: bool) -> int:
        per_node = cores_per_node(str(self.body.get("vmSize", "")))
        return per_node * sum(1 for node in self.nodes if node.dedicated is dedicated)

    def target(self, *, dedicated: bool) -> int:
        """Nodes of a kind the pool is sized for: those staying, and those the core quota kept away."""
        staying = sum(1 for node in self._staying() if node.dedicated is dedicated)
        return staying + (self.dedicated_shortfall if dedicated else self.spot_shortfall)

    def current(self, *, dedicated: bool) -> int:
        """Nodes of a kind in the pool now: started ones, including those leaving until they are gone."""
        started = (node for node in self.nodes if node.state is not NodeState.STARTING)
        return sum(1 for node in started if node.dedicated is dedicated)

    def resize(
        self, dedicated: int, spot: int, room: Callable[[int, bool], int], at: datetime
    ) -> tuple[list[Node], list[Node]]:
        """Start resizing to `dedicated` + `spot` nodes: new nodes start, surplus ones leave (those not yet
        started first, then idle ones). `room(wanted, dedicated)` says how many new nodes of a kind the core
        quota lets in; the rest is that kind's shortfall. Returns the nodes added and the nodes leaving."""
        if self.state is PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", POOL_BEING_DELETED)
        if self.allocation_state is not AllocationState.STEADY:
            raise ServiceError(409, "PoolBeingResized", "The specified pool is being resized.")
        added: list[Node] = []
        leaving: list[Node] = []
        shortfall = {}
        for kind, target in ((True, dedicated), (False, spot)):
            staying = [node for node in self._staying() if node.dedicated is kind]
            granted = room(target - len(staying), kind) if target > len(staying) else 0
            shortfall[kind] = max(0, target - len(staying) - granted)
            for _ in range(granted):
                number = next(self._node_numbers)
                added.append(Node(node_id_for(self.pool_id, number, kind), kind, NodeState.STARTING, at))
            by_cost = sorted(staying, key=lambda node: _REMOVAL_ORDER[node.state])
            surplus = by_cost[: max(0, len(staying) - target)]
            for node in surplus:
                node.set_state(NodeState.LEAVING_POOL, at)
            leaving += surplus
        self.nodes += added
        self.dedicated_shortfall, self.spot_shortfall = shortfall[True], shortfall[False]
        self.resize_errors = ()
        self._set_allocation(AllocationState.RESIZING, at)
        self.settle(at)  # a resize to the size it has is over at once
        return added, leaving

    def stop_resize(self, at: datetime) -> list[Node]:
        """Stop a resize where it stands: nodes not started yet are dropped (returned, now leaving), nodes
        leaving go on leaving. As the service does (its recorded answer), the targets stay what they were
        and each kind of node left short gets a `ResizeStopped` resize error. Steady once nothing is
        leaving."""
        if self.allocation_state is AllocationState.STEADY:
            return []
        dropped = [node for node in self.nodes if node.state is NodeState.STARTING]
        for node in dropped:
            node.set_state(NodeState.LEAVING_POOL, at)
        for dedicated in (True, False):
            count = sum(1 for node in dropped if node.dedicated is dedicated)
            if dedicated:
                self.dedicated_shortfall += count
            else:
                self.spot_shortfall += count
        self.resize_errors = tuple(
            resize_stopped(dedicated=kind)
            for kind, short in ((True, self.dedicated_shortfall), (False, self.spot_shortfall))
            if short
        )
        self._set_allocation(AllocationState.STOPPING, at)
        self.settle(at)
        return dropped

    def node_left(self, node: Node, at: datetime) -> None:
        self.nodes.remove(node)
        self.settle(at)

    def settle(self, at: datetime) -> None:
        """Steady once no node is starting or leaving."""
        busy = (NodeState.STARTING, NodeState.LEAVING_POOL)
        if not any(node.state in busy for node in self.nodes):
            self._set_allocation(AllocationState.STEADY, at)

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.node_id.lower() == node_id.lower():
                return node
        raise ServiceError(404, "NodeNotFound", f"The specified node {node_id} does not exist.")

    def _staying(self) -> list[Node]:
        return [node for node in self.nodes if node.state is not NodeState.LEAVING_POOL]

    def _set_allocation(self, state: AllocationState, at: datetime) -> None:
        if state is not self.allocation_state:
            self.allocation_state, self.allocation_state_transition_time = state, at


def resize_stopped(*, dedicated: bool) -> ResizeError:
    """The resize error the service leaves when a stopped resize left a kind of node short."""
    kind = "dedicated" if dedicated else "low priority"
    return ResizeError(
        "ResizeStopped",
        f"Desired number of {kind} nodes could not be allocated due to a stop resize operation",
    )


# Which nodes a resize removes first: those not started yet cost nothing to drop, then those doing nothing.
_REMOVAL_ORDER = {NodeState.STARTING: 0, NodeState.IDLE: 1, NodeState.RUNNING: 2, NodeState.LEAVING_POOL: 3}


def cores_per_node(vm_size: str) -> int:
    """A VM size's vCPUs read from its name; 1 when the name says nothing (or says 0, as A0 does)."""
    match = _VM_CORES.match(vm_size)
    return max(1, int(match.group(1))) if match else 1


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

    def remove_task(self, task: Task) -> None:
        """Forget a deleted task: its id is free again and it no longer counts."""
        if self._tasks.get(task.task_id.lower()) is not task:
            return
        self._count(task, -1)
        del self._tasks[task.task_id.lower()]
        index = bisect.bisect_left(self._seqs, task.seq)
        del self._seqs[index], self._by_seq[index]

    def reactivate(self, task: Task, at: datetime) -> None:
        """Batch's Reactivate Task: a task that completed with a failure turns active again under the same
        id, its retry count reset to 0 and its previous execution (exit code, failure, times, node) gone.
        409 TaskNotCompleted / TaskSucceeded otherwise, and JobCompleted / JobNotActive when the job can
        take no task."""
        if (refused := reactivation_refused(task.state, task.result)) is not None:
            raise ServiceError(409, refused, _REACTIVATION_REFUSALS[refused])
        if self.state is not JobState.ACTIVE:
            raise ServiceError(
                409,
                "JobCompleted" if self.state is JobState.COMPLETED else "JobNotActive",
                f"The job {self.job_id} is {self.state}; its tasks cannot be reactivated.",
            )
        self.transition(task, TaskState.ACTIVE, at)
        task.start_time = task.end_time = task.exit_code = task.result = task.failure = None
        task.retry_count, task.last_retry_time = 0, None
        task.requeue_count, task.last_requeue_time = 0, None
        task.pool_id = task.node_id = None

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

    def add_pool(self, pool: Pool, quota: int | None = None) -> None:
        """Add a pool, unless its id is in use (or still being deleted) or the account's pool quota is
        reached; as in Batch, a taken id is reported before the quota."""
        existing = self.pools.get(pool.pool_id.lower())
        if existing is not None and existing.state is PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", POOL_BEING_DELETED)
        if existing is not None:
            raise ServiceError(409, "PoolExists", "The specified pool already exists.")
        # Pools being deleted still count: their nodes are not yet released.
        if quota is not None and len(self.pools) >= quota:
            raise ServiceError(409, "PoolQuotaReached", "Pool quota for the account has been reached.")
        self.pools[pool.pool_id.lower()] = pool

    def cores(self, *, dedicated: bool) -> int:
        return sum(pool.cores(dedicated=dedicated) for pool in self.pools.values())

    def remove_pool(self, pool: Pool) -> None:
        if self.pools.get(pool.pool_id.lower()) is pool:
            del self.pools[pool.pool_id.lower()]

    def job(self, job_id: str) -> Job:
        found = self.jobs.get(job_id.lower())
        if found is None:
            raise ServiceError(404, "JobNotFound", f"The specified job {job_id} does not exist.")
        return found

    def add_job(self, job: Job, quota: int | None = None) -> None:
        """Add a job, unless its id is in use or the account's quota of jobs not completed is reached."""
        if job.job_id.lower() in self.jobs:
            raise ServiceError(409, "JobExists", "The specified job already exists.")
        # Batch counts every job that could still run tasks: all but completed (and deleting) ones.
        active = sum(
            1 for other in self.jobs.values() if other.state in (JobState.ACTIVE, JobState.TERMINATING)
        )
        if quota is not None and active >= quota:
            raise ServiceError(
                409,
                "ActiveJobAndScheduleQuotaReached",
                "Active job and schedule quota for the account has been reached.",
            )
        self.jobs[job.job_id.lower()] = job

    def remove_job(self, job: Job) -> None:
        if self.jobs.get(job.job_id.lower()) is job:
            del self.jobs[job.job_id.lower()]
