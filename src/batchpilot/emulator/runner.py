"""Execution: tasks run FIFO on their pool's slots through the local executor, like Batch nodes.

Each pool id has one unbounded queue of tasks (it outlives the pool, so tasks added before a pool exists,
or left queued by a deleted pool, run when a pool of that id appears). A pool, once its nodes are allocated,
runs one worker per slot (nodes x taskSlotsPerNode); a worker takes the next task from the queue and runs
one attempt. An attempt ends in completion, a retry (back to `active` and to the end of the queue), or a
requeue when preempted or when its pool goes away. Everything runs in the runtime's one task group; a
cancelled attempt kills its process (the executor does that) before the worker moves on.
"""

from __future__ import annotations

import enum
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import anyio
import imageio_ffmpeg
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from azure.storage.blob.aio import ContainerClient

from ..backends.base import FailureInfo, TaskResult, TaskState
from ..backends.local.executor import Execution, execute
from .config import EmulatorConfig
from .faults import Fault, FaultInjector, task_random
from .state import Account, Counts, Job, JobState, Node, NodeState, OnAllTasksComplete, Pool, PoolState, Task
from .stats import Stats
from .wire import job_max_wall_clock

log = structlog.get_logger(__name__)

_FETCH_CHUNK = 1 << 16


class HttpStager:
    """Fetches resource files over http(s) and uploads outputs to blob containers named by SAS URLs."""

    def __init__(self, session: aiohttp.ClientSession, exit_stack: AsyncExitStack) -> None:
        self._session = session
        self._exit_stack = exit_stack
        self._containers: dict[str, ContainerClient] = {}

    async def fetch(self, url: str, dest: Path) -> None:
        async with self._session.get(url) as response:
            response.raise_for_status()
            await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
            async with await anyio.open_file(dest, "wb") as file:
                async for chunk in response.content.iter_chunked(_FETCH_CHUNK):
                    await file.write(chunk)

    async def put(self, container_url: str, blob_name: str, source: Path) -> None:
        data = await anyio.Path(source).read_bytes()
        await self._container(container_url).upload_blob(blob_name, data, overwrite=True)

    def _container(self, container_url: str) -> ContainerClient:
        # One client per container URL for the runtime's life: each client owns a connection pool.
        client = self._containers.get(container_url)
        if client is None:
            client = ContainerClient.from_container_url(container_url)
            self._exit_stack.push_async_exit(client)
            self._containers[container_url] = client
        return client


class EndReason(enum.Enum):
    """Why an attempt was cut short."""

    PREEMPTED = "preempted"
    JOB_TERMINATED = "job terminated"
    JOB_DELETED = "job deleted"


@dataclass(slots=True, eq=False)
class Attempt:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: EndReason | None = None

    def end(self, reason: EndReason) -> None:
        self.reason = reason
        self.scope.cancel()


@dataclass(slots=True)
class _Snapshot:
    taken: float
    counts: Counts


class Runtime:
    """Owns the task group in which pools allocate nodes and slots run tasks."""

    def __init__(
        self,
        config: EmulatorConfig,
        account: Account,
        stats: Stats,
        faults: FaultInjector,
        now: Callable[[], datetime],
    ) -> None:
        self._config = config
        self._account = account
        self._stats = stats
        self._faults = faults
        self._now = now
        self._queues: dict[str, tuple[MemoryObjectSendStream[Task], MemoryObjectReceiveStream[Task]]] = {}
        self._pool_scopes: dict[Pool, anyio.CancelScope] = {}
        self._attempts: dict[Task, Attempt] = {}
        self._snapshots: dict[Job, _Snapshot] = {}
        self._wall_clocks: dict[Job, anyio.CancelScope] = {}
        self._stopping = anyio.Event()
        self._start_task_logged = False
        self._tg: TaskGroup | None = None
        self._stager: HttpStager | None = None
        self._workdir = Path()
        self._bin_dir = Path()

    async def open(self, stack: AsyncExitStack) -> None:
        """Prepare the node's disk and the stager's clients; `stack` closes them after `supervise` ends."""
        if self._config.workdir is None:
            self._workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batch-emulator-")))
        else:
            self._workdir = self._config.workdir
        self._bin_dir = self._workdir / "bin"
        await anyio.to_thread.run_sync(_link_ffmpeg, self._bin_dir)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        self._stager = HttpStager(session, stack)

    async def supervise(self, started: anyio.Event) -> None:
        """Host every pool and attempt until `stop()`; on the way out each running attempt is cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            started.set()
            await self._stopping.wait()
            tg.cancel_scope.cancel()
        self._tg = None
        for send, receive in self._queues.values():
            send.close()
            receive.close()

    def stop(self) -> None:
        self._stopping.set()

    # --- called by the request handlers -----------------------------------------------------------------

    def pool_added(self, pool: Pool) -> None:
        if "startTask" in pool.body and not self._start_task_logged:
            self._start_task_logged = True
            log.info("emulator.start_task_skipped", reason="start tasks are not run", ffmpeg_on_path=True)
        scope = anyio.CancelScope()
        self._pool_scopes[pool] = scope
        self._group().start_soon(self._run_pool, pool, scope)

    def pool_deleted(self, pool: Pool) -> None:
        pool.state, pool.state_transition_time = PoolState.DELETING, self._now()
        # Cancelling the pool's scope kills its running tasks; they go back to their queue.
        self._pool_scopes.pop(pool).cancel()
        self._group().start_soon(self._forget_pool, pool)

    def tasks_added(self, job: Job, tasks: list[Task]) -> None:
        send, _receive = self._queue(job.pool_id)
        for task in tasks:
            send.send_nowait(task)

    def job_ended(self, job: Job, state: JobState, reason: str = "UserTerminate") -> None:
        """Terminate (state completed, with `reason`) or delete (state deleting) a job and its attempts."""
        ending = EndReason.JOB_DELETED if state is JobState.DELETING else EndReason.JOB_TERMINATED
        wall_clock = self._wall_clocks.pop(job, None)
        if wall_clock is not None:
            wall_clock.cancel()
        for task, attempt in list(self._attempts.items()):
            if task.job_id.lower() == job.job_id.lower():
                attempt.end(ending)
        if state is JobState.DELETING:
            job.set_state(JobState.DELETING, self._now())
            self._group().start_soon(self._forget_job, job)
        else:
            job.finish(reason, self._now())

    def job_settings_changed(self, job: Job) -> None:
        self._maybe_finish(job)
        previous = self._wall_clocks.pop(job, None)
        if previous is not None:
            previous.cancel()
        limit = job_max_wall_clock(job.body)
        if limit is not None and job.state is JobState.ACTIVE:
            scope = self._wall_clocks[job] = anyio.CancelScope()
            self._group().start_soon(self._end_at_wall_clock, job, job.creation_time + limit, scope)

    async def _end_at_wall_clock(self, job: Job, deadline: datetime, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(max(0.0, (deadline - self._now()).total_seconds()))
            if job.state is JobState.ACTIVE:
                self.job_ended(job, JobState.COMPLETED, "MaxWallClockTimeExpiry")

    def counts(self, job: Job) -> Counts:
        """The job's counts, possibly from a snapshot up to `counts_lag_s` old, as Batch's may lag."""
        lag = self._config.faults.counts_lag_s
        if lag == 0:
            return job.counts
        snapshot = self._snapshots.get(job)
        now = time.monotonic()
        if snapshot is None or now - snapshot.taken >= lag:
            snapshot = self._snapshots[job] = _Snapshot(now, job.counts.copy())
        return snapshot.counts

    # --- pools and slots --------------------------------------------------------------------------------

    def _group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the emulator runtime is not running")
        return self._tg

    def _queue(self, pool_id: str) -> tuple[MemoryObjectSendStream[Task], MemoryObjectReceiveStream[Task]]:
        pair = self._queues.get(pool_id.lower())
        if pair is None:
            pair = self._queues[pool_id.lower()] = anyio.create_memory_object_stream[Task](math.inf)
        return pair

    async def _run_pool(self, pool: Pool, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self._config.allocation_delay_s)
            pool.nodes_ready(self._now())
            _send, receive = self._queue(pool.pool_id)
            async with anyio.create_task_group() as slots:
                for node in pool.nodes:
                    for _ in range(pool.task_slots_per_node):
                        slots.start_soon(self._slot, pool, node, receive)

    async def _forget_pool(self, pool: Pool) -> None:
        await anyio.sleep(self._config.deletion_delay_s)
        self._account.remove_pool(pool)

    async def _forget_job(self, job: Job) -> None:
        await anyio.sleep(self._config.deletion_delay_s)
        self._account.remove_job(job)
        self._snapshots.pop(job, None)

    async def _slot(self, pool: Pool, node: Node, receive: MemoryObjectReceiveStream[Task]) -> None:
        async for task in receive:
            job = self._account.jobs.get(task.job_id.lower())
            # A task deleted, finished or belonging to a job no longer active is dropped from the queue.
            if job is None or job.state is not JobState.ACTIVE or task.state is not TaskState.ACTIVE:
                continue
            if not job.has_task(task.task_id) or job.task(task.task_id) is not task:
                continue
            await self._run_attempt(pool, node, job, task)

    async def _run_attempt(self, pool: Pool, node: Node, job: Job, task: Task) -> None:
        task.pool_id, task.node_id = pool.pool_id, node.node_id
        task.task_dir = (
            self._workdir / "nodes" / node.node_id / "workitems" / job.job_id / "job-1" / task.task_id
        )
        job.transition(task, TaskState.PREPARING, self._now())
        node.running_tasks += 1
        node.total_tasks_run += 1
        node.set_state(NodeState.RUNNING, self._now())
        self._stats.attempts_started += 1
        attempt = Attempt()
        self._attempts[task] = attempt
        execution: Execution | None = None
        try:
            with attempt.scope:
                execution = await self._execute(node, job, task, attempt)
        except anyio.get_cancelled_exc_class():
            # The pool is going away (or the emulator is stopping): the task waits for a node again.
            self._requeue(job, task)
            raise
        finally:
            del self._attempts[task]
            node.running_tasks -= 1
            if node.running_tasks == 0:
                node.set_state(NodeState.IDLE, self._now())
        if execution is not None:
            self._finish_attempt(job, task, execution)
            if execution.succeeded:
                node.total_tasks_succeeded += 1
        elif attempt.reason is EndReason.PREEMPTED:
            self._faults.record(Fault.PREEMPT)
            self._requeue(job, task)
        elif attempt.reason is EndReason.JOB_TERMINATED:
            ended = FailureInfo("usererror", "TaskEnded", "The task was ended because its job was terminated")
            self._complete(job, task, exit_code=None, failure=ended, end=self._now())

    async def _execute(self, node: Node, job: Job, task: Task, attempt: Attempt) -> Execution:
        async def on_running() -> None:
            task.start_time = self._now()
            job.transition(task, TaskState.RUNNING, task.start_time)
            if self._faults.preempts(job.job_id, task.task_id, task.requeue_count):
                self._group().start_soon(self._preempt_later, task, attempt)

        if self._config.simulate_s is not None:
            start = self._now()
            await on_running()
            low, high = self._config.simulate_s
            identity = (job.job_id, task.task_id, str(task.retry_count), str(task.requeue_count))
            await anyio.sleep(task_random(self._config.faults.seed, "duration", *identity).uniform(low, high))
            return Execution(0, None, start, self._now())
        assert self._stager is not None  # set before the task group that runs attempts starts
        assert task.task_dir is not None
        return await execute(
            task.spec,
            task.task_dir,
            stager=self._stager,
            env=self._environment(node, job, task),
            now=self._now,
            on_running=on_running,
        )

    async def _preempt_later(self, task: Task, attempt: Attempt) -> None:
        await anyio.sleep(self._config.faults.preempt_after_s)
        if self._attempts.get(task) is attempt:
            attempt.end(EndReason.PREEMPTED)

    def _environment(self, node: Node, job: Job, task: Task) -> dict[str, str]:
        assert task.task_dir is not None
        env = {"PATH": f"{self._bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
        if "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]
        for setting in job.body.get("commonEnvironmentSettings") or ():
            env[setting["name"]] = setting.get("value") or ""
        env.update(task.spec.environment)
        env.update(
            {
                "AZ_BATCH_TASK_DIR": str(task.task_dir),
                "AZ_BATCH_TASK_WORKING_DIR": str(task.task_dir / "wd"),
                "AZ_BATCH_NODE_SHARED_DIR": str(self._workdir / "nodes" / node.node_id / "shared"),
                "AZ_BATCH_JOB_ID": job.job_id,
                "AZ_BATCH_TASK_ID": task.task_id,
                "AZ_BATCH_NODE_ID": node.node_id,
                "AZ_BATCH_POOL_ID": task.pool_id or "",
            }
        )
        return env

    # --- outcomes ---------------------------------------------------------------------------------------

    def _finish_attempt(self, job: Job, task: Task, execution: Execution) -> None:
        retries = task.spec.constraints.max_task_retry_count
        # The wall clock counts from the task's first start, so once it has run out a retry cannot help.
        retryable = execution.failure is None or execution.failure.code != "MaxWallClockTimeExpiry"
        if not execution.succeeded and retryable and (retries == -1 or task.retry_count < retries):
            task.retry_count += 1
            task.last_retry_time = execution.end_time
            job.transition(task, TaskState.ACTIVE, execution.end_time)
            self.tasks_added(job, [task])
            return
        self._complete(
            job, task, exit_code=execution.exit_code, failure=execution.failure, end=execution.end_time
        )

    def _complete(
        self, job: Job, task: Task, *, exit_code: int | None, failure: FailureInfo | None, end: datetime
    ) -> None:
        task.exit_code, task.failure, task.end_time = exit_code, failure, end
        task.result = TaskResult.SUCCESS if failure is None and exit_code == 0 else TaskResult.FAILURE
        job.transition(task, TaskState.COMPLETED, end)
        self._stats.tasks_completed += 1
        self._maybe_finish(job)

    def _requeue(self, job: Job, task: Task) -> None:
        if task.state is TaskState.COMPLETED or job.state is not JobState.ACTIVE:
            return
        task.requeue_count += 1
        task.last_requeue_time = self._now()
        task.start_time = None
        job.transition(task, TaskState.ACTIVE, task.last_requeue_time)
        self.tasks_added(job, [task])

    def _maybe_finish(self, job: Job) -> None:
        # As in Batch, a job with no tasks counts as having completed them all.
        if (
            job.state is JobState.ACTIVE
            and job.on_all_tasks_complete is OnAllTasksComplete.TERMINATE_JOB
            and job.all_complete()
        ):
            job.finish("AllTasksComplete", self._now())


def _link_ffmpeg(bin_dir: Path) -> None:
    """A directory whose `ffmpeg` is the bundled binary, put first on every task's PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "ffmpeg"
    target = Path(imageio_ffmpeg.get_ffmpeg_exe())
    if link.is_symlink() and link.readlink() == target:
        return
    link.unlink(missing_ok=True)
    link.symlink_to(target)
