"""The workload as data: what to run, where, and with which files.

Everything here is pure and frozen. Two layers:

* the declarative workload (`Workload`, `PoolSpec`, `TaskTemplate`) that a user or a TOML file describes in
  terms of local inputs and container names;
* the resolved task (`TaskSpec`, with `ResourceFile` and `OutputFile` carrying URLs) that a `Compute` backend
  receives, shaped like Batch's own TaskAddParameter so that the Azure adapter is a field-by-field mapping.

Ids are deterministic so that running the same command again resumes instead of duplicating.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path, PurePosixPath

from .errors import ConfigError

BATCH_ID_MAX_LENGTH = 64
_ID_HASH_LENGTH = 8
_NOT_ALLOWED_IN_ID = re.compile(r"[^A-Za-z0-9_-]+")


def batch_id(*parts: str, unique_by: str | None = None, max_length: int = BATCH_ID_MAX_LENGTH) -> str:
    """Join `parts` into an id that follows Batch's rules (letters, digits, `-`, `_`; at most `max_length`
    chars, 64 by default: Batch's limit).

    Characters the rules do not allow become `-`. When `unique_by` is given, a short hash of it is appended
    so that two names that differ only in dropped characters (`a b.mp4` and `a+b.mp4`) or in case (Batch ids
    are case-insensitive) still get different ids.
    """
    cleaned = [_NOT_ALLOWED_IN_ID.sub("-", part).strip("-_") for part in parts]
    stem = "-".join(piece for piece in cleaned if piece) or "x"
    if unique_by is None:
        return stem[:max_length].rstrip("-_") or "x"
    digest = hashlib.sha256(unique_by.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH_LENGTH]
    room = max_length - _ID_HASH_LENGTH - 1
    return f"{stem[:room].rstrip('-_') or 'x'}-{digest}"


# Batch's rule for pool, job and task ids: letters, digits, hyphens and underscores, 1 to 64 characters
# (Batch REST: PoolAddParameter.id, JobAddParameter.id, TaskAddParameter.id).
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Blob Storage's rule for container names: 3-63 characters, lowercase letters, digits and hyphens, starting
# and ending with a letter or digit, no two hyphens in a row ("Naming and referencing containers").
_CONTAINER_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def check_batch_id(kind: str, value: str) -> str:
    """`value` if it is a valid Batch id for a `kind` (pool, job, task); ConfigError naming the rule if not.
    A name is a name: never a path (`..`, `/abs`), never anything that could leave a folder named after it."""
    if not _BATCH_ID.fullmatch(value):
        raise ConfigError(
            f"{kind} id {value!r} is not a valid Batch id: use 1 to 64 letters, digits, '-' or '_'"
        )
    return value


def check_container_name(value: str) -> str:
    """`value` if it is a valid Blob Storage container name; ConfigError naming the rule if not."""
    if not _CONTAINER_NAME.fullmatch(value):
        raise ConfigError(
            f"container name {value!r} is not valid: use 3 to 63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit"
        )
    return value


def container_name(*parts: str) -> str:
    """A Blob Storage container name: 3-63 chars of lowercase letters, digits and single hyphens."""
    joined = "-".join(parts).lower()
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", joined)).strip("-")
    if len(name) > 63:
        digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name.ljust(3, "0")


# --- limits on what comes from a user ----------------------------------------------------------------------
# Each is checked where the value enters (one ConfigError line), so that nothing a user writes can exhaust the
# machine or crash a run later. Where Batch or Storage document a limit, it is theirs.

# Batch: "The maximum value [of taskSlotsPerNode] is the smaller of 4 times the number of cores of the vmSize
# of the pool or 256" (PoolAddParameter.taskSlotsPerNode).
MAX_TASK_SLOTS_PER_NODE = 256
# Batch REST types targetDedicatedNodes and targetLowPriorityNodes as int32; quotas bound them far lower.
MAX_NODES = 2**31 - 1
# Storage: a blob name is at most 1,024 characters ("Naming and referencing containers, blobs, and metadata").
MAX_BLOB_NAME_CHARS = 1024
# Linux refuses to start a program given one argument or environment string longer than MAX_ARG_STRLEN
# (32 pages: 131,072 bytes, the NUL included); a node would fail the task with E2BIG. Batch sends a task's
# command line and environment in one AddTaskCollection body of under 1 MB (for up to 100 tasks), so what
# one task carries is held well below both.
MAX_COMMAND_BYTES = 32 * 1024  # the template; values (names, at most 1,024 characters each) come on top
MAX_ENVIRONMENT_BYTES = 64 * 1024  # all of a workload's variables together, `NAME=value` each
MAX_ENVIRONMENT_VARIABLES = 256
MAX_OUTPUT_PATTERNS = 100


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_environment(environment: tuple[tuple[str, str], ...]) -> None:
    """ConfigError (one line, naming the variable and the limit) when a workload's environment could not be
    given to a task: a name the OS refuses, more than MAX_ENVIRONMENT_VARIABLES variables, or more than
    MAX_ENVIRONMENT_BYTES together."""
    if len(environment) > MAX_ENVIRONMENT_VARIABLES:
        raise ConfigError(
            f"workload.environment has {len(environment)} variables; at most {MAX_ENVIRONMENT_VARIABLES}"
        )
    total = 0
    for name, value in environment:
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ConfigError(f"workload.environment: {name[:64]!r} is not a usable variable (no '=' or NUL)")
        size = _utf8_size(name) + 1 + _utf8_size(value)
        total += size
        if size > MAX_ENVIRONMENT_BYTES or total > MAX_ENVIRONMENT_BYTES:
            raise ConfigError(
                f"workload.environment.{name[:64]} is {size:,} bytes ({total:,} with those before it); the "
                f"environment may hold {MAX_ENVIRONMENT_BYTES:,} bytes: pass large values in an input file"
            )


# --- pool and job -----------------------------------------------------------------------------------------


# The default pool: what the service accepts today (checked 2026-11-30), not the tutorial's pool, whose Ubuntu
# 20.04 node agent Batch retired on 2025-04-23 (Azure/Batch#174; examples/tutorial-pool.toml keeps it).
# - Image: Canonical's Ubuntu 24.04 LTS with `batch.node.ubuntu 24.04`, as Microsoft's own samples now use
#   (Azure-Samples/azure-batch-samples#328) and as List Supported Images lists it, with no end of support
#   (Azure/Batch#178 shows the entry). SKU `server` is the Generation 2 image (capability Generation2VMImage);
#   22.04 was not chosen: its support ends 2027-06-30 (Azure/Batch#200).
# - VM size: Standard_D2s_v5 (2 vCPUs, 8 GiB), a general-purpose size that boots both Hyper-V generations
#   (learn.microsoft.com/azure/virtual-machines/generation-2, "Generation 2 VM sizes": Dsv5 Gen1 and Gen2),
#   from a family not announced for retirement: Batch retires D, Ds, Dv2, Dsv2 and LS (Azure/Batch#140,
#   2026-05-15), Azure retires Av2 (the tutorial's A1_v2), Amv2, B v1, F, Fs, Fsv2, Lsv2, G and Gs on
#   2028-11-15 (aka.ms/AzureVMRetirementUpdate_Sept2025). `batchpilot check` asks the service about both.
DEFAULT_VM_SIZE = "Standard_D2s_v5"
DEFAULT_NODE_AGENT_SKU_ID = "batch.node.ubuntu 24.04"


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A Marketplace image, as Batch's ImageReference; the default is Ubuntu 24.04 LTS (Generation 2)."""

    publisher: str = "canonical"
    offer: str = "ubuntu-24_04-lts"
    sku: str = "server"
    version: str = "latest"

    def __str__(self) -> str:
        return f"{self.publisher}/{self.offer}/{self.sku}/{self.version}"


@dataclass(frozen=True, slots=True)
class StartTask:
    """What each node runs when it joins the pool, before any task (Batch's StartTask): `command_line` run
    elevated (as admin) by default; with `wait_for_success` no task is scheduled on a node until it exits 0;
    it is retried up to `max_task_retry_count` times."""

    command_line: str
    run_elevated: bool = True
    wait_for_success: bool = True
    max_task_retry_count: int = 1


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """Run a task inside a container image, as Batch's TaskContainerSettings: `run_options` are extra
    arguments to the container runtime's `run` (e.g. `--network none`)."""

    image: str
    run_options: str = ""

    def __post_init__(self) -> None:
        if not self.image.strip():
            raise ConfigError("the container image name is empty; give an image such as python:3.12-slim")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A pool of nodes. On the local backend only the slot count (nodes x task slots) matters.

    `container_images` gives the pool a container configuration (Batch pulls these images onto each node
    when it starts); tasks that name a container image need it.
    """

    pool_id: str
    vm_size: str = DEFAULT_VM_SIZE
    image: ImageReference = ImageReference()
    node_agent_sku_id: str = DEFAULT_NODE_AGENT_SKU_ID
    dedicated_nodes: int = 1
    spot_nodes: int = 0
    task_slots_per_node: int = 1
    start_task: StartTask | None = None
    container_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.dedicated_nodes < 0 or self.spot_nodes < 0:
            raise ConfigError("pool node counts must be zero or more")
        if self.dedicated_nodes + self.spot_nodes == 0:
            raise ConfigError("the pool needs at least one node: set dedicated or spot nodes above zero")
        if self.task_slots_per_node < 1:
            raise ConfigError("task slots per node must be at least 1")
        if max(self.dedicated_nodes, self.spot_nodes) > MAX_NODES:
            raise ConfigError(
                f"a pool node count is at most {MAX_NODES:,} (Batch's targetDedicatedNodes is an int32)"
            )
        if self.task_slots_per_node > MAX_TASK_SLOTS_PER_NODE:
            raise ConfigError(
                f"task slots per node is {self.task_slots_per_node}; Batch allows at most "
                f"{MAX_TASK_SLOTS_PER_NODE} (and 4 per core of the VM size)"
            )

    @property
    def total_slots(self) -> int:
        """How many tasks the pool runs at once: (dedicated + spot nodes) x task slots per node."""
        return (self.dedicated_nodes + self.spot_nodes) * self.task_slots_per_node


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job (Batch's JobAddParameter, trimmed): its id, the pool its tasks run on, and the longest it may
    live, counted from its creation (None: no limit); the service then ends it and its tasks."""

    job_id: str
    pool_id: str
    # Counted from the job's creation; the service then ends it and its tasks, with or without us.
    max_wall_clock: timedelta | None = None


def job_generation_id(job_id: str, generation: int) -> str:
    """The id of a job's `generation` (1: the job itself; then `<job id>-g2`, `-g3`, ...), at most 64
    characters. A one-shot run's job ends with its last task and Batch takes no task into an ended job: a
    run with tasks to add or retry goes on in the next generation."""
    if generation <= 1:
        return job_id
    suffix = f"-g{generation}"
    return f"{job_id[: BATCH_ID_MAX_LENGTH - len(suffix)].rstrip('-_') or 'x'}{suffix}"


class JobLifetime(enum.StrEnum):
    """How long a workload's job lives, so that an orchestrator that dies cannot leave it running for ever.

    RUN: a one-shot run. The job ends once every task is done (set after the last task is added, so that it
    cannot end between two collections) and at the latest its max wall clock after creation: the run's timeout
    plus a grace. SERVICE: the job of a long-lived service, which adds tasks to it as inputs arrive.
    """

    RUN = "run"
    SERVICE = "service"


# --- resolved tasks ---------------------------------------------------------------------------------------


class UploadCondition(enum.StrEnum):
    """When Batch uploads an output file: Batch's own OutputFileUploadCondition values."""

    TASK_SUCCESS = "tasksuccess"
    TASK_FAILURE = "taskfailure"
    TASK_COMPLETION = "taskcompletion"

    def applies(self, *, succeeded: bool) -> bool:
        """Whether an output with this condition is uploaded after an attempt that `succeeded` or not."""
        if self is UploadCondition.TASK_COMPLETION:
            return True
        return succeeded == (self is UploadCondition.TASK_SUCCESS)


@dataclass(frozen=True, slots=True)
class ResourceFile:
    """A file staged onto the node before the task runs: fetched from `url` to `file_path` (relative)."""

    url: str
    file_path: str


@dataclass(frozen=True, slots=True)
class OutputFile:
    """Files matching `file_pattern` (relative to the task's working dir) uploaded after the task runs.

    They land in the container at `container_url` under `path` (a blob prefix when the pattern matches
    several files, as in Batch), when `upload_condition` holds.
    """

    file_pattern: str
    container_url: str
    path: str
    upload_condition: UploadCondition = UploadCondition.TASK_SUCCESS


@dataclass(frozen=True, slots=True)
class TaskConstraints:
    """Batch's TaskConstraints: `max_wall_clock` is the longest a task may run, counted from its first start
    (None: no limit, i.e. Batch's default); `max_task_retry_count` retries after a nonzero exit, -1 without
    limit, 0 never (REST: maxTaskRetryCount); `retention` is how long the node keeps the task's directory
    after it completes (None: Batch's default, 7 days)."""

    max_wall_clock: timedelta | None = None
    max_task_retry_count: int = 0
    retention: timedelta | None = None


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task as the backend receives it: Batch's TaskAddParameter, trimmed to what we use."""

    task_id: str
    command_line: str
    resource_files: tuple[ResourceFile, ...] = ()
    output_files: tuple[OutputFile, ...] = ()
    constraints: TaskConstraints = TaskConstraints()
    display_name: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    container: ContainerSettings | None = None


# --- the declarative workload -----------------------------------------------------------------------------

PLACEHOLDERS = frozenset({"input", "input_name", "stem", "output_dir", "task_id"})
# `{}` and `{0}` match too, to be refused as unknown placeholders by name.
_PLACEHOLDER_NAME = re.compile(r"\w*", re.ASCII)


@dataclass(frozen=True, slots=True)
class TaskTemplate:
    """A command line with placeholders, and the output files it leaves in its output directory.

    Placeholders: `{input}` (the staged input's path, relative to the working dir), `{input_name}` (its
    original file name), `{stem}` (that name without its extension), `{output_dir}` (where the command should
    write its outputs, relative to the working dir), `{task_id}`. Values are shell-quoted; for a task, the
    input's values are safe names (`StagedInput.node_values`), so no name from outside becomes syntax.

    `outputs` are file patterns relative to `output_dir`. With the default `"."` that is the working dir
    itself; any other folder is created before the command runs (through `/bin/sh`, since Batch runs the
    command line without a shell), so the command can write into it straight away.

    Every output pattern must match at least one file, or the task counts as failed ("no file matched output
    pattern ..."), though Batch itself uploads nothing and calls the task a success (azure-docs#37770).
    `optional_outputs` names the patterns of `outputs` that may match nothing.
    """

    command: str
    outputs: tuple[str, ...]
    constraints: TaskConstraints = TaskConstraints()
    output_dir: str = "."
    container: ContainerSettings | None = None
    optional_outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if _utf8_size(self.command) > MAX_COMMAND_BYTES:
            raise ConfigError(
                f"the command is {_utf8_size(self.command):,} bytes; at most {MAX_COMMAND_BYTES:,}: put a "
                "long script in a file and run that"
            )
        if len(self.outputs) > MAX_OUTPUT_PATTERNS:
            raise ConfigError(
                f"{len(self.outputs)} output patterns; at most {MAX_OUTPUT_PATTERNS}: use wildcards"
            )
        for pattern in self.outputs:
            if len(pattern) > MAX_BLOB_NAME_CHARS:
                raise ConfigError(
                    f"output pattern {pattern[:40]!r}... is {len(pattern)} characters; a blob name has at "
                    f"most {MAX_BLOB_NAME_CHARS}"
                )
        normalized = posixpath.normpath(self.output_dir) if self.output_dir else ""
        if not normalized or normalized.startswith(("/", "../")) or normalized == "..":
            raise ConfigError(
                f"output_dir {self.output_dir!r} must be a folder inside the task's working dir, like 'out'"
            )
        object.__setattr__(self, "output_dir", normalized)
        unknown = sorted(set(template_fields(self.command)) - PLACEHOLDERS)
        if unknown:
            allowed = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
            raise ConfigError(f"unknown placeholder {{{unknown[0]}}} in the command; use one of {allowed}")
        for pattern in self.outputs:
            unknown_out = sorted(set(template_fields(pattern)) - PLACEHOLDERS)
            if unknown_out:
                raise ConfigError(f"unknown placeholder {{{unknown_out[0]}}} in output pattern {pattern!r}")
            sample = {**dict.fromkeys(PLACEHOLDERS, "x"), "output_dir": self.output_dir}
            check_output_pattern(pattern, pattern.format_map(sample))
        stray = [pattern for pattern in self.optional_outputs if pattern not in self.outputs]
        if stray:
            raise ConfigError(
                f"optional output {stray[0]!r} is not one of the outputs; list it in outputs too"
            )

    def render_command(self, values: Mapping[str, str]) -> str:
        """The command line for one input: placeholders replaced by the shell-quoted `values` (keys among
        `PLACEHOLDERS`; `output_dir` is the template's own), wrapped to create the output folder first when it
        is not the working dir. KeyError when a placeholder the command uses has no value."""
        quoted = {key: shlex.quote(value) for key, value in {**values, "output_dir": self.output_dir}.items()}
        command = self.command.format_map(quoted)
        if self.output_dir == ".":
            return command
        # `$0` is the folder, `"$@"` the user's command, split as Batch splits it: no second quoting layer.
        return f'/bin/sh -c \'mkdir -p "$0" && exec "$@"\' {shlex.quote(self.output_dir)} {command}'

    def render_outputs(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """Output patterns relative to the output dir, i.e. as the files land in the download folder.
        ConfigError when a value (a blob name, say) makes one leave the output dir."""
        return tuple(
            check_output_pattern(pattern, pattern.format_map({**values, "output_dir": self.output_dir}))
            for pattern in self.outputs
        )

    def required_outputs(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """The rendered output patterns (as `render_outputs`) that must each match at least one file: all but
        the `optional_outputs`."""
        optional = set(self.optional_outputs)
        rendered = self.render_outputs(values)
        pairs = zip(self.outputs, rendered, strict=True)
        return tuple(out for pattern, out in pairs if pattern not in optional)

    def in_working_dir(self, pattern: str) -> str:
        """A rendered output pattern as Batch matches it: relative to the task's working dir."""
        return pattern if self.output_dir == "." else posixpath.join(self.output_dir, pattern)


def leaves_root(relative: str) -> bool:
    """True when a POSIX path, taken relative to some root, is absolute, holds a NUL, or steps out of that
    root with `..` (judged on the name alone, as Batch and Storage judge names)."""
    if relative.startswith("/") or "\0" in relative:
        return True
    depth = 0
    for part in relative.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_output_pattern(pattern: str, rendered: str) -> str:
    """`rendered` (output pattern `pattern` with its values) normalized, if it names files inside the
    output dir; ConfigError otherwise. Batch lets a pattern reach the task's dir (`../std*.txt`, its stdout
    and stderr) and no further; a workload's outputs land in the download folder: they stay in the output
    dir."""
    normalized = posixpath.normpath(rendered) if rendered else ""
    if normalized in ("", ".") or leaves_root(rendered) or normalized.startswith(".."):
        raise ConfigError(
            f"output pattern {pattern!r} ({rendered!r}) must name files inside the output dir, "
            "like '{input_name}.gz' or 'out/*.png'; no absolute path, no '..'"
        )
    return normalized


def template_fields(text: str) -> list[str]:
    """The placeholder names used in a `str.format` template; a malformed template is a ConfigError.

    Placeholders are plain names: their values are shell-quoted text, on which an index, an attribute, a
    conversion or a format spec (`{input[0]}`, `{input!r}`, `{input:d}`) can only fail or garble when the
    command is rendered, long after the workload was read.
    """
    try:
        fields = [field for field in string.Formatter().parse(text) if field[1] is not None]
    except ValueError as exc:
        raise ConfigError(
            f"malformed template {text!r}: {exc}; double braces ({{{{ }}}}) for literal ones"
        ) from None
    for _, name, spec, conversion in fields:
        if spec or conversion or not _PLACEHOLDER_NAME.fullmatch(name or ""):
            raise ConfigError(
                f"malformed template {text!r}: write placeholders as plain names, like {{input}}; "
                "double braces ({{ }}) for literal ones"
            )
    return [name for _, name, _, _ in fields if name is not None]


class PoolPolicy(enum.StrEnum):
    """What a run that fully succeeded does with its pool, which costs money for as long as it has nodes."""

    KEEP = "keep"  # ready for the next run at once, at full cost
    SCALE_TO_ZERO = "scale-to-zero"  # kept without nodes, at no cost; the next run brings its nodes back
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    """What a run deletes once every task has succeeded and every output is fetched.

    The input container goes, as in the tutorial. The job is kept by default: it costs nothing, and it is
    what lets the same command, run again, find every task done and do nothing. The pool follows `pool`. A
    run that fails or is interrupted changes nothing, so running the same command again resumes.
    """

    delete_input_container: bool = True
    delete_job: bool = False
    pool: PoolPolicy = PoolPolicy.KEEP


@dataclass(frozen=True, slots=True)
class BlobInputs:
    """Inputs already in Blob Storage: the blobs in `container` whose names start with `prefix`.

    They are not uploaded, and the container is never deleted: it is the user's, not the run's. `names`, when
    given, restricts the inputs to those blobs (a service feeding new blobs batch by batch).
    """

    container: str
    prefix: str = ""
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Workload:
    """Inputs (local files, or blobs), one task each from `template`, on `pool`; outputs to `download_to`."""

    name: str
    inputs: tuple[Path, ...] | BlobInputs
    template: TaskTemplate
    pool: PoolSpec
    download_to: Path | None = None
    input_container: str = ""
    output_container: str = ""
    job_id: str = ""
    cleanup: CleanupPolicy = CleanupPolicy()
    timeout: timedelta = timedelta(hours=1)
    environment: tuple[tuple[str, str], ...] = field(default=())
    job_lifetime: JobLifetime = JobLifetime.RUN
    # The folder the local inputs were found in (a folder given, or a glob's fixed part): each input keeps
    # its folder below it in its blob name and its outputs' place in the download folder. None: the
    # inputs' common folder.
    input_root: Path | None = None
    # Running the same workload again retries the tasks of the job that failed (Batch's Reactivate Task).
    retry_failed: bool = True

    def __post_init__(self) -> None:
        check_environment(self.environment)
        # Derived names are filled in here so that a Workload built by hand and one from the CLI agree.
        if not self.job_id:
            object.__setattr__(self, "job_id", batch_id("batchpilot", self.name))
        if isinstance(self.inputs, BlobInputs):
            object.__setattr__(self, "input_container", self.inputs.container)
            object.__setattr__(self, "cleanup", replace(self.cleanup, delete_input_container=False))
        elif not self.input_container:
            object.__setattr__(self, "input_container", container_name(self.job_id, "input"))
        if not self.output_container:
            object.__setattr__(self, "output_container", container_name(self.job_id, "output"))
        container = self.template.container
        if container is not None and container.image not in self.pool.container_images:
            # Batch runs a container task only on a pool configured for containers; the image is named there
            # too, so that nodes pull it once when they start instead of on each task.
            images = (*self.pool.container_images, container.image)
            object.__setattr__(self, "pool", replace(self.pool, container_images=images))

    def renamed(self, name: str) -> Workload:
        """This workload under another `name`, with the job id and containers of that name.

        `dataclasses.replace(workload, name=...)` keeps the ids derived from the old name (they are derived
        once, at construction): its job would be the old one's. Ids and containers given explicitly (that
        differ from what the old name derives) are kept, as are input blobs' own container."""
        derived_job = batch_id("batchpilot", self.name)
        job_id = "" if self.job_id == derived_job else self.job_id
        input_container = self.input_container
        derived_input = container_name(self.job_id, "input")
        if not isinstance(self.inputs, BlobInputs) and input_container == derived_input:
            input_container = ""
        output_container = self.output_container
        if output_container == container_name(self.job_id, "output"):
            output_container = ""
        return replace(
            self,
            name=name,
            job_id=job_id,
            input_container=input_container,
            output_container=output_container,
        )


# An input's part of a task id: room is left for the definition's hash (`-` and 8 hex digits, tasks.py).
INPUT_KEY_MAX_LENGTH = BATCH_ID_MAX_LENGTH - _ID_HASH_LENGTH - 1


# A name that is the same word for every shell and no program's option: see StagedInput.node_path.
# At most 128 characters, so that the names a command makes from it (`{input_name}.gz`) fit a file name too.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")
_SAFE_PATH_CHARS = 1024


def _name_of(path: str) -> str:
    """`PurePosixPath(path).name`, without making a path object for a plain name (no `/`)."""
    return path if "/" not in path and path not in ("", ".", "..") else PurePosixPath(path).name


def _stem_of(name: str) -> str:
    """`PurePosixPath(name).stem`, without making a path object for a plain name (no `/`)."""
    if "/" in name or name in ("", ".", ".."):
        return PurePosixPath(name).stem
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


@dataclass(frozen=True, slots=True)
class StagedInput:
    """An input with its blob and the id of the task that will process it.

    `path` is the local file to upload, or None for an input that is already a blob (`BlobInputs`).
    `fingerprint` identifies the content: the MD5, or the size where the store kept no MD5. `folder` is the
    input's folder below the input root (POSIX, "" for an input at the root): it is part of the blob name
    and of where the input's outputs land in the download folder, so that `d1/app.log` and `d2/app.log`
    stay apart. `input_key` is the input's part of the task id (its name, folder and content); `task_id`
    adds the hash of the task's definition (`tasks.identify`), `input_key` until then.
    """

    name: str
    blob_name: str
    fingerprint: str
    size: int
    task_id: str
    path: Path | None = None
    folder: str = ""
    input_key: str = ""

    def __post_init__(self) -> None:
        if not self.input_key:
            object.__setattr__(self, "input_key", self.task_id)

    @classmethod
    def for_path(cls, path: Path, md5_hex: str, size: int, *, folder: str = "") -> StagedInput:
        # The hash covers the content too: an input changed since the last run gets a new task, an unchanged
        # one resumes the task that exists. An input at the root hashes as before folders were kept.
        name = path.name  # one text for the name and a root input's blob name (Python 3.12 makes one a call)
        blob_name = f"{folder}/{name}" if folder else name
        key = batch_id(_stem_of(name), unique_by=f"{blob_name}\0{md5_hex}", max_length=INPUT_KEY_MAX_LENGTH)
        return cls(name, blob_name, md5_hex, size, key, path, folder)

    @classmethod
    def for_blob(cls, blob_name: str, md5_hex: str | None, size: int, *, prefix: str = "") -> StagedInput:
        """A blob input; its folder is the blob's folder below the folder part of `prefix`."""
        name = PurePosixPath(blob_name).name
        fingerprint = md5_hex or f"size-{size}"
        key = batch_id(
            PurePosixPath(name).stem, unique_by=f"{blob_name}\0{fingerprint}", max_length=INPUT_KEY_MAX_LENGTH
        )
        root = posixpath.dirname(prefix)
        parent = posixpath.dirname(blob_name)
        folder = parent.removeprefix(f"{root}/") if root and parent.startswith(f"{root}/") else parent
        if root and parent == root:
            folder = ""
        # A blob's name is text: `.`, `..` and empty parts never become folders of the download folder.
        folder = "/".join(part for part in folder.split("/") if part not in ("", ".", ".."))
        return cls(name, blob_name, fingerprint, size, key, folder=folder)

    @property
    def node_path(self) -> str:
        """Where the input lands in the task's working dir (its resource file's path, `{input}`): under its
        own file name, a local input's or a blob's alike (each task has a working dir of its own), so that a
        command that writes beside its input (`gzip -k {input}`) writes where the output patterns, relative
        to the working dir, look. A blob staged under its whole name (`2024/a/x.txt`) left `x.txt.gz` in
        `2024/a/`, and `{input_name}.gz` matched nothing. Its folder still decides where outputs land."""
        return self.name

    @property
    def label(self) -> str:
        """How messages name the input: its local path, or its blob name."""
        return str(self.path) if self.path is not None else self.blob_name

    @property
    def safe_path(self) -> str:
        """Where the input is staged on the node, relative to the task's working dir, as the command's
        `{input}` names it: `node_path` when each of its parts is a safe name, else a name derived from the
        task id, with the input's extension when that is safe (`a'$(id)'b.log` -> `a-id-b-1f2e3d4c.log`).

        Names come from outside (a file dropped in a folder, a blob a task wrote), and a command template may
        hand them to a shell at any depth of quoting (`/bin/sh -c "... {input} ..."`): no quoting survives
        every template. So the command only ever sees safe names: ASCII letters, digits, `.`, `_`, `+`, `-`,
        not starting with `-` or `.` (so never an option either). The original name is kept where it is
        data: the task's display name, and the blob names its single-file outputs are uploaded (and
        downloaded) under."""
        path = self.node_path
        if len(path) <= _SAFE_PATH_CHARS and all(_SAFE_NAME.fullmatch(part) for part in path.split("/")):
            return path
        suffix = PurePosixPath(self.name).suffix
        return self.task_id + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else "")

    def node_values(self) -> dict[str, str]:
        """The placeholder values the command and the output patterns on the node are rendered with: those of
        `safe_path`, which no shell can take for syntax and no program for an option."""
        safe_path = self.safe_path
        name = _name_of(safe_path)
        return {
            "input": safe_path,
            "input_name": name,
            "stem": _stem_of(name),
            "task_id": self.task_id,
        }

    def template_values(self) -> dict[str, str]:
        return {
            "input": self.node_path,
            "input_name": self.name,
            "stem": _stem_of(self.name),
            "task_id": self.task_id,
        }
