"""Building a task from the workload's template and one staged input. Pure: the engine and `batchpilot plan`
both call `build_task`, so what `plan` shows is what a run submits.

A task gets its input as one resource file (read through `input_url`), its outputs uploaded through
`output_url` (a container SAS URL) when it succeeds, and its stdout/stderr uploaded to
`_logs/<task id>/` when it fails, so they can be read after the pool is gone.
"""

from __future__ import annotations

import glob

from .spec import OutputFile, ResourceFile, StagedInput, TaskSpec, TaskTemplate, UploadCondition

# The virtual folder of the output container that holds a failed task's stdout.txt and stderr.txt.
LOGS_PREFIX = "_logs"
# Relative to the task's working dir (`wd`): Batch writes stdout.txt and stderr.txt one level up, in the
# task dir (Batch: "Files and directories on compute nodes").
FAILURE_LOGS_PATTERN = "../std*.txt"
# Batch limits a task's display name to 1024 characters (Batch REST: TaskAddParameter.displayName).
MAX_DISPLAY_NAME = 1024


def output_path(task_id: str, pattern: str) -> str:
    """Batch's destination path for an output file pattern: a blob name (`<task id>/<pattern>`) for a single
    file, a virtual folder (`<task id>`) for a wildcard pattern, under which Batch keeps each match's path."""
    return task_id if glob.has_magic(pattern) else f"{task_id}/{pattern}"


def failure_logs_output(task_id: str, output_url: str) -> OutputFile:
    """The output file that uploads a failed task's stdout.txt and stderr.txt to `_logs/<task id>/`."""
    return OutputFile(
        FAILURE_LOGS_PATTERN, output_url, f"{LOGS_PREFIX}/{task_id}", UploadCondition.TASK_FAILURE
    )


def build_task(
    template: TaskTemplate,
    staged: StagedInput,
    *,
    input_url: str,
    output_url: str,
    environment: tuple[tuple[str, str], ...] = (),
) -> TaskSpec:
    """The task that processes `staged`: its command rendered from `template`, the input as a resource file
    read from `input_url` (a blob URL, with a read SAS on Azure), each output pattern uploaded on success to
    `output_url` (a container URL, with a create+write SAS on Azure) under `output_path(...)`, and the
    task's stdout/stderr uploaded there on failure under `_logs/<task id>/`. Raises nothing beyond what
    rendering the template raises (`KeyError` for a placeholder the template never allowed)."""
    # The command, the staged input and the patterns matched on the node use safe names only
    # (`StagedInput.safe_path`: no name from outside becomes shell syntax or an option); a single-file output
    # is uploaded under the name rendered from the input's own name, so it is downloaded under it.
    on_node = staged.node_values()
    named = template.render_outputs(staged.template_values())
    outputs = [
        OutputFile(
            template.in_working_dir(node_pattern),
            output_url,
            staged.task_id if glob.has_magic(node_pattern) else f"{staged.task_id}/{pattern}",
            UploadCondition.TASK_SUCCESS,
        )
        for pattern, node_pattern in zip(named, template.render_outputs(on_node), strict=True)
    ]
    outputs.append(failure_logs_output(staged.task_id, output_url))
    return TaskSpec(
        task_id=staged.task_id,
        command_line=template.render_command(on_node),
        resource_files=(ResourceFile(input_url, staged.safe_path),),
        output_files=tuple(outputs),
        constraints=template.constraints,
        display_name=staged.name[:MAX_DISPLAY_NAME],
        environment=environment,
        container=template.container,
    )
