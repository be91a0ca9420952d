"""The Orchestrator: carries a workload through its stages and publishes what happens as events.

    stage inputs ─┬─▶ build tasks ─┬─▶ submit ───┬─▶ drain subscribers ─▶ RunFinished
    ensure pool ──┤                └─▶ monitor ──┘
    ensure job ───┘

Uploads run alongside pool and job creation (a pool takes minutes on Azure); monitoring runs alongside
submission (the first tasks of 100,000 end long before the last collection is added). The engine knows
nothing of the backend behind the `Compute` and `Storage` protocols, nor of the workload's program. The
service is the source of truth: a re-run lists what the job already has and adds only what is missing, and
the downloader fetches only outputs not already on disk.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import TracebackType
from typing import Self

import anyio
import structlog

from .backends.base import Backend, Compute
from .backoff import BackoffPolicy
from .bus import EventBus, EventStream, Subscriber
from .clock import Clock, SystemClock
from .concurrency import for_each
from .errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    JobEndedError,
    LostContactError,
    PoolBeingDeletedError,
)
from .events import (
    Event,
    InputUploaded,
    JobReady,
    NodesReady,
    PoolDeletionPending,
    PoolReady,
    RunFinished,
    RunStarted,
    RunSummary,
    TasksSubmitted,
)
from .images import ImageVerdict, Verdict, enforced, unchecked
from .monitor.poller import Poller, PollSettings, PollStats
from .monitor.state import TaskTracker
from .recorder import RunRecorder, Stage
from .records import (
    AddStatus,
    AddTaskResult,
    Ensured,
    Permission,
    TaskResult,
    TaskState,
    TaskView,
    UploadOutcome,
)
from .spec import (
    BlobInputs,
    JobLifetime,
    JobSpec,
    PoolSpec,
    StagedInput,
    TaskSpec,
    Workload,
    job_generation_id,
)
from .staging import stage_inputs
from .submit import Submitter
from .subscribers.cleanup import Cleanup
from .subscribers.download import OutputDownloader
from .tasks import build_task, changed_definitions, required_downloads

_log = structlog.get_logger("batchpilot.engine")

# A one-shot run's job ends by itself this long after the run's timeout, should the run have died: long enough
# for a resume after a timeout to find it, short enough that an orphan does not hold the pool for long.
JOB_GRACE = timedelta(minutes=30)
# Poll statistics kept for the latest runs (benchmarks read them): a long-lived service must not keep all.
POLL_STATS_KEPT = 64
# Tokens handed to tasks outlive whatever can still run by this much (clock skew, the upload itself).
SAS_MARGIN = timedelta(minutes=30)
# Deleting a pool takes Batch a few minutes: look again every few seconds, then every half minute.
POOL_DELETION_POLL = BackoffPolicy(initial=2.0, factor=1.5, cap=30.0, jitter=0.0)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How much an orchestrator does at once: `upload_concurrency` input uploads, `download_concurrency`
    output downloads, `submit_in_flight` add-collection requests (of up to 100 tasks each) in flight per
    run, and how the monitor polls (`poll`). Several collections in flight are what Batch recommends for
    many tasks ("Submit a large number of tasks to a Batch job": parallel operations, fewer than 100): 16
    hide a remote region's latency (10,000 tasks at 300 ms per request: 100 requests, 7 round trips)."""

    upload_concurrency: int = 16
    download_concurrency: int = 8
    submit_in_flight: int = 16
    poll: PollSettings = field(default_factory=PollSettings)


def job_wall_clock(workload: Workload) -> timedelta | None:
    """How long a one-shot run's job may live; a service's job has no end."""
    return workload.timeout + JOB_GRACE if workload.job_lifetime is JobLifetime.RUN else None


def sas_lifetime(workload: Workload) -> timedelta:
    """How long the tokens given to a task must stay valid: until nothing of it can still run.

    A one-shot run's job, and every task in it, ends within its max wall clock. A service's task is added
    when its batch starts and has until the batch's timeout to start, then its own max wall clock to run.
    """
    wall_clock = job_wall_clock(workload)
    if wall_clock is None:
        wall_clock = workload.timeout + (workload.template.constraints.max_wall_clock or workload.timeout)
    return wall_clock + SAS_MARGIN


async def check_pool_image(compute: Compute, spec: PoolSpec) -> ImageVerdict:
    """`compute.check_pool_image(spec)`, with a refusal raised as UnsupportedImageError (one line naming the
    image, the date and a replacement) and a service that cannot be asked as ImageCheckError: `run`, `serve`,
    `plan` and `check` stop before anything is created rather than skip the check."""
    try:
        verdict = await compute.check_pool_image(spec)
    except BackendError as exc:
        raise unchecked(spec, exc) from exc
    return enforced(spec, verdict)


# How many generations of a one-shot run's job a run walks before giving up (see Orchestrator._choose_job).
MAX_JOB_GENERATIONS = 20


@dataclass(slots=True)
class _JobChoice:
    """What `_choose_job` found: the job to add to (`job_id`, just `created`, `ended` with that reason), where
    each of the run's tasks already is (`homes`: task id to its job and view, the latest generation winning),
    every task id seen in the job's generations (`seen`), and, once planned, the inputs whose tasks are to be
    added (`to_add`) or reactivated in this job (`to_retry`)."""

    job_id: str
    created: bool
    ended: str | None
    homes: dict[str, tuple[str, TaskView]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    to_add: list[StagedInput] = field(default_factory=list)
    to_retry: list[StagedInput] = field(default_factory=list)

    def plan(self, staged: Sequence[StagedInput], *, retry_failed: bool) -> None:
        self.to_add, self.to_retry = [], []
        for item in staged:
            home = self.homes.get(item.task_id)
            if home is None:
                self.to_add.append(item)
            elif retry_failed and _failed(home[1]):
                (self.to_retry if home[0] == self.job_id else self.to_add).append(item)

    def elsewhere(self, job_id: str) -> dict[str, list[str]]:
        """The tasks that stay in another job than `job_id` (an earlier, ended generation), by job."""
        moving = {item.task_id for item in (*self.to_add, *self.to_retry)}
        by_job: dict[str, list[str]] = {}
        for task_id, (home, _) in self.homes.items():
            if home != job_id and task_id not in moving:
                by_job.setdefault(home, []).append(task_id)
        return by_job


def _failed(view: TaskView) -> bool:
    """A task that completed and failed (Batch's executionInfo.result `failure`)."""
    return view.state is TaskState.COMPLETED and view.result is TaskResult.FAILURE


class Orchestrator:
    """`async with Orchestrator(backend) as orch: summary = await orch.run(workload)`.

    The engine names no backend: the caller gives one (`batchpilot.Orchestrator`, the face, defaults to the
    local one). `events()` streams every event; extra subscribers (any `async def __call__(event)`) get their
    own inbox. Several workloads may run concurrently on one orchestrator.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        subscribers: Sequence[Subscriber] = (),
        settings: EngineSettings = EngineSettings(),
        clock: Clock | None = None,
    ) -> None:
        self._backend: Backend = backend
        self._extra_subscribers = tuple(subscribers)
        self._settings = settings
        self._clock = clock or SystemClock()
        self._stack = AsyncExitStack()
        self._bus = EventBus()
        self._downloader = OutputDownloader(self._backend, self._publish)
        # The poll statistics of the latest runs (at most POLL_STATS_KEPT), by run id: a service runs many.
        self.poll_stats: dict[str, PollStats] = {}
        self._recorders: dict[str, RunRecorder] = {}  # the runs in flight
        self._monitoring: dict[str, tuple[anyio.CancelScope, PollStats]] = {}
        self._stop_monitoring = False
        self._image_verdicts: dict[PoolSpec, ImageVerdict] = {}

    @property
    def backend(self) -> Backend:
        """The backend the orchestrator runs workloads on (opened and closed with the orchestrator)."""
        return self._backend

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self._backend)
            await stack.enter_async_context(self._bus)
            self._bus.subscribe(
                self._downloader, name="download", concurrency=self._settings.download_concurrency
            )
            self._bus.subscribe(Cleanup(self._backend, self._publish), name="cleanup")
            for subscriber in self._extra_subscribers:
                self._bus.subscribe(subscriber)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    def subscribe(self, subscriber: Subscriber, *, name: str | None = None) -> None:
        """Deliver every later event to `subscriber` (any `async def __call__(event)`), in order, from an
        inbox of its own; `name` labels it in `queue_depths()` and logs. RuntimeError unless the orchestrator
        is open (`async with`)."""
        self._bus.subscribe(subscriber, name=name)

    def queue_depths(self) -> dict[str, int]:
        """Events waiting in each subscriber's inbox."""
        return self._bus.queue_depths()

    def monitoring(self) -> dict[str, PollStats]:
        """The live poll statistics of each run being monitored now, by run id."""
        return {run_id: stats for run_id, (_, stats) in self._monitoring.items()}

    def stop_monitoring(self) -> None:
        """Let every run, now and later, end after its tasks are submitted, without waiting for them.

        Runs still uploading or submitting finish those stages first; their summaries say `stopped`. The
        tasks stay in the job: running the same workload again picks up where the service says things stand.
        """
        self._stop_monitoring = True
        for scope, _ in self._monitoring.values():
            scope.cancel()

    async def check_pool_image(self, spec: PoolSpec) -> ImageVerdict:
        """Ask the service whether it takes the pool's image before anything is created (once per pool spec
        per orchestrator). A warning is logged (`pool_image`) and returned; a refusal raises
        UnsupportedImageError (naming a replacement); a service that cannot be asked raises ImageCheckError:
        the check is never skipped."""
        verdict = self._image_verdicts.get(spec)
        if verdict is not None:
            return verdict
        verdict = await check_pool_image(self._backend.compute, spec)
        if verdict.verdict is Verdict.WARNING:
            _log.warning("pool_image", pool_id=spec.pool_id, reason=verdict.reason, detail=verdict.message)
        self._image_verdicts[spec] = verdict
        return verdict

    def events(self) -> EventStream:
        """Every event from now until the orchestrator closes: `async for event in orch.events()`."""
        return self._bus.stream()

    def recorders(self) -> dict[str, RunRecorder]:
        """The recorder of each run in flight, by run id (a run's recorder goes when the run returns)."""
        return dict(self._recorders)

    async def _publish(self, event: Event, *, source: Subscriber | None = None) -> None:
        """Every event of a run goes through here: its recorder sees it first, then the subscribers."""
        recorder = self._recorders.get(event.run_id)
        if recorder is not None:
            recorder.observe(event)
        await self._bus.publish(event, source=source)

    def _stage(self, run_id: str, stage: Stage, *, ended: bool = False) -> None:
        recorder = self._recorders.get(run_id)
        if recorder is not None:
            mark = recorder.stage_ended if ended else recorder.stage_started
            mark(stage, self._clock.now())

    async def run(self, workload: Workload, *, recorder: RunRecorder | None = None) -> RunSummary:
        """Carry `workload` through every stage and return its summary (check `.ok`).

        The run's events feed a `RunRecorder` (the summary, and a report's stages and task attempts), made
        for the run and dropped when it returns; pass your own `recorder` (a new one per run) to keep it and
        read `recorder.record()` afterwards, also after a failure or an interruption.

        Failed tasks, a timeout, a stop, lost contact and failed downloads do not raise: the summary says so.
        Raises ConfigError (a user mistake, before anything is created: no inputs, an unreadable input, an
        input container that is missing or empty, an image the service no longer takes) and BackendError
        (the service refused or failed: e.g. a job that has ended and takes no new tasks, a pool that cannot
        get nodes, rejected credentials as its subclass AuthenticationError)."""
        if not workload.inputs:
            raise ConfigError("the workload has no inputs: give at least one input file")
        started = anyio.current_time()
        # Before anything is created: an unreadable input or an empty container is the user's to fix first.
        staged = await stage_inputs(
            workload, self._backend.storage, concurrency=self._settings.upload_concurrency
        )
        image = await self.check_pool_image(workload.pool)
        run_id = uuid.uuid4().hex[:12]
        warnings = (image.message,) if image.verdict is Verdict.WARNING else ()
        recorder = recorder if recorder is not None else RunRecorder()
        self._recorders[run_id] = recorder
        try:
            with structlog.contextvars.bound_contextvars(run_id=run_id, job_id=workload.job_id):
                return await self._run(run_id, workload, staged, recorder, started, warnings)
        finally:
            del self._recorders[run_id]
            self._downloader.forget(run_id)

    async def _run(
        self,
        run_id: str,
        workload: Workload,
        staged: list[StagedInput],
        recorder: RunRecorder,
        started: float,
        warnings: tuple[str, ...],
    ) -> RunSummary:
        await self._publish(
            RunStarted(
                run_id=run_id,
                workload=workload.name,
                job_id=workload.job_id,
                pool_id=workload.pool.pool_id,
                input_count=len(staged),
                input_container=workload.input_container,
                output_container=workload.output_container,
                download_to=workload.download_to,
                cleanup=workload.cleanup,
            )
        )
        with anyio.move_on_after(workload.timeout.total_seconds()) as deadline:
            await self._stages(run_id, workload, staged, recorder)
        monitoring_stopped = self._stop_monitoring
        await self._bus.drain()  # the downloads, among others, are done
        summary = recorder.summary(
            elapsed_s=round(anyio.current_time() - started, 3),
            timed_out=deadline.cancelled_caught,
            monitoring_stopped=monitoring_stopped,
            warnings=warnings,
        )
        await self._publish(RunFinished(run_id=run_id, summary=summary))
        await self._bus.drain()  # cleanup acts on RunFinished: what it keeps is in the summary returned
        return replace(summary, kept=recorder.kept())

    async def _stages(
        self, run_id: str, workload: Workload, staged: list[StagedInput], recorder: RunRecorder
    ) -> None:
        """The run's stages, up to the end of monitoring. `staged` (the run's own list) is emptied once the
        tasks are submitted: 100,000 staged inputs (paths, names, fingerprints) weigh about 45 MB, not kept
        while the tasks run."""
        compute = self._backend.compute
        job_ready: list[Ensured] = []
        fresh_input_container: list[bool] = []
        self._stage(run_id, Stage.POOL)
        async with anyio.create_task_group() as group:
            group.start_soon(self._ensure_pool_and_job, run_id, workload, job_ready)
            group.start_soon(self._ensure_containers, workload, fresh_input_container)
        choice = await self._choose_job(run_id, workload, job_ready[0], staged)
        if choice.job_id != workload.job_id:
            workload = replace(workload, job_id=choice.job_id)
            await self._publish(JobReady(run_id=run_id, job_id=choice.job_id, created=choice.created))
        ended = choice.ended
        # A task that already ran needs no input: a re-run of a finished command uploads nothing.
        done = set(choice.homes) - {item.task_id for item in (*choice.to_add, *choice.to_retry)}
        self._stage(run_id, Stage.UPLOAD)
        await self._upload_inputs(run_id, workload, staged, done, check_existing=not fresh_input_container[0])
        self._stage(run_id, Stage.UPLOAD, ended=True)
        to_add = await self._build_tasks(workload, choice.to_add)
        retried = await self._retry_failed(workload.job_id, choice.to_retry, recorder)
        readded = sum(item.task_id in choice.homes for item in choice.to_add)  # failed in an ended job
        recorder.found_in_job(len(staged) - len(choice.to_add) - len(retried))
        recorder.retried(retried=len(retried) + readded, readded=readded)
        recorder.definitions_changed(changed_definitions(choice.to_add, choice.seen))
        # Every backend's succeeded tasks are held to their outputs by the same check (the downloader's); a
        # task with no required output needs no entry (100,000 of them).
        template, needs = workload.template, required_downloads
        self._downloader.expect(run_id, {i.task_id: p for i in staged if (p := needs(template, i))})

        # Tasks that stay in an earlier generation of the job (ended, so completed) are read from there.
        elsewhere = choice.elsewhere(workload.job_id)
        moved = {task_id for ids in elsewhere.values() for task_id in ids}
        # Monitoring starts with submission: the first tasks run (and end) while the last are still being
        # added. The tracker is told which tasks the service refused, and is not done before submission is.
        expected = [item.task_id for item in staged if item.task_id not in moved]
        tracker = TaskTracker(run_id, workload.job_id, expected, submitting=True)
        del expected
        poller = Poller(
            compute,
            tracker,
            self._publish,
            settings=self._settings.poll,
            clock=self._clock,
            new_job=choice.created,
        )

        async def submitted(results: Sequence[AddTaskResult]) -> None:
            taken = (AddStatus.ADDED, AddStatus.EXISTS)
            # A request whose answers were lost may have been applied all the same: a task the monitor has
            # already seen is in the job (the service is the source of truth), so this run added it. Seen
            # running or done, it is waited for and counted, not reported unsubmitted for a retry to add.
            results = [
                r
                if r.status in taken or tracker.view(r.task_id) is None
                else AddTaskResult(r.task_id, AddStatus.ADDED)
                for r in results
            ]
            # Tasks the service did not take: nothing to wait for.
            tracker.forget(r.task_id for r in results if r.status not in taken)
            await self._publish_submitted(run_id, workload.job_id, results)

        async with anyio.create_task_group() as group:
            # Tasks queue while nodes come up; a pool that cannot get nodes fails the run instead of
            # letting it wait for its timeout.
            group.start_soon(self._watch_nodes, run_id, workload.pool.pool_id)
            submitter = Submitter(compute, in_flight=self._settings.submit_in_flight, clock=self._clock)
            self._stage(run_id, Stage.SUBMISSION)
            monitored = [anyio.Event() for _ in range(len(elsewhere) + 1)]
            group.start_soon(self._monitor, run_id, poller, recorder, monitored[0])
            for (other_job, ids), finished in zip(elsewhere.items(), monitored[1:], strict=True):
                earlier = TaskTracker(run_id, other_job, ids)
                settings, clock = self._settings.poll, self._clock
                group.start_soon(
                    self._poll_earlier,
                    Poller(compute, earlier, self._publish, settings=settings, clock=clock),
                    finished,
                )
            # Each collection's task definitions are built just before it is sent and dropped once answered:
            # 100,000 of them (SAS URLs, command lines) weigh 70 MB.
            async with aclosing(to_add):
                await submitter.submit(workload.job_id, to_add, on_chunk=submitted)
            # A job told to end when its tasks are done ends at once when it has none, before a re-run can add
            # what the service could not take now: such a job stays open (its max wall clock still ends it).
            if workload.job_lifetime is JobLifetime.RUN and ended is None and not recorder.unsubmitted:
                await compute.end_job_when_done(workload.job_id)
                _log.info("job_ends_when_done", tasks=len(staged))  # every task is in (tests wait for it)
            self._stage(run_id, Stage.SUBMISSION, ended=True)
            staged.clear()
            choice.to_add.clear()
            choice.to_retry.clear()
            tracker.submission_ended()
            if tracker.done:  # every task taken has completed, or none was: no need to wait for another look
                poller.wake()
            for finished in monitored:
                await finished.wait()
            self.poll_stats[run_id] = poller.stats
            while len(self.poll_stats) > POLL_STATS_KEPT:
                del self.poll_stats[next(iter(self.poll_stats))]
            group.cancel_scope.cancel()

    @staticmethod
    async def _poll_earlier(poller: Poller, finished: anyio.Event) -> None:
        await poller.run()
        finished.set()

    async def _monitor(
        self, run_id: str, poller: Poller, recorder: RunRecorder, finished: anyio.Event
    ) -> None:
        """Poll the run's job until its tracker is done, `stop_monitoring` is called, or contact is lost;
        then set `finished`."""
        self._stage(run_id, Stage.MONITORING)
        with anyio.CancelScope() as monitoring:
            if self._stop_monitoring:
                monitoring.cancel()
            self._monitoring[run_id] = (monitoring, poller.stats)
            try:
                await poller.run()
            except LostContactError as exc:
                # Not a failure of any task: the run ends saying so; a re-run resumes from the service.
                recorder.lost_contact(str(exc))
            finally:
                del self._monitoring[run_id]
        self._stage(run_id, Stage.MONITORING, ended=True)
        finished.set()

    async def _choose_job(
        self, run_id: str, workload: Workload, first: Ensured, staged: Sequence[StagedInput]
    ) -> _JobChoice:
        """The job this run adds to, and where each task already is.

        A one-shot run's job ends with its last task, and Batch takes no task into an ended job, nor
        reactivates one there (409 JobCompleted; Batch REST, Reactivate Task: "it will fail if the Job has
        completed (or is terminating or deleting)"; a completed job cannot be enabled again). So a run that
        has tasks to add (new inputs, changed definitions) or failed tasks to retry moves on to the job's
        next generation (`<job>-g2`, ...): the first generation that has not ended, or whose tasks cover the
        run. Tasks that succeeded in an earlier
        generation stay there and are read from there; failed ones are added again to the new generation.
        JobEndedError after MAX_JOB_GENERATIONS."""
        compute = self._backend.compute
        choice = _JobChoice(workload.job_id, first.created, first.ended)
        wanted = {item.task_id for item in staged}
        for generation in range(1, MAX_JOB_GENERATIONS + 1):
            if generation > 1:
                spec = JobSpec(
                    job_generation_id(workload.job_id, generation),
                    workload.pool.pool_id,
                    max_wall_clock=job_wall_clock(workload),
                )
                job = await compute.ensure_job(spec)
                choice = _JobChoice(job.resource_id, job.created, job.ended, choice.homes, choice.seen)
            if not choice.created:
                for view in await compute.list_tasks(choice.job_id):
                    choice.seen.add(view.task_id)
                    if view.task_id in wanted:
                        choice.homes[view.task_id] = (choice.job_id, view)
            choice.plan(staged, retry_failed=workload.retry_failed)
            if choice.ended is None or not (choice.to_add or choice.to_retry):
                return choice
        generations = tuple(job_generation_id(workload.job_id, n) for n in range(1, MAX_JOB_GENERATIONS + 1))
        raise JobEndedError(
            f"job {workload.job_id} has ended, and so have its {MAX_JOB_GENERATIONS - 1} later generations"
            f" ({generations[1]} ... {generations[-1]})",
            job_id=workload.job_id,
            reason=choice.ended or "completed",
            generations=generations,
        )

    async def _retry_failed(
        self, job_id: str, items: Sequence[StagedInput], recorder: RunRecorder
    ) -> list[str]:
        """Reactivate each failed task of `items` in `job_id` (Batch keeps its id, clears its exit code and
        retry count and runs it again); the ids retried. A task the service will not reactivate is a warning
        of the summary, not a failure of the run."""
        retried: list[str] = []

        async def retry(item: StagedInput) -> None:
            try:
                await self._backend.compute.reactivate_task(job_id, item.task_id)
            except AuthenticationError:
                raise  # not about this task: the run cannot go on
            except BackendError as exc:
                recorder.warn(f"failed task {item.task_id} was not retried: {exc}")
                return
            retried.append(item.task_id)

        await for_each(items, retry, concurrency=self._settings.submit_in_flight * 4)
        return retried

    async def _watch_nodes(self, run_id: str, pool_id: str) -> None:
        self._stage(run_id, Stage.NODES)
        nodes = await self._backend.compute.wait_for_nodes(pool_id)
        self._stage(run_id, Stage.NODES, ended=True)
        await self._publish(NodesReady(run_id=run_id, pool_id=pool_id, nodes=nodes))

    async def _ensure_pool_and_job(self, run_id: str, workload: Workload, job_ready: list[Ensured]) -> None:
        pool = await self._ensure_pool(run_id, workload.pool)
        recorder = self._recorders.get(run_id)
        for warning in pool.warnings:
            _log.warning("pool_differs", pool_id=pool.resource_id, detail=warning)
            if recorder is not None:
                recorder.warn(warning)  # it names the pool
        await self._publish(
            PoolReady(run_id=run_id, pool_id=pool.resource_id, created=pool.created, warnings=pool.warnings)
        )
        job = await self._backend.compute.ensure_job(
            JobSpec(workload.job_id, workload.pool.pool_id, max_wall_clock=job_wall_clock(workload))
        )
        job_ready.append(job)
        self._stage(run_id, Stage.POOL, ended=True)
        await self._publish(JobReady(run_id=run_id, job_id=job.resource_id, created=job.created))

    async def _ensure_pool(self, run_id: str, spec: PoolSpec) -> Ensured:
        """Create or reuse the pool; a pool of that id still being deleted is waited out (bounded by the
        run's timeout), since Batch refuses the id until the deletion ends, which takes minutes."""
        interval: float | None = None
        while True:
            try:
                return await self._backend.compute.ensure_pool(spec)
            except PoolBeingDeletedError:
                pass
            if interval is None:
                await self._publish(PoolDeletionPending(run_id=run_id, pool_id=spec.pool_id))
            interval = POOL_DELETION_POLL.next_base(interval, changed=False)
            await self._clock.sleep(interval)

    async def _ensure_containers(self, workload: Workload, fresh_input_container: list[bool]) -> None:
        storage = self._backend.storage
        created = False
        if not isinstance(workload.inputs, BlobInputs):  # a user's input container is theirs to create
            created = await storage.ensure_container(workload.input_container)
        fresh_input_container.append(created)
        await storage.ensure_container(workload.output_container)

    async def _upload_inputs(
        self,
        run_id: str,
        workload: Workload,
        staged: Sequence[StagedInput],
        done: set[str],
        *,
        check_existing: bool,
    ) -> None:
        """Upload what is missing. In a container created by this run nothing can be there yet, so nothing is
        looked up first (on Azure that halves the requests of a first run)."""
        storage = self._backend.storage

        async def upload(item: StagedInput) -> None:
            skipped = True
            # Blob inputs are in storage already; a task that already ran needs no input.
            if item.path is not None and item.task_id not in done:
                outcome = await storage.upload(
                    workload.input_container,
                    item.blob_name,
                    item.path,
                    item.fingerprint,
                    check_existing=check_existing,
                )
                skipped = outcome is UploadOutcome.SKIPPED
            await self._publish(
                InputUploaded(run_id=run_id, blob_name=item.blob_name, size=item.size, skipped=skipped)
            )

        await for_each(staged, upload, concurrency=self._settings.upload_concurrency)

    async def _build_tasks(
        self, workload: Workload, staged: Sequence[StagedInput]
    ) -> AsyncGenerator[TaskSpec, None]:
        """The tasks for `staged`, in order, each built when asked for (the submitter asks a collection at a
        time): the SAS URLs are fetched here, the rest is `tasks.build_task` (pure). The output container's
        URL is signed by this call, so that a refusal to sign (a user delegation key that cannot last as
        long, rejected credentials) is raised here, not from within the submission."""
        storage = self._backend.storage
        expiry = sas_lifetime(workload)
        output_url = await storage.container_url(
            workload.output_container, Permission.CREATE | Permission.WRITE, expiry
        )

        async def each() -> AsyncGenerator[TaskSpec, None]:
            for item in staged:
                input_url = await storage.blob_url(
                    workload.input_container, item.blob_name, Permission.READ, expiry
                )
                yield build_task(
                    workload.template,
                    item,
                    input_url=input_url,
                    output_url=output_url,
                    environment=workload.environment,
                )

        return each()

    async def _publish_submitted(self, run_id: str, job_id: str, results: Sequence[AddTaskResult]) -> None:
        added = sum(result.status is AddStatus.ADDED for result in results)
        existing = sum(result.status is AddStatus.EXISTS for result in results)
        rejected = [result for result in results if result.status not in (AddStatus.ADDED, AddStatus.EXISTS)]
        await self._publish(
            TasksSubmitted(
                run_id=run_id,
                job_id=job_id,
                added=added,
                existing=existing,
                rejected=tuple(
                    (result.task_id, f"{result.error_code}: {result.message}") for result in rejected
                ),
                unsubmitted=sum(result.status is AddStatus.SERVER_ERROR for result in rejected),
            )
        )
