"""`batchpilot status` and `batchpilot logs`: what a user reaches for after a failure (issue 15 item 8).

Both read from the service alone (Batch, or the local backend's records on disk), so they work after the
orchestrator died and from another machine:

    batchpilot status [--job JOB]                       task counts, failed tasks: exit code, failure code,
                                                        the end of their stderr
    batchpilot logs JOB TASK [--stderr|--stdout] [--tail BYTES]
                                                        the end of a task's output file: from its node while
                                                        it is there, else the `_logs/` copy a failed task
                                                        leaves in the output container

Without --job, `status` reads the job that `run` with the same arguments would use. Everything shown is
bounded (a byte range of each file, a capped list of failed tasks, lines capped) and what a task wrote is
escaped (`text`), so a 50 MB stderr or a terminal escape sequence does nothing. `--log-format json` prints one
JSON document for scripts. An unknown job or task is one line, exit 2 (a ConfigError).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .backends.base import Backend, Compute
from .engine import MAX_JOB_GENERATIONS
from .errors import ConfigError, NotFoundError
from .logging import redact_text
from .monitor.poller import read_stderr_tail
from .records import TaskResult, TaskState, TaskView
from .spec import check_batch_id, container_name, job_generation_id
from .tasks import LOGS_PREFIX
from .text import decode, one_line, safe_text

# `status` lists this many failed tasks with their stderr's end (the rest are counted), each with this many
# of its last lines.
STATUS_FAILED_SHOWN = 20
STATUS_TAIL_LINES = 5
# `logs --tail`: the default and the most a user may ask for, in bytes.
LOGS_TAIL_DEFAULT = 10_000
LOGS_TAIL_MAX = 1_000_000
_STREAMS = {"stdout": "stdout.txt", "stderr": "stderr.txt"}

OpenBackend = Callable[[], Backend]
# The job `run` with these arguments uses, and the ids of the tasks it has there now (None: not known).
ResolveJob = Callable[[argparse.Namespace, Backend], Awaitable[tuple[str, frozenset[str] | None]]]
Options = Callable[[argparse.ArgumentParser], None]


def _tail_bytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if not 1 <= value <= LOGS_TAIL_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to {LOGS_TAIL_MAX:,} bytes")
    return value


def add_status_commands(
    commands: argparse._SubParsersAction[Any],
    *,
    workload_options: Options,
    backend_options: Options,
    log_options: Options,
) -> None:
    """The `status` and `logs` subcommands, with the CLI's own workload, backend and log options."""
    status = commands.add_parser(
        "status",
        help="task counts and failed tasks of a job (exit code, failure code, the end of stderr)",
        description=(
            "Read a job's tasks from the service: counts by state, and each failed task's exit code, failure "
            "code and the last lines of its stderr (its last bytes only). It works after the run's process "
            f"is gone, and from another machine. Lists {STATUS_FAILED_SHOWN} failed tasks and counts the "
            "rest. Without --job, the job that `run` with the same arguments (INPUTS, --workload, --command, "
            "--name) would use."
        ),
    )
    status.add_argument("--job", help="the job's id (the run's summary names it)")
    workload_options(status)
    backend_options(status)
    log_options(status)

    logs = commands.add_parser(
        "logs",
        help="the end of a task's stderr or stdout, from its node or the output container's _logs/ copy",
        description=(
            "Print the last bytes of a task's stderr.txt (or stdout.txt): from the node while it keeps the "
            f"task's files, else from the copy a failed task leaves in the output container under "
            f"{LOGS_PREFIX}/TASK/. Only the bytes asked for are read; control characters are escaped."
        ),
    )
    logs.add_argument("job", metavar="JOB", help="the job's id")
    logs.add_argument("task", metavar="TASK", help="the task's id (status and the summary name it)")
    stream = logs.add_mutually_exclusive_group()
    stream.add_argument("--stderr", dest="stream", action="store_const", const="stderr", help="(default)")
    stream.add_argument("--stdout", dest="stream", action="store_const", const="stdout")
    logs.set_defaults(stream="stderr")
    logs.add_argument(
        "--tail", type=_tail_bytes, default=LOGS_TAIL_DEFAULT, metavar="BYTES",
        help=f"how many of the file's last bytes (default: {LOGS_TAIL_DEFAULT:,}; at most {LOGS_TAIL_MAX:,})",
    )  # fmt: skip
    backend_options(logs)
    log_options(logs)


def _json(args: argparse.Namespace) -> bool:
    return bool(args.log_format == "json")


def _print(text: str) -> None:
    """One line to stdout, secrets masked (a task may print a URL with its SAS)."""
    print(redact_text(text), file=sys.stdout, flush=True)


# --- status -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedView:
    """One failed task as `status` shows it, and the job (generation) it is in."""

    task_id: str
    exit_code: int | None
    failure_code: str | None
    failure_message: str | None
    stderr_tail: str
    job_id: str


def counts_of(views: list[TaskView]) -> dict[str, int]:
    """Tasks by state, completed ones split into succeeded and failed (as Batch's task counts)."""
    counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
    for view in views:
        if view.state is TaskState.ACTIVE:
            counts["active"] += 1
        elif view.state in (TaskState.PREPARING, TaskState.RUNNING):
            counts["running"] += 1
        else:
            counts["completed"] += 1
            counts["succeeded" if view.result is TaskResult.SUCCESS else "failed"] += 1
    return counts


async def _listing(compute: Compute, job_id: str, backend: str) -> list[TaskView]:
    try:
        return await compute.list_tasks(job_id)
    except NotFoundError:
        raise ConfigError(
            f"job {job_id}: no such job on the {backend} backend; give the job id a run's summary names"
            " (--job), and the same --backend"
        ) from None


async def _generations(
    compute: Compute, job_id: str, backend: str
) -> tuple[list[str], dict[str, tuple[str, TaskView]]]:
    """The job and its later generations (`<job>-g2`, ...: where a re-run went on once the job had ended,
    retrying its failed tasks there), and each task's home: the latest generation that has it, with its
    view there, as the engine judges them (`Orchestrator._choose_job`). ConfigError when `job_id` itself
    does not exist."""
    generations = [job_id]
    homes = {view.task_id: (job_id, view) for view in await _listing(compute, job_id, backend)}
    for generation in range(2, MAX_JOB_GENERATIONS + 1):
        later = job_generation_id(job_id, generation)
        try:
            views = await compute.list_tasks(later)
        except NotFoundError:
            break
        generations.append(later)
        homes.update((view.task_id, (later, view)) for view in views)
    return generations, homes


async def status_command(
    args: argparse.Namespace, *, open_backend: OpenBackend, resolve_job: ResolveJob
) -> None:
    """`batchpilot status [--job JOB]`: prints the job's counts and failed tasks (bounded) to stdout. The
    job's later generations (`JOB-g2`, ...) are read too: each task as the latest of them has it. Given the
    run's arguments instead of --job, only the tasks of that run's inputs and definitions are counted: a
    task of an earlier command (a failure the changed command fixed) is one of the job's `other` tasks."""
    async with open_backend() as backend:
        current: frozenset[str] | None = None
        if args.job:
            job_id = check_batch_id("job", args.job)
        else:
            job_id, current = await resolve_job(args, backend)
        compute = backend.compute
        generations, homes = await _generations(compute, job_id, args.backend)
        views = [view for _, view in homes.values() if current is None or view.task_id in current]
        other = len(homes) - len(views)
        failed_views = sorted(
            (v for v in views if v.state is TaskState.COMPLETED and v.result is not TaskResult.SUCCESS),
            key=lambda view: view.task_id,
        )
        shown: list[FailedView] = []
        for view in failed_views[:STATUS_FAILED_SHOWN]:
            failure = view.failure
            home = homes[view.task_id][0]
            shown.append(
                FailedView(
                    view.task_id,
                    view.exit_code,
                    failure.code if failure else None,
                    one_line(failure.message, 300) if failure else None,
                    await read_stderr_tail(compute, home, view.task_id, lines=STATUS_TAIL_LINES),
                    home,
                )
            )
    counts = counts_of(views)
    more = len(failed_views) - len(shown)
    if _json(args):
        document = {
            "job_id": job_id,
            "generations": generations,
            "backend": args.backend,
            "tasks": len(views),
            **counts,
            "failed_tasks": [
                {
                    "task_id": item.task_id,
                    "job_id": item.job_id,
                    "exit_code": item.exit_code,
                    "failure_code": item.failure_code,
                    "failure_message": item.failure_message,
                    "stderr_tail": item.stderr_tail,
                }
                for item in shown
            ],
            "failed_not_shown": more,
            "other_tasks": other,
        }
        _print(json.dumps(document))
        return
    named = job_id if len(generations) == 1 else f"{job_id} and its later generations to {generations[-1]}"
    _print(
        f"job {named} ({args.backend}): {len(views)} tasks: {counts['active']} active, {counts['running']}"
        f" running, {counts['succeeded']} succeeded, {counts['failed']} failed"
    )
    if other:
        _print(
            f"  other:   {other:,} tasks of the job are of other inputs or earlier commands: not counted"
            f" (`batchpilot status --backend {backend_arg(args)} --job {job_id}` counts every task)"
        )
    for item in shown:
        code = f"exit code {item.exit_code}" if item.exit_code is not None else "no exit code"
        why = f"{item.failure_code}: {item.failure_message}" if item.failure_code else "failed"
        _print(f"  failed:  {item.task_id} ({code}): {one_line(why)}")
        for line in item.stderr_tail.splitlines():
            _print(f"           | {line}")
        if item.stderr_tail:
            more_of = f"batchpilot logs --backend {backend_arg(args)} {item.job_id} {item.task_id}"
            _print(f"           (more: {more_of})")
    if more:
        _print(f"  failed:  ... and {more:,} more (--log-format json lists {STATUS_FAILED_SHOWN} too)")


def backend_arg(args: argparse.Namespace) -> str:
    """What follows `--backend` in a command this one prints for the user to run next (`batchpilot logs`,
    `status`, `cleanup`): the backend's name, and the local backend's `--state-dir DIR` when one was given,
    without which the printed command looks in the default folder and finds no such job."""
    backend: str = getattr(args, "backend", "local")
    state_dir = getattr(args, "state_dir", None)
    if backend == "local" and state_dir is not None:
        return f"{backend} --state-dir {shlex.quote(str(state_dir))}"
    return backend


# --- logs ---------------------------------------------------------------------------------------------------


async def _from_logs_copy(backend: Backend, job_id: str, task_id: str, name: str, tail: int) -> bytes | None:
    """The end of the `_logs/` copy of a failed task's file in the job's output container, or None."""
    container = container_name(job_id, "output")
    blob = f"{LOGS_PREFIX}/{task_id}/{name}"
    try:
        found = [info for info in await backend.storage.list_blobs(container, blob) if info.name == blob]
    except NotFoundError:
        return None
    if not found:
        return None
    # Storage offers whole blobs only here: fetched to a temporary file (not memory), then its end is read.
    with tempfile.TemporaryDirectory(prefix="batchpilot-logs-") as folder:
        path = Path(folder) / name
        await backend.storage.download(container, blob, path)
        return await anyio.to_thread.run_sync(_read_end, path, tail)


def _read_end(path: Path, tail: int) -> bytes:
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - tail))
        return handle.read(tail)


async def _latest_home(compute: Compute, job_id: str, task_id: str) -> str:
    """The generation of `job_id` (`job_id` itself, `<job>-g2`, ...) that last has `task_id`: a re-run
    retries a failed task of an ended job in the next generation, where its latest attempt's files are.
    One request (Get Task Counts of `<job>-g2`) when the job has no later generation."""
    try:
        await compute.task_counts(job_generation_id(job_id, 2))
    except NotFoundError:
        return job_id
    _, homes = await _generations(compute, job_id, "")
    home = homes.get(task_id)
    return home[0] if home is not None else job_id


async def logs_command(args: argparse.Namespace, *, open_backend: OpenBackend) -> None:
    """`batchpilot logs JOB TASK [--stderr|--stdout] [--tail BYTES]`: prints the end of the file."""
    job_id = check_batch_id("job", args.job)
    task_id = check_batch_id("task", args.task)
    name = _STREAMS[args.stream]
    tail: int = args.tail
    source = "node"
    async with open_backend() as backend:
        home = await _latest_home(backend.compute, job_id, task_id)
        try:
            data: bytes | None = await backend.compute.read_task_file(home, task_id, name, tail=tail + 1)
        except NotFoundError:
            data = None
        if data is None:
            source = "output container"
            data = await _from_logs_copy(backend, job_id, task_id, name, tail + 1)
        if data is None:
            views = await _listing(backend.compute, job_id, args.backend)
            if not any(view.task_id == task_id for view in views):
                raise ConfigError(
                    f"job {job_id} has no task {task_id}; `batchpilot status --backend {backend_arg(args)}"
                    f" --job {job_id}` lists its failed"
                    " tasks"
                )
            raise ConfigError(
                f"task {task_id} of job {job_id} has no {name} to show: it has not run yet, or its node is"
                f" gone and it left no copy (only failed tasks leave theirs under {LOGS_PREFIX}/)"
            )
    truncated = len(data) > tail
    text = safe_text(decode(data[-tail:]), tail)
    if _json(args):
        _print(
            json.dumps(
                {
                    "job_id": home,  # the generation read: JOB, or JOB-g2... where a re-run retried it
                    "task_id": task_id,
                    "file": name,
                    "source": source,
                    "truncated": truncated,
                    "text": text,
                }
            )
        )
        return
    if truncated:
        _print(f"[... the last {tail:,} bytes of {name} of task {task_id}, from the {source}]")
    _print(text.removesuffix("\n"))
