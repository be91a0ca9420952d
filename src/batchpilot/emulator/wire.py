"""Batch's JSON on the wire: bodies in (task definitions) and out (pools, nodes, jobs, tasks, errors).

Shapes follow the REST API the SDK's models read: camelCase names, ISO 8601 times in UTC, ISO 8601
durations, and errors as `{"code", "message": {"lang", "value"}}` with an OData JSON content type (the SDK
cannot decode an error body served as anything else).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from ..spec import ContainerSettings, OutputFile, ResourceFile, TaskConstraints, TaskSpec, UploadCondition
from .state import Counts, Job, Node, Pool, ServiceError, Task

CONTENT_TYPE = "application/json;odata=minimalmetadata"
# What Batch reports for a task that set no limits: "unlimited" wall clock, retained for 7 days.
_UNLIMITED = "P10675199DT2H48M5.4775807S"
_DEFAULT_RETENTION = "P7D"
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # \Z: `$` would pass an id ending in a newline
_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?\Z"
)


def json_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"Content-Type": CONTENT_TYPE, "DataServiceVersion": "3.0", **(headers or {})},
    )


def error_response(error: ServiceError) -> web.Response:
    body = {"code": error.code, "message": {"lang": "en-US", "value": error.message}}
    return json_response(body, status=error.status, headers=error.headers)


# The OData entity set the service names in `odata.metadata` ($metadata#...), by path.
_ENTITY_SETS = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"^/pools/[^/]+/nodes/[^/]+/files\Z", "files"),
        (r"^/jobs/[^/]+/tasks/[^/]+/files\Z", "files"),
        (r"^/pools/[^/]+/nodes/[^/]+\Z", "nodes/@Element"),
        (r"^/pools/[^/]+/nodes\Z", "nodes"),
        (r"^/pools/[^/]+\Z", "pools/@Element"),
        (r"^/pools\Z", "pools"),
        (r"^/jobs/[^/]+/taskcounts\Z", "taskcountsresult/@Element"),
        (r"^/jobs/[^/]+/addtaskcollection\Z", "taskaddresult"),
        (r"^/jobs/[^/]+/tasks/[^/]+\Z", "tasks/@Element"),
        (r"^/jobs/[^/]+/tasks\Z", "tasks"),
        (r"^/jobs/[^/]+\Z", "jobs/@Element"),
        (r"^/jobs\Z", "jobs"),
        (r"^/supportedimages\Z", "supportedimages"),
        (r"^/nodecounts\Z", "poolnodecounts"),
    )
)
_ERROR_SET = "Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


def with_metadata(response: web.StreamResponse, base_url: str, path: str) -> None:
    """Put `odata.metadata` first in a JSON answer, as the service does in every one (errors included):
    `{base}/$metadata#pools/@Element` for one pool, `#pools` for a list. The body is spliced, not decoded."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return
    body = response.body
    if not isinstance(body, bytes) or not body.startswith(b"{") or body.startswith(b'{"odata.metadata"'):
        return
    if response.status >= 400:
        entity_set = _ERROR_SET
    else:
        entity_set = next((name for pattern, name in _ENTITY_SETS if pattern.match(path)), "")
        if not entity_set:
            return
    rest = body[1:].lstrip()
    link = json.dumps(f"{base_url}/$metadata#{entity_set}").encode()
    response.body = b'{"odata.metadata":' + link + (b"," if rest != b"}" else b"") + rest


def created(location: str) -> web.Response:
    """201 with no body, as Batch answers the creation of a pool, job or single task."""
    return web.Response(status=201, headers={"Location": location, "DataServiceId": location})


def accepted() -> web.Response:
    return web.Response(status=202)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc1123(at: datetime) -> str:
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_duration(text: str, field: str) -> timedelta:
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT"):
        raise invalid_property(field, text)
    parts = {name: float(value) for name, value in match.groupdict().items() if value is not None}
    return timedelta(**parts)


def job_max_wall_clock(body: dict[str, Any]) -> timedelta | None:
    """A job's `constraints.maxWallClockTime`, counted from its creation (400 when malformed)."""
    wall_clock = (body.get("constraints") or {}).get("maxWallClockTime")
    return parse_duration(wall_clock, "maxWallClockTime") if wall_clock else None


def format_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    days, seconds = divmod(seconds, 86400)
    text = f"P{int(days)}D" if days else "P"
    return text + (f"T{seconds:g}S" if seconds or not days else "")


def invalid_property(field: str, value: object) -> ServiceError:
    return ServiceError(400, "InvalidPropertyValue", f"The value {value!r} of {field} is not valid.")


def missing_property(field: str) -> ServiceError:
    return ServiceError(400, "MissingRequiredProperty", f"The required property {field} is missing.")


def read_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServiceError(400, "InvalidRequestBody", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ServiceError(400, "InvalidRequestBody", "The request body must be a JSON object.")
    return body


def required_str(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        raise missing_property(field)
    if not isinstance(value, str) or not value:
        raise invalid_property(field, value)
    return value


def task_spec(body: Mapping[str, Any]) -> TaskSpec:
    """A task definition (TaskAddParameter) as the executor's TaskSpec; unsupported sources are refused."""
    task_id = required_str(body, "id")
    if not _TASK_ID.match(task_id):
        raise invalid_property("id", task_id)
    resources = []
    for item in body.get("resourceFiles") or ():
        url = item.get("httpUrl")
        if not url:
            # Only httpUrl is staged; container sources would need a storage account the emulator lacks.
            raise invalid_property("resourceFiles.httpUrl", url)
        resources.append(ResourceFile(url=url, file_path=item.get("filePath") or url.rsplit("/", 1)[-1]))
    outputs = []
    for item in body.get("outputFiles") or ():
        container = (item.get("destination") or {}).get("container") or {}
        condition = (item.get("uploadOptions") or {}).get("uploadCondition", "tasksuccess")
        try:
            upload_condition = UploadCondition(str(condition).lower())
        except ValueError:
            raise invalid_property("outputFiles.uploadOptions.uploadCondition", condition) from None
        outputs.append(
            OutputFile(
                file_pattern=required_str(item, "filePattern"),
                container_url=required_str(container, "containerUrl"),
                path=container.get("path") or "",
                upload_condition=upload_condition,
            )
        )
    container = None
    if settings := body.get("containerSettings"):
        container = ContainerSettings(
            image=required_str(settings, "imageName"), run_options=settings.get("containerRunOptions") or ""
        )
    constraints = body.get("constraints") or {}
    wall_clock = constraints.get("maxWallClockTime")
    retention = constraints.get("retentionTime")
    return TaskSpec(
        task_id=task_id,
        command_line=required_str(body, "commandLine"),
        resource_files=tuple(resources),
        output_files=tuple(outputs),
        constraints=TaskConstraints(
            max_wall_clock=parse_duration(wall_clock, "maxWallClockTime") if wall_clock else None,
            max_task_retry_count=int(constraints.get("maxTaskRetryCount") or 0),
            retention=parse_duration(retention, "retentionTime") if retention else None,
        ),
        display_name=body.get("displayName"),
        environment=tuple(
            (env["name"], env.get("value") or "") for env in body.get("environmentSettings") or ()
        ),
        container=container,
    )


def select(body: dict[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    if fields is None:
        return body
    return {name: value for name, value in body.items() if name in fields}


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if value is not None}


def _time(at: datetime | None) -> str | None:
    return iso(at) if at else None


def pool_json(pool: Pool, base_url: str) -> dict[str, Any]:
    """A pool as Get Pool answers: what it was created with, and the defaults the service fills in
    (`resizeTimeout`, each user account's `elevationLevel`, the image's `version`, data disks' caching and
    storage type), in the service's order and spelling (`nodeFillType` `Spread`, `vmSize` lower case)."""
    steady = pool.allocation_state == "steady"
    body = pool.body
    windows = _is_windows(body)
    policy = dict(body.get("taskSchedulingPolicy") or {})
    fill = str(policy.get("nodeFillType") or "spread")
    policy["nodeFillType"] = _FILL_TYPES.get(fill.lower(), fill)
    return _drop_none(
        {
            "id": pool.pool_id,
            "displayName": body.get("displayName"),
            "url": f"{base_url}/pools/{pool.pool_id}",
            "eTag": f'"{pool.pool_id}-{pool.state}-{pool.allocation_state}"',
            "lastModified": iso(pool.creation_time),
            "creationTime": iso(pool.creation_time),
            "state": pool.state.value,
            "stateTransitionTime": iso(pool.state_transition_time),
            "allocationState": pool.allocation_state.value,
            "allocationStateTransitionTime": iso(pool.allocation_state_transition_time),
            "vmSize": str(body.get("vmSize", "standard_a1_v2")).lower(),
            "resizeTimeout": body.get("resizeTimeout") or _DEFAULT_RESIZE_TIMEOUT,
            "currentDedicatedNodes": pool.current(dedicated=True),
            "targetDedicatedNodes": pool.target(dedicated=True),
            "currentLowPriorityNodes": pool.current(dedicated=False),
            "targetLowPriorityNodes": pool.target(dedicated=False),
            # Batch reports why a resize fell short once it has stopped.
            "resizeErrors": [{"code": error.code, "message": error.message} for error in pool.resize_errors]
            if steady and pool.resize_errors
            else None,
            "enableAutoScale": False,
            "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication", False)),
            "networkConfiguration": body.get("networkConfiguration"),
            "startTask": body.get("startTask"),
            "userAccounts": [_user_account(account, windows) for account in body["userAccounts"]]
            if isinstance(body.get("userAccounts"), list)
            else None,
            "certificateReferences": body.get("certificateReferences"),
            "applicationPackageReferences": body.get("applicationPackageReferences"),
            "metadata": body.get("metadata"),
            "taskSlotsPerNode": pool.task_slots_per_node,
            "taskSchedulingPolicy": policy,
            "virtualMachineConfiguration": _vm_configuration(body.get("virtualMachineConfiguration")),
            "applicationLicenses": body.get("applicationLicenses"),
            "mountConfiguration": body.get("mountConfiguration"),
            "targetNodeCommunicationMode": body.get("targetNodeCommunicationMode"),
        }
    )


_DEFAULT_RESIZE_TIMEOUT = "PT15M"
_FILL_TYPES = {"spread": "Spread", "pack": "Pack"}
# What Get Pool never returns of a user account: its secrets.
_ACCOUNT_SECRETS = frozenset({"password", "sshPrivateKey"})


def _is_windows(body: Mapping[str, Any]) -> bool:
    agent = str((body.get("virtualMachineConfiguration") or {}).get("nodeAgentSKUId", ""))
    return agent.lower().startswith("batch.node.windows")


def _user_account(account: Any, windows: bool) -> Any:
    if not isinstance(account, dict):
        return account
    shown = {name: value for name, value in account.items() if name not in _ACCOUNT_SECRETS}
    shown.setdefault("elevationLevel", "nonadmin")
    linux = shown.get("linuxUserConfiguration")
    if isinstance(linux, dict):
        shown["linuxUserConfiguration"] = {k: v for k, v in linux.items() if k not in _ACCOUNT_SECRETS}
    if windows:
        shown.setdefault("windowsUserConfiguration", {"loginMode": "batch"})
    return shown


def _vm_configuration(config: Any) -> Any:
    """The pool's virtualMachineConfiguration with the service's defaults: image `version` `latest`, data
    disks cached `none` on `standard_lrs`."""
    if not isinstance(config, dict):
        return config
    shown = dict(config)
    reference = shown.get("imageReference")
    if isinstance(reference, dict) and "virtualMachineImageId" not in reference:
        shown["imageReference"] = {**reference, "version": reference.get("version") or "latest"}
    disks = shown.get("dataDisks")
    if isinstance(disks, list):
        shown["dataDisks"] = [
            {"caching": "none", "storageAccountType": "standard_lrs", **disk}
            if isinstance(disk, dict)
            else disk
            for disk in disks
        ]
    return shown


# What the node agent reports as its version (nodeAgentInfo.version), as the service recorded it.
NODE_AGENT_VERSION = "1.10.0"


def node_json(pool: Pool, node: Node, base_url: str, position: int = 0) -> dict[str, Any]:
    """A node as List/Get Node answers. `position` is its place in the pool (its SSH endpoint's number).
    Once booted it has `lastBootTime`, `certificateReferences` and `nodeAgentInfo`, as on the service."""
    booted = node.boot_time
    config = pool.body.get("virtualMachineConfiguration") or {}
    reference = config.get("imageReference") if isinstance(config, dict) else None
    image = _vm_configuration({"imageReference": reference}).get("imageReference") if reference else None
    windows = _is_windows(pool.body)
    return _drop_none(
        {
            "id": node.node_id,
            "url": f"{base_url}/pools/{pool.pool_id}/nodes/{node.node_id}",
            "state": node.state.value,
            "schedulingState": "enabled",
            "stateTransitionTime": iso(node.state_transition_time),
            "lastBootTime": _time(booted),
            "allocationTime": iso(pool.creation_time),
            "ipAddress": "127.0.0.1",
            "affinityId": f"TVM:{node.node_id}",
            "vmSize": str(pool.body.get("vmSize", "standard_a1_v2")).lower(),
            "totalTasksRun": node.total_tasks_run,
            "totalTasksSucceeded": node.total_tasks_succeeded,
            "runningTasksCount": node.running_tasks,
            "runningTaskSlotsCount": node.running_tasks,
            "certificateReferences": [] if booted else None,
            "isDedicated": node.dedicated,
            "endpointConfiguration": {
                "inboundEndpoints": [
                    {
                        "name": f"SSHRule.{position}",
                        "protocol": "tcp",
                        "publicIPAddress": "127.0.0.1",
                        "publicFQDN": "localhost",
                        "frontendPort": 50000 + position,
                        "backendPort": 3389 if windows else 22,
                    }
                ]
            },
            "nodeAgentInfo": {"lastUpdateTime": iso(booted), "version": NODE_AGENT_VERSION}
            if booted
            else None,
            "virtualMachineInfo": {"imageReference": {**image, "exactVersion": image["version"]}}
            if isinstance(image, dict)
            else None,
        }
    )


def job_json(job: Job, base_url: str) -> dict[str, Any]:
    """A job as Get Job answers, with the defaults the service always returns: `priority` 0,
    `maxParallelTasks` -1 (no limit), `constraints` (an unlimited `maxWallClockTime`, no retries)."""
    body = job.body
    given = body.get("constraints")
    constraints: dict[str, Any] = given if isinstance(given, dict) else {}
    return _drop_none(
        {
            "id": job.job_id,
            "displayName": body.get("displayName"),
            "url": f"{base_url}/jobs/{job.job_id}",
            "eTag": f'"{job.job_id}-{job.state}-{job.on_all_tasks_complete}"',
            "lastModified": iso(job.state_transition_time),
            "creationTime": iso(job.creation_time),
            "state": job.state.value,
            "stateTransitionTime": iso(job.state_transition_time),
            "previousState": job.previous_state.value if job.previous_state else None,
            "previousStateTransitionTime": _time(job.previous_state_transition_time),
            "priority": body.get("priority", 0),
            "maxParallelTasks": body.get("maxParallelTasks", -1),
            "usesTaskDependencies": bool(body.get("usesTaskDependencies", False)),
            "allowTaskPreemption": bool(body.get("allowTaskPreemption", False)),
            "constraints": {
                "maxWallClockTime": constraints.get("maxWallClockTime") or _UNLIMITED,
                "maxTaskRetryCount": constraints.get("maxTaskRetryCount", 0),
            },
            "commonEnvironmentSettings": body.get("commonEnvironmentSettings"),
            "poolInfo": {"poolId": job.pool_id},
            "executionInfo": _drop_none(
                {
                    "startTime": iso(job.creation_time),
                    "endTime": _time(job.end_time),
                    "poolId": job.pool_id,
                    "terminateReason": job.terminate_reason,
                }
            ),
            "onAllTasksComplete": job.on_all_tasks_complete.value,
            "onTaskFailure": body.get("onTaskFailure", "noaction"),
            "metadata": body.get("metadata"),
        }
    )


def task_json(task: Task, base_url: str) -> dict[str, Any]:
    constraints = task.spec.constraints
    body: dict[str, Any] = {
        "id": task.task_id,
        "url": f"{base_url}/jobs/{task.job_id}/tasks/{task.task_id}",
        "eTag": f'"{task.seq}-{task.version}"',
        "lastModified": iso(task.state_transition_time),
        "creationTime": iso(task.creation_time),
        "state": task.state.value,
        "stateTransitionTime": iso(task.state_transition_time),
        "previousState": task.previous_state.value if task.previous_state else None,
        "previousStateTransitionTime": _time(task.previous_state_transition_time),
        "displayName": task.spec.display_name,
        "commandLine": task.spec.command_line,
        "resourceFiles": task.body.get("resourceFiles"),
        "outputFiles": task.body.get("outputFiles"),
        "environmentSettings": task.body.get("environmentSettings"),
        "containerSettings": task.body.get("containerSettings"),
        "userIdentity": _user_identity(task.body.get("userIdentity")),
        "requiredSlots": 1,
        "constraints": {
            "maxWallClockTime": format_duration(constraints.max_wall_clock)
            if constraints.max_wall_clock
            else _UNLIMITED,
            "retentionTime": format_duration(constraints.retention)
            if constraints.retention
            else _DEFAULT_RETENTION,
            "maxTaskRetryCount": constraints.max_task_retry_count,
        },
    }
    body["executionInfo"] = _drop_none(
        {
            "startTime": _time(task.start_time),
            "endTime": _time(task.end_time),
            "exitCode": task.exit_code,
            "result": task.result.value if task.result else None,
            "failureInfo": {
                "category": task.failure.category,
                "code": task.failure.code,
                "message": task.failure.message,
            }
            if task.failure
            else None,
            "retryCount": task.retry_count,
            "lastRetryTime": _time(task.last_retry_time),
            "requeueCount": task.requeue_count,
            "lastRequeueTime": _time(task.last_requeue_time),
        }
    )
    if task.node_id is not None and task.pool_id is not None:
        body["nodeInfo"] = {
            "affinityId": f"TVM:{task.node_id}",
            "nodeUrl": f"{base_url}/pools/{task.pool_id}/nodes/{task.node_id}",
            "poolId": task.pool_id,
            "nodeId": task.node_id,
            "taskRootDirectory": f"workitems/{task.job_id}/job-1/{task.task_id}",
            "taskRootDirectoryUrl": f"{base_url}/pools/{task.pool_id}/nodes/{task.node_id}/files/"
            f"workitems/{task.job_id}/job-1/{task.task_id}",
        }
    return _drop_none(body)


def _user_identity(identity: Any) -> dict[str, Any]:
    """A task's identity as the service reports it: by default the pool-wide, non-admin auto user."""
    if isinstance(identity, dict) and identity.get("username"):
        return identity
    auto = (identity or {}).get("autoUser") if isinstance(identity, dict) else None
    auto = auto if isinstance(auto, dict) else {}
    return {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin", **auto}}


def counts_json(counts: Counts) -> dict[str, Any]:
    values = {
        "active": counts.active,
        "running": counts.running,
        "completed": counts.completed,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
    }
    # Every emulated task takes one slot, so slot counts equal task counts.
    return {"taskCounts": values, "taskSlotCounts": dict(values)}
