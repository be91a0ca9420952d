"""Run one task attempt the way a Batch node does, in a task directory on this machine.

    <task_dir>/wd/          working directory: resource files staged in, the command runs here
    <task_dir>/stdout.txt   the command's output streams, kept per task
    <task_dir>/stderr.txt

The command line is split like a shell would split it but run without one, as Batch does on Linux; a user
who wants a shell writes `/bin/bash -c "..."`. A task with container settings runs through docker or podman,
with its working directory mounted at the same path and set as the container's working dir, as Batch does;
without either runtime it fails rather than run on the host. Files move through a `Stager`, so the same
executor serves the local backend (file:// URLs) and the emulator (http URLs of Azurite).

No task outlives its orchestrator. Cancellation kills the task's whole process group before returning. An
orchestrator killed outright (SIGKILL, the OOM killer) cannot, so each process group is also registered with
a watchdog, one small process per orchestrator process holding the read end of a pipe: when the orchestrator
dies the pipe closes, and the watchdog kills every group still registered. A re-run also ends any process
still marked with a requeued task's directory (`end_strays`), should the watchdog have been killed too.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import posixpath
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from ...errors import ToolNotFoundError
from ...records import FailureInfo
from ...spec import ContainerSettings, OutputFile, ResourceFile, TaskSpec, leaves_root

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


# Reads what is written in batches, a pause between reads: a line does not wake it each time (two lines per
# task), and the pipe holds far more than comes in a pause. At the end of the pipe it ends the groups left.
_WATCHDOG = """
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups, rest = set(), b""
while chunk := os.read(0, 65536):
    *lines, rest = (rest + chunk).split(b"\\n")
    for line in lines:
        groups.add(int(line[1:])) if line[:1] == b"+" else groups.discard(int(line[1:]))
    time.sleep(0.05)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Watchdog:
    """The process that kills the registered task process groups once this process has ended (its pipe
    closes however we end). Started with the first task; writes are a few bytes to a pipe it keeps reading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def _pipe(self, *, renew: bool = False) -> int | None:
        if self._process is None or (renew and self._process.poll() is not None):
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # no terminal signal (Ctrl-C) reaches it
                    env={},
                )
            except OSError:
                return None
            atexit.register(self._close, self._process)
            if self._process.stdin is not None:
                # Never block the event loop on a watchdog that stopped reading: a lost line is the
                # next run's to catch (end_strays).
                os.set_blocking(self._process.stdin.fileno(), False)
        return self._process.stdin.fileno() if self._process.stdin is not None else None

    def send(self, line: str) -> None:
        with self._lock:
            fd = self._pipe()
            if fd is None:
                return
            try:
                os.write(fd, line.encode())
            except BrokenPipeError:
                # The watchdog died (it is not asked at each line: a system call): a new one takes the
                # line. The groups the dead one held are the next run's to end (end_strays), as before.
                fd = self._pipe(renew=True)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.write(fd, line.encode())
            except OSError:
                pass  # a full pipe: this line is the next run's to catch (end_strays)

    @staticmethod
    def _close(process: subprocess.Popen[bytes]) -> None:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


_watchdog = _Watchdog()

# What a task inherits from the orchestrator's environment: what programs need to find themselves, their
# home, their language and their temporary folder; never our credentials (AZURE_*, connection strings,
# keys) nor anything else the orchestrator happens to hold. The rest is the workload's and AZ_BATCH_*.
SAFE_VARIABLES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)


def base_environment(inherited: Mapping[str, str], tool_dirs: Sequence[Path] = ()) -> dict[str, str]:
    """The part of `inherited` (the orchestrator's environment) a task may see: `SAFE_VARIABLES` and the
    locale's `LC_*`, with `tool_dirs` in front of PATH."""
    env = {
        name: value for name, value in inherited.items() if name in SAFE_VARIABLES or name.startswith("LC_")
    }
    env.setdefault("PATH", os.defpath)
    if tool_dirs:
        env["PATH"] = os.pathsep.join([*map(str, tool_dirs), env["PATH"]])
    return env


# A task's processes carry this in their environment (the local backend sets it), which tells them apart.
TASK_DIR_VARIABLE = "AZ_BATCH_TASK_DIR"


def end_strays(task_dirs: Iterable[Path], *, wait_s: float = 10.0) -> int:
    """SIGKILL every process of ours still marked with one of `task_dirs` (its `AZ_BATCH_TASK_DIR`), left by
    an orchestrator that died with its task running, and wait until they are gone (at most `wait_s`).
    Returns how many there were. One look at /proc (Linux); elsewhere nothing is found. Blocking: call it in
    a worker thread."""
    markers = {f"{TASK_DIR_VARIABLE}={task_dir}".encode() for task_dir in task_dirs}
    found = [pid for pid in _pids() if markers.intersection(_environ(pid))]
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    strays = found
    deadline = time.monotonic() + wait_s
    while strays and time.monotonic() < deadline:
        strays = [pid for pid in strays if _alive(pid)]
        if strays:
            time.sleep(0.01)
    return len(found)


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return []


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, waiting for its new parent to reap it, no longer does)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


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


@runtime_checkable
class SyncStager(Protocol):
    """A `Stager` whose moves are plain file operations (the local backend's): the executor then does a
    task's whole file work (fresh folder, stage in, output files, spawn; later stage out) in one worker-thread
    trip each, instead of one per file."""

    def fetch_sync(self, url: str, dest: Path) -> None: ...

    def put_sync(self, container_url: str, blob_name: str, source: Path) -> None: ...


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
    start = now()
    sync = stager if isinstance(stager, SyncStager) else None
    launched: subprocess.Popen[bytes] | FailureInfo | None = None
    if sync is not None:
        # Shielded: once the trip has spawned the process, it must be waited for (or killed) below.
        with anyio.CancelScope(shield=True):
            failure, launched = await anyio.to_thread.run_sync(
                _prepare_and_launch, spec, task_dir, workdir, sync, env
            )
    else:
        await anyio.to_thread.run_sync(_fresh_dir, task_dir, workdir)
        failure = await _stage_in(spec, workdir, stager)
    exit_code: int | None = None
    if failure is None:
        if on_running is not None:
            try:
                await on_running()
            except BaseException:
                if isinstance(launched, subprocess.Popen):
                    with anyio.CancelScope(shield=True):
                        await _end(launched, _pidfd(launched))
                raise
        if launched is None:
            with anyio.CancelScope(shield=True):
                launched = await anyio.to_thread.run_sync(_launch, spec, task_dir, workdir, env)
        if isinstance(launched, FailureInfo):
            failure = launched
        elif launched is not None:
            exit_code, failure = await _wait(launched, spec)
    succeeded = failure is None and exit_code == 0
    if failure is None and not succeeded:
        failure = FailureInfo(
            "usererror",
            "FailureExitCode",
            f"The task exited with exit code {exit_code}, representing a failure",
        )
    if sync is not None:
        upload_failure = await anyio.to_thread.run_sync(_stage_out_sync, spec, workdir, sync, succeeded)
    else:
        upload_failure = await _stage_out(spec, workdir, stager, succeeded=succeeded)
    return Execution(exit_code, failure or upload_failure, start, now())


def _fresh_dir(task_dir: Path, workdir: Path) -> None:
    # A retry starts from a clean working directory, as on a node. A first attempt finds none: one mkdir
    # (two with the task dir), no look before.
    try:
        os.mkdir(workdir)
    except FileNotFoundError:
        os.makedirs(workdir)
    except FileExistsError:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)


def _resource_path(resource: ResourceFile) -> str | FailureInfo:
    relative = posixpath.normpath(resource.file_path)
    if relative.startswith(("/", "../")) or relative == "..":
        return FailureInfo(
            "usererror", "ResourceFilePathInvalid", f"{resource.file_path!r} leaves the task dir"
        )
    return relative


async def _stage_in(spec: TaskSpec, workdir: Path, stager: Stager) -> FailureInfo | None:
    for resource in spec.resource_files:
        relative = _resource_path(resource)
        if isinstance(relative, FailureInfo):
            return relative
        try:
            await stager.fetch(resource.url, workdir / relative)
        except Exception as exc:  # any failure to stage is the task's failure, reported, never raised
            return FailureInfo("usererror", "ResourceFileDownload", f"{resource.file_path}: {_one_line(exc)}")
    return None


def _prepare_and_launch(
    spec: TaskSpec, task_dir: Path, workdir: Path, stager: SyncStager, env: Mapping[str, str]
) -> tuple[FailureInfo | None, subprocess.Popen[bytes] | FailureInfo | None]:
    """One worker-thread trip: a fresh working directory, the resource files staged in, then the command
    launched (`_launch`). Returns the staging failure, if any (nothing launched then), and what `_launch`
    returned."""
    _fresh_dir(task_dir, workdir)
    for resource in spec.resource_files:
        relative = _resource_path(resource)
        if isinstance(relative, FailureInfo):
            return relative, None
        try:
            stager.fetch_sync(resource.url, workdir / relative)
        except Exception as exc:  # any failure to stage is the task's failure, reported, never raised
            failure = FailureInfo(
                "usererror", "ResourceFileDownload", f"{resource.file_path}: {_one_line(exc)}"
            )
            return failure, None
    return None, _launch(spec, task_dir, workdir, env)


def _launch(
    spec: TaskSpec, task_dir: Path, workdir: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes] | FailureInfo:
    """The command split as a shell would (off the event loop: shlex.split is quadratic in a token's length,
    4 MB took minutes), the task's stdout.txt and stderr.txt created, the process started in its own session
    and registered with the watchdog. Blocking: call it in a worker thread."""
    try:
        argv = shlex.split(spec.command_line)
    except ValueError as exc:
        return FailureInfo("usererror", "CommandLineInvalid", f"cannot parse the command line: {exc}")
    if not argv:
        return FailureInfo("usererror", "CommandLineInvalid", "the command line is empty")
    with _created(task_dir / "stdout.txt") as stdout, _created(task_dir / "stderr.txt") as stderr:
        if spec.container is not None:
            try:
                runtime = container_runtime()
            except ToolNotFoundError as exc:
                return FailureInfo("usererror", "ContainerRuntimeNotFound", str(exc))
            task_env = [name for name in env if name.startswith("AZ_BATCH_")]
            task_env += [name for name, _ in spec.environment]
            argv = container_argv(runtime, spec.container, argv, workdir, task_env)
        try:
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=dict(env),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            return FailureInfo("usererror", "CommandProgramNotFound", _one_line(exc))
        except OSError as exc:  # E2BIG: a command line or environment longer than the OS takes, say
            code = "CommandLineTooLong" if exc.errno == errno.E2BIG else "CommandStartFailed"
            return FailureInfo("usererror", code, f"the command could not start: {_one_line(exc)}")
    _watchdog.send(f"+{process.pid}\n")
    return process


@contextlib.contextmanager
def _created(path: Path) -> Iterator[int]:
    """A descriptor of `path`, created empty (or emptied) for writing, closed on leaving: the child has its
    own copy by then."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _pidfd(process: subprocess.Popen[bytes]) -> int | None:
    """A descriptor that becomes readable when `process` ends (Linux 5.3+); None where there is none."""
    try:
        return os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return None


async def _exited(process: subprocess.Popen[bytes], pidfd: int | None) -> int:
    """Wait for `process` to end, without a thread: its pidfd polled by the event loop (a short sleep
    between looks where there is no pidfd). Returns its exit code (negative: the signal that ended it)."""
    delay = 0.001
    while (code := process.poll()) is None:
        if pidfd is not None:
            await anyio.wait_readable(pidfd)
        else:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
    return code


async def _wait(process: subprocess.Popen[bytes], spec: TaskSpec) -> tuple[int | None, FailureInfo | None]:
    limit = spec.constraints.max_wall_clock.total_seconds() if spec.constraints.max_wall_clock else None
    pidfd = _pidfd(process)
    try:
        with anyio.move_on_after(limit) as scope:
            exit_code = await _exited(process, pidfd)
    finally:
        with anyio.CancelScope(shield=True):
            await _end(process, pidfd)
    if scope.cancelled_caught:
        return None, FailureInfo(
            "usererror",
            "MaxWallClockTimeExpiry",
            f"The task ran longer than its maximum wall clock time ({limit:g} s)",
        )
    return exit_code, None


async def _end(process: subprocess.Popen[bytes], pidfd: int | None) -> None:
    """Kill the task's process group if it still runs, reap it, unregister it from the watchdog."""
    try:
        if process.poll() is None:
            await _kill_group(process, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
        _watchdog.send(f"-{process.pid}\n")


async def _kill_group(process: subprocess.Popen[bytes], pidfd: int | None) -> None:
    """SIGTERM to the task's whole process group, SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        with anyio.move_on_after(grace):
            await _exited(process, pidfd)
            break
    await _exited(process, pidfd)


def _outputs(
    spec: TaskSpec, workdir: Path, *, succeeded: bool
) -> Iterator[tuple[str, str, str, Path] | FailureInfo]:
    """The uploads the task's output files ask for, in order, each (container URL, blob name, matched name,
    source); a FailureInfo ends them where a pattern or a blob name leaves its root. Blocking (it globs)."""
    task_dir = workdir.parent
    for output in spec.output_files:
        if not output.upload_condition.applies(succeeded=succeeded):
            continue
        # Batch lets a pattern reach the task dir (`../std*.txt`) and no further.
        if output.file_pattern.startswith("/") or leaves_root(f"wd/{output.file_pattern}"):
            yield FailureInfo(
                "usererror", "OutputFilePatternInvalid", f"{output.file_pattern!r} leaves the task dir"
            )
            return
        for matched, source in _matches(output.file_pattern, workdir, task_dir):
            blob_name = output_blob_name(output, matched)
            if leaves_root(blob_name) or (output.path and not _under(blob_name, output.path)):
                yield FailureInfo(
                    "usererror",
                    "OutputFilePathInvalid",
                    f"{matched}: blob name {blob_name!r} leaves its path",
                )
                return
            yield output.container_url, blob_name, matched, source


async def _stage_out(spec: TaskSpec, workdir: Path, stager: Stager, *, succeeded: bool) -> FailureInfo | None:
    uploads = await anyio.to_thread.run_sync(lambda: list(_outputs(spec, workdir, succeeded=succeeded)))
    for upload in uploads:
        if isinstance(upload, FailureInfo):
            return upload
        container_url, blob_name, matched, source = upload
        try:
            await stager.put(container_url, blob_name, source)
        except Exception as exc:  # an upload failure fails the task, as in Batch, and is reported
            return FailureInfo("servererror", "FileUploadFailed", f"{matched}: {_one_line(exc)}")
    return None


def _stage_out_sync(spec: TaskSpec, workdir: Path, stager: SyncStager, succeeded: bool) -> FailureInfo | None:
    """`_stage_out` in one worker-thread trip, for a stager whose moves are file operations."""
    for upload in _outputs(spec, workdir, succeeded=succeeded):
        if isinstance(upload, FailureInfo):
            return upload
        container_url, blob_name, matched, source = upload
        try:
            stager.put_sync(container_url, blob_name, source)
        except Exception as exc:  # an upload failure fails the task, as in Batch, and is reported
            return FailureInfo("servererror", "FileUploadFailed", f"{matched}: {_one_line(exc)}")
    return None


def _matches(pattern: str, workdir: Path, task_dir: Path) -> list[tuple[str, Path]]:
    """The regular files `pattern` matches in `workdir`, each with its real path, if that is inside the task
    dir: a link the task made to a file elsewhere (another task's, the user's) is never uploaded."""
    root: Path | None = None
    plain_workdir: bool | None = None
    found = []
    # `**` matches any directory, none included, as in Batch; hidden names only when the pattern names them.
    for matched in sorted(glob.glob(pattern, root_dir=workdir, recursive=True)):
        if "/" not in matched and not matched.startswith("."):
            # A name right in the working folder (the usual output): inside the task dir if it is no link
            # itself, and the working folder is still a folder (the task may have made it a link): two
            # system calls, not one per folder of its real path.
            with contextlib.suppress(OSError):
                if plain_workdir is None:
                    plain_workdir = stat.S_ISDIR(os.lstat(workdir).st_mode)
                if plain_workdir and stat.S_ISREG(os.lstat(workdir / matched).st_mode):
                    found.append((matched, workdir / matched))
                    continue
        root = root or task_dir.resolve()
        # realpath, not resolve: a link loop the task left is then no file, instead of a RuntimeError.
        source = Path(os.path.realpath(workdir / matched))
        if source.is_relative_to(root) and source.is_file():
            found.append((matched, source))
    return found


def _under(blob_name: str, path: str) -> bool:
    """Whether `blob_name` is `path` itself or a blob in its virtual folder."""
    prefix = posixpath.normpath(path.strip("/"))
    name = posixpath.normpath(blob_name)
    return name == prefix or name.startswith(prefix + "/")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
