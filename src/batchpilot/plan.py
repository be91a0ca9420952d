"""`batchpilot plan`: what a run of a workload would upload, create and submit, without creating anything.

The inputs are hashed or listed (read-only) because task ids depend on their content; each task shown is built
by `tasks.build_task`, the function the engine submits from, with placeholder URLs in place of the SAS URLs a
run fetches: the ids, commands and output files shown are the ones a run will use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from .attempts import UNLIMITED_RETRIES
from .spec import BlobInputs, StagedInput, TaskConstraints, TaskSpec, UploadCondition, Workload
from .tasks import build_task

SHOWN_TASKS = 3


def plan_lines(workload: Workload, staged: Sequence[StagedInput], *, backend: str) -> list[str]:
    """The plan as lines for a terminal. Pure."""
    pool, template = workload.pool, workload.template
    image = pool.image
    lines = [
        f"plan for workload {workload.name!r} on the {backend} backend (nothing has been created)",
        f"  pool:    {pool.pool_id} (created if absent): {pool.dedicated_nodes} dedicated + {pool.spot_nodes}"
        f" spot nodes x {pool.task_slots_per_node} task slots, {pool.vm_size},"
        f" {image.publisher}/{image.offer}/{image.sku}/{image.version}",
    ]
    if pool.start_task is not None:
        lines.append(f"           start task: {pool.start_task.command_line}")
    if pool.container_images:
        lines.append(f"           container images: {', '.join(pool.container_images)}")
    lines += [
        f"  job:     {workload.job_id} (created if absent)",
        _upload_line(workload, staged),
        f"  tasks:   {len(staged)}, one per input; {_constraints(template.constraints)}",
    ]
    if template.container is not None:
        options = f" with {template.container.run_options!r}" if template.container.run_options else ""
        lines.append(f"           in container {template.container.image}{options}")
    for item in staged[:SHOWN_TASKS]:
        task = planned_task(workload, item)
        lines.append(f"    {task.task_id}: {task.command_line}")
        lines.extend(_output_lines(task, workload.output_container))
    if len(staged) > SHOWN_TASKS:
        lines.append(f"    ... and {len(staged) - SHOWN_TASKS} more")
    optional = set(template.optional_outputs)
    patterns = (
        ", ".join(
            template.in_working_dir(pattern) + (" (optional)" if pattern in optional else "")
            for pattern in template.outputs
        )
        or "none"
    )
    destination = workload.download_to if workload.download_to is not None else "(no --out given)"
    lines.append(f"  outputs: {patterns} -> container {workload.output_container} -> {destination}")
    return lines


def planned_task(workload: Workload, item: StagedInput) -> TaskSpec:
    """The task a run would submit for `item`, with placeholder URLs (`<container>/<blob>`, no SAS) where a
    run puts the SAS URLs it fetches. Pure."""
    return build_task(
        workload.template,
        item,
        input_url=f"{workload.input_container}/{item.blob_name}",
        output_url=workload.output_container,
        environment=workload.environment,
    )


def _output_lines(task: TaskSpec, container: str) -> list[str]:
    when = {UploadCondition.TASK_SUCCESS: "on success", UploadCondition.TASK_FAILURE: "on failure"}
    return [
        f"      {when.get(output.upload_condition, 'always')}: {output.file_pattern}"
        f" -> container {container}: {output.path}"
        for output in task.output_files
    ]


def _upload_line(workload: Workload, staged: Sequence[StagedInput]) -> str:
    size = _size(sum(item.size for item in staged))
    if isinstance(workload.inputs, BlobInputs):
        where = f"already in container {workload.input_container} (no upload)"
        return f"  inputs:  {len(staged)} blobs, {size}, {where}"
    where = f"to container {workload.input_container} (unchanged ones skipped)"
    return f"  upload:  {len(staged)} inputs, {size}, {where}"


def _constraints(constraints: TaskConstraints) -> str:
    return (
        f"max wall clock {_duration(constraints.max_wall_clock)},"
        f" max retries {_retries(constraints.max_task_retry_count)},"
        f" retention {_duration(constraints.retention, 'the service default (7 days)')}"
    )


def _retries(count: int) -> str:
    return "unlimited" if count == UNLIMITED_RETRIES else str(count)


def _duration(value: timedelta | None, unset: str = "unlimited") -> str:
    return unset if value is None else f"{value.total_seconds():g} s"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
