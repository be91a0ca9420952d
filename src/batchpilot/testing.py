"""Test doubles for embedders and for our own tests: an in-memory backend and a fake clock.

As httpcore ships its mock backend, batchpilot ships these so that code built on the `Orchestrator` can be
tested without a subprocess, a folder of state, an emulator or an Azure account:

    def script(task: ScriptedTask) -> Outcome:
        return Fail(exit_code=3) if "bad" in task.spec.task_id else Succeed(files={"out.txt": b"done"})

    backend = InMemoryBackend(script=script)
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(workload)

* `InMemoryStorage` keeps containers as dicts of blob name -> bytes, behind the `Storage` protocol.
* `InMemoryCompute` implements the `Compute` protocol with Batch's rules where the engine relies on them (at
  most 100 tasks per add-collection request, `TaskExists` for a task already in the job, retries up to
  `max_task_retry_count` with -1 meaning without limit, output files uploaded when their upload condition
  holds, named as Batch names them, and what follows an attempt decided by `attempts.after_attempt`, as in
  the local backend and the emulator). No command runs: each attempt's outcome comes from a script, a
  callable that receives the task (`ScriptedTask`) and returns `Succeed`, `Fail`, `Preempt` or `Hold`. A held
  task stays running until the test calls `release()`; `refuse_adds()` makes the next collections fail.
* `InMemoryBackend` holds one of each, opened and closed with `async with`.
* `FakeClock` implements `batchpilot.clock.Clock`: time moves only when something sleeps (or when the test
  calls `advance()`), so waits of minutes take no time and nothing depends on the machine's speed.

Everything is in memory and synchronous underneath: a task added is run (or held) before `add_tasks` returns;
a task queued again (retried or requeued) is seen back in the queue by the next look at the job (a listing or
the task counts), and its next attempt has run by the look after.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote, unquote, urlparse

import anyio
import anyio.lowlevel

from .attempts import Decision, Interruption, after_attempt, reactivation_refused
from .backends.base import download_each
from .clock import Clock
from .errors import BackendError, JobEndedError, NotFoundError, RequestTooLargeError
from .files import temporary_sibling
from .images import ImageVerdict, Reason, SupportedImage, Verdict, judge
from .records import (
    AddStatus,
    AddTaskResult,
    BlobDownload,
    BlobInfo,
    Ensured,
    FailureInfo,
    Permission,
    TaskCounts,
    TaskResult,
    TaskState,
    TaskView,
    UploadOutcome,
)
from .spec import JobSpec, OutputFile, PoolSpec, TaskSpec

if TYPE_CHECKING:
    from .backends.base import Backend, Compute, PageHandler, Storage

__all__ = (
    "Fail",
    "FakeClock",
    "Hold",
    "InMemoryBackend",
    "InMemoryCompute",
    "InMemoryStorage",
    "Outcome",
    "Preempt",
    "Script",
    "ScriptedTask",
    "Succeed",
)

MAX_TASKS_PER_REQUEST = 100  # Batch's limit for one add-collection request
_SCHEME = "memory"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# --- the clock --------------------------------------------------------------------------------------------


class FakeClock:
    """A `Clock` whose time moves only when something sleeps, or when the test calls `advance()`.

    With `auto_advance=True` (the default) `sleep(s)` moves the time forward by `s` seconds and returns at
    once (after a checkpoint, so other tasks get to run and cancellation is honoured). With
    `auto_advance=False` a sleeper waits until the test moves the time past its deadline with `advance()`.
    `sleeps` lists every requested sleep in seconds, in order; `on_sleep`, when set, is called with each
    one after the time moved (a test can change the world "while" the code under test waits).
    """

    def __init__(self, start: datetime = _EPOCH, *, auto_advance: bool = True) -> None:
        if start.tzinfo is None:
            raise ValueError("the fake clock's start must be timezone-aware (UTC)")
        self.current = start
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None
        self._sleepers: list[tuple[datetime, anyio.Event]] = []

    def now(self) -> datetime:
        """The fake time, timezone-aware UTC."""
        return self.current

    async def sleep(self, seconds: float) -> None:
        """Record the sleep; move time by `seconds` (auto-advance) or wait until `advance()` passes it.

        Raises ValueError for a negative duration, as a real sleep of negative length is a bug upstream."""
        if seconds < 0:
            raise ValueError(f"cannot sleep {seconds} s")
        self.sleeps.append(seconds)
        if self.auto_advance:
            self.current += timedelta(seconds=seconds)
            if self.on_sleep is not None:
                self.on_sleep(seconds)
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        entry = (self.current + timedelta(seconds=seconds), wake)
        self._sleepers.append(entry)
        try:
            if seconds == 0:
                await anyio.lowlevel.checkpoint()
            else:
                await wake.wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move the time forward by `seconds` (>= 0) and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.current += timedelta(seconds=seconds)
        for deadline, wake in list(self._sleepers):
            if deadline <= self.current:
                wake.set()

    @property
    def sleeping(self) -> int:
        """How many tasks are waiting in `sleep()` now (with `auto_advance=False`)."""
        return len(self._sleepers)


# --- storage ----------------------------------------------------------------------------------------------


def _container_url(container: str) -> str:
    return f"{_SCHEME}://{quote(container, safe='')}"


def _parse_url(url: str) -> tuple[str, str]:
    """(container, blob name) of one of our URLs; the blob name is empty for a container's URL."""
    parsed = urlparse(url)
    if parsed.scheme != _SCHEME:
        raise BackendError(f"the in-memory backend handles {_SCHEME}:// URLs only, not {url!r}")
    return unquote(parsed.netloc), unquote(parsed.path.lstrip("/"))


class InMemoryStorage:
    """The `Storage` protocol over dicts: `containers[container][blob name] = content`.

    Blob names are kept as given (Blob Storage's names are flat; `/` only looks like a folder). MD5s are
    computed from the content, as Blob Storage keeps them for a single-request upload. URLs are
    `memory://<container>[/<blob>]`; permissions and expiry are recorded in the URL's query but not checked.
    """

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, bytes]] = {}

    async def ensure_container(self, container: str) -> bool:
        """Create the container if absent; True when it was created."""
        if container in self.containers:
            return False
        self.containers[container] = {}
        return True

    async def upload(
        self, container: str, blob_name: str, source: Path, md5_hex: str, *, check_existing: bool = True
    ) -> UploadOutcome:
        """Store the file's bytes; SKIPPED when a blob of the same size and MD5 is there and
        `check_existing`. NotFoundError when the container does not exist; OSError when `source` cannot be
        read."""
        blobs = self._container(container)
        content = await anyio.Path(source).read_bytes()
        existing = blobs.get(blob_name)
        if (
            check_existing
            and existing is not None
            and len(existing) == len(content)
            and hashlib.md5(existing).hexdigest() == md5_hex
        ):
            return UploadOutcome.SKIPPED
        blobs[blob_name] = content
        return UploadOutcome.UPLOADED

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        """The blobs whose names start with `prefix`, by name. NotFoundError when no such container."""
        blobs = self._container(container)
        return [
            BlobInfo(name, len(content), hashlib.md5(content).hexdigest())
            for name, content in sorted(blobs.items())
            if name.startswith(prefix)
        ]

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        """Write the blob to `dest` through a temporary name. NotFoundError when absent."""
        content = self.read(container, blob_name)
        temporary = temporary_sibling(dest)
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(temporary).write_bytes(content)
        await anyio.Path(temporary).replace(dest)

    async def download_prefix(
        self,
        container: str,
        prefix: str,
        plan: Callable[[Sequence[BlobInfo]], Iterable[tuple[BlobInfo, Path]]],
    ) -> list[BlobDownload]:
        """The blobs under `prefix` that `plan` picks, each written to its path unless a file of the same
        content is there (`skipped`). NotFoundError when the container does not exist."""

        async def holds(blob: BlobInfo, dest: Path) -> bool:
            content = self.read(container, blob.name)
            there = anyio.Path(dest)
            return (
                await there.is_file()
                and (await there.stat()).st_size == len(content)
                and await there.read_bytes() == content
            )

        return await download_each(self, container, plan(await self.list_blobs(container, prefix)), holds)

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        """`memory://<container>?sp=...&se=<seconds>`; the container need not exist yet."""
        return (
            f"{_container_url(container)}?sp={_permission_letters(permissions)}&se={expiry.total_seconds():g}"
        )

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        """`memory://<container>/<blob>?sp=...&se=<seconds>`; the blob need not exist yet."""
        return (
            f"{_container_url(container)}/{quote(blob_name)}"
            f"?sp={_permission_letters(permissions)}&se={expiry.total_seconds():g}"
        )

    async def delete_container(self, container: str) -> None:
        """Delete the container and its blobs; nothing happens when it is absent."""
        self.containers.pop(container, None)

    # --- for tests ---

    def put(self, container: str, blob_name: str, content: bytes) -> None:
        """Store a blob directly (the container is created when absent), e.g. a user's input blob."""
        self.containers.setdefault(container, {})[blob_name] = content

    def write(self, container: str, blob_name: str, content: bytes) -> None:
        """Store a blob in an existing container, as a task's output upload does. NotFoundError when the
        container does not exist (Batch then fails the task with FileUploadFailed)."""
        self._container(container)[blob_name] = content

    def read(self, container: str, blob_name: str) -> bytes:
        """A blob's content. NotFoundError when the container or the blob does not exist."""
        try:
            return self._container(container)[blob_name]
        except KeyError:
            raise NotFoundError(
                f"blob {blob_name!r} not found in {container!r}", code="BlobNotFound"
            ) from None

    def _container(self, container: str) -> dict[str, bytes]:
        try:
            return self.containers[container]
        except KeyError:
            raise NotFoundError(f"container {container!r} does not exist", code="ContainerNotFound") from None


def _permission_letters(permissions: Permission) -> str:
    letters = {Permission.READ: "r", Permission.CREATE: "c", Permission.WRITE: "w", Permission.LIST: "l"}
    return "".join(letter for flag, letter in letters.items() if flag in permissions)


# --- scripted outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Succeed:
    """The attempt exits 0. `files` are what it leaves in its working directory (relative POSIX paths ->
    content), matched against the task's output file patterns; `stdout`/`stderr` become `stdout.txt` and
    `stderr.txt` next to the working directory, as on a Batch node."""

    files: Mapping[str, bytes] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True, slots=True)
class Fail:
    """The attempt ends with `exit_code` (non-zero), or with a `failure` (Batch's failureInfo, e.g. a
    resource file that could not be fetched) and no exit code. Retried while `max_task_retry_count` allows."""

    exit_code: int | None = 1
    failure: FailureInfo | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def __post_init__(self) -> None:
        if self.exit_code in (0, None) and self.failure is None:
            raise ValueError("a failed attempt needs a non-zero exit code or a failure")


@dataclass(frozen=True, slots=True)
class Hold:
    """The attempt keeps running until the test calls `InMemoryCompute.release()` with its outcome."""


@dataclass(frozen=True, slots=True)
class Preempt:
    """The attempt is cut short because its node went away (a spot node preempted): the task goes back to
    the queue and counts a requeue, not a retry, as on Batch (`attempts.after_attempt`)."""


Outcome = Succeed | Fail | Hold | Preempt
Ended = Succeed | Fail | Preempt


@dataclass(frozen=True, slots=True)
class ScriptedTask:
    """What a script sees of one attempt: the task as added, its attempt number (0 for the first, then how
    many attempts came before: retries and requeues) and its inputs (resource files by their `file_path`,
    read from the storage)."""

    job_id: str
    spec: TaskSpec
    attempt: int
    inputs: Mapping[str, bytes]


Script = Callable[[ScriptedTask], Outcome]


def _succeed(task: ScriptedTask) -> Outcome:
    return Succeed()


# --- compute ----------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    state: TaskState
    transition_time: datetime
    node_id: str | None = None
    exit_code: int | None = None
    result: TaskResult | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # stdout.txt, stderr.txt
    queued_again: bool = False  # retried or requeued: its next attempt runs when the job is next looked at
    reactivated_after: int = 0  # attempts before its last reactivation (Reactivate Task resets the counts)

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
class _Job:
    spec: JobSpec
    tasks: dict[str, _Task] = field(default_factory=dict)
    ends_when_done: bool = False
    ended: str | None = None  # Batch's job state reason once the job has completed


class InMemoryCompute:
    """The `Compute` protocol in memory; each attempt's outcome comes from `script` (default: succeed).

    `calls` records every protocol call as `(method name, first argument)`, in order, for tests to assert
    on. Times come from `clock` (default: the wall clock) and are strictly increasing per task.
    """

    def __init__(
        self,
        storage: InMemoryStorage,
        *,
        script: Script = _succeed,
        clock: Clock | None = None,
    ) -> None:
        self.storage = storage
        self.script = script
        self._clock = clock
        self.pools: dict[str, PoolSpec] = {}
        self.nodes: dict[str, tuple[int, int]] = {}  # pool id -> (dedicated, spot) asked for
        self.jobs: dict[str, _Job] = {}
        self.calls: list[tuple[str, object]] = []
        self._refusals: list[tuple[AddStatus, str, str]] = []  # for the next add-collection requests
        # What List Supported Images answers; None: no image list, every pool's image is fine.
        self.supported_images: list[SupportedImage] | None = None

    # --- pools and jobs ---

    async def check_pool_image(self, spec: PoolSpec) -> ImageVerdict:
        """Judge the pool's image against `supported_images` (if set) at the clock's time; creates nothing."""
        self.calls.append(("check_pool_image", spec))
        if self.supported_images is None:
            return ImageVerdict(Verdict.OK, Reason.NO_IMAGES)
        return judge(self.supported_images, spec, self._now())

    async def ensure_pool(self, spec: PoolSpec) -> Ensured:
        """Create the pool, or reuse one of that id (with a warning when its slot count differs)."""
        self.calls.append(("ensure_pool", spec))
        known = self.pools.get(spec.pool_id)
        if known is None:
            self.pools[spec.pool_id] = spec
            self.nodes[spec.pool_id] = (spec.dedicated_nodes, spec.spot_nodes)
            return Ensured(spec.pool_id, created=True)
        warnings: tuple[str, ...] = ()
        if known.total_slots != spec.total_slots:
            warnings = (f"pool {spec.pool_id} had {known.total_slots} slots; now {spec.total_slots}",)
        return Ensured(spec.pool_id, created=False, warnings=warnings)

    async def wait_for_nodes(self, pool_id: str) -> int:
        """The pool's node count (dedicated + spot) at once. NotFoundError when no such pool."""
        self.calls.append(("wait_for_nodes", pool_id))
        dedicated, spot = self._nodes(pool_id)
        return dedicated + spot

    async def ensure_job(self, spec: JobSpec) -> Ensured:
        """Create the job or reuse it; a reused job that has completed says so in `Ensured.ended`."""
        self.calls.append(("ensure_job", spec))
        job = self.jobs.get(spec.job_id)
        if job is None:
            self.jobs[spec.job_id] = _Job(spec)
            return Ensured(spec.job_id, created=True)
        return Ensured(spec.job_id, created=False, ended=job.ended)

    async def end_job_when_done(self, job_id: str) -> None:
        """The job completes (`AllTasksComplete`) once every task has. NotFoundError when no such job."""
        self.calls.append(("end_job_when_done", job_id))
        job = self._job(job_id)
        job.ends_when_done = True
        self._maybe_end(job)

    async def delete_job(self, job_id: str) -> None:
        """Delete the job and its tasks; nothing happens when it is absent."""
        self.calls.append(("delete_job", job_id))
        self.jobs.pop(job_id, None)

    async def delete_pool(self, pool_id: str) -> None:
        """Delete the pool; nothing happens when it is absent."""
        self.calls.append(("delete_pool", pool_id))
        self.pools.pop(pool_id, None)
        self.nodes.pop(pool_id, None)

    async def resize_pool(self, pool_id: str, dedicated: int, spot: int) -> None:
        """Record the node counts asked for. NotFoundError when no such pool."""
        self.calls.append(("resize_pool", (pool_id, dedicated, spot)))
        self._nodes(pool_id)
        self.nodes[pool_id] = (dedicated, spot)

    def end_job(self, job_id: str, reason: str = "MaxWallClockTimeExpiry") -> None:
        """For tests: the job completes now, as Batch ends a job at its max wall clock; it then takes no
        tasks. NotFoundError when no such job."""
        self._job(job_id).ended = reason

    # --- tasks ---

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        """Add one collection and run each new task's first attempt (or hold it).

        Raises RequestTooLargeError over 100 tasks (Batch's limit per request), NotFoundError when no such
        job, and BackendError (code `JobCompleted`) when the job has completed. A task id already in the job
        is `EXISTS` (`TaskExists`), as Batch reports it."""
        self.calls.append(("add_tasks", [task.task_id for task in tasks]))
        if len(tasks) > MAX_TASKS_PER_REQUEST:
            raise RequestTooLargeError(
                f"{len(tasks)} tasks in one request; at most {MAX_TASKS_PER_REQUEST}",
                code="RequestBodyTooLarge",
            )
        job = self._job(job_id)
        if job.ended is not None:
            raise BackendError(f"job {job_id!r} has completed and takes no tasks", code="JobCompleted")
        if self._refusals:
            status, code, message = self._refusals.pop(0)
            return [AddTaskResult(spec.task_id, status, code, message) for spec in tasks]
        results = []
        for spec in tasks:
            if spec.task_id in job.tasks:
                results.append(AddTaskResult(spec.task_id, AddStatus.EXISTS, "TaskExists", "The task exists"))
                continue
            task = _Task(spec, TaskState.ACTIVE, self._now())
            job.tasks[spec.task_id] = task
            results.append(AddTaskResult(spec.task_id, AddStatus.ADDED))
            self._attempt(job, task)
        return results

    async def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Batch's Reactivate Task: a failed task turns active under its id, its last attempt cleared and
        its retry count 0; it runs when the job is next looked at. NotFoundError for an unknown job or task;
        JobEndedError (JobCompleted) in a completed job; BackendError TaskNotCompleted / TaskSucceeded for a
        task that did not fail."""
        self.calls.append(("reactivate_task", task_id))
        job = self._job(job_id)
        task = job.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id!r} not found", code="TaskNotFound")
        if (refused := reactivation_refused(task.state, task.result)) is not None:
            raise BackendError(f"task {task_id!r} cannot run again ({refused})", code=refused)
        if job.ended is not None:
            raise JobEndedError(
                f"job {job_id!r} has completed and reactivates no task", job_id=job_id, reason="JobCompleted"
            )
        task.reactivated_after += task.retry_count + task.requeue_count + 1
        task.exit_code = task.result = task.failure = task.node_id = None
        task.start_time = task.end_time = None
        task.retry_count = task.requeue_count = 0
        task.queued_again = True
        self._move(task, TaskState.ACTIVE)

    async def task_counts(self, job_id: str) -> TaskCounts:
        """Tasks by state (preparing counts as running). NotFoundError when no such job."""
        self.calls.append(("task_counts", job_id))
        job = self._job(job_id)
        tasks = list(job.tasks.values())
        completed = [task for task in tasks if task.state is TaskState.COMPLETED]
        succeeded = sum(task.result is TaskResult.SUCCESS for task in completed)
        counts = TaskCounts(
            active=sum(task.state is TaskState.ACTIVE for task in tasks),
            running=sum(task.state in (TaskState.PREPARING, TaskState.RUNNING) for task in tasks),
            completed=len(completed),
            succeeded=succeeded,
            failed=len(completed) - succeeded,
        )
        self._run_queued(job)
        return counts

    async def list_tasks(
        self,
        job_id: str,
        changed_since: datetime | None = None,
        *,
        changed_until: datetime | None = None,
        queued: bool = True,
        on_page: PageHandler | None = None,
    ) -> list[TaskView]:
        """Every task, or those whose state changed at or after `changed_since` (and at or before
        `changed_until`), in one page: handed to `on_page` when given, and then none returned. NotFoundError
        when no such job."""
        self.calls.append(("list_tasks", changed_since))
        job = self._job(job_id)
        views = [
            task.view()
            for task in job.tasks.values()
            if (changed_since is None or task.transition_time >= changed_since)
            and (changed_until is None or task.transition_time <= changed_until)
        ]
        self._run_queued(job)
        if on_page is not None:
            await on_page(views)
            return []
        return views

    async def read_task_file(self, job_id: str, task_id: str, name: str, *, tail: int | None = None) -> bytes:
        """`stdout.txt` or `stderr.txt` of the task's last attempt (its last `tail` bytes, when given).
        NotFoundError otherwise."""
        self.calls.append(("read_task_file", (task_id, name)))
        task = self._job(job_id).tasks.get(task_id)
        if task is None or name not in task.files:
            raise NotFoundError(f"task file {name!r} of {task_id!r} not found", code="FileNotFound")
        content = task.files[name]
        if tail is None:
            return content
        return content[len(content) - tail :] if 0 < tail < len(content) else content if tail > 0 else b""

    # --- for tests ---

    def release(self, job_id: str, task_id: str, outcome: Ended | None = None) -> None:
        """End a held attempt with `outcome` (default: `Succeed()`). ValueError when the task is not held;
        NotFoundError when there is no such job or task."""
        task = self._job(job_id).tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id!r} not found", code="TaskNotFound")
        if task.state is not TaskState.RUNNING:
            raise ValueError(f"task {task_id!r} is {task.state}, not held running")
        self._end_attempt(self._job(job_id), task, outcome or Succeed())

    def refuse_adds(
        self,
        requests: int,
        *,
        status: AddStatus = AddStatus.SERVER_ERROR,
        code: str = "ServerBusy",
        message: str = "The server is currently unable to receive requests",
    ) -> None:
        """For tests: the next `requests` add-collection requests answer every task with `status` (a
        per-task server error by default, as Batch's 500 ServerBusy inside a 200 answer) and add nothing."""
        self._refusals.extend([(status, code, message)] * requests)

    def held(self, job_id: str) -> list[str]:
        """The ids of the job's tasks held running now."""
        return [
            task_id for task_id, task in self._job(job_id).tasks.items() if task.state is TaskState.RUNNING
        ]

    def calls_named(self, name: str) -> list[object]:
        """The first arguments of every call to `name`, in order."""
        return [argument for called, argument in self.calls if called == name]

    # --- inside ---

    def _attempt(self, job: _Job, task: _Task) -> None:
        task.node_id = f"{job.spec.pool_id}-node-0"
        task.start_time = self._now()
        self._move(task, TaskState.RUNNING)
        inputs, failure = self._inputs(task.spec)
        outcome: Outcome
        if failure is not None:
            outcome = Fail(exit_code=None, failure=failure)
        else:
            attempt = task.reactivated_after + task.retry_count + task.requeue_count
            outcome = self.script(ScriptedTask(job.spec.job_id, task.spec, attempt, inputs))
        if not isinstance(outcome, Hold):
            self._end_attempt(job, task, outcome)

    def _inputs(self, spec: TaskSpec) -> tuple[dict[str, bytes], FailureInfo | None]:
        inputs = {}
        for resource in spec.resource_files:
            try:
                container, blob_name = _parse_url(resource.url)
                inputs[resource.file_path] = self.storage.read(container, blob_name)
            except BackendError as exc:
                return {}, FailureInfo("usererror", "ResourceFileDownload", f"{resource.file_path}: {exc}")
        return inputs, None

    def _end_attempt(self, job: _Job, task: _Task, outcome: Ended) -> None:
        task.end_time = self._now()
        if isinstance(outcome, Preempt):
            decision = after_attempt(
                exit_code=None,
                failure=None,
                retry_count=task.retry_count,
                max_task_retry_count=task.spec.constraints.max_task_retry_count,
                interrupted=Interruption.NODE_LOST,
            )
        else:
            task.files = {"stdout.txt": outcome.stdout.encode(), "stderr.txt": outcome.stderr.encode()}
            task.exit_code = 0 if isinstance(outcome, Succeed) else outcome.exit_code
            task.failure = None if isinstance(outcome, Succeed) else outcome.failure
            succeeded = isinstance(outcome, Succeed)
            upload_failure = self._upload_outputs(task, outcome, succeeded=succeeded)
            if upload_failure is not None:
                task.failure = upload_failure
            decision = after_attempt(
                exit_code=task.exit_code,
                failure=task.failure,
                retry_count=task.retry_count,
                max_task_retry_count=task.spec.constraints.max_task_retry_count,
            )
        if decision in (Decision.RETRY, Decision.REQUEUE):
            # Queued again; the next attempt runs when the job is next looked at, as a node takes it a
            # moment later.
            if decision is Decision.RETRY:
                task.retry_count += 1
            else:
                task.requeue_count += 1
            task.queued_again = True
            self._move(task, TaskState.ACTIVE)
            return
        task.result = TaskResult.SUCCESS if decision is Decision.SUCCEED else TaskResult.FAILURE
        self._move(task, TaskState.COMPLETED)
        self._maybe_end(job)

    def _upload_outputs(self, task: _Task, outcome: Succeed | Fail, *, succeeded: bool) -> FailureInfo | None:
        files = {
            posixpath.normpath(posixpath.join("wd", name)): content for name, content in outcome.files.items()
        }
        files.update(task.files)  # stdout.txt and stderr.txt sit next to wd/
        for output in task.spec.output_files:
            if not output.upload_condition.applies(succeeded=succeeded):
                continue
            pattern = posixpath.normpath(posixpath.join("wd", output.file_pattern))
            for name in sorted(files):
                if not _matches(name, pattern):
                    continue
                try:
                    container, _ = _parse_url(output.container_url)
                    self.storage.write(container, _blob_name(output, name), files[name])
                except BackendError as exc:
                    return FailureInfo("servererror", "FileUploadFailed", f"{output.file_pattern}: {exc}")
        return None

    def _run_queued(self, job: _Job) -> None:
        """Run the next attempt of every task queued again after a failed or preempted one: each look at
        the job sees a task back in the queue once, and its next attempt by the look after."""
        for task in list(job.tasks.values()):
            if task.state is TaskState.ACTIVE and task.queued_again:
                task.queued_again = False
                self._attempt(job, task)

    def _maybe_end(self, job: _Job) -> None:
        done = all(task.state is TaskState.COMPLETED for task in job.tasks.values())
        if job.ends_when_done and job.ended is None and done:
            job.ended = "AllTasksComplete"

    def _move(self, task: _Task, state: TaskState) -> None:
        task.state = state
        # Strictly increasing, so that every change is distinguishable from a re-read of the same state.
        task.transition_time = max(self._now(), task.transition_time + timedelta(microseconds=1))

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    def _nodes(self, pool_id: str) -> tuple[int, int]:
        try:
            return self.nodes[pool_id]
        except KeyError:
            raise NotFoundError(f"pool {pool_id!r} not found", code="PoolNotFound") from None

    def _job(self, job_id: str) -> _Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFoundError(f"job {job_id!r} not found", code="JobNotFound") from None


def _matches(name: str, pattern: str) -> bool:
    """Glob matching on POSIX paths as Batch's output file patterns use it (Batch REST:
    OutputFile.filePattern): `*` and `?` stay within one path segment, `**` spans any number of them, and a
    name starting with "." is matched only by a pattern segment starting with "." (`*.gif` does not match
    `.a.gif`, `.*.gif` does)."""
    return _match_parts(name.split("/"), pattern.split("/"))


def _match_parts(names: list[str], patterns: list[str]) -> bool:
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        for skip in range(len(names) + 1):
            if _match_parts(names[skip:], rest):
                return True
            if skip < len(names) and names[skip].startswith("."):
                return False  # `**` does not descend into a hidden folder
        return False
    return bool(names) and _segment_matches(names[0], head) and _match_parts(names[1:], rest)


def _segment_matches(name: str, pattern: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _blob_name(output: OutputFile, matched: str) -> str:
    """Batch's rule: a pattern naming one file uploads to `path` itself; a wildcard pattern uses `path` as a
    virtual directory in front of each matched file's name; without a path, the file's own name."""
    name = posixpath.basename(matched)
    if glob.has_magic(output.file_pattern):
        prefix = output.path.strip("/")
        return f"{prefix}/{name}" if prefix else name
    return output.path or name


# --- the backend ------------------------------------------------------------------------------------------


class InMemoryBackend:
    """An `InMemoryCompute` and the `InMemoryStorage` it reads inputs from and writes outputs to.

    `async with InMemoryBackend(script=...) as backend`; the state survives closing and reopening the same
    object (a re-run finds its job and blobs), as the service's state outlives an orchestrator.
    """

    name = "memory"

    def __init__(self, *, script: Script = _succeed, clock: Clock | None = None) -> None:
        self._storage = InMemoryStorage()
        self._compute = InMemoryCompute(self._storage, script=script, clock=clock)
        self.opened = 0  # times opened with `async with`
        self.closed = 0

    @property
    def compute(self) -> InMemoryCompute:
        """The compute side: pools, jobs and scripted tasks."""
        return self._compute

    @property
    def storage(self) -> InMemoryStorage:
        """The storage side: containers of blobs."""
        return self._storage

    async def __aenter__(self) -> Self:
        self.opened += 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self.closed += 1
        return None


if TYPE_CHECKING:  # mypy checks that the doubles satisfy the protocols they stand in for

    def _satisfies(backend: InMemoryBackend, clock: FakeClock) -> tuple[Backend, Compute, Storage, Clock]:
        return backend, backend.compute, backend.storage, clock
