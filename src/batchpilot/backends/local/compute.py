"""Pools, jobs and tasks on this machine, with Batch's semantics.

A pool is a number of slots (nodes x task slots per node), each a worker that takes queued tasks in order
and runs them through the executor. Every task keeps a record on disk, written at each state change, so the
folder plays the part of the service: a restarted orchestrator finds its job, its tasks and their states.
A task that was running when its orchestrator stopped was killed with it (no orphans) and is requeued, as a
preempted task is on Batch.

    <root>/pools/<pool_id>.json
    <root>/jobs/<job_id>/job.json
    <root>/jobs/<job_id>/tasks.jsonl        the job's task records: a journal, one JSON line per record
    <root>/jobs/<job_id>/tasks/<task_id>/{stdout.txt, stderr.txt, wd/}

The journal is appended to, never rewritten in place: a task's later line replaces its earlier ones, so a
state change costs a line, not a file (a file per task and state made three inodes per task). A line cut
short by a crash has no newline and is ignored; the journal is compacted (rewritten to one line per task,
then renamed over) when it holds much more than its live records, and when a job is resumed. State folders
of earlier versions kept `tasks/<task_id>/task.json`: those are read, moved into the journal on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ...attempts import Decision, after_attempt, reactivation_refused
from ...errors import BackendError, ConfigError, NotFoundError, RequestTooLargeError
from ...files import FolderLock
from ...images import ImageVerdict, Reason, Verdict
from ...records import (
    AddStatus,
    AddTaskResult,
    Ensured,
    FailureInfo,
    TaskCounts,
    TaskResult,
    TaskState,
    TaskView,
)
from ...spec import (
    ContainerSettings,
    JobSpec,
    OutputFile,
    PoolSpec,
    ResourceFile,
    TaskConstraints,
    TaskSpec,
    UploadCondition,
    check_batch_id,
    leaves_root,
)
from ..base import PageHandler
from .executor import (
    TASK_DIR_VARIABLE,
    Execution,
    Stager,
    base_environment,
    container_runtime,
    end_strays,
    execute,
)

_log = structlog.get_logger("batchpilot.local")
JOURNAL = "tasks.jsonl"  # in the job's folder: its task records
MAX_TASKS_PER_REQUEST = 100
# Each slot is a worker here, running its task as a process: more than this would exhaust the machine.
MAX_LOCAL_SLOTS = 1024


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    state: TaskState = TaskState.ACTIVE
    transition_time: datetime = field(default_factory=_now)
    node_id: str | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    cancel_scope: anyio.CancelScope | None = None
    # The spec never changes, and turning it into a record is most of the cost of each state's record.
    spec_record: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec_record = _spec_to_json(self.spec)

    def move(self, state: TaskState) -> None:
        self.state = state
        # Strictly increasing, so that every change is distinguishable from a re-read of the same state.
        self.transition_time = max(_now(), self.transition_time + timedelta(microseconds=1))

    def view(self) -> TaskView:
        return TaskView(
            task_id=self.spec.task_id,
            state=self.state,
            state_transition_time=self.transition_time,
            node_id=self.node_id,
            exit_code=self.exit_code,
            result=self.result,
            failure=self.failure,
            retry_count=self.retry_count,
            requeue_count=self.requeue_count,
            start_time=self.start_time,
            end_time=self.end_time,
        )


@dataclass(slots=True, eq=False)
class _Journal:
    """A job's task records on disk (`tasks.jsonl`): one JSON line per record, a task's last line winning.
    A task's spec, which never changes, is on its first line only.

    A record is appended on the event loop, a write of a few hundred bytes on a descriptor kept open (as a
    log line is written): a worker-thread trip per record cost more than the write, and the write is done
    (in the file, where a crash of the process loses nothing; no fsync) when `append` returns. Compaction
    rewrites the file in a worker thread; appends wait for it (`compacting`)."""

    path: Path
    lines: int = 0  # complete lines in the file
    with_spec: set[str] = field(default_factory=set)  # tasks whose spec is on a line in the file
    deleted: bool = False  # the job's folder is being removed: nothing more is written
    compacting: anyio.Event | None = None  # set while a rewrite runs, set() when it has ended
    _fd: int | None = None
    _size: int = 0

    def append(self, records: Iterable[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Append `(task id, record, spec)` as lines in one write (the spec where the file has none of that
        task yet). OSError when the file cannot be written (nothing of the write is left in it); nothing
        once the job is deleted. Not while `compacting`."""
        if self.deleted:
            return
        lines, ids = [], []
        for task_id, record, spec in records:
            if task_id not in self.with_spec:
                record = {**record, "spec": spec}
            lines.append(json.dumps(record, separators=(",", ":")))
            ids.append(task_id)
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        if self._fd is None:
            # Once per job (and after each compaction); the file is made by the first record.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size  # this process is the job's only writer (its lock)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A disk full halfway: the part written goes, or the next line would be glued to it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.lines += len(lines)
        self.with_spec.update(ids)

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the file with one line per record (each with its spec): a new file renamed over the old,
        so a reader or a crash sees either whole. OSError when it cannot be written. Blocking: in a worker
        thread, with `compacting` set so that nothing is appended meanwhile; `close()` after it (on the
        event loop, as every use of the descriptor): the descriptor is the old file's."""
        if self.deleted:
            return
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with temporary.open("w") as handle:
                handle.writelines(json.dumps(record, separators=(",", ":")) + "\n" for record in records)
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.lines = len(records)
        self.with_spec = {record["task_id"] for record in records}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# Compacted when the journal holds more lines than this many per task, plus the slack: each task writes
# about three (queued, running, completed), two more per retry or requeue.
_COMPACT_LINES_PER_TASK = 6
_COMPACT_SLACK = 1024


@dataclass(slots=True, eq=False)
class _Job:
    spec: JobSpec
    directory: Path
    tasks: dict[str, _Task] = field(default_factory=dict)
    journal: _Journal = field(init=False)

    def __post_init__(self) -> None:
        self.journal = _Journal(self.directory / JOURNAL)


@dataclass(slots=True, eq=False)
class _Slot:
    """One worker. Retiring it lets the task it runs finish; only its wait for a next task is cut short."""

    node_id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # the whole worker
    waiting: anyio.CancelScope | None = None  # set while it waits for a task, so idle
    retired: bool = False

    def retire(self) -> None:
        self.retired = True
        if self.waiting is not None:
            self.waiting.cancel()


@dataclass(slots=True, eq=False)
class _Pool:
    spec: PoolSpec
    queue: MemoryObjectSendStream[tuple[_Job, _Task]]
    # Kept open for the pool's life: with no slot at all, queued tasks wait here instead of being refused.
    waiting: MemoryObjectReceiveStream[tuple[_Job, _Task]]
    slots: list[_Slot] = field(default_factory=list)  # retired slots stay until their task has finished
    slots_started: int = 0


class LocalCompute:
    def __init__(self, root: Path, *, stager: Stager, tool_dirs: Sequence[Path] = ()) -> None:
        self._root = root
        self._stager = stager
        self._tool_dirs = tuple(tool_dirs)
        self._pools: dict[str, _Pool] = {}
        self._jobs: dict[str, _Job] = {}
        # One writer per job folder: two processes running the same job would run every task twice.
        self._locks: dict[str, FolderLock] = {}
        self._task_group: TaskGroup | None = None
        # What every task inherits of the orchestrator's environment: read when the backend opens, not
        # at each task (a walk of the whole environment).
        self._base_environment: dict[str, str] = {}

    def attach(self, task_group: TaskGroup) -> None:
        """Workers run in the backend's task group, so they end when the backend closes."""
        self._task_group = task_group
        self._base_environment = base_environment(os.environ, self._tool_dirs)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.queue.close()
            pool.waiting.close()
        self._pools.clear()
        for job in self._jobs.values():
            job.journal.close()
        self._jobs.clear()
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()

    # --- pools and jobs -------------------------------------------------------------------------------

    async def check_pool_image(self, spec: PoolSpec) -> ImageVerdict:
        """Nothing to check: local pools are slots on this machine, with no image or node agent."""
        return ImageVerdict(Verdict.OK, Reason.NO_IMAGES)

    async def ensure_pool(self, spec: PoolSpec) -> Ensured:
        check_batch_id("pool", spec.pool_id)  # a name is a name: it names a file here
        if spec.total_slots > MAX_LOCAL_SLOTS:
            raise ConfigError(
                f"the pool asks for {spec.total_slots:,} slots (nodes x task slots); the local backend runs "
                f"at most {MAX_LOCAL_SLOTS:,} tasks at once on this machine: give fewer --nodes"
            )
        if spec.container_images:
            container_runtime()  # before anything exists: container tasks must never run on the host
        path = self._root / "pools" / f"{spec.pool_id}.json"
        warnings: tuple[str, ...] = ()
        existed = await anyio.Path(path).is_file()
        if existed:
            recorded = json.loads(await anyio.Path(path).read_text())
            if recorded.get("slots") != spec.total_slots:
                warnings = (f"pool {spec.pool_id} had {recorded.get('slots')} slots; now {spec.total_slots}",)
        await _write_json(path, {"pool_id": spec.pool_id, "slots": spec.total_slots})
        await anyio.Path(self._root / "shared").mkdir(parents=True, exist_ok=True)
        if spec.pool_id not in self._pools:
            self._start_pool(spec)
        elif self.slots(spec.pool_id) == 0:
            # Scaled to zero by an earlier run or an idle service: its slots come back for this one.
            await self.resize_pool(spec.pool_id, spec.dedicated_nodes, spec.spot_nodes)
        return Ensured(spec.pool_id, created=not existed, warnings=warnings)

    async def wait_for_nodes(self, pool_id: str) -> int:
        try:
            return self._pools[pool_id].spec.total_slots  # local slots exist as soon as the pool does
        except KeyError:
            raise NotFoundError(f"pool {pool_id!r} not found", code="PoolNotFound") from None

    def _start_pool(self, spec: PoolSpec) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[_Job, _Task]](math.inf)
        pool = _Pool(spec, send, receive)
        self._add_slots(pool, spec.total_slots)
        self._pools[spec.pool_id] = pool

    def _add_slots(self, pool: _Pool, count: int) -> None:
        if self._task_group is None:
            raise RuntimeError("the local backend must be opened with `async with` before use")
        for _ in range(count):
            slot = _Slot(f"{pool.spec.pool_id}-slot-{pool.slots_started}")
            pool.slots_started += 1
            pool.slots.append(slot)
            self._task_group.start_soon(self._worker, pool, pool.waiting.clone(), slot)

    async def resize_pool(self, pool_id: str, dedicated: int, spot: int) -> None:
        """Run tasks on (dedicated + spot) x task slots per node; at zero, tasks wait in the queue."""
        pool = self._pool(pool_id)
        wanted = (dedicated + spot) * pool.spec.task_slots_per_node
        serving = [slot for slot in pool.slots if not slot.retired]
        if wanted > len(serving):
            self._add_slots(pool, wanted - len(serving))
        else:
            # Idle slots go first, as Batch removes idle nodes first.
            for slot in sorted(serving, key=lambda slot: slot.waiting is None)[: len(serving) - wanted]:
                slot.retire()
        _log.info("local_pool_resized", pool_id=pool_id, slots=wanted)

    def slots(self, pool_id: str) -> int:
        """How many slots the pool runs tasks on now (a retiring slot finishing its task not counted)."""
        return sum(not slot.retired for slot in self._pool(pool_id).slots)

    def _pool(self, pool_id: str) -> _Pool:
        try:
            return self._pools[pool_id]
        except KeyError:
            raise NotFoundError(f"pool {pool_id!r} not found", code="PoolNotFound") from None

    async def ensure_job(self, spec: JobSpec) -> Ensured:
        if spec.pool_id not in self._pools:
            raise NotFoundError(
                f"pool {spec.pool_id!r} is not ready; ensure the pool first", code="PoolNotFound"
            )
        if spec.job_id in self._jobs:
            return Ensured(spec.job_id, created=False)
        directory = self._root / "jobs" / check_batch_id("job", spec.job_id)
        await self._lock_job(spec.job_id, directory)
        job = _Job(spec, directory)
        existed = await anyio.Path(directory / "job.json").is_file()
        # Registered before its tasks are queued: a worker drops tasks of jobs it does not know (deleted).
        self._jobs[spec.job_id] = job
        if existed:
            await self._resume(job)
        else:
            # A journal with no job.json is a deleted job's leftover (a last record racing the deletion).
            await anyio.Path(job.journal.path).unlink(missing_ok=True)
            await _write_json(directory / "job.json", {"job_id": spec.job_id, "pool_id": spec.pool_id})
        return Ensured(spec.job_id, created=not existed)

    async def _lock_job(self, job_id: str, directory: Path) -> None:
        """Hold the job's folder for this process (StateInUseError, naming the holder, if another has it)."""
        if job_id not in self._locks:
            self._locks[job_id] = await anyio.to_thread.run_sync(
                lambda: FolderLock(directory, what=f"the state of job {job_id}")
            )

    async def _resume(self, job: _Job) -> None:
        """Load the job's tasks; requeue those that were queued or cut short when the last process ended.
        The journal is compacted first thing (one line per task, any line cut short by a crash gone, the
        task.json files of an earlier version's folder moved into it)."""
        read = await anyio.to_thread.run_sync(_read_task_records, job.directory)
        records = read.tasks
        stopped = [task for task in records if task.state not in (TaskState.COMPLETED, TaskState.ACTIVE)]
        if stopped:
            # Their processes died with their orchestrator (the executor's watchdog); any that did not are
            # ended before their tasks run again in the same directories (one look at the processes).
            task_dirs = [job.directory / "tasks" / task.spec.task_id for task in stopped]
            ended = await anyio.to_thread.run_sync(end_strays, task_dirs)
            if ended:
                _log.warning("local_strays_ended", job_id=job.spec.job_id, processes=ended)
            for task in stopped:
                task.requeue_count += 1
                task.move(TaskState.ACTIVE)
        for task in records:
            job.tasks[task.spec.task_id] = task
        if records or read.lines:
            await _compact(job)
        if read.legacy:
            await anyio.to_thread.run_sync(_remove_legacy_records, read.legacy)
        for task in records:
            if task.state is not TaskState.COMPLETED:
                self._enqueue(job, task)
        if records:
            _log.info("local_job_resumed", job_id=job.spec.job_id, tasks=len(records))

    def _enqueue(self, job: _Job, task: _Task) -> None:
        self._pools[job.spec.pool_id].queue.send_nowait((job, task))

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"job {job_id!r} not found", code="JobNotFound") from None

    # --- tasks ----------------------------------------------------------------------------------------

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        if len(tasks) > MAX_TASKS_PER_REQUEST:
            raise RequestTooLargeError(
                f"{len(tasks)} tasks in one request; at most 100", code="RequestBodyTooLarge"
            )
        job = self._job(job_id)
        results = []
        added = []
        for spec in tasks:
            if spec.task_id in job.tasks:
                results.append(AddTaskResult(spec.task_id, AddStatus.EXISTS, "TaskExists", "The task exists"))
                continue
            try:
                check_batch_id("task", spec.task_id)  # it names the task's folder
            except ConfigError as exc:
                results.append(
                    AddTaskResult(spec.task_id, AddStatus.CLIENT_ERROR, "InvalidPropertyValue", str(exc))
                )
                continue
            task = _Task(spec)
            job.tasks[spec.task_id] = task
            added.append(task)
            results.append(AddTaskResult(spec.task_id, AddStatus.ADDED))
        await self._persist(job, *added)
        for task in added:
            self._enqueue(job, task)
        return results

    async def reactivate_task(self, job_id: str, task_id: str) -> None:
        """As Batch's Reactivate Task: a failed task runs again under its id, its last attempt cleared. A
        local job never ends, so only the task's state can refuse (409 TaskNotCompleted, TaskSucceeded)."""
        job = self._job(job_id)
        task = job.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id!r} of job {job_id!r} not found", code="TaskNotFound")
        if (refused := reactivation_refused(task.state, task.result)) is not None:
            raise BackendError(f"task {task_id} cannot run again ({refused}): nothing to retry", code=refused)
        task.exit_code = task.result = task.failure = task.node_id = None
        task.start_time = task.end_time = None
        task.retry_count = task.requeue_count = 0
        task.move(TaskState.ACTIVE)
        await self._persist(job, task)
        self._enqueue(job, task)

    async def task_counts(self, job_id: str) -> TaskCounts:
        tasks = self._job(job_id).tasks.values()
        by_state = {state: 0 for state in TaskState}
        succeeded = 0
        for task in tasks:
            by_state[task.state] += 1
            succeeded += task.result is TaskResult.SUCCESS
        completed = by_state[TaskState.COMPLETED]
        return TaskCounts(
            active=by_state[TaskState.ACTIVE],
            running=by_state[TaskState.PREPARING] + by_state[TaskState.RUNNING],
            completed=completed,
            succeeded=succeeded,
            failed=completed - succeeded,
        )

    async def list_tasks(
        self,
        job_id: str,
        changed_since: datetime | None = None,
        *,
        changed_until: datetime | None = None,
        queued: bool = True,
        on_page: PageHandler | None = None,
    ) -> list[TaskView]:
        job = self._jobs.get(job_id)
        if job is not None:
            tasks = list(job.tasks.values())
        else:
            # A job this process has not opened (`batchpilot report --job`): its records on disk, read only;
            # opening it (ensure_job) would run its queued tasks.
            directory = await self._job_directory(job_id)
            tasks = (await anyio.to_thread.run_sync(_read_task_records, directory)).tasks
        views = [
            task.view()
            for task in tasks
            if (changed_since is None or task.transition_time >= changed_since)
            and (changed_until is None or task.transition_time <= changed_until)
        ]
        if on_page is None:
            return views
        await on_page(views)  # one page: the whole answer
        return []

    async def _job_directory(self, job_id: str) -> Path:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.directory
        directory = self._root / "jobs" / check_batch_id("job", job_id)
        if not await anyio.Path(directory / "job.json").is_file():
            raise NotFoundError(f"job {job_id!r} not found", code="JobNotFound")
        return directory

    async def read_task_file(self, job_id: str, task_id: str, name: str, *, tail: int | None = None) -> bytes:
        path = await self._job_directory(job_id) / "tasks" / task_id / name
        if leaves_root(f"{task_id}/{name}") or "/" in task_id or not await anyio.Path(path).is_file():
            raise NotFoundError(f"task file {name!r} of {task_id!r} not found", code="FileNotFound")
        if tail is None:
            return await anyio.Path(path).read_bytes()
        return await anyio.to_thread.run_sync(_read_tail, path, tail)

    async def end_job_when_done(self, job_id: str) -> None:
        """Nothing to do: a local job's tasks cannot outlive the process that runs them."""

    async def delete_job(self, job_id: str) -> None:
        directory = self._root / "jobs" / check_batch_id("job", job_id)
        if await anyio.Path(directory).is_dir():
            await self._lock_job(job_id, directory)  # never under a process that runs the job
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.journal.deleted = True
            job.journal.close()
            for task in job.tasks.values():
                if task.cancel_scope is not None:
                    task.cancel_scope.cancel()
        await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
        if (lock := self._locks.pop(job_id, None)) is not None:
            lock.release()

    async def delete_pool(self, pool_id: str) -> None:
        check_batch_id("pool", pool_id)
        pool = self._pools.pop(pool_id, None)
        if pool is not None:
            for slot in pool.slots:
                slot.scope.cancel()
            pool.queue.close()
            pool.waiting.close()
        await anyio.Path(self._root / "pools" / f"{pool_id}.json").unlink(missing_ok=True)

    # --- execution ------------------------------------------------------------------------------------

    async def _worker(
        self, pool: _Pool, queue: MemoryObjectReceiveStream[tuple[_Job, _Task]], slot: _Slot
    ) -> None:
        with slot.scope:
            async with queue:
                try:
                    while not slot.retired:
                        with anyio.CancelScope() as slot.waiting:
                            job, task = await queue.receive()
                        if slot.waiting.cancelled_caught:  # retired while idle: nothing was taken
                            return
                        slot.waiting = None
                        if self._jobs.get(job.spec.job_id) is job and task.state is TaskState.ACTIVE:
                            await self._run(job, task, slot.node_id)
                except anyio.EndOfStream:
                    return
                finally:
                    pool.slots.remove(slot)

    async def _run(self, job: _Job, task: _Task, node_id: str) -> None:
        task.node_id = node_id
        # Recorded in memory only: the record on disk says running once the files are in, and a task stopped
        # while preparing is queued again either way. One write less per task.
        task.move(TaskState.PREPARING)
        task_dir = job.directory / "tasks" / task.spec.task_id
        with anyio.CancelScope() as scope:
            task.cancel_scope = scope
            try:

                async def running() -> None:
                    # As on Batch: the record's start time is this attempt's once it runs; no end yet.
                    task.start_time, task.end_time = _now(), None
                    task.move(TaskState.RUNNING)
                    # Once the command is launched (the executor calls this then): a line appended.
                    await self._persist(job, task)

                execution = await execute(
                    task.spec,
                    task_dir,
                    stager=self._stager,
                    env=self._environment(job, task, task_dir),
                    now=_now,
                    on_running=running,
                )
            except anyio.get_cancelled_exc_class():
                # Our orchestrator is stopping (or the job was deleted): the executor has killed the process;
                # the task goes back to the queue on disk and runs again on resume, like a preempted task.
                with anyio.CancelScope(shield=True):
                    task.requeue_count += 1
                    task.move(TaskState.ACTIVE)
                    if self._jobs.get(job.spec.job_id) is job:
                        await self._persist(job, task)
                raise
            finally:
                task.cancel_scope = None
        if scope.cancelled_caught:
            return
        await self._finish(job, task, execution)

    async def _finish(self, job: _Job, task: _Task, execution: Execution) -> None:
        task.start_time, task.end_time = execution.start_time, execution.end_time
        task.exit_code, task.failure = execution.exit_code, execution.failure
        decision = after_attempt(
            exit_code=execution.exit_code,
            failure=execution.failure,
            retry_count=task.retry_count,
            max_task_retry_count=task.spec.constraints.max_task_retry_count,
        )
        if decision is Decision.RETRY:
            task.retry_count += 1
            task.move(TaskState.ACTIVE)
            await self._persist(job, task)
            self._enqueue(job, task)
            return
        task.result = TaskResult.SUCCESS if decision is Decision.SUCCEED else TaskResult.FAILURE
        task.move(TaskState.COMPLETED)
        await self._persist(job, task)

    def _environment(self, job: _Job, task: _Task, task_dir: Path) -> dict[str, str]:
        # Not the orchestrator's whole environment: its credentials are not the task's.
        env = dict(self._base_environment)
        env.update(
            AZ_BATCH_POOL_ID=job.spec.pool_id,
            AZ_BATCH_JOB_ID=job.spec.job_id,
            AZ_BATCH_TASK_ID=task.spec.task_id,
            AZ_BATCH_NODE_ID=task.node_id or "",
            AZ_BATCH_TASK_WORKING_DIR=str(task_dir / "wd"),
            AZ_BATCH_NODE_SHARED_DIR=str(self._root / "shared"),
        )
        env[TASK_DIR_VARIABLE] = str(task_dir)  # also what marks the task's processes (end_strays)
        env.update(task.spec.environment)
        return env

    async def _persist(self, job: _Job, *tasks: _Task) -> None:
        """Return once the tasks' records (or newer ones of the same tasks) are in the job's journal. A
        journal grown past its bound is compacted instead, from every task of the job. OSError when the
        journal cannot be written."""
        journal = job.journal
        while journal.compacting is not None:  # a rewrite is under way: the records go after it
            await journal.compacting.wait()
        if journal.lines > _COMPACT_LINES_PER_TASK * len(job.tasks) + _COMPACT_SLACK:
            await _compact(job)
        else:
            journal.append((task.spec.task_id, _task_to_json(task), task.spec_record) for task in tasks)


async def _compact(job: _Job) -> None:
    """Rewrite the job's journal as one line per task, from the tasks' states now, in a worker thread;
    records to append meanwhile wait for it (they are newer than its lines). Shielded: once begun, the
    rewrite ends before anything else is written."""
    journal = job.journal
    snapshot = [_task_to_json(task, spec=True) for task in job.tasks.values()]
    journal.compacting = anyio.Event()
    try:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(journal.rewrite, snapshot)
        journal.close()  # the old file's: the next record opens the new one
    finally:
        ended, journal.compacting = journal.compacting, None
        ended.set()


async def _write_json(path: Path, data: dict[str, Any]) -> None:
    await anyio.to_thread.run_sync(_write_json_files, [(path, data)])


def _write_json_files(files: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    for path, data in files:
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # concurrent writers never collide
        text = json.dumps(data)
        try:
            temporary.write_text(text)
        except FileNotFoundError:  # the first record of a task: its folder is made once, not at each write
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text)
        os.replace(temporary, path)


@dataclass(frozen=True, slots=True)
class _Read:
    """A job's task records as read from its folder."""

    tasks: list[_Task]
    lines: int  # complete lines in the journal (0 when there is none)
    legacy: list[Path]  # task.json files of an earlier version's layout, read too


def _read_task_records(directory: Path) -> _Read:
    """The job's tasks from its folder's journal, a task's last line winning, a last line with no newline
    (a write cut short) ignored; and from the task.json files an earlier version kept per task, which the
    journal's lines, newer, replace. BackendError naming the file for a record that cannot be read."""
    latest: dict[str, dict[str, Any]] = {}
    specs: dict[str, dict[str, Any]] = {}
    tasks_dir = directory / "tasks"
    legacy = sorted(tasks_dir.glob("*/task.json")) if tasks_dir.is_dir() else []
    for path in legacy:
        try:
            data = json.loads(path.read_text())
            task_id = data["spec"]["task_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"unreadable task record {path}: {exc}; delete that task's folder") from None
        latest[task_id], specs[task_id] = data, data["spec"]
    journal = directory / JOURNAL
    try:
        lines = journal.read_bytes().split(b"\n")[:-1]  # what follows the last newline was cut short
    except FileNotFoundError:
        lines = []
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            task_id = data["task_id"]
            if "spec" in data:
                specs[task_id] = data["spec"]
            elif task_id not in specs:
                raise KeyError("spec")
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"unreadable task record at line {number} of {journal}: {exc!r}; "
                "delete the job (batchpilot cleanup --job) to run it again from the start"
            ) from None
        latest[task_id] = data
    tasks = []
    for task_id, data in latest.items():
        try:
            tasks.append(_task_from_json(data, specs[task_id]))
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"unreadable task record of task {task_id} in {directory}: {exc!r}; "
                "delete the job (batchpilot cleanup --job) to run it again from the start"
            ) from None
    return _Read(tasks, len(lines), legacy)


def _remove_legacy_records(paths: Sequence[Path]) -> None:
    """The task.json files of an earlier version, once the journal holds their records (and the temporary
    files those left behind)."""
    for path in paths:
        path.unlink(missing_ok=True)
        for temporary in path.parent.glob(".task.json.*.tmp"):
            temporary.unlink(missing_ok=True)


def _spec_to_json(task_spec: TaskSpec) -> dict[str, Any]:
    spec = asdict(task_spec)
    constraints = task_spec.constraints
    spec["constraints"] = {
        "max_wall_clock": constraints.max_wall_clock.total_seconds() if constraints.max_wall_clock else None,
        "max_task_retry_count": constraints.max_task_retry_count,
        "retention": constraints.retention.total_seconds() if constraints.retention else None,
    }
    return spec


def _task_to_json(task: _Task, *, spec: bool = False) -> dict[str, Any]:
    """The task's record, without its spec unless `spec` (the journal writes a task's spec once)."""
    record = {
        "task_id": task.spec.task_id,
        "state": task.state.value,
        "transition_time": task.transition_time.isoformat(),
        "node_id": task.node_id,
        "exit_code": task.exit_code,
        "result": task.result.value if task.result else None,
        "failure": asdict(task.failure) if task.failure else None,
        "retry_count": task.retry_count,
        "requeue_count": task.requeue_count,
        "start_time": task.start_time.isoformat() if task.start_time else None,
        "end_time": task.end_time.isoformat() if task.end_time else None,
    }
    if spec:
        record["spec"] = task.spec_record
    return record


def _task_from_json(data: dict[str, Any], raw: dict[str, Any]) -> _Task:
    limits = raw["constraints"]
    spec = TaskSpec(
        task_id=raw["task_id"],
        command_line=raw["command_line"],
        resource_files=tuple(ResourceFile(**item) for item in raw["resource_files"]),
        output_files=tuple(
            OutputFile(**{**item, "upload_condition": UploadCondition(item["upload_condition"])})
            for item in raw["output_files"]
        ),
        constraints=TaskConstraints(
            max_wall_clock=_seconds(limits["max_wall_clock"]),
            max_task_retry_count=limits["max_task_retry_count"],
            retention=_seconds(limits["retention"]),
        ),
        display_name=raw["display_name"],
        environment=tuple((key, value) for key, value in raw["environment"]),
        container=ContainerSettings(**raw["container"]) if raw.get("container") else None,
    )
    return _Task(
        spec=spec,
        state=TaskState(data["state"]),
        transition_time=datetime.fromisoformat(data["transition_time"]),
        node_id=data["node_id"],
        exit_code=data["exit_code"],
        result=TaskResult(data["result"]) if data["result"] else None,
        failure=FailureInfo(**data["failure"]) if data["failure"] else None,
        retry_count=data["retry_count"],
        requeue_count=data["requeue_count"],
        start_time=_time(data["start_time"]),
        end_time=_time(data["end_time"]),
    )


def _seconds(value: float | None) -> timedelta | None:
    return timedelta(seconds=value) if value is not None else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _read_tail(path: Path, tail: int) -> bytes:
    """The last `tail` bytes of the file at `path`: a seek, then one bounded read."""
    if tail <= 0:
        return b""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - tail))
        return handle.read(tail)
