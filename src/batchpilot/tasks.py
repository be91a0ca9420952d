"""Building a task from the workload's template and one staged input. Pure: the engine and `batchpilot plan`
both call `build_task`, so what `plan` shows is what a run submits.

A task gets its input as one resource file (read through `input_url`), its outputs uploaded through
`output_url` (a container SAS URL) when it succeeds, and its stdout/stderr uploaded to
`_logs/<task id>/` when it fails, so they can be read after the pool is gone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import replace

from .errors import ConfigError, InputError, NamesMeetError, UnreadableInputError
from .spec import (
    OutputFile,
    ResourceFile,
    StagedInput,
    TaskSpec,
    TaskTemplate,
    UploadCondition,
    Workload,
)

# The virtual folder of the output container that holds a failed task's stdout.txt and stderr.txt.
LOGS_PREFIX = "_logs"
# Relative to the task's working dir (`wd`): Batch writes stdout.txt and stderr.txt one level up, in the
# task dir (Batch: "Files and directories on compute nodes").
FAILURE_LOGS_PATTERN = "../std*.txt"
# Batch limits a task's display name to 1024 characters (Batch REST: TaskAddParameter.displayName).
MAX_DISPLAY_NAME = 1024


def output_path(task_id: str, pattern: str, folder: str = "", *, wildcard: bool | None = None) -> str:
    """Batch's destination path for an output file pattern: a blob name (`<task id>/<folder>/<pattern>`) for
    a single file, a virtual folder (`<task id>/<folder>`) for a wildcard pattern (`wildcard`, by default
    whether `pattern` has one), under which Batch keeps each match's path. `folder` is the input's folder
    below the input root ("" at the root): the downloader drops `<task id>/`, so the outputs land in the
    download folder under the input's own folder."""
    base = f"{task_id}/{folder}" if folder else task_id
    return base if (glob.has_magic(pattern) if wildcard is None else wildcard) else f"{base}/{pattern}"


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
            output_path(staged.task_id, pattern, staged.folder, wildcard=glob.has_magic(node_pattern)),
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


# --- a task's identity ------------------------------------------------------------------------------------
# What decides a task's result decides its id, as Nextflow's task hash and Snakemake's rerun triggers do: the
# input (name, folder, content), the rendered command, the output patterns, the container image and its
# options, the environment and the resource files. Change any of them and the task is new; change none and a
# re-run finds the task it added before. Not in it: the SAS tokens (new on every run) and the constraints
# (how long and how often a task may run do not change what it computes).

# Bumped if what the hash covers changes, so that old and new ids never meet by chance.
_DEFINITION_VERSION = 1
# A task id is `<input key>-<8 hex digits of the definition hash>`.
DEFINITION_HASH_LENGTH = 8


def definition_hash(workload: Workload, staged: StagedInput) -> str:
    """The SHA-256 (hex) of everything that decides the result of the task that processes `staged` under
    `workload`. Pure and stable across runs and machines: no URL, token or local path goes in. `{task_id}`
    is rendered as the input key (the id itself carries this hash). ConfigError when an output pattern
    renders outside the output dir (see `TaskTemplate.render_outputs`).

    The text hashed is the definition as compact JSON with sorted keys (ASCII, UTF-8 encoded): `command`,
    `container` ([image, run options] or null), `environment` (sorted [name, value] pairs), `input` ([blob
    name, fingerprint]), `optional_outputs` (sorted), `output_names`, `outputs` (as matched on the node),
    `resource_files` ([[input container, blob name, path on the node]]) and `version`."""
    return _definition_hash(workload, staged, _shared_definition(workload))


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _shared_definition(workload: Workload) -> tuple[str, str, str]:
    """The JSON text between a definition's own values, which all of a workload's tasks share (keys in sorted
    order): after `command`, after `input`, and after `resource_files`. An environment of 64 KB is encoded
    once, not once per task."""
    template = workload.template
    container = template.container
    image = [container.image, container.run_options] if container is not None else None
    return (
        f',"container":{_JSON.encode(image)}'
        f',"environment":{_JSON.encode(sorted([name, value] for name, value in workload.environment))}'
        ',"input":',
        f',"optional_outputs":{_JSON.encode(sorted(template.optional_outputs))},"output_names":',
        f',"version":{_JSON.encode(_DEFINITION_VERSION)}}}',
    )


def _definition_hash(workload: Workload, staged: StagedInput, shared: tuple[str, str, str]) -> str:
    template = workload.template
    keyed = staged if staged.task_id == staged.input_key else replace(staged, task_id=staged.input_key)
    on_node = keyed.node_values()
    encode = _JSON.encode
    after_command, after_input, after_resource_files = shared
    text = "".join(
        (
            '{"command":',
            encode(template.render_command(on_node)),
            after_command,
            encode([staged.blob_name, staged.fingerprint]),
            after_input,
            encode(list(template.render_outputs(keyed.template_values()))),
            ',"outputs":',
            encode([template.in_working_dir(p) for p in template.render_outputs(on_node)]),
            ',"resource_files":',
            encode([[workload.input_container, staged.blob_name, keyed.safe_path]]),
            after_resource_files,
        )
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def task_id_for(staged: StagedInput, definition: str) -> str:
    """`<input key>-<first 8 hex digits of definition>`: at most 64 characters (the input key keeps room for
    it) of letters, digits, `-` and `_` (Batch's rule for task ids), and readable: it starts with the
    input's name."""
    return f"{staged.input_key}-{definition[:DEFINITION_HASH_LENGTH]}"


def identify(workload: Workload, staged: Sequence[StagedInput]) -> list[StagedInput]:
    """`staged` with each task id made of its input key and the hash of its task's definition."""
    identified = list(staged)
    identify_in_place(workload, identified)
    return identified


def identify_in_place(workload: Workload, staged: list[StagedInput]) -> None:
    """As `identify`, replacing each item of `staged` by its identified one: no second list of 100,000
    staged inputs at once."""
    shared = _shared_definition(workload)
    for index, item in enumerate(staged):
        staged[index] = replace(item, task_id=task_id_for(item, _definition_hash(workload, item, shared)))


def input_key_of(task_id: str) -> str | None:
    """The input key of a task id made by `task_id_for`, or None for an id of another shape."""
    key, dash, digest = task_id.rpartition("-")
    if not dash or not key or len(digest) != DEFINITION_HASH_LENGTH:
        return None
    return key if all(ch in "0123456789abcdef" for ch in digest) else None


def changed_definitions(staged: Iterable[StagedInput], existing_ids: Iterable[str]) -> int:
    """How many of `staged` are new to the job because their definition changed: the job has no task of
    that id, but one of the same input (the same input key) under another definition, or under none (a task
    added before ids covered the definition: its id was the input key itself)."""
    present = set(existing_ids)
    keys = {key for key in map(input_key_of, present) if key is not None} | present
    return sum(item.task_id not in present and item.input_key in keys for item in staged)


def required_downloads(template: TaskTemplate, staged: StagedInput) -> tuple[str, ...]:
    """The required output patterns of `staged`'s task as they sit under `<task id>/` in the output
    container: below the input's folder (`output_path`)."""
    named = template.required_outputs(staged.template_values())
    on_node = template.required_outputs(staged.node_values())
    # As build_task uploads them: a single-file output under the input's own name; the files a wildcard
    # matched under the names the command gave them, made from the safe names it was given.
    required = tuple(
        node if glob.has_magic(node) else name for name, node in zip(named, on_node, strict=True)
    )
    return _shared(tuple(f"{staged.folder}/{pattern}" for pattern in required) if staged.folder else required)


# The downloader keeps each task's required patterns for the run: where they are the same for many tasks
# (wildcards, `{output_dir}/*`), one tuple serves them all. Bounded (emptied when full).
_SHARED_KEPT = 1024
_shared_patterns: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared(patterns: tuple[str, ...]) -> tuple[str, ...]:
    shared = _shared_patterns.get(patterns)
    if shared is None:
        if len(_shared_patterns) >= _SHARED_KEPT:
            _shared_patterns.clear()
        shared = _shared_patterns[patterns] = patterns
    return shared


# --- names that must not meet -------------------------------------------------------------------------------


def same_name_key(name: str) -> str:
    """The form of `name` under which two names that one disk or service takes for one name compare equal:
    case-folded, and in one Unicode normalisation (canonical equivalence: `é` as U+00E9 or as `e` + U+0301).
    Batch ids ignore case; the disks of Windows and macOS ignore case, and macOS's disks ignore the
    normalisation too (APFS and HFS+ look names up normalisation-insensitively), so either pair would
    overwrite one another in `--out` there. Compatibility forms (`ﬁ` and `fi`) stay apart, as there."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())


def check_distinct(template: TaskTemplate, staged: Sequence[StagedInput]) -> None:
    """ConfigError (one line naming both inputs) when two inputs would land on the same blob name, or two
    outputs (of one input or of two) on the same name in the download folder, where one would overwrite the
    other (BatchExplorer#2956). Names are compared by `same_name_key`: without regard to case (Batch ids,
    the disks of Windows and macOS) or Unicode normalisation (the disks of macOS). Wildcard patterns are
    judged by the files they match, after the task ran, not here."""
    blobs: dict[str, StagedInput] = {}
    outputs: dict[str, tuple[StagedInput, int]] = {}
    for item in staged:
        if item.path is not None:
            _check_no_trailing_dot(item)
        other = blobs.setdefault(same_name_key(item.blob_name), item)
        if other is not item:
            raise NamesMeetError(
                f"inputs {other.label} and {item.label} would land on the same name ({other.blob_name!r} and "
                f"{item.blob_name!r} differ at most in case or Unicode normalisation); rename or remove one",
                paths=_paths(item),
            )
        rendered = template.render_outputs(item.template_values())
        for index, name in enumerate(rendered):
            if glob.has_magic(name):
                continue
            dest = f"{item.folder}/{name}" if item.folder else name
            too_long = next((part for part in dest.split("/") if len(_bytes(part)) > FILE_NAME_MAX), None)
            if too_long is not None:
                raise InputError(
                    f"output {too_long[:40]!r}... of input {item.label} would be a file name of"
                    f" {len(_bytes(too_long))} bytes, over the {FILE_NAME_MAX} a disk's file name may hold:"
                    " shorten the input's name, or make the pattern name it by {stem} or {task_id}",
                    paths=_paths(item),
                )
            first, first_index = outputs.setdefault(same_name_key(dest), (item, index))
            if first is item and first_index == index:
                continue
            patterns = f"{template.outputs[first_index]!r} and {template.outputs[index]!r}"
            whose = f"of input {item.label}" if first is item else f"of inputs {first.label} and {item.label}"
            message = (
                f"output patterns {patterns} {whose} both name {dest!r}: one would overwrite the other; "
                "make each pattern name its input, like '{stem}.gz' or '{input_name}.gz'"
            )
            if first is item:  # the workload's patterns, whatever the input
                raise ConfigError(message)
            raise NamesMeetError(message, paths=_paths(item))
    # A file and a folder of one name cannot both be on a disk (the local backend's containers are folders).
    _check_no_file_is_a_folder(blobs, "in the input container")
    _check_no_file_is_a_folder({name: item for name, (item, _) in outputs.items()}, "in the download folder")


def _check_no_trailing_dot(item: StagedInput) -> None:
    """ConfigError for a local input whose blob name has a part ending with a dot (`a.txt.`, `v1./x.log`):
    Azure Storage says no path segment of a blob name should end with a dot, and its URLs lose it (the
    blob would be `a.txt`, or its SAS fail to match: GitLab#332027); Windows drops it from file names too."""
    for part in item.blob_name.split("/"):
        if part.endswith("."):
            # As an input that cannot be read: `serve` leaves it out and runs the rest of its batch.
            raise UnreadableInputError(
                f"input {item.label}: {part!r} ends with a dot, which Azure Storage and Windows drop from"
                f" names (it would be {part.rstrip('.')!r}); rename it",
                paths=(str(item.path),),
            )


def _check_no_file_is_a_folder(names: dict[str, StagedInput], where: str) -> None:
    """ConfigError when one of `names` (case-folded) is a folder of another: `d1` and `d1/app.log`."""
    for name, item in names.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            other = names.get("/".join(parts[:depth]))
            if other is not None:
                raise ConfigError(
                    f"inputs {other.label} and {item.label} would land on the same name {where}: "
                    f"{'/'.join(parts[:depth])!r} is a file of one and a folder of the other; rename one"
                )


def _paths(item: StagedInput) -> tuple[str, ...]:
    """The input as `InputError.paths` names it: its path on disk (a blob input has none)."""
    return (str(item.path),) if item.path is not None else ()


# The most bytes a file name may hold on the disks outputs are written to (Linux's NAME_MAX, NTFS's 255
# UTF-16 units, APFS's 255 UTF-8 bytes): an output named longer could never be saved in --out.
FILE_NAME_MAX = 255


def _bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
