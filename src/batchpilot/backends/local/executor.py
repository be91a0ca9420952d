"""Run one task attempt the way a Batch node does, in a task directory on this machine.

    <task_dir>/wd/          working directory: resource files staged in, the command runs here
    <task_dir>/stdout.txt   the command's output streams, kept per task
    <task_dir>/stderr.txt

The command line is split like a shell would split it but run without one, as Batch does on Linux; a user
who wants a shell writes `/bin/bash -c "..."`. A task with container settings runs through docker or podman,
with its working directory mounted at the same path and set as the container's working dir, as Batch does;
without either runtime it fails rather than run on the host. Files move through a `Stager`, so the same
executor serves the local backend (file:// URLs) and the emulator (http URLs of Azurite). Cancellation kills
the whole process group before returning, so no task outlives its orchestrator.
"""

from __future__ import annotations

import glob
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import anyio
from anyio.abc import Process

from ...errors import ToolNotFoundError
from ...records import FailureInfo
from ...spec import ContainerSettings, OutputFile, TaskSpec

_KILL_GRACE_SECONDS = 3.0
CONTAINER_RUNTIMES = ("docker", "podman")


def container_runtime() -> str:
    """The container runtime on PATH (docker, else podman); ToolNotFoundError when there is none."""
    for name in CONTAINER_RUNTIMES:
        if found := shutil.which(name):
            return found
    raise ToolNotFoundError(
        "the workload runs in a container image, but neither docker nor podman is on PATH; install one, "
        "or remove the container image to run the command on this machine"
    )


def container_argv(
    runtime: str, container: ContainerSettings, argv: Sequence[str], workdir: Path, env_names: Iterable[str]
) -> list[str]:
    """The runtime's command line for one task. Environment values are passed by name only (`-e NAME`,
    read from the runtime's own environment), so they never show in `ps`."""
    mount = str(workdir)
    env_flags = [flag for name in sorted(env_names) for flag in ("-e", name)]
    return [
        runtime, "run", "--rm", "--init",
        "--volume", f"{mount}:{mount}", "--workdir", mount,
        *env_flags, *shlex.split(container.run_options), container.image, *argv,
    ]  # fmt: skip


class Stager(Protocol):
    """Moves files between URLs and the node's disk."""

    async def fetch(self, url: str, dest: Path) -> None: ...

    async def put(self, container_url: str, blob_name: str, source: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class Execution:
    """The outcome of one attempt."""

    exit_code: int | None
    failure: FailureInfo | None
    start_time: datetime
    end_time: datetime

    @property
    def succeeded(self) -> bool:
        return self.failure is None and self.exit_code == 0


def output_blob_name(output: OutputFile, matched: str) -> str:
    """Batch's rule: a pattern naming one file uploads to `path` itself; a wildcard pattern uses `path` as
    a virtual directory in front of each matched file's name. Without a path, a file lands at the top of the
    container under its own name (the tutorial's outputs do)."""
    name = Path(matched).name
    if glob.has_magic(output.file_pattern):
        prefix = output.path.strip("/")
        return f"{prefix}/{name}" if prefix else name
    return output.path or name


async def execute(
    spec: TaskSpec,
    task_dir: Path,
    *,
    stager: Stager,
    env: Mapping[str, str],
    now: Callable[[], datetime],
    on_running: Callable[[], Awaitable[None]] | None = None,
) -> Execution:
    """Stage in, run, stage out. Never raises for the task's own faults: they become `failure`."""
    workdir = task_dir / "wd"
    await anyio.to_thread.run_sync(_fresh_dir, task_dir, workdir)
    start = now()
    failure = await _stage_in(spec, workdir, stager)
    exit_code: int | None = None
    if failure is None:
        if on_running is not None:
            await on_running()
        exit_code, failure = await _run(spec, task_dir, workdir, env)
    succeeded = failure is None and exit_code == 0
    if failure is None and not succeeded:
        failure = FailureInfo(
            "usererror",
            "FailureExitCode",
            f"The task exited with exit code {exit_code}, representing a failure",
        )
    upload_failure = await _stage_out(spec, workdir, stager, succeeded=succeeded)
    return Execution(exit_code, failure or upload_failure, start, now())


def _fresh_dir(task_dir: Path, workdir: Path) -> None:
    # A retry starts from a clean working directory, as on a node.
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)


async def _stage_in(spec: TaskSpec, workdir: Path, stager: Stager) -> FailureInfo | None:
    for resource in spec.resource_files:
        relative = posixpath.normpath(resource.file_path)
        if relative.startswith(("/", "../")) or relative == "..":
            return FailureInfo(
                "usererror", "ResourceFilePathInvalid", f"{resource.file_path!r} leaves the task dir"
            )
        try:
            await stager.fetch(resource.url, workdir / relative)
        except Exception as exc:  # any failure to stage is the task's failure, reported, never raised
            return FailureInfo("usererror", "ResourceFileDownload", f"{resource.file_path}: {_one_line(exc)}")
    return None


async def _run(
    spec: TaskSpec, task_dir: Path, workdir: Path, env: Mapping[str, str]
) -> tuple[int | None, FailureInfo | None]:
    try:
        argv = shlex.split(spec.command_line)
    except ValueError as exc:
        return None, FailureInfo("usererror", "CommandLineInvalid", f"cannot parse the command line: {exc}")
    if not argv:
        return None, FailureInfo("usererror", "CommandLineInvalid", "the command line is empty")
    if spec.container is not None:
        try:
            runtime = container_runtime()
        except ToolNotFoundError as exc:
            return None, FailureInfo("usererror", "ContainerRuntimeNotFound", str(exc))
        task_env = [name for name in env if name.startswith("AZ_BATCH_")] + [n for n, _ in spec.environment]
        argv = container_argv(runtime, spec.container, argv, workdir, task_env)
    limit = spec.constraints.max_wall_clock.total_seconds() if spec.constraints.max_wall_clock else None
    with (task_dir / "stdout.txt").open("wb") as stdout, (task_dir / "stderr.txt").open("wb") as stderr:
        try:
            process = await anyio.open_process(
                argv,
                cwd=workdir,
                env=dict(env),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            return None, FailureInfo("usererror", "CommandProgramNotFound", _one_line(exc))
        try:
            with anyio.move_on_after(limit) as scope:
                exit_code = await process.wait()
        finally:
            if process.returncode is None:
                with anyio.CancelScope(shield=True):
                    await _kill_group(process)
    if scope.cancelled_caught:
        return None, FailureInfo(
            "usererror",
            "MaxWallClockTimeExpiry",
            f"The task ran longer than its maximum wall clock time ({limit:g} s)",
        )
    return exit_code, None


async def _kill_group(process: Process) -> None:
    """SIGTERM to the task's whole process group, SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        with anyio.move_on_after(grace):
            await process.wait()
            break
    await process.wait()


async def _stage_out(spec: TaskSpec, workdir: Path, stager: Stager, *, succeeded: bool) -> FailureInfo | None:
    for output in spec.output_files:
        if not output.upload_condition.applies(succeeded=succeeded):
            continue
        matches = sorted(glob.glob(output.file_pattern, root_dir=workdir))
        for matched in matches:
            source = workdir / matched
            if not source.is_file():
                continue
            try:
                await stager.put(output.container_url, output_blob_name(output, matched), source)
            except Exception as exc:  # an upload failure fails the task, as in Batch, and is reported
                return FailureInfo("servererror", "FileUploadFailed", f"{matched}: {_one_line(exc)}")
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
