"""`Compute` over azure.batch.aio: pools, jobs and tasks on Azure Batch.

Retries of single requests are the SDK's (azure-core's retry policy, honouring Retry-After); this module
does not wrap them in a second loop. What is left after those retries is translated once, in `errors.py`.
Task collections go out as exactly one `create_task_collection` request per call: the SDK's `create_tasks`
helper re-queues a chunk forever on a persistent 5xx and silently drops an over-large single task.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from urllib.parse import parse_qs, quote, urljoin, urlparse

import structlog
from azure.batch import models as bm
from azure.batch._operations._operations import build_batch_list_tasks_request
from azure.batch.aio import BatchClient
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.rest import HttpRequest
from azure.core.utils import case_insensitive_dict

from ...backoff import BackoffPolicy
from ...clock import Clock, SystemClock
from ...errors import BackendError, JobEndedError, PoolBeingDeletedError, QuotaReachedError
from ...images import ExistingPool, ImageVerdict, SupportedImage, judge
from ...records import AddTaskResult, Ensured, TaskCounts, TaskView
from ...spec import JobSpec, PoolSpec, TaskSpec
from ..base import PageHandler
from . import models
from .errors import Explained, Kind, azure_fix, explain, explained_error, service_code, translated

_log = structlog.get_logger("batchpilot.azure")

# A job in these states takes no new tasks; what the user can do about each.
_UNUSABLE_JOB_STATES = {
    "terminating": "it is ending; wait for it to complete, then delete it or pick another run name",
    "deleting": "it is being deleted; wait a minute and run again",
    "disabling": "it is being disabled; enable it again in the portal or pick another run name",
    "disabled": "it is disabled; enable it again in the portal or pick another run name",
}
_READY_NODE_STATES = frozenset({"idle", "running"})
_SIZE_FIELDS = ("id", "state", "allocationState", "targetDedicatedNodes", "targetLowPriorityNodes")
# A pool's nodes take minutes to come, and a resize under way to stop: look again after 2 s, then 1.5 times
# longer each time, up to every 30 s.
POOL_WAIT = BackoffPolicy(initial=2.0, factor=1.5, cap=30.0, jitter=0.0)
# The statuses the SDK's list_tasks maps to azure-core's types (its error_map); HttpResponseError otherwise.
_LIST_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}


def _next_page_request(next_link: str, api_version: str) -> HttpRequest:
    """The request for a listing's `odata.nextLink`, built as the SDK's pager builds it (azure.batch 15's
    list_tasks: the link's query taken apart and quoted again, with the client's api-version)."""
    parsed = urlparse(next_link)
    params = case_insensitive_dict(
        {key: [quote(v) for v in value] for key, value in parse_qs(parsed.query).items()}
    )
    params["api-version"] = api_version
    return HttpRequest("GET", urljoin(next_link, parsed.path), params=params)


class AzureCompute:
    """Implements `batchpilot.backends.base.Compute`. The client belongs to `AzureBackend`."""

    def __init__(
        self, client: BatchClient, secrets: tuple[str, ...] = (), *, clock: Clock | None = None
    ) -> None:
        self._client = client
        self._secrets = secrets
        self._clock = clock or SystemClock()
        self._short_pools: set[str] = set()  # pools already reported as short of nodes

    @property
    def client(self) -> BatchClient:
        """The SDK client, for calls beyond the protocol (e.g. `check`)."""
        return self._client

    async def supported_images(self) -> list[SupportedImage]:
        """Every entry of List Supported Images (`GET /supportedimages`, all pages)."""
        with translated("list supported images", self._secrets):
            return [models.supported_image(item) async for item in self._client.list_supported_images()]

    async def existing_pool(self, pool_id: str) -> ExistingPool | None:
        """The image, node agent and size of the pool `pool_id`, or None when there is no such pool."""
        with translated(f"get pool {pool_id}", self._secrets):
            try:
                pool = await self._client.get_pool(pool_id, select=list(models.POOL_IMAGE_FIELDS))
            except ResourceNotFoundError:
                return None
        return models.existing_pool(pool)

    async def check_pool_image(self, spec: PoolSpec) -> ImageVerdict:
        images = await self.supported_images()
        existing = await self.existing_pool(spec.pool_id)
        return judge(images, spec, self._clock.now(), existing=existing)

    async def ensure_pool(self, spec: PoolSpec) -> Ensured:
        with translated(f"create pool {spec.pool_id}", self._secrets):
            try:
                await self._client.create_pool(models.pool_create_options(spec))
                return Ensured(spec.pool_id, created=True)
            except ResourceExistsError as exc:
                if service_code(exc) != "PoolExists":
                    raise
        with translated(f"get pool {spec.pool_id}", self._secrets):
            pool = await self._client.get_pool(spec.pool_id)
        if models.value_of(pool.state) == bm.BatchPoolState.DELETING:
            raise PoolBeingDeletedError(f"pool {spec.pool_id} is being deleted", pool_id=spec.pool_id)
        scaled_to_zero = not (pool.target_dedicated_nodes or pool.target_low_priority_nodes)
        if scaled_to_zero and spec.dedicated_nodes + spec.spot_nodes:
            # Left without nodes by an earlier run or an idle service: its nodes come back for this one.
            await self.resize_pool(spec.pool_id, spec.dedicated_nodes, spec.spot_nodes)
            # What it now asks for, for the comparison below.
            pool.target_dedicated_nodes = spec.dedicated_nodes
            pool.target_low_priority_nodes = spec.spot_nodes
        elif _short_with_errors(pool):
            # State read from the service is judged for freshness: a pool below its target with resize
            # errors kept them from its last resize, maybe days ago (a core quota since freed); Batch clears
            # them only with the next resize (nextflow#7312). So it is resized again, to its own targets:
            # only an error from that new resize counts (wait_for_nodes reads it).
            _log.info(
                "pool_resized_again",
                pool_id=spec.pool_id,
                reason="; ".join(f"{error.code}: {error.message}" for error in pool.resize_errors or []),
            )
            await self.resize_pool(
                spec.pool_id,
                pool.target_dedicated_nodes or 0,
                pool.target_low_priority_nodes or 0,
                again=True,
            )
        return Ensured(spec.pool_id, created=False, warnings=models.pool_differences(spec, pool))

    async def wait_for_nodes(
        self,
        pool_id: str,
        *,
        min_nodes: int = 1,
        backoff: BackoffPolicy = POOL_WAIT,
    ) -> int:
        """Wait until at least `min_nodes` nodes (capped at the pool's target) are idle or running.

        Polls at the intervals of `backoff` (seconds, through the backend's clock). Resize errors (quota,
        allocation failure) that leave the pool without nodes, and start-task failures, end the wait at once
        as a BackendError saying what went wrong (for resize errors a QuotaReachedError or an
        AllocationFailedError naming the pool as kept); a pool that got only some of its nodes is logged once
        (`pool_short_of_nodes`) and waited for with what it has. Returns the number of ready nodes.
        Bound the wait with a scope: `with anyio.fail_after(...)`.
        """
        interval: float | None = None
        while True:
            ready = await self._nodes_ready(pool_id, min_nodes)
            if ready is not None:
                return ready
            interval = backoff.next_base(interval, changed=False)
            await self._clock.sleep(interval)

    async def _nodes_ready(self, pool_id: str, min_nodes: int) -> int | None:
        with translated(f"get pool {pool_id}", self._secrets):
            pool = await self._client.get_pool(
                pool_id,
                select=[
                    "id",
                    "state",
                    "allocationState",
                    "resizeErrors",
                    "targetDedicatedNodes",
                    "targetLowPriorityNodes",
                    "currentDedicatedNodes",
                    "currentLowPriorityNodes",
                ],
            )
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        # Resize errors are those of the last resize, and only once it is over (Batch sets them only while
        # the pool is steady): during a new resize, an older resize's errors say nothing.
        resizing = models.value_of(pool.allocation_state) in (
            bm.AllocationState.RESIZING,
            bm.AllocationState.STOPPING,
        )
        if pool.resize_errors and not resizing:
            # Batch keeps the nodes it could get: the tasks run on those, fewer at a time.
            target = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
            self._short_of_nodes(pool_id, pool.resize_errors, target)
        with translated(f"list nodes of pool {pool_id}", self._secrets):
            nodes = [
                node
                async for node in self._client.list_nodes(
                    pool_id, select=["id", "state", "startTaskInfo", "errors"]
                )
            ]
        # A failed start task is a recipe bug that every node will hit; an unusable node is only fatal when
        # no node is left that could run tasks.
        start_failed = [node for node in nodes if models.value_of(node.state) == "starttaskfailed"]
        unusable = [node for node in nodes if models.value_of(node.state) == "unusable"]
        if start_failed or (unusable and len(unusable) == len(nodes)):
            node = (start_failed or unusable)[0]
            raise BackendError(_node_failure(pool_id, node), code=models.value_of(node.state))
        ready = sum(1 for node in nodes if models.value_of(node.state) in _READY_NODE_STATES)
        return ready if ready >= max(1, min(min_nodes, target)) else None

    def _short_of_nodes(self, pool_id: str, errors: list[bm.ResizeError], allocated: int) -> None:
        """Fail when the pool's resize errors left it no node; otherwise say so once and go on."""
        details = ", ".join(f"{error.code}: {error.message}" for error in errors)
        explained = explain(errors[0].code) or Explained("Batch could not allocate them", Kind.ALLOCATION)
        cause = explained.cause
        if allocated == 0:
            raise explained_error(
                explained,
                f"pool {pool_id} got no nodes: {cause} ({details})",
                code=errors[0].code,
                pool_id=pool_id,
            )
        if pool_id not in self._short_pools:
            self._short_pools.add(pool_id)
            _log.warning(
                "pool_short_of_nodes",
                pool_id=pool_id,
                nodes=allocated,
                reason=f"{cause} ({details})",
                fix=azure_fix(explained),
            )

    async def ensure_job(self, spec: JobSpec) -> Ensured:
        try:
            with translated(f"create job {spec.job_id}", self._secrets):
                try:
                    await self._client.create_job(models.job_create_options(spec))
                    return Ensured(spec.job_id, created=True)
                except ResourceExistsError as exc:
                    if service_code(exc) not in ("JobExists", "JobBeingDeleted"):
                        raise
        except QuotaReachedError as exc:
            # The run's pool is in place by now, with nodes on their way: it is named as kept.
            raise QuotaReachedError(str(exc), quota=exc.quota, kept_pool=spec.pool_id, code=exc.code) from exc
        with translated(f"get job {spec.job_id}", self._secrets):
            job = await self._client.get_job(
                spec.job_id,
                select=["id", "state", "poolInfo", "creationTime", "onAllTasksComplete", "executionInfo"],
            )
        state = models.value_of(job.state)
        if state in _UNUSABLE_JOB_STATES:
            raise BackendError(
                f"job {spec.job_id} is {state}: {_UNUSABLE_JOB_STATES[state]}",
                code=f"Job{state.capitalize()}",
            )
        warnings: tuple[str, ...] = ()
        if job.pool_info.pool_id != spec.pool_id:
            warnings = (
                f"job {spec.job_id} exists on pool {job.pool_info.pool_id}, not {spec.pool_id}; reusing it",
            )
        if state == "completed":
            reason = job.execution_info.termination_reason if job.execution_info else None
            return Ensured(spec.job_id, created=False, warnings=warnings, ended=reason or "completed")
        await self._renew_job(spec, job)
        return Ensured(spec.job_id, created=False, warnings=warnings)

    async def _renew_job(self, spec: JobSpec, job: bm.BatchJob) -> None:
        """A reused job takes tasks again until told otherwise, and gets its wall clock again from now."""
        update = bm.BatchJobUpdateOptions()
        if models.value_of(job.all_tasks_complete_mode) == "terminatejob":
            update.all_tasks_complete_mode = bm.BatchAllTasksCompleteMode.NO_ACTION
        if spec.max_wall_clock is not None and job.creation_time is not None:
            lived = self._clock.now() - job.creation_time
            update.constraints = bm.BatchJobConstraints(max_wall_clock_time=lived + spec.max_wall_clock)
        if update.all_tasks_complete_mode is None and update.constraints is None:
            return
        with translated(f"update job {spec.job_id}", self._secrets):
            await self._client.update_job(spec.job_id, update)

    async def end_job_when_done(self, job_id: str) -> None:
        with translated(f"update job {job_id}", self._secrets):
            await self._client.update_job(
                job_id,
                bm.BatchJobUpdateOptions(all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB),
            )

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        """Add `tasks` (at most 100) in one Add Task Collection request. JobEndedError when the job has ended
        (409 JobCompleted: Batch takes no task into a completed or terminating job)."""
        group = bm.BatchTaskGroup(task_values=[models.task_create_options(task) for task in tasks])
        operation = f"add {len(tasks)} tasks to job {job_id}"
        with translated(operation, self._secrets):
            try:
                result = await self._client.create_task_collection(job_id, group)
            except HttpResponseError as exc:
                if service_code(exc) != "JobCompleted":
                    raise
                raise JobEndedError(
                    f"{operation}: job {job_id} has ended and takes no new tasks (409 JobCompleted)",
                    job_id=job_id,
                    reason="JobCompleted",
                ) from exc
        return models.add_results(tasks, result)

    async def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Batch's Reactivate Task (the SDK's `reactivate_task`). JobEndedError when the job has completed
        (409 JobCompleted); other refusals (409 TaskNotCompleted, TaskSucceeded) as BackendError."""
        operation = f"reactivate task {task_id} of job {job_id}"
        with translated(operation, self._secrets):
            try:
                await self._client.reactivate_task(job_id, task_id)
            except HttpResponseError as exc:
                if service_code(exc) not in ("JobCompleted", "JobNotActive"):
                    raise
                raise JobEndedError(
                    f"{operation}: job {job_id} has ended and reactivates no task ({service_code(exc)})",
                    job_id=job_id,
                    reason=service_code(exc) or "JobCompleted",
                ) from exc

    async def task_counts(self, job_id: str) -> TaskCounts:
        with translated(f"get task counts of job {job_id}", self._secrets):
            return models.task_counts(await self._client.get_job_task_counts(job_id))

    async def list_tasks(
        self,
        job_id: str,
        changed_since: datetime | None = None,
        *,
        changed_until: datetime | None = None,
        queued: bool = True,
        on_page: PageHandler | None = None,
    ) -> list[TaskView]:
        bounds = []
        if changed_since is not None:
            since = models.odata_datetime(changed_since)
            bounds.append(f"stateTransitionTime ge {since}")
            if not queued:
                # A task back in the queue (requeued, reactivated) was added earlier: still listed.
                bounds.append(f"(state ne 'active' or creationTime lt {since})")
        if changed_until is not None:
            bounds.append(f"stateTransitionTime le {models.odata_datetime(changed_until)}")
        where = " and ".join(bounds) or None
        views: list[TaskView] = []
        with translated(f"list tasks of job {job_id}", self._secrets):
            # The pages are fetched as the SDK's list_tasks fetches them (its request builder, its client's
            # pipeline: credentials, retries, the request tally), but each page's tasks are read from the
            # JSON: the SDK's pager builds its task models for every page, most of a listing's CPU (about
            # 18 s at 100,000 tasks under cProfile), even when they are not read. The builder and `_config`
            # are the SDK's private parts: tests/wire/test_task_listing.py checks the requests against the
            # SDK's own. No per-call raw_response_hook: it would replace the client's (the tally's).
            api_version = self._client._config.api_version
            request = build_batch_list_tasks_request(
                job_id, filter=where, select=list(models.TASK_VIEW_FIELDS), api_version=api_version
            )
            while True:
                response = await self._client.send_request(request)
                if response.status_code != 200:
                    # As the SDK's pager: azure-core's type for these statuses, HttpResponseError otherwise.
                    map_error(status_code=response.status_code, response=response, error_map=_LIST_ERRORS)
                    raise HttpResponseError(response=response)
                answer = response.json()
                page = [models.task_view_from_wire(task) for task in answer.get("value") or ()]
                if on_page is None:
                    views.extend(page)
                else:
                    await on_page(page)
                # The service keeps the filter and selection in the link.
                next_link = answer.get("odata.nextLink")
                if not next_link:
                    return views
                request = _next_page_request(next_link, api_version)

    async def read_task_file(self, job_id: str, task_id: str, name: str, *, tail: int | None = None) -> bytes:
        with translated(f"read {name} of task {task_id} in job {job_id}", self._secrets):
            byte_range = None
            if tail is not None:
                # Batch takes only `bytes=first-last` (no suffix range): the size first, then the end.
                properties = await self._client.get_task_file_properties(job_id, task_id, name)
                size = int(properties.content_length or 0)
                if size == 0 or tail <= 0:
                    return b""
                byte_range = f"bytes={max(0, size - tail)}-{size - 1}"
            try:
                chunks = await self._client.download_task_file(job_id, task_id, name, ocp_range=byte_range)
            except HttpResponseError as exc:
                if exc.status_code != 416 or byte_range is None:
                    raise
                return b""  # 416 InvalidRange: the file was cut short since its size was read (a new attempt)
            return b"".join([chunk async for chunk in chunks])

    async def delete_job(self, job_id: str) -> None:
        # Only the delete request is sent: the job finishes deleting on its own, and polling it to the end
        # would hold a run open for minutes (and the SDK's poller reports a failed poll as None).
        with translated(f"delete job {job_id}", self._secrets):
            try:
                await self._client.begin_delete_job(job_id)
            except ResourceNotFoundError:
                return
            except ResourceExistsError as exc:
                # A delete already under way is the outcome asked for.
                if service_code(exc) != "JobBeingDeleted":
                    raise

    async def delete_pool(self, pool_id: str) -> None:
        with translated(f"delete pool {pool_id}", self._secrets):
            try:
                await self._client.begin_delete_pool(pool_id)
            except ResourceNotFoundError:
                return
            except ResourceExistsError as exc:
                # A delete already under way is the outcome asked for.
                if service_code(exc) != "PoolBeingDeleted":
                    raise

    async def resize_pool(
        self,
        pool_id: str,
        dedicated: int,
        spot: int,
        *,
        backoff: BackoffPolicy = POOL_WAIT,
        again: bool = False,
    ) -> None:
        """Ask Batch for `dedicated` + `spot` nodes; nodes it removes finish their running tasks first.

        Batch resizes only a steady pool (409 PoolBeingResized otherwise), so a resize under way, the pool's
        first allocation included, is stopped and this waits (at the intervals of `backoff`, in seconds,
        through the backend's clock) until the pool is steady again. Nothing is sent when the targets are
        already these, unless `again`: a pool short of its targets is then asked for them anew (which
        clears its last resize's errors).
        """
        interval: float | None = None
        while True:
            with translated(f"get pool {pool_id}", self._secrets):
                pool = await self._client.get_pool(pool_id, select=list(_SIZE_FIELDS))
            if models.value_of(pool.state) == bm.BatchPoolState.DELETING:
                raise PoolBeingDeletedError(
                    f"pool {pool_id} is being deleted; it cannot be resized", pool_id=pool_id
                )
            targets = (pool.target_dedicated_nodes or 0, pool.target_low_priority_nodes or 0)
            if targets == (dedicated, spot) and not again:
                return
            allocation = models.value_of(pool.allocation_state)
            if allocation == bm.AllocationState.STEADY:
                options = bm.BatchPoolResizeOptions(
                    target_dedicated_nodes=dedicated,
                    target_low_priority_nodes=spot,
                    node_deallocation_option=bm.BatchNodeDeallocationOption.TASK_COMPLETION,
                )
                with translated(f"resize pool {pool_id}", self._secrets):
                    try:
                        # Only the request: the nodes arrive (or go) in their own time.
                        await self._client.begin_resize_pool(pool_id, options)
                        return
                    except ResourceExistsError as exc:
                        # Another resize began since the look above: stop that one too.
                        if service_code(exc) != "PoolBeingResized":
                            raise
            elif allocation == bm.AllocationState.RESIZING:
                # A conflict means it turned steady (or began stopping) since the look above: look again.
                with (
                    translated(f"stop resizing pool {pool_id}", self._secrets),
                    suppress(ResourceExistsError),  # inside: before it is translated
                ):
                    await self._client.begin_stop_pool_resize(pool_id)
            interval = backoff.next_base(interval, changed=False)
            await self._clock.sleep(interval)


def _short_with_errors(pool: bm.BatchPool) -> bool:
    """A pool with fewer nodes than its targets and the errors of its last resize."""
    target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
    current = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    return bool(pool.resize_errors) and current < target


def _node_failure(pool_id: str, node: bm.BatchNode) -> str:
    info = node.start_task_info
    if models.value_of(node.state) == "starttaskfailed" and info is not None:
        reason = info.failure_info.message if info.failure_info and info.failure_info.message else ""
        return (
            f"the start task failed on node {node.id} of pool {pool_id} (exit code {info.exit_code}"
            f"{': ' + reason if reason else ''}); read startup/stderr.txt on the node, fix the start task "
            "and recreate the pool"
        )
    errors = "; ".join(f"{e.code}: {e.message}" for e in node.errors or []) or "no details given"
    state = models.value_of(node.state)
    return f"node {node.id} of pool {pool_id} is {state} ({errors}); remove it or recreate the pool"
