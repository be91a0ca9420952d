"""Field-by-field mapping between batchpilot's specs/records and azure.batch.models. Pure: no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.batch import models as bm

from ...images import ExistingPool, SupportedImage
from ...records import AddStatus, AddTaskResult, FailureInfo, TaskCounts, TaskResult, TaskState, TaskView
from ...spec import (
    ImageReference,
    JobSpec,
    OutputFile,
    PoolSpec,
    ResourceFile,
    TaskConstraints,
    TaskSpec,
)

# The fields `task_view` reads; `list_tasks` asks the service for these alone.
TASK_VIEW_FIELDS = ("id", "state", "stateTransitionTime", "executionInfo", "nodeInfo")
TASK_EXISTS = "TaskExists"


def value_of(field: object) -> str:
    """An SDK enum field as its lower-case wire value. The SDK returns a `(str, Enum)` member for known values
    (whose `str()` is `Class.MEMBER` on Python 3.11) and a plain string for values it does not know."""
    return str(field.value if isinstance(field, enum.Enum) else field).lower()


def pool_create_options(spec: PoolSpec) -> bm.BatchPoolCreateOptions:
    start_task = None
    if spec.start_task is not None:
        elevation = bm.ElevationLevel.ADMIN if spec.start_task.run_elevated else bm.ElevationLevel.NON_ADMIN
        start_task = bm.BatchStartTask(
            command_line=spec.start_task.command_line,
            # Pool scope: the start task installs software (ffmpeg) that every task's user then runs.
            user_identity=bm.UserIdentity(
                auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.POOL, elevation_level=elevation)
            ),
            wait_for_success=spec.start_task.wait_for_success,
            max_task_retry_count=spec.start_task.max_task_retry_count,
        )
    return bm.BatchPoolCreateOptions(
        id=spec.pool_id,
        vm_size=spec.vm_size,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher=spec.image.publisher,
                offer=spec.image.offer,
                sku=spec.image.sku,
                version=spec.image.version,
            ),
            node_agent_sku_id=spec.node_agent_sku_id,
            container_configuration=bm.BatchContainerConfiguration(
                type=bm.ContainerType.DOCKER_COMPATIBLE, container_image_names=list(spec.container_images)
            )
            if spec.container_images
            else None,
        ),
        target_dedicated_nodes=spec.dedicated_nodes,
        target_low_priority_nodes=spec.spot_nodes,
        task_slots_per_node=spec.task_slots_per_node,
        start_task=start_task,
    )


def pool_differences(spec: PoolSpec, pool: bm.BatchPool) -> tuple[str, ...]:
    """One line per field where an existing pool differs from `spec`; the pool is reused as it is."""
    image = pool.virtual_machine_configuration.image_reference if pool.virtual_machine_configuration else None
    # As `plan` and the image check write an image: publisher/offer/sku/version, not a Python tuple.
    existing_image = f"{image.publisher}/{image.offer}/{image.sku}/{image.version}" if image else None
    wanted_image = str(spec.image)
    compared: list[tuple[str, object, object]] = [
        ("vm size", (pool.vm_size or "").lower(), spec.vm_size.lower()),
        ("image", existing_image, wanted_image),
        (
            "node agent SKU",
            pool.virtual_machine_configuration.node_agent_sku_id
            if pool.virtual_machine_configuration
            else None,
            spec.node_agent_sku_id,
        ),
        ("dedicated nodes", pool.target_dedicated_nodes or 0, spec.dedicated_nodes),
        ("spot nodes", pool.target_low_priority_nodes or 0, spec.spot_nodes),
        ("task slots per node", pool.task_slots_per_node or 1, spec.task_slots_per_node),
        (
            "start task",
            pool.start_task.command_line if pool.start_task else None,
            spec.start_task.command_line if spec.start_task else None,
        ),
    ]
    return tuple(
        f"pool {spec.pool_id} exists with {name} {have!r}, the spec asks for {want!r}; reusing it as it is"
        for name, have, want in compared
        if have != want
    )


def job_create_options(spec: JobSpec) -> bm.BatchJobCreateOptions:
    return bm.BatchJobCreateOptions(
        id=spec.job_id,
        pool_info=bm.BatchPoolInfo(pool_id=spec.pool_id),
        # Never at creation: a job whose first tasks finish before the next collection is added would end.
        all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.NO_ACTION,
        constraints=(
            bm.BatchJobConstraints(max_wall_clock_time=spec.max_wall_clock)
            if spec.max_wall_clock is not None
            else None
        ),
    )


def _resource_file(resource: ResourceFile) -> bm.ResourceFile:
    return bm.ResourceFile(http_url=resource.url, file_path=resource.file_path)


def _output_file(output: OutputFile) -> bm.OutputFile:
    return bm.OutputFile(
        file_pattern=output.file_pattern,
        destination=bm.OutputFileDestination(
            container=bm.OutputFileBlobContainerDestination(
                container_url=output.container_url, path=output.path
            )
        ),
        upload_options=bm.OutputFileUploadConfiguration(upload_condition=output.upload_condition.value),
    )


def _constraints(constraints: TaskConstraints) -> bm.BatchTaskConstraints:
    return bm.BatchTaskConstraints(
        max_wall_clock_time=constraints.max_wall_clock,
        max_task_retry_count=constraints.max_task_retry_count,
        retention_time=constraints.retention,
    )


def task_create_options(spec: TaskSpec) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(
        id=spec.task_id,
        command_line=spec.command_line,
        display_name=spec.display_name,
        resource_files=[_resource_file(r) for r in spec.resource_files] or None,
        output_files=[_output_file(o) for o in spec.output_files] or None,
        environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in spec.environment] or None,
        constraints=_constraints(spec.constraints),
        container_settings=bm.BatchTaskContainerSettings(
            image_name=spec.container.image, container_run_options=spec.container.run_options or None
        )
        if spec.container is not None
        else None,
    )


def add_results(sent: Sequence[TaskSpec], result: bm.BatchCreateTaskCollectionResult) -> list[AddTaskResult]:
    """Per-task outcomes, in the order sent. A task the service did not report on is a server error, so a
    silent omission can never look like success."""
    by_id: dict[str, AddTaskResult] = {}
    for item in result.result_values or []:
        by_id[item.task_id] = _add_result(item)
    return [
        by_id.get(task.task_id)
        or AddTaskResult(task.task_id, AddStatus.SERVER_ERROR, "NoResult", "the service returned no result")
        for task in sent
    ]


def _add_result(item: bm.BatchTaskCreateResult) -> AddTaskResult:
    code = item.error.code if item.error else None
    message = item.error.message.value if item.error and item.error.message else None
    status = value_of(item.status)
    if status == bm.BatchTaskAddStatus.SUCCESS:
        return AddTaskResult(item.task_id, AddStatus.ADDED)
    if status == bm.BatchTaskAddStatus.CLIENT_ERROR:
        # Ids are deterministic: an existing task is the one a previous run added, so it counts as done.
        if code == TASK_EXISTS:
            return AddTaskResult(item.task_id, AddStatus.EXISTS, code, message)
        return AddTaskResult(item.task_id, AddStatus.CLIENT_ERROR, code, message)
    return AddTaskResult(item.task_id, AddStatus.SERVER_ERROR, code, message)


def task_counts(result: bm.BatchTaskCountsResult) -> TaskCounts:
    counts = result.task_counts
    return TaskCounts(
        active=counts.active,
        running=counts.running,
        completed=counts.completed,
        succeeded=counts.succeeded,
        failed=counts.failed,
    )


def task_view(task: bm.BatchTask) -> TaskView:
    info = task.execution_info
    failure = None
    if info is not None and info.failure_info is not None:
        failure = FailureInfo(
            category=value_of(info.failure_info.category),
            code=info.failure_info.code or "",
            message=info.failure_info.message or "",
        )
    return TaskView(
        task_id=task.id,
        state=TaskState(value_of(task.state)),
        state_transition_time=_aware(task.state_transition_time),
        node_id=task.node_info.node_id if task.node_info else None,
        exit_code=info.exit_code if info else None,
        result=TaskResult(value_of(info.result)) if info and info.result else None,
        failure=failure,
        retry_count=(info.retry_count or 0) if info else 0,
        requeue_count=(info.requeue_count or 0) if info else 0,
        start_time=_aware(info.start_time) if info and info.start_time else None,
        end_time=_aware(info.end_time) if info and info.end_time else None,
    )


def task_view_from_wire(task: Mapping[str, Any]) -> TaskView:
    """`task_view` from a task as the service's JSON spells it (a listing's `value` item, the fields of
    TASK_VIEW_FIELDS): the SDK's models cost most of a listing's time (at 100,000 tasks, 28 s of 52 s under
    cProfile went to reading their attributes). KeyError/ValueError for a task without id, state or time."""
    info = task.get("executionInfo") or {}
    failure = None
    failure_info = info.get("failureInfo")
    if failure_info:
        failure = FailureInfo(
            category=str(failure_info.get("category") or "").lower(),
            code=failure_info.get("code") or "",
            message=failure_info.get("message") or "",
        )
    result = info.get("result")
    start, end = info.get("startTime"), info.get("endTime")
    return TaskView(
        task_id=task["id"],
        state=TaskState(str(task["state"]).lower()),
        state_transition_time=_wire_time(task["stateTransitionTime"]),
        node_id=(task.get("nodeInfo") or {}).get("nodeId"),
        exit_code=info.get("exitCode"),
        result=TaskResult(str(result).lower()) if result else None,
        failure=failure,
        retry_count=info.get("retryCount") or 0,
        requeue_count=info.get("requeueCount") or 0,
        start_time=_wire_time(start) if start else None,
        end_time=_wire_time(end) if end else None,
    )


def _wire_time(text: str) -> datetime:
    """An ISO 8601 time as Batch sends it (`2025-01-02T03:04:05.1234567Z`: 7 digits, cut to 6)."""
    return _aware(datetime.fromisoformat(text))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def odata_datetime(moment: datetime) -> str:
    """`moment` as Batch's OData filters spell it: datetime'2025-01-02T03:04:05.678Z' (UTC)."""
    utc = _aware(moment).astimezone(UTC)
    return f"datetime'{utc.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z'"


# --- supported images -------------------------------------------------------------------------------------

# What `existing_pool` reads of a pool: its image, node agent and size.
POOL_IMAGE_FIELDS = ("id", "vmSize", "virtualMachineConfiguration")


def _image_reference(image: bm.BatchVmImageReference) -> ImageReference:
    return ImageReference(
        publisher=image.publisher or "",
        offer=image.offer or "",
        sku=image.sku or "",
        version=image.version or "latest",
    )


def supported_image(item: bm.BatchSupportedImage) -> SupportedImage:
    """One entry of List Supported Images as the core's record; the end of support made timezone-aware."""
    end = item.batch_support_end_of_life
    return SupportedImage(
        node_agent_sku_id=item.node_agent_sku_id,
        image=_image_reference(item.image_reference),
        os_type=value_of(item.os_type),
        capabilities=tuple(item.capabilities or ()),
        verification_type=value_of(item.verification_type),
        end_of_life=_aware(end) if end is not None else None,
    )


def existing_pool(pool: bm.BatchPool) -> ExistingPool:
    config = pool.virtual_machine_configuration
    image = config.image_reference if config is not None else None
    return ExistingPool(
        pool_id=pool.id or "",
        # A pool on a gallery image (virtualMachineImageId) has no Marketplace name to look up.
        image=_image_reference(image) if image is not None and image.offer else None,
        node_agent_sku_id=config.node_agent_sku_id if config is not None else None,
        vm_size=pool.vm_size or "",
    )
