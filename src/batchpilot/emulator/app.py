"""The HTTP face of the emulator: routes of the Batch REST subset, SharedKey checks, fault injection.

`create_app(config)` returns an aiohttp application whose start-up opens the runtime that executes tasks
and whose clean-up stops it (killing running tasks). `running(config)` serves it on a TCP port for the
duration of an `async with`; `serve(config)` does so until cancelled.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import structlog
from aiohttp import web

from ..errors import ConfigError
from ..records import TaskState
from .auth import MAX_REQUEST_SKEW, fresh, verify
from .config import EmulatorConfig
from .faults import Fault, FaultInjector, OutageMode, RequestKind
from .images import IMAGE_PROPERTIES, check_agent_for_growth, check_pool_image
from .limits import (
    MAX_BODY_BYTES,
    check_body_size,
    check_job,
    check_node_counts,
    check_pool,
    check_task,
    too_large,
)
from .query import (
    JOB_PROPERTIES,
    POOL_PROPERTIES,
    compile_filter,
    parse_filter,
    parse_max_results,
    parse_select,
    parse_skip_token,
)
from .runner import Runtime
from .state import (
    JOB_BEING_DELETED,
    POOL_BEING_DELETED,
    Account,
    Job,
    JobState,
    Node,
    NodeDeallocationOption,
    NodeState,
    OnAllTasksComplete,
    Pool,
    PoolState,
    ResizeError,
    ServiceError,
    Task,
    cores_per_node,
    node_id_for,
)
from .stats import Stats
from .taskfiles import list_task_files, parse_ocp_range, read_range
from .versions import check_api_version, flat_task_counts
from .wire import (
    accepted,
    counts_json,
    created,
    error_response,
    invalid_property,
    job_json,
    job_max_wall_clock,
    json_response,
    missing_property,
    node_json,
    pool_json,
    read_json,
    required_str,
    rfc1123,
    select,
    task_json,
    task_spec,
    with_metadata,
)

log = structlog.get_logger(__name__)

# Batch's limit on the tasks of one add-collection request (its body limit is limits.MAX_BODY_BYTES).
MAX_TASKS_PER_COLLECTION = 100
# aiohttp refuses a body larger than this as it reads it (HTTPRequestEntityTooLarge), which the middleware
# answers as Batch does; a body announced larger (Content-Length) is refused before it is read.
_CLIENT_MAX_SIZE = MAX_BODY_BYTES
# Anchored at the true end (\Z, fullmatch): `$` also matches before a trailing newline, and an id "j\n" would
# pass, be created, and break the Location header of the answer (issue 16, item 9).
_POOL_OR_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Refusals by the account's quotas, counted as injected faults.
_QUOTA_FAULTS = {
    "PoolQuotaReached": Fault.POOL_QUOTA,
    "ActiveJobAndScheduleQuotaReached": Fault.JOB_QUOTA,
}
# By node kind (dedicated or not): Batch's resize error when the core quota leaves too little room.
_CORE_QUOTA_REACHED = {
    True: (
        ResizeError("AccountCoreQuotaReached", "The specified account has reached core quota"),
        Fault.CORE_QUOTA,
    ),
    False: (
        ResizeError(
            "AccountLowPriorityCoreQuotaReached", "The specified account has reached low priority core quota"
        ),
        Fault.SPOT_CORE_QUOTA,
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A served emulator: what a client needs to reach it."""

    endpoint: str
    account: str
    key: str
    port: int

    @property
    def stats_url(self) -> str:
        return f"{self.endpoint}/_emulator/stats"


class Emulator:
    """The composition root: account state, runtime, fault dice and statistics behind one set of routes."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.account = Account()
        self.stats = Stats()
        self.faults = FaultInjector(config.faults)
        self.runtime = Runtime(config, self.account, self.stats, self.faults, _utcnow)
        self._kinds: dict[tuple[str, str], RequestKind] = {}

    def routes(self) -> list[tuple[str, str, RequestKind, Handler]]:
        return [
            ("POST", "/pools", RequestKind.POOL_ADD, self.add_pool),
            ("GET", "/pools", RequestKind.POOL_LIST, self.list_pools),
            ("GET", "/pools/{pool_id}", RequestKind.POOL_GET, self.get_pool),
            ("HEAD", "/pools/{pool_id}", RequestKind.POOL_EXISTS, self.pool_exists),
            ("DELETE", "/pools/{pool_id}", RequestKind.POOL_DELETE, self.delete_pool),
            ("POST", "/pools/{pool_id}/resize", RequestKind.POOL_RESIZE, self.resize_pool),
            ("POST", "/pools/{pool_id}/stopresize", RequestKind.POOL_STOP_RESIZE, self.stop_pool_resize),
            ("PATCH", "/pools/{pool_id}", RequestKind.POOL_UPDATE, self.update_pool),
            ("GET", "/pools/{pool_id}/nodes", RequestKind.NODE_LIST, self.list_nodes),
            ("GET", "/pools/{pool_id}/nodes/{node_id}", RequestKind.NODE_GET, self.get_node),
            ("POST", "/jobs", RequestKind.JOB_ADD, self.add_job),
            ("GET", "/jobs", RequestKind.JOB_LIST, self.list_jobs),
            ("GET", "/jobs/{job_id}", RequestKind.JOB_GET, self.get_job),
            ("PATCH", "/jobs/{job_id}", RequestKind.JOB_UPDATE, self.update_job),
            ("PUT", "/jobs/{job_id}", RequestKind.JOB_UPDATE, self.update_job),
            ("DELETE", "/jobs/{job_id}", RequestKind.JOB_DELETE, self.delete_job),
            ("POST", "/jobs/{job_id}/terminate", RequestKind.JOB_TERMINATE, self.terminate_job),
            ("GET", "/jobs/{job_id}/taskcounts", RequestKind.TASK_COUNTS, self.task_counts),
            ("POST", "/jobs/{job_id}/tasks", RequestKind.TASK_ADD, self.add_task),
            ("GET", "/jobs/{job_id}/tasks", RequestKind.TASK_LIST, self.list_tasks),
            (
                "POST",
                "/jobs/{job_id}/addtaskcollection",
                RequestKind.TASK_ADD_COLLECTION,
                self.add_collection,
            ),
            ("GET", "/jobs/{job_id}/tasks/{task_id}", RequestKind.TASK_GET, self.get_task),
            ("PUT", "/jobs/{job_id}/tasks/{task_id}", RequestKind.TASK_UPDATE, self.update_task),
            ("DELETE", "/jobs/{job_id}/tasks/{task_id}", RequestKind.TASK_DELETE, self.delete_task),
            (
                "POST",
                "/jobs/{job_id}/tasks/{task_id}/terminate",
                RequestKind.TASK_TERMINATE,
                self.terminate_task,
            ),
            (
                "POST",
                "/jobs/{job_id}/tasks/{task_id}/reactivate",
                RequestKind.TASK_REACTIVATE,
                self.reactivate_task,
            ),
            ("GET", "/jobs/{job_id}/tasks/{task_id}/files", RequestKind.TASK_FILE_LIST, self.list_task_files),
            ("GET", "/jobs/{job_id}/tasks/{task_id}/files/{name:.+}", RequestKind.TASK_FILE, self.task_file),
            ("HEAD", "/jobs/{job_id}/tasks/{task_id}/files/{name:.+}", RequestKind.TASK_FILE, self.task_file),
            (
                "DELETE",
                "/jobs/{job_id}/tasks/{task_id}/files/{name:.+}",
                RequestKind.TASK_FILE,
                self.delete_task_file,
            ),
            ("GET", "/supportedimages", RequestKind.IMAGE_LIST, self.list_supported_images),
        ]

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=_CLIENT_MAX_SIZE)
        for method, path, kind, handler in self.routes():
            resource = app.router.add_resource(path)
            resource.add_route(method, handler)
            self._kinds[(method, resource.canonical)] = kind
        app.router.add_get("/_emulator/stats", self.get_stats)
        app.cleanup_ctx.append(self.lifespan)
        return app

    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await self.runtime.open(stack)
            started = anyio.Event()
            # aiohttp starts and cleans up in different tasks, so the runtime's task group lives in a task of
            # its own, joined below before the clients it uses are closed.
            supervisor = asyncio.create_task(self.runtime.supervise(started))
            await started.wait()
            try:
                yield
            finally:
                self.runtime.stop()
                await supervisor

    # --- middleware: statistics, auth, faults, errors ---------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        resource = request.match_info.route.resource
        kind = self._kinds.get((request.method, resource.canonical if resource else ""), RequestKind.OTHER)
        self.stats.requests[kind] += 1
        self.stats.bytes_received += request.content_length or 0
        response = await self._answer(request, handler, kind)
        with_metadata(response, _base(request), request.path)
        self.stats.statuses[response.status] += 1
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            self.stats.bytes_sent += len(response.body)
            self.stats.bytes_sent_by_kind[kind] += len(response.body)
        return response

    async def _answer(self, request: web.Request, handler: Handler, kind: RequestKind) -> web.StreamResponse:
        faults = self.config.faults
        if faults.latency_ms:
            await anyio.sleep(faults.latency_ms / 1000)
        if not self._authentic(request):
            return error_response(
                ServiceError(
                    403,
                    "AuthenticationFailed",
                    "Server failed to authenticate the request. Make sure the value of the Authorization "
                    "header is formed correctly including the signature.",
                )
            )
        request = _query_names_lowered(request)
        if not fresh(request.headers, _utcnow()):
            minutes = int(MAX_REQUEST_SKEW.total_seconds() // 60)
            return error_response(
                ServiceError(
                    403,
                    "AuthenticationFailed",
                    "Server failed to authenticate the request. The ocp-date (or Date) header must be within "
                    f"{minutes} minutes of the service's time.",
                )
            )
        if self.faults.in_outage(kind, time.monotonic()):
            if faults.outage_mode is OutageMode.DROP and request.transport is not None:
                request.transport.abort()
            return error_response(_server_error())
        fault = self.faults.request_fault(kind)
        if fault is Fault.THROTTLE:
            retry_after = {"Retry-After": str(faults.retry_after_s)}
            return error_response(
                ServiceError(429, "TooManyRequests", "The server is busy; retry later.", headers=retry_after)
            )
        if fault is Fault.SERVER_ERROR:
            return error_response(_server_error())
        try:
            if "api-version" not in request.query:
                raise ServiceError(
                    400, "MissingRequiredQueryParameter", "The api-version parameter is missing."
                )
            check_api_version(request.query["api-version"])
            check_body_size(request.content_length)
            response = await handler(request)
        except ServiceError as error:
            if error.code in _QUOTA_FAULTS:
                self.faults.record(_QUOTA_FAULTS[error.code])
            return _error_response(error)
        except web.HTTPNotFound:
            # Batch: "InvalidUri, Bad Request (400): The requested URI does not represent any resource on
            # the server." (Batch status and error codes)
            return error_response(
                ServiceError(
                    400, "InvalidUri", "The requested URI does not represent any resource on the server."
                )
            )
        except web.HTTPRequestEntityTooLarge:
            return _error_response(too_large(f"The request body exceeds {MAX_BODY_BYTES} bytes (1 MB)."))
        except RecursionError:
            # json.loads of a body nested deeper than the interpreter's recursion limit.
            return _error_response(
                ServiceError(400, "InvalidRequestBody", "The request body is nested too deeply.")
            )
        except web.HTTPMethodNotAllowed:
            return error_response(
                ServiceError(405, "UnsupportedHttpVerb", f"{request.method} is not supported.")
            )
        except Exception:
            # A bug in the emulator: logged with its traceback and answered as Batch would, never hidden.
            log.exception("emulator.handler_failed", kind=kind.value, path=request.path)
            return error_response(
                ServiceError(500, "InternalServerError", "The emulator failed; see its log.")
            )
        if self.faults.drop_after_apply(kind) and request.transport is not None:
            # The change is applied; the client never hears so, as when a connection breaks in flight.
            request.transport.abort()
        return response

    def _authentic(self, request: web.Request) -> bool:
        return verify(
            request.headers.get("Authorization"),
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=request.headers,
            account=self.config.account,
            key=self.config.key,
        )

    async def get_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json(self.faults.fired))

    # --- pools ------------------------------------------------------------------------------------------

    async def add_pool(self, request: web.Request) -> web.Response:
        body = read_json(await request.read())
        pool_id = _checked_id(body, "id")
        vm_size = required_str(body, "vmSize")
        if body.get("enableAutoScale"):
            raise invalid_property("enableAutoScale", True)
        dedicated = _count(body, "targetDedicatedNodes")
        spot = _count(body, "targetLowPriorityNodes")
        slots = _count(body, "taskSlotsPerNode", default=1)
        if slots < 1:
            raise invalid_property("taskSlotsPerNode", slots)
        check_pool(body, dedicated, spot, slots)
        check_pool_image(self.config.supported_images, body, _utcnow())
        # As in Batch, a pool beyond the core quota gets the nodes that fit and a resize error for the rest.
        wanted = {True: dedicated, False: spot}  # by node kind: dedicated or not
        granted = {
            kind: self._nodes_within_core_quota(count, vm_size, dedicated=kind)
            for kind, count in wanted.items()
        }
        short = [kind for kind in wanted if granted[kind] < wanted[kind]]
        now = _utcnow()
        kinds = [True] * granted[True] + [False] * granted[False]
        nodes = [
            Node(node_id_for(pool_id, index, is_dedicated), is_dedicated, NodeState.STARTING, now)
            for index, is_dedicated in enumerate(kinds)
        ]
        pool = Pool(
            pool_id, body, now, slots, nodes,
            dedicated_shortfall=dedicated - granted[True], spot_shortfall=spot - granted[False],
            resize_errors=tuple(_CORE_QUOTA_REACHED[kind][0] for kind in short),
        )  # fmt: skip
        self.account.add_pool(pool, self.config.faults.pool_quota)
        for kind in short:
            self.faults.record(_CORE_QUOTA_REACHED[kind][1])
        self.runtime.pool_added(pool)
        return created(f"{_base(request)}/pools/{pool_id}")

    def _nodes_within_core_quota(self, wanted: int, vm_size: str, *, dedicated: bool) -> int:
        """How many of `wanted` nodes of `vm_size` fit in what the account's core quota leaves."""
        faults = self.config.faults
        quota = faults.core_quota if dedicated else faults.spot_core_quota
        if quota is None:
            return wanted
        room = max(0, quota - self.account.cores(dedicated=dedicated))
        return min(wanted, room // cores_per_node(vm_size))

    async def list_pools(self, request: web.Request) -> web.Response:
        fields = parse_select(request.query.get("$select"))
        matches = compile_filter(request.query.get("$filter"), POOL_PROPERTIES)
        limit = parse_max_results(request.query.get("maxresults"))
        start = max(0, parse_skip_token(request.query.get("$skiptoken")) + 1)
        # As the service lists them: by id (its recorded answers list pools in id order, not by age).
        found = sorted((pool for pool in self.account.pools.values() if matches(pool)), key=_by_id)
        page = found[start : start + limit]
        body: dict[str, Any] = {"value": [select(pool_json(pool, _base(request)), fields) for pool in page]}
        if start + limit < len(found):
            body["odata.nextLink"] = _next_link(request, str(start + limit - 1))
        return json_response(body)

    async def get_pool(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        return _conditional_get(request, pool_json(pool, _base(request)))

    async def update_pool(self, request: web.Request) -> web.Response:
        """Patch Pool: the properties given replace those of the pool (start task, metadata, ...)."""
        pool = self.account.pool(request.match_info["pool_id"])
        _check_write_conditions(request, pool_json(pool, _base(request)))
        body = read_json(await request.read())
        for name in ("startTask", "metadata", "applicationPackageReferences", "targetNodeCommunicationMode"):
            if name in body:
                pool.body[name] = body[name]
        return web.Response(status=200)

    async def pool_exists(self, request: web.Request) -> web.Response:
        exists = request.match_info["pool_id"].lower() in self.account.pools
        return web.Response(status=200 if exists else 404)

    async def delete_pool(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        _check_write_conditions(request, pool_json(pool, _base(request)))
        if pool.state is PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", POOL_BEING_DELETED)
        self.runtime.pool_deleted(pool)
        return accepted()

    async def resize_pool(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        _check_write_conditions(request, pool_json(pool, _base(request)))
        body = read_json(await request.read())
        # A count left out keeps its target.
        dedicated = _count(body, "targetDedicatedNodes", default=pool.target(dedicated=True))
        spot = _count(body, "targetLowPriorityNodes", default=pool.target(dedicated=False))
        option = body.get("nodeDeallocationOption", NodeDeallocationOption.REQUEUE.value)
        try:
            deallocation = NodeDeallocationOption(str(option).lower())
        except ValueError:
            raise invalid_property("nodeDeallocationOption", option) from None
        check_node_counts(dedicated, spot)
        vm_size = str(pool.body.get("vmSize", ""))
        if dedicated > pool.target(dedicated=True) or spot > pool.target(dedicated=False):
            check_agent_for_growth(self.config.supported_images, pool.body, _utcnow())

        def room(wanted: int, dedicated: bool) -> int:
            return self._nodes_within_core_quota(wanted, vm_size, dedicated=dedicated)

        added, leaving = pool.resize(dedicated, spot, room, _utcnow())
        shortfalls = {True: pool.dedicated_shortfall, False: pool.spot_shortfall}
        short = [kind for kind, missing in shortfalls.items() if missing]
        pool.resize_errors = tuple(_CORE_QUOTA_REACHED[kind][0] for kind in short)
        for kind in short:
            self.faults.record(_CORE_QUOTA_REACHED[kind][1])
        self.runtime.pool_resized(pool, added, leaving, deallocation)
        return accepted()

    async def stop_pool_resize(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        if pool.state is PoolState.DELETING:
            raise ServiceError(409, "PoolBeingDeleted", POOL_BEING_DELETED)
        # Nodes not started yet have no tasks: any option drops them the same way.
        self.runtime.pool_resized(pool, [], pool.stop_resize(_utcnow()), NodeDeallocationOption.REQUEUE)
        return accepted()

    async def get_node(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        node = pool.node(request.match_info["node_id"])
        body = select(
            node_json(pool, node, _base(request), pool.nodes.index(node)),
            parse_select(request.query.get("$select")),
        )
        return json_response(body)

    async def list_nodes(self, request: web.Request) -> web.Response:
        pool = self.account.pool(request.match_info["pool_id"])
        fields = parse_select(request.query.get("$select"))
        nodes = [
            select(node_json(pool, node, _base(request), position), fields)
            for position, node in enumerate(pool.nodes)
        ]
        return json_response({"value": nodes})

    # --- jobs -------------------------------------------------------------------------------------------

    async def add_job(self, request: web.Request) -> web.Response:
        body = read_json(await request.read())
        job_id = _checked_id(body, "id")
        check_job(body)
        pool_info = body.get("poolInfo") or {}
        if "autoPoolSpecification" in pool_info:
            raise invalid_property("poolInfo.autoPoolSpecification", "auto pools are not emulated")
        pool_id = pool_info.get("poolId")
        if not pool_id:
            raise missing_property("poolInfo.poolId")
        job_max_wall_clock(body)
        job = Job(job_id, pool_id, body, _utcnow(), _on_all_tasks_complete(body))
        self.account.add_job(job, self.config.faults.job_quota)
        self.runtime.job_settings_changed(job)
        return created(f"{_base(request)}/jobs/{job_id}")

    async def list_jobs(self, request: web.Request) -> web.Response:
        fields = parse_select(request.query.get("$select"))
        matches = compile_filter(request.query.get("$filter"), JOB_PROPERTIES)
        jobs = [
            select(job_json(job, _base(request)), fields)
            for job in sorted(self.account.jobs.values(), key=_by_id)
            if matches(job)
        ]
        return json_response({"value": jobs})

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        return _conditional_get(request, job_json(job, _base(request)))

    async def update_job(self, request: web.Request) -> web.Response:
        """Patch Job (PATCH): the properties given replace the job's. Update Job (PUT): every updatable
        property is replaced, and one left out goes back to its default (Batch REST reference)."""
        job = self.account.job(request.match_info["job_id"])
        _check_write_conditions(request, job_json(job, _base(request)))
        body = read_json(await request.read())
        if request.method == "PUT":
            for name in _UPDATABLE_JOB_PROPERTIES:
                job.body.pop(name, None)
            body.setdefault("onAllTasksComplete", OnAllTasksComplete.NO_ACTION.value)
        if "priority" in body:
            job.body["priority"] = _bounded(body, "priority", -1000, 1000)
        if "maxParallelTasks" in body:
            value = _bounded(body, "maxParallelTasks", -1, 2**31 - 1)
            if value == 0:
                raise invalid_property("maxParallelTasks", value)
            job.body["maxParallelTasks"] = value
        for name in ("allowTaskPreemption", "metadata"):
            if name in body:
                job.body[name] = body[name]
        if "onAllTasksComplete" in body:
            job.on_all_tasks_complete = _on_all_tasks_complete(body)
            job.body["onAllTasksComplete"] = body["onAllTasksComplete"]
        if "constraints" in body:
            job_max_wall_clock(body)
            job.body["constraints"] = body["constraints"]
        self.runtime.job_settings_changed(job)
        return web.Response(status=200)

    async def delete_job(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        _check_write_conditions(request, job_json(job, _base(request)))
        if job.state is JobState.DELETING:
            raise ServiceError(409, "JobBeingDeleted", JOB_BEING_DELETED)
        self.runtime.job_ended(job, JobState.DELETING)
        return accepted()

    async def terminate_job(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        _check_write_conditions(request, job_json(job, _base(request)))
        if job.state is JobState.COMPLETED:
            raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")
        if job.state is JobState.DELETING:
            raise ServiceError(409, "JobBeingDeleted", JOB_BEING_DELETED)
        raw = await request.read()
        reason = read_json(raw).get("terminateReason") if raw else None
        self.runtime.job_ended(job, JobState.COMPLETED, str(reason or "UserTerminate"))
        return accepted()

    async def task_counts(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        counts = counts_json(self.runtime.counts(job))
        if flat_task_counts(request.query["api-version"]):
            # Before 2020-09-01.12.0 the answer was the TaskCounts object itself (azure-batch 6.0 reads it).
            return json_response(counts["taskCounts"])
        return json_response(counts)

    # --- tasks ------------------------------------------------------------------------------------------

    async def add_task(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        body = read_json(await request.read())
        check_task(body)
        task = job.add_task(task_spec(body), body, _utcnow())
        self.runtime.tasks_added(job, [task])
        return created(f"{_base(request)}/jobs/{job.job_id}/tasks/{task.task_id}")

    async def add_collection(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise too_large(f"The request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}.")
        items = read_json(raw).get("value")
        if not isinstance(items, list):
            raise missing_property("value")
        if len(items) > MAX_TASKS_PER_COLLECTION:
            raise too_large(
                f"The collection has {len(items)} tasks; the limit is {MAX_TASKS_PER_COLLECTION}."
            )
        if job.state is not JobState.ACTIVE:
            raise ServiceError(
                409, "JobCompleted", f"The job {job.job_id} is {job.state}; no tasks can be added."
            )
        now = _utcnow()
        results: list[dict[str, Any]] = []
        added = []
        for item in items:
            task_id = item.get("id") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise invalid_property("value", item)
                check_task(item)
                task = job.add_task(task_spec(item), item, now)
            except ServiceError as error:
                status = "clienterror" if error.status < 500 else "servererror"
                message = {"lang": "en-US", "value": error.message}
                results.append(
                    {"status": status, "taskId": task_id, "error": {"code": error.code, "message": message}}
                )
                continue
            added.append(task)
            results.append(
                {
                    "status": "success",
                    "taskId": task.task_id,
                    "eTag": f'"{task.seq}-{task.version}"',
                    "lastModified": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "location": f"{_base(request)}/jobs/{job.job_id}/tasks/{task.task_id}",
                }
            )
        self.runtime.tasks_added(job, added)
        return json_response({"value": results})

    async def list_tasks(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        query = request.query
        matches = parse_filter(query.get("$filter"))
        fields = parse_select(query.get("$select"))
        limit = parse_max_results(query.get("maxresults"))
        page: list[Task] = []
        more = False
        for task in job.tasks_after(parse_skip_token(query.get("$skiptoken"))):
            if not matches(task):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(task)
        body: dict[str, Any] = {"value": [select(task_json(task, _base(request)), fields) for task in page]}
        if more:
            # The SDK follows the link as given, so everything that shaped this page travels in it.
            params = {
                name: query[name]
                for name in ("api-version", "$filter", "$select", "maxresults")
                if name in query
            }
            params["$skiptoken"] = str(page[-1].seq)
            link = f"{_base(request)}{request.path}?{urlencode(params, quote_via=quote)}"
            body["odata.nextLink"] = link
        return json_response(body)

    async def get_task(self, request: web.Request) -> web.Response:
        task = self.account.job(request.match_info["job_id"]).task(request.match_info["task_id"])
        return _conditional_get(request, task_json(task, _base(request)))

    async def update_task(self, request: web.Request) -> web.Response:
        """Update Task: only its constraints change (maxWallClockTime, retentionTime, maxTaskRetryCount)."""
        job = self.account.job(request.match_info["job_id"])
        task = job.task(request.match_info["task_id"])
        _check_write_conditions(request, task_json(task, _base(request)))
        body = read_json(await request.read())
        constraints = body.get("constraints")
        if constraints is not None:
            if not isinstance(constraints, dict):
                raise invalid_property("constraints", constraints)
            merged = {**(task.body.get("constraints") or {}), **constraints}
            spec = task_spec({**task.body, "constraints": merged})
            task.spec = replace(task.spec, constraints=spec.constraints)
            task.body["constraints"] = merged
            task.version += 1
        return web.Response(status=200)

    async def delete_task(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        task = job.task(request.match_info["task_id"])
        _check_write_conditions(request, task_json(task, _base(request)))
        self.runtime.task_deleted(job, task)
        return web.Response(status=200)

    async def terminate_task(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        task = job.task(request.match_info["task_id"])
        _check_write_conditions(request, task_json(task, _base(request)))
        if task.state is TaskState.COMPLETED:
            raise ServiceError(409, "TaskCompleted", "The specified task is already in a completed state.")
        self.runtime.task_terminated(job, task)
        return web.Response(status=204)

    async def reactivate_task(self, request: web.Request) -> web.Response:
        job = self.account.job(request.match_info["job_id"])
        task = job.task(request.match_info["task_id"])
        _check_write_conditions(request, task_json(task, _base(request)))
        job.reactivate(task, _utcnow())
        self.runtime.tasks_added(job, [task])
        return web.Response(status=204)

    async def list_task_files(self, request: web.Request) -> web.Response:
        task = self.account.job(request.match_info["job_id"]).task(request.match_info["task_id"])
        query = request.query
        recursive = query.get("recursive", "false").lower() == "true"
        limit = parse_max_results(query.get("maxresults"))
        start = max(0, parse_skip_token(query.get("$skiptoken")) + 1)
        base = f"{_base(request)}/jobs/{task.job_id}/tasks/{task.task_id}/files"
        if task.task_dir is None:
            entries: list[dict[str, Any]] = []
        else:
            entries = await anyio.to_thread.run_sync(
                list_task_files, task.task_dir, base, recursive, query.get("$filter"), start + limit + 1
            )
        body: dict[str, Any] = {
            "odata.metadata": f"{_base(request)}/$metadata#files",
            "value": entries[start : start + limit],
        }
        if len(entries) > start + limit:
            body["odata.nextLink"] = _next_link(request, str(start + limit - 1), extra=("recursive",))
        return json_response(body)

    async def task_file(self, request: web.Request) -> web.Response:
        task = self.account.job(request.match_info["job_id"]).task(request.match_info["task_id"])
        name = request.match_info["name"]
        missing = ServiceError(404, "FileNotFound", f"The specified file {name} does not exist.")
        if task.task_dir is None:
            raise missing
        # realpath, not resolve: a link loop the task left is a missing file, not a RuntimeError (a 500).
        path = Path(await anyio.to_thread.run_sync(os.path.realpath, task.task_dir / name))
        if not path.is_relative_to(task.task_dir.resolve()):
            raise missing
        wanted = parse_ocp_range(request.headers.get("ocp-range"))
        try:
            stat = await anyio.Path(path).stat()
            if not S_ISREG(stat.st_mode):
                raise missing
            content = b""
            if request.method != "HEAD":
                content = await anyio.to_thread.run_sync(read_range, path, stat.st_size, wanted)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise missing from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link loop the task left
                raise missing from None
            raise
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        headers = {
            "Content-Type": "application/octet-stream",
            "ocp-batch-file-isdirectory": "false",
            "ocp-batch-file-url": str(request.url),
            "ocp-creation-time": rfc1123(modified),
            "Last-Modified": rfc1123(modified),
        }
        if request.method == "HEAD":
            headers["Content-Length"] = str(stat.st_size)
        return web.Response(body=content, headers=headers)

    async def delete_task_file(self, request: web.Request) -> web.Response:
        """Delete Task File: a file, or with `recursive=true` a directory and all it holds; 404 FileNotFound
        for one not there (or outside the task's directory), 409 DirectoryNotEmpty without `recursive`."""
        task = self.account.job(request.match_info["job_id"]).task(request.match_info["task_id"])
        name = request.match_info["name"]
        missing = ServiceError(404, "FileNotFound", f"The specified file {name} does not exist.")
        if task.task_dir is None:
            raise missing
        root = task.task_dir.resolve()
        path = Path(await anyio.to_thread.run_sync(os.path.realpath, task.task_dir / name))
        if path == root or not path.is_relative_to(root):
            raise missing
        recursive = request.query.get("recursive", "false").lower() == "true"
        try:
            await anyio.to_thread.run_sync(_delete_file, path, recursive)
        except FileNotFoundError:
            raise missing from None
        except OSError:
            raise ServiceError(
                409, "DirectoryNotEmpty", f"The directory {name} is not empty; delete it with recursive=true."
            ) from None
        return web.Response(status=200)

    # --- supported images -------------------------------------------------------------------------------

    async def list_supported_images(self, request: web.Request) -> web.Response:
        query = request.query
        matches = compile_filter(query.get("$filter"), IMAGE_PROPERTIES)
        limit = parse_max_results(query.get("maxresults"))
        start = max(0, parse_skip_token(query.get("$skiptoken")) + 1)
        images = [image for image in self.config.supported_images if matches(image)]
        page = images[start : start + limit]
        body: dict[str, Any] = {
            "odata.metadata": f"{_base(request)}/$metadata#supportedimages",
            "value": [image.to_json() for image in page],
        }
        if start + limit < len(images):
            body["odata.nextLink"] = _next_link(request, str(start + limit - 1))
        return json_response(body)


def _query_names_lowered(request: web.Request) -> web.Request:
    """The request with its query parameter names in lower case: the service matches them without regard
    to case (`maxResults` is `maxresults`), and the handlers read the lower-case names."""
    query = request.rel_url.query
    if all(name == name.lower() for name in query):
        return request
    lowered = [(name.lower(), value) for name, value in query.items()]
    return request.clone(rel_url=request.rel_url.with_query(lowered))


def _by_id(item: Pool | Job) -> str:
    return (item.pool_id if isinstance(item, Pool) else item.job_id).lower()


def _delete_file(path: Path, recursive: bool) -> None:
    if path.is_dir() and not path.is_symlink():
        if recursive:
            shutil.rmtree(path)
        else:
            path.rmdir()
    else:
        path.unlink()


def _next_link(request: web.Request, skip_token: str, *, extra: tuple[str, ...] = ()) -> str:
    """The link to the next page: the SDK follows it as given, so everything that shaped this page
    (api-version, $filter, $select, maxresults) travels in it."""
    query = request.query
    shaping = ("api-version", "$filter", "$select", "maxresults", *extra)
    params = {name: query[name] for name in shaping if name in query}
    params["$skiptoken"] = skip_token
    return f"{_base(request)}{request.path}?{urlencode(params, quote_via=quote)}"


def _error_response(error: ServiceError) -> web.Response:
    """Batch's error body, with its `values` (key/value details) when the error carries them."""
    response = error_response(error)
    values = getattr(error, "values", None)
    if not values:
        return response
    body = {
        "code": error.code,
        "message": {"lang": "en-US", "value": error.message},
        "values": [{"key": key, "value": value} for key, value in values],
    }
    return json_response(body, status=error.status, headers=error.headers)


def _etags(header: str | None) -> list[str] | None:
    if header is None:
        return None
    return [part.strip() for part in header.split(",") if part.strip()]


def _conditional_get(request: web.Request, body: dict[str, Any]) -> web.Response:
    """A read with Batch's conditional headers ("Specifying conditional headers for Batch service
    requests"): If-Match that the ETag does not meet is 412 ConditionNotMet, If-None-Match that it meets
    is 304 with no body. The answer carries the ETag and Last-Modified headers."""
    etag = str(body.get("eTag", ""))
    headers = {"ETag": etag, "Last-Modified": _last_modified(body)}
    match, none_match = _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
    if match is not None and "*" not in match and etag not in match:
        raise _condition_not_met()
    if none_match is not None and ("*" in none_match or etag in none_match):
        return web.Response(status=304, headers=headers)
    selected = select(body, parse_select(request.query.get("$select")))
    return json_response(selected, headers=headers)


def _check_write_conditions(request: web.Request, body: dict[str, Any]) -> None:
    """A write's conditional headers: any condition not met is 412 ConditionNotMet."""
    etag = str(body.get("eTag", ""))
    match, none_match = _etags(request.headers.get("If-Match")), _etags(request.headers.get("If-None-Match"))
    if match is not None and "*" not in match and etag not in match:
        raise _condition_not_met()
    if none_match is not None and ("*" in none_match or etag in none_match):
        raise _condition_not_met()


def _condition_not_met() -> ServiceError:
    return ServiceError(
        412, "ConditionNotMet", "The condition specified in the conditional header(s) was not met."
    )


def _last_modified(body: dict[str, Any]) -> str:
    text = body.get("lastModified")
    if not isinstance(text, str):
        return rfc1123(_utcnow())
    try:
        return rfc1123(datetime.fromisoformat(text))
    except ValueError:
        return rfc1123(_utcnow())


def create_app(config: EmulatorConfig) -> web.Application:
    return Emulator(config).build()


@asynccontextmanager
async def running(config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator on `config.host:config.port` (0: a free port) for the body of the `async with`."""
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:  # in use, or an address not of this machine: the user's to change
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port} ({exc.strerror}); "
                "choose another --port or --host"
            ) from None
        port = _bound_port(runner)
        endpoint = f"http://{config.host}:{port}"
        log.info("emulator.listening", endpoint=endpoint, account=config.account)
        yield RunningEmulator(endpoint=endpoint, account=config.account, key=config.key, port=port)
    finally:
        await runner.cleanup()


async def serve(config: EmulatorConfig) -> None:
    """Serve until cancelled."""
    async with running(config):
        await anyio.sleep_forever()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the emulator is not listening on a TCP port")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _checked_id(body: dict[str, Any], field: str) -> str:
    value = required_str(body, field)
    if not _POOL_OR_JOB_ID.fullmatch(value):
        raise invalid_property(field, value)
    return value


def _count(body: dict[str, Any], field: str, *, default: int = 0) -> int:
    value = body.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid_property(field, value)
    return value


# What Update Job (PUT) replaces as a whole: those left out of its body go back to their defaults.
_UPDATABLE_JOB_PROPERTIES = (
    "priority",
    "maxParallelTasks",
    "allowTaskPreemption",
    "constraints",
    "metadata",
    "onAllTasksComplete",
)


def _bounded(body: dict[str, Any], field: str, low: int, high: int) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_property(field, value)
    return value


def _on_all_tasks_complete(body: dict[str, Any]) -> OnAllTasksComplete:
    value = body.get("onAllTasksComplete", "noaction")
    try:
        return OnAllTasksComplete(str(value).lower())
    except ValueError:
        raise invalid_property("onAllTasksComplete", value) from None


def _server_error() -> ServiceError:
    return ServiceError(500, "InternalServerError", "An injected internal error.")
