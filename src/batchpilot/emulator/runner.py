"""Execution: tasks run FIFO on their pool's slots through the local executor, like Batch nodes.

Each pool id has one unbounded queue of tasks (it outlives the pool, so tasks added before a pool exists,
or left queued by a deleted pool, run when a pool of that id appears). Each node, once allocated, runs one
worker per slot (taskSlotsPerNode); a worker takes the next task from the queue and runs one attempt. An
attempt ends in completion, a retry (back to `active` and to the end of the queue), or a requeue when
preempted or when its node goes away. A resize adds nodes (starting, then idle) or lets nodes leave: a
leaving node takes no new task, and its running ones are requeued, terminated or left to finish as the
resize's nodeDeallocationOption says. Everything runs in the runtime's one task group; a cancelled attempt
kills its process (the executor does that) before the worker moves on.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import imageio_ffmpeg
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from azure.storage.blob.aio import ContainerClient

from ..attempts import Decision, Interruption, after_attempt
from ..backends.local.executor import Execution, execute, output_blob_name
from ..files import private_folder
from ..records import FailureInfo, TaskResult, TaskState
from .config import EmulatorConfig
from .faults import Fault, FaultInjector, sas_refusal, task_random
from .state import (
    Account,
    Counts,
    Job,
    JobState,
    Node,
    NodeDeallocationOption,
    NodeState,
    OnAllTasksComplete,
    Pool,
    PoolState,
    Task,
)
from .stats import Stats
from .wire import job_max_wall_clock

log = structlog.get_logger(__name__)

_FETCH_CHUNK = 1 << 16
_WILDCARD = re.compile(r"[*?]+")


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


class SasRefused(Exception):
    """Azure Storage's answer to an expired SAS: 403 AuthenticationFailed."""


class NodeStorage:
    """Storage as the node running one attempt sees it: the shared stager, behind Storage's SAS expiry check.

    With `sas_clock_ahead_s` set, a SAS whose expiry (`se`) is behind the node's clock plus that many seconds
    is refused as Azure Storage refuses it, and the attempt fails with the code Batch reports for a denied
    resource file download (BlobAccessDenied) or output upload (FileUploadAccessDenied).
    """

    def __init__(self, stager: HttpStager, faults: FaultInjector, now: Callable[[], datetime]) -> None:
        self._stager = stager
        self._faults = faults
        self._now = now
        self.refusal: FailureInfo | None = None

    async def fetch(self, url: str, dest: Path) -> None:
        self._check(url, "BlobAccessDenied", "Access was denied when downloading a resource file of the task")
        await self._stager.fetch(url, dest)

    async def put(self, container_url: str, blob_name: str, source: Path) -> None:
        self._check(
            container_url,
            "FileUploadAccessDenied",
            "Access to the Azure Storage container for uploading output files was denied",
        )
        await self._stager.put(container_url, blob_name, source)

    def outcome(self, execution: Execution) -> Execution:
        """The attempt as Batch reports it: failed by the refused token, unless the task's command failed."""
        if self.refusal is None or execution.exit_code not in (None, 0):
            return execution
        return replace(execution, failure=self.refusal)

    def _check(self, url: str, code: str, denied: str) -> None:
        ahead = self._faults.config.sas_clock_ahead_s
        if ahead is None:
            return
        reason = sas_refusal(url, self._now() + timedelta(seconds=ahead))
        if reason is None:
            return
        self._faults.record(Fault.SAS_EXPIRED)
        refused = f"403 AuthenticationFailed: {reason}"
        self.refusal = self.refusal or FailureInfo("usererror", code, f"{denied}: {refused}")
        raise SasRefused(refused)


class EndReason(enum.Enum):
    """Why an attempt was cut short."""

    PREEMPTED = "preempted"
    JOB_TERMINATED = "job terminated"
    JOB_DELETED = "job deleted"
    NODE_REMOVED = "node removed"  # by a resize whose nodeDeallocationOption is terminate
    TASK_TERMINATED = "task terminated"  # Terminate Task
    TASK_DELETED = "task deleted"  # Delete Task: nothing follows


# How an attempt cut short ends (for `attempts.after_attempt`), and the failure a terminated one ends with.
_ENDED: dict[EndReason, tuple[Interruption, FailureInfo | None]] = {
    EndReason.PREEMPTED: (Interruption.NODE_LOST, None),
    EndReason.JOB_TERMINATED: (
        Interruption.TERMINATED,
        FailureInfo("usererror", "TaskEnded", "The task was ended because its job was terminated"),
    ),
    EndReason.NODE_REMOVED: (
        Interruption.TERMINATED,
        FailureInfo("usererror", "TaskEnded", "The task was ended because its node left the pool"),
    ),
    EndReason.TASK_TERMINATED: (
        Interruption.TERMINATED,
        FailureInfo("usererror", "TaskEnded", "Task Was Ended by User Request"),
    ),
}


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
        self._node_scopes: dict[Node, anyio.CancelScope] = {}
        self._idle_slots: dict[Node, set[anyio.CancelScope]] = {}  # each slot's wait for a task
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
            # Private as the temporary folder is: the task dirs hold a copy of every input and output. A
            # folder that exists keeps its mode (it may be shared); `nodes`, ours, is made private.
            await anyio.to_thread.run_sync(
                functools.partial(self._workdir.mkdir, mode=0o700, parents=True, exist_ok=True)
            )
            await anyio.to_thread.run_sync(private_folder, self._workdir / "nodes")
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
        for node in pool.nodes:
            self._start_node(pool, node)
        pool.settle(self._now())  # a pool of no nodes is steady at once

    def pool_deleted(self, pool: Pool) -> None:
        pool.state, pool.state_transition_time = PoolState.DELETING, self._now()
        # Cancelling its nodes kills their running tasks; they go back to their queue.
        for node in pool.nodes:
            self._node_scopes[node].cancel()
        self._group().start_soon(self._forget_pool, pool)

    def pool_resized(
        self, pool: Pool, added: list[Node], leaving: list[Node], option: NodeDeallocationOption
    ) -> None:
        for node in added:
            self._start_node(pool, node)
        for node in leaving:
            self._release(node, option)

    def _release(self, node: Node, option: NodeDeallocationOption) -> None:
        """Let a node go (its state already says leavingpool); `option` says what becomes of its tasks."""
        if node.running_tasks == 0 or option is NodeDeallocationOption.REQUEUE:
            # Whatever it runs is cancelled, and a cancelled attempt goes back to the queue.
            self._node_scopes[node].cancel()
            return
        if option is NodeDeallocationOption.TERMINATE:
            for task, attempt in list(self._attempts.items()):
                if task.node_id == node.node_id:
                    attempt.end(EndReason.NODE_REMOVED)
        # Its idle slots stop waiting for tasks; the busy ones stop once their attempt is over.
        for waiting in self._idle_slots.get(node, ()):
            waiting.cancel()

    def tasks_added(self, job: Job, tasks: list[Task]) -> None:
        """Tasks just added (or reactivated) wait `scheduling_delay_s` before a node may take them: the
        service schedules asynchronously, and a task read back right after its add is still `active`."""
        delay = self._config.scheduling_delay_s
        if delay <= 0:
            self._enqueue(job, tasks)
        else:
            self._group().start_soon(self._enqueue_later, job, tasks, delay)

    async def _enqueue_later(self, job: Job, tasks: list[Task], delay: float) -> None:
        await anyio.sleep(delay)
        self._enqueue(job, tasks)

    def _enqueue(self, job: Job, tasks: list[Task]) -> None:
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

    def task_terminated(self, job: Job, task: Task) -> None:
        """Terminate Task: a running attempt is ended and the task completes as failed (TaskEnded); a task
        waiting for a node completes the same way at once."""
        attempt = self._attempts.get(task)
        if attempt is not None:
            attempt.end(EndReason.TASK_TERMINATED)
            return
        _interruption, failure = _ENDED[EndReason.TASK_TERMINATED]
        self._complete(job, task, exit_code=None, failure=failure, end=self._now())

    def task_deleted(self, job: Job, task: Task) -> None:
        """Delete Task: a running attempt is ended, the task is forgotten and its directory removed."""
        attempt = self._attempts.get(task)
        if attempt is not None:
            attempt.end(EndReason.TASK_DELETED)
        job.remove_task(task)
        if task.task_dir is not None:
            self._group().start_soon(anyio.to_thread.run_sync, _remove_tree, task.task_dir)
        self._maybe_finish(job)

    def job_settings_changed(self, job: Job) -> None:
        # As in the service, a job whose tasks are all complete (or that has none) is ended by
        # `terminatejob` a moment later, not as its settings change: a job just added reads back active.
        self._group().start_soon(self._finish_later, job)
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

    def _start_node(self, pool: Pool, node: Node) -> None:
        scope = self._node_scopes[node] = anyio.CancelScope()
        self._group().start_soon(self._run_node, pool, node, scope)

    async def _run_node(self, pool: Pool, node: Node, scope: anyio.CancelScope) -> None:
        """A node's life: it starts, runs tasks on its slots until it leaves (its slots all stop) or is
        removed (`scope` cancelled), and is then gone from its pool."""
        with scope:
            await anyio.sleep(self._config.allocation_delay_s)
            if node.state is NodeState.STARTING:  # not released while it started
                node.set_state(NodeState.IDLE, self._now())
                pool.settle(self._now())
                _send, receive = self._queue(pool.pool_id)
                async with anyio.create_task_group() as slots:
                    for _ in range(pool.task_slots_per_node):
                        slots.start_soon(self._slot, pool, node, receive)
        del self._node_scopes[node]
        self._idle_slots.pop(node, None)
        if pool.state is PoolState.ACTIVE:  # a deleted pool goes away whole
            pool.node_left(node, self._now())

    async def _forget_pool(self, pool: Pool) -> None:
        await anyio.sleep(self._config.deletion_delay_s)
        self._account.remove_pool(pool)

    async def _forget_job(self, job: Job) -> None:
        await anyio.sleep(self._config.deletion_delay_s)
        self._account.remove_job(job)
        self._snapshots.pop(job, None)

    async def _slot(self, pool: Pool, node: Node, receive: MemoryObjectReceiveStream[Task]) -> None:
        idle = self._idle_slots.setdefault(node, set())
        while node.state is not NodeState.LEAVING_POOL:
            with anyio.CancelScope() as waiting:
                idle.add(waiting)
                try:
                    task = await receive.receive()
                except anyio.EndOfStream:
                    return
                finally:
                    idle.discard(waiting)
            if waiting.cancelled_caught:  # the node is leaving; nothing was taken
                return
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
        if node.state is NodeState.IDLE:
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
            if node.running_tasks == 0 and node.state is NodeState.RUNNING:
                node.set_state(NodeState.IDLE, self._now())
        if execution is not None:
            self._finish_attempt(job, task, execution)
            if execution.succeeded:
                node.total_tasks_succeeded += 1
        elif attempt.reason is not None and attempt.reason in _ENDED:
            self._finish_interrupted(job, task, attempt.reason)

    async def _execute(self, node: Node, job: Job, task: Task, attempt: Attempt) -> Execution:
        async def on_running() -> None:
            task.start_time = self._now()
            job.transition(task, TaskState.RUNNING, task.start_time)
            # As in Batch, only spot (low-priority) nodes are preempted.
            if not node.dedicated and self._faults.preempts(job.job_id, task.task_id, task.requeue_count):
                self._group().start_soon(self._preempt_later, task, attempt)

        if self._config.simulate_s is not None:
            start = self._now()
            await on_running()
            low, high = self._config.simulate_s
            identity = (job.job_id, task.task_id, str(task.retry_count), str(task.requeue_count))
            await anyio.sleep(task_random(self._config.faults.seed, "duration", *identity).uniform(low, high))
            assert self._stager is not None  # set before the task group that runs attempts starts
            node_storage = NodeStorage(self._stager, self._faults, self._now)
            failure = await self._simulated_outputs(task, node_storage)
            return node_storage.outcome(Execution(0, failure, start, self._now()))
        assert self._stager is not None  # set before the task group that runs attempts starts
        assert task.task_dir is not None
        storage = NodeStorage(self._stager, self._faults, self._now)
        execution = await execute(
            task.spec,
            task.task_dir,
            stager=storage,
            env=self._environment(node, job, task),
            now=self._now,
            on_running=on_running,
        )
        return storage.outcome(execution)

    async def _simulated_outputs(self, task: Task, storage: NodeStorage) -> FailureInfo | None:
        """Leave what a successful run would: a small file per output (a wildcard stands for the task id)
        naming the task and its inputs, uploaded like real outputs: through the task's SAS, checked."""
        assert task.task_dir is not None
        inputs = " ".join(resource.file_path for resource in task.spec.resource_files)
        for output in task.spec.output_files:
            if not output.upload_condition.applies(succeeded=True):
                continue
            name = _WILDCARD.sub(task.task_id, output.file_pattern)
            source = anyio.Path(task.task_dir / "wd" / name)
            await source.parent.mkdir(parents=True, exist_ok=True)
            await source.write_text(f"simulated output of task {task.task_id} from {inputs}\n")
            try:
                await storage.put(output.container_url, output_blob_name(output, name), Path(source))
            except Exception as exc:  # as for real outputs: the upload failure fails the task, reported
                first_line = next(iter(str(exc).splitlines()), "")
                return FailureInfo(
                    "servererror", "FileUploadFailed", f"{name}: {type(exc).__name__}: {first_line}"
                )
        return None

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
        if _deleted(job, task):  # deleted while its process was ending: nothing to record
            return
        decision = after_attempt(
            exit_code=execution.exit_code,
            failure=execution.failure,
            retry_count=task.retry_count,
            max_task_retry_count=task.spec.constraints.max_task_retry_count,
        )
        if decision is Decision.RETRY:
            task.retry_count += 1
            task.last_retry_time = execution.end_time
            job.transition(task, TaskState.ACTIVE, execution.end_time)
            self._enqueue(job, [task])
            return
        self._complete(
            job, task, exit_code=execution.exit_code, failure=execution.failure, end=execution.end_time
        )

    def _finish_interrupted(self, job: Job, task: Task, reason: EndReason) -> None:
        if _deleted(job, task):
            return
        interruption, failure = _ENDED[reason]
        decision = after_attempt(
            exit_code=None,
            failure=failure,
            retry_count=task.retry_count,
            max_task_retry_count=task.spec.constraints.max_task_retry_count,
            interrupted=interruption,
        )
        if decision is Decision.REQUEUE:
            if reason is EndReason.PREEMPTED:
                self._faults.record(Fault.PREEMPT)
            self._requeue(job, task)
        else:
            self._complete(job, task, exit_code=None, failure=failure, end=self._now())

    def _complete(
        self, job: Job, task: Task, *, exit_code: int | None, failure: FailureInfo | None, end: datetime
    ) -> None:
        task.exit_code, task.failure, task.end_time = exit_code, failure, end
        task.result = TaskResult.SUCCESS if failure is None and exit_code == 0 else TaskResult.FAILURE
        # As in Batch, the task turns completed once its outputs are uploaded: the state transition is
        # stamped now, not at the process's end, or a listing from a watermark could pass it by.
        job.transition(task, TaskState.COMPLETED, self._now())
        self._stats.tasks_completed += 1
        self._maybe_finish(job)

    def _requeue(self, job: Job, task: Task) -> None:
        if task.state is TaskState.COMPLETED or job.state is not JobState.ACTIVE or _deleted(job, task):
            return
        task.requeue_count += 1
        task.last_requeue_time = self._now()
        task.start_time = None
        # Its files were on the node it left (preempted, removed with its pool): as in Batch, Get Task File
        # finds none until an attempt runs on a node again, rather than the last attempt's from a node gone.
        task.task_dir = None
        job.transition(task, TaskState.ACTIVE, task.last_requeue_time)
        self._enqueue(job, [task])

    async def _finish_later(self, job: Job) -> None:
        await anyio.sleep(self._config.scheduling_delay_s)
        self._maybe_finish(job)

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


def _deleted(job: Job, task: Task) -> bool:
    """Whether Delete Task has removed `task` from its job (its id may be in use by a new task)."""
    return not job.has_task(task.task_id) or job.task(task.task_id) is not task


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
