"""`batchpilot run | cleanup | ...`: argument parsing, wiring, and the exit codes.

Exit codes: 0 when every task succeeded and every output is fetched; 1 when tasks failed, the run timed out or
the service refused; 2 for a user mistake (one line, no traceback); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import anyio
import structlog

from . import __version__
from .backends.base import Backend
from .backends.local import LocalBackend, default_root
from .backends.local.executor import container_runtime
from .backoff import BackoffPolicy
from .bus import Subscriber
from .cli_errors import backend_error_line
from .cli_report import RollingReport, RunReport, add_report_command, add_report_option, report_command
from .cli_status import add_status_commands, backend_arg, logs_command, status_command
from .cli_workload import add_workload_arguments, resolve_pool, resolve_service_workload, resolve_workload
from .emulator import cli as emulator_cli
from .engine import EngineSettings, Orchestrator
from .errors import (
    BackendError,
    BatchpilotError,
    ConfigError,
    NotFoundError,
    NothingToRunError,
    ToolNotFoundError,
)
from .events import RunSummary
from .logging import configure_logging, default_format, redact_text, register_secrets
from .monitor.poller import PollSettings
from .plan import plan_lines
from .request_tally import RequestTally
from .spec import (
    BlobInputs,
    CleanupPolicy,
    JobLifetime,
    PoolPolicy,
    check_batch_id,
    check_container_name,
)
from .staging import stage_inputs
from .subscribers.cleanup import cleanup_command
from .subscribers.log import LogSubscriber
from .subscribers.progress import ProgressDisplay
from .text import escape_controls, one_line
from .workload_file import MAX_DURATION, parse_duration
from .workloads import ffmpeg

if TYPE_CHECKING:  # the Azure SDKs and the service take ~0.5 s to import: only the commands that use them do
    from .config import AzureSettings
    from .service import ContainerSource

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A summary lists this many failed tasks, each with at most this many lines of its stderr's end.
SUMMARY_FAILED_SHOWN = 20
SUMMARY_TAIL_LINES = 10
# The commands that print what they read from the service (their stdout is theirs alone).
_READERS = ("status", "logs")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the problem and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"batchpilot: error: {message} (see `{self.prog} --help`)\n")


def _whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {maximum:,}")
        return value

    return parse


_positive_int = _whole_number(1)
# Each upload in flight is a worker and a connection: past a few hundred they only wait on each other.
MAX_CONCURRENCY = 1000
_concurrency = _whole_number(1, MAX_CONCURRENCY)
_non_negative_int = _whole_number(0)


def _duration(text: str) -> timedelta:
    """Seconds, or a number with s/m/h/d: 90, 90s, 15m, 2h, 1d; as in a workload file."""
    duration = parse_duration(text)
    if duration is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90, 15m, 2h or 1d, of at most {MAX_DURATION.days}d"
        )
    return duration


def _minutes(text: str) -> timedelta:
    """A number of minutes, fractions allowed: 15, 0.5; the same parser and bounds as durations."""
    duration = parse_duration(f"{text.strip()}m")
    if duration is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of minutes above zero like 15 or 0.5, of at most {MAX_DURATION.days}d"
        )
    return duration


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="batchpilot",
        description="Run parallel workloads on Azure Batch, or on this machine, with an async orchestrator.",
    )
    parser.add_argument("--version", action="version", version=f"batchpilot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a workload: one task per input (--workload FILE, --command, or the ffmpeg tutorial's job)",
        description=(
            "Upload the inputs, create or reuse the pool and job, add one task per input, watch them, and "
            "fetch each task's outputs as soon as it is done. Running the same command again resumes: "
            "unchanged inputs are not uploaded again, existing tasks are not added again, failed tasks are "
            "retried (--no-retry-failed: not), outputs already in --out are kept. A task's id covers its "
            "input and everything that decides its result (command, outputs, image, environment): change one "
            "and the task is new. Without --workload or --command, INPUT_DIR (or --sample N) runs the "
            "shipped ffmpeg example: MP4 to MP3, the Azure Batch tutorial's job."
        ),
    )
    _add_workload_arguments(run)
    run.add_argument(
        "--out", type=Path, metavar="OUT_DIR",
        help="where the outputs are written (default: the workload file's download_to)",
    )  # fmt: skip
    run.add_argument(
        "--concurrency", type=_concurrency, default=16, metavar="N",
        help=f"uploads in flight (default: 16, at most {MAX_CONCURRENCY})",
    )  # fmt: skip
    run.add_argument("--keep-inputs", action="store_true", help="keep the input container after success")
    run.add_argument("--delete-job", action="store_true", help="delete the job after success")
    run.add_argument(
        "--pool-after", type=PoolPolicy, choices=list(PoolPolicy), metavar="{keep,scale-to-zero,delete}",
        help="what a run that succeeds does with its pool, which costs money while it has nodes: keep it"
        " ready (default, or the workload file's cleanup.pool), scale it to zero nodes (the next run brings"
        " them back), or delete it",
    )  # fmt: skip
    add_report_option(run)
    _add_monitor_options(run)
    _add_backend_options(run)
    _add_log_options(run)

    plan = commands.add_parser(
        "plan",
        help="show what `run` would upload, create and submit, creating nothing",
        description=(
            "Print the pool, job, inputs to upload, task ids and the first commands exactly as `run` with "
            "the same arguments would use them. Inputs are read (task ids depend on their content); nothing "
            "is created."
        ),
    )
    _add_workload_arguments(plan)
    plan.add_argument("--out", type=Path, metavar="OUT_DIR", help="where `run` would write the outputs")
    _add_backend_options(plan)
    _add_log_options(plan)

    cleanup = commands.add_parser(
        "cleanup",
        help="delete a job, pool or container left by an earlier run",
        description="Delete what an earlier run left in place. --job, --pool and --container are optional.",
    )
    cleanup.add_argument("--job", help="job id to delete")
    cleanup.add_argument("--pool", help="pool id to delete")
    cleanup.add_argument("--container", action="append", default=[], help="storage container to delete")
    _add_backend_options(cleanup)
    _add_log_options(cleanup)

    check = commands.add_parser(
        "check",
        help="validate the backend's settings and reach its services, creating nothing",
        description=(
            "Validate settings and reachability of Batch and Storage without creating anything. On Azure, "
            "also ask Batch (List Supported Images) whether it takes the pool's image, node agent and VM "
            "size today: that of --workload FILE, else of batchpilot.toml's [workload], else the default "
            "pool. A retired or unlisted image, a node agent that does not go with it, or a Hyper-V "
            "generation the VM size cannot boot is one line naming a supported replacement, exit 2."
        ),
    )
    check.add_argument(
        "--workload", type=Path, metavar="FILE", help="the workload file whose pool to check (Azure)"
    )
    _add_backend_options(check)
    _add_log_options(check)

    serve = commands.add_parser(
        "serve",
        help="a long-lived service: new files in --watch DIR become tasks on one pool and job",
        description=(
            "Keep one pool and one job, and turn each new or changed file in --watch DIR into a task as soon "
            "as the file is complete (size and time unchanged for a second); outputs are fetched to --out as "
            "tasks succeed. Failures are logged and never stop the service. SIGTERM or Ctrl-C stops taking "
            "inputs, finishes uploads and submissions in flight, prints a summary and exits 0; starting it "
            "again picks up where the job stands (nothing re-added, no output fetched twice). Without "
            "--workload or --command it runs the shipped ffmpeg example on *.mp4 files."
        ),
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--watch", type=Path, metavar="DIR", help="the folder to take new files from")
    source.add_argument(
        "--watch-container",
        metavar="NAME",
        help="the storage container to take new blobs from (see --prefix)",
    )
    serve.add_argument("--prefix", default="", help="with --watch-container: only blobs under this prefix")
    serve.add_argument("--out", type=Path, metavar="OUT_DIR", required=True, help="where outputs are written")
    add_workload_arguments(
        serve,
        positive_int=_positive_int,
        non_negative_int=_non_negative_int,
        duration=_duration,
        service=True,
    )
    serve.add_argument(
        "--metrics-port", type=_whole_number(0, 65535), default=0, metavar="PORT",
        help="serve /healthz and /metrics (Prometheus text) on 127.0.0.1:PORT (default: 0, off)",
    )  # fmt: skip
    serve.add_argument(
        "--concurrency", type=_concurrency, default=16, metavar="N",
        help=f"uploads in flight (default: 16, at most {MAX_CONCURRENCY})",
    )  # fmt: skip
    serve.add_argument(
        "--idle-shutdown", type=_minutes, metavar="MIN",
        help="resize the pool to zero nodes after MIN minutes without work (no task waiting or running, no "
        "new input), and back to its node counts when inputs arrive (default: off). It resizes the "
        "workload's pool even if an earlier run created it: give the service a pool of its own",
    )  # fmt: skip
    add_report_option(serve, rolling=True)
    _add_monitor_options(serve)
    _add_backend_options(serve)
    _add_log_options(serve)
    add_report_command(commands, backend_options=_add_backend_options, log_options=_add_log_options)
    add_status_commands(
        commands,
        workload_options=_add_workload_arguments,
        backend_options=_add_backend_options,
        log_options=_add_log_options,
    )

    emulator = commands.add_parser(
        "emulator",
        help="serve a local Azure Batch emulator (for tests and trying the Azure path offline)",
        description=(
            "An Azure Batch REST emulator on loopback that the real azure-batch SDK can talk to. Tasks run "
            "on this machine with the bundled ffmpeg on PATH; start tasks are skipped. Pair it with Azurite "
            "(scripts/azurite start) for Blob Storage."
        ),
    )
    emulator_cli.add_arguments(emulator)
    _add_log_options(emulator)
    return parser


def _add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(
        parser, positive_int=_positive_int, non_negative_int=_non_negative_int, duration=_duration
    )


def _add_monitor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--give-up-after", type=_duration, default=timedelta(minutes=15), metavar="DURATION",
        help="stop when polls of the tasks keep failing this long (default: 15m); the tasks go on, and the"
        " same command resumes",
    )  # fmt: skip


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    poll = PollSettings(give_up_after=args.give_up_after)
    if args.backend == "local":
        # Listing local tasks is a look at memory: poll often, so that a run ends when its last task does.
        poll = replace(poll, backoff=BackoffPolicy(initial=0.02))
    return EngineSettings(upload_concurrency=args.concurrency, poll=poll)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=["local", "azure"], default="local",
        help="local: subprocesses on this machine (default); azure: Azure Batch and Blob Storage",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR",
        help=f"local backend's folder for pools, jobs and containers (default: {default_root()})",
    )  # fmt: skip
    azure = parser.add_argument_group(
        "Azure settings",
        "Flags win over the environment (AZURE_BATCH_ENDPOINT, AZURE_BATCH_ACCOUNT, AZURE_BATCH_ACCESS_KEY, "
        "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY), which win over "
        "batchpilot.toml. Keys are read from the environment or the file only: a key on a command line "
        "ends up in shell history and in `ps`. Without keys, Entra ID (DefaultAzureCredential) is used.",
    )
    azure.add_argument(
        "--config", type=Path, metavar="FILE", help="settings file (default: ./batchpilot.toml)"
    )
    azure.add_argument("--batch-endpoint", metavar="URL", help="https://ACCOUNT.REGION.batch.azure.com")
    azure.add_argument("--batch-account", metavar="NAME", help="Batch account name")
    azure.add_argument("--storage-account", metavar="NAME", help="Storage account name")
    azure.add_argument("--storage-blob-endpoint", metavar="URL", help="Blob endpoint (for Azurite)")


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=["console", "json"],
        help="console lines, or JSON lines for log shippers (default: console on a terminal, JSON otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"],
        help="stdout level (default: info, or warning under a progress bar); --log-file always gets info",
    )  # fmt: skip
    parser.add_argument("--log-file", type=Path, metavar="FILE", help="also write JSON log lines to FILE")


@dataclass(frozen=True, slots=True)
class _Outcome:
    summary: RunSummary
    out: Path
    backend: str  # what follows --backend in the commands the summary prints (cli_status.backend_arg)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            configure_logging(
                fmt=args.log_format,
                level=_log_level(args),
                log_file=_checked_log_file(args.log_file),
                # What status and logs print is their stdout (a JSON document for scripts): logs go aside.
                stream=sys.stderr if args.command in _READERS else None,
            )
            if args.command == "run":
                report = RunReport.from_args(args)  # an unwritable --report: exit 2 before anything
                try:
                    outcome = anyio.run(_run, args, report)
                except BaseException:
                    if report is not None:
                        report.finish(None, ["batchpilot: the run ended early (see the line below)"], _say)
                    raise
                code = _finish_run(outcome)
                if report is not None:
                    lines = summary_lines(outcome.summary, outcome.out, outcome.backend)
                    report.finish(outcome.summary, lines, _say)
                return code
            if args.command == "serve":
                _say(anyio.run(_serve, args))
                return EXIT_OK
            commands = {
                "plan": _plan,
                "cleanup": _cleanup,
                "check": _check,
                "report": _report,
                "status": _status,
                "logs": _logs,
                "emulator": emulator_cli.run_from_args,
            }
            anyio.run(commands[args.command], args)
            return EXIT_OK
        except BaseExceptionGroup as group:
            # Task groups wrap what their tasks raise; the user is owed the one error that explains it.
            raise _first_leaf(group) from None
    except ConfigError as exc:
        _say(f"batchpilot: error: {exc}")
        return EXIT_USAGE
    except BackendError as exc:
        # The remedy (`batchpilot cleanup ...`) is the command line's: backends only say what happened.
        _say(backend_error_line(exc, backend_arg(args)))
        return EXIT_FAILED
    except BatchpilotError as exc:
        _say(f"batchpilot: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("batchpilot: interrupted; nothing half-written is left; run the same command again to resume")
        return EXIT_INTERRUPTED


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for kind in (KeyboardInterrupt, ConfigError, BatchpilotError):
        if found := next((leaf for leaf in leaves if isinstance(leaf, kind)), None):
            return found
    return group


def _say(line: str) -> None:
    """A line to the terminal: secrets masked, and control characters (from a task, a file name or the
    service's message) written out, so none can act on the terminal."""
    print(escape_controls(redact_text(line)), file=sys.stderr)


def _checked_log_file(path: Path | None) -> Path | None:
    # A FIFO with no reader would hold the CLI before it starts; a folder or a socket cannot be appended to.
    if path is not None and (path.is_fifo() or path.is_dir() or path.is_socket()):
        raise ConfigError(f"the log file {path} is not a regular file; choose another --log-file")
    if path is not None and not os.access(path.parent if not path.exists() else path, os.W_OK):
        raise ConfigError(f"cannot write the log file {path}; choose a writable --log-file")
    return path


def _writable_folder(path: Path, *, create: bool = True) -> Path:
    """`path`, checked writable (one line, exit 2, when not). Without `create`, a folder that does not exist
    yet is left uncreated when the nearest folder above it is writable: the run creates it once it has
    started, so a run refused before anything is created (a retired image, say) leaves no empty folder."""
    try:
        if not create and not path.exists():
            parent = next(folder for folder in path.absolute().parents if folder.exists())
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
            return path
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write to --out {path} ({exc.strerror}); choose a writable folder"
        ) from None
    return path


def _check_out_apart(args: argparse.Namespace, out: Path, *, watch: Path | None = None) -> None:
    """ConfigError (one line, exit 2) when --out is inside the local state folder, where an output could
    replace a stored input, output or task file, or holds the watched folder, where each output would be
    taken as a new input, and its output too, without end."""
    where = os.path.realpath(out)
    if args.backend == "local":
        state = os.path.realpath(_state_root(args))
        if os.path.commonpath([state, where]) == state:
            raise ConfigError(
                f"--out {out} is inside the local state folder {state}, where an output could replace a "
                "stored file; choose a folder outside it"
            )
        if watch is not None and os.path.commonpath([state, os.path.realpath(watch)]) == state:
            raise ConfigError(
                f"--watch {watch} is inside the local state folder {state}: the service would take its own "
                "files as inputs; watch a folder outside it"
            )
    if watch is not None and os.path.commonpath([where, os.path.realpath(watch)]) == where:
        raise ConfigError(
            f"--out {out} holds --watch {watch}: each output would be taken as a new input, without end; "
            "choose an --out outside the watched folder"
        )


def _check_inputs_apart(args: argparse.Namespace, inputs: tuple[Path, ...] | BlobInputs) -> None:
    """ConfigError (one line, exit 2) when an input is inside the local state folder: a run would take its
    own files (task dirs, stored copies) as inputs, more of them run after run."""
    if args.backend != "local" or isinstance(inputs, BlobInputs):
        return
    state = os.path.realpath(_state_root(args))
    # Its task dirs, stored copies and tools; --sample's clips live in it too, and are inputs by design.
    own = tuple(os.path.join(state, folder) + os.sep for folder in ("batch", "storage", "tools"))
    inside = next((path for path in inputs if os.path.abspath(path).startswith(own)), None)
    if inside is not None:
        raise ConfigError(
            f"input {inside} is inside the local state folder {state}: the run would take its own files as "
            "inputs; give a --state-dir outside the inputs, or narrower inputs"
        )


def _state_root(args: argparse.Namespace) -> Path:
    """The local backend's state folder; ConfigError (one line) when it, or the nearest path above it that
    exists, is no folder (a file, /dev/null): it could never be created."""
    root: Path = args.state_dir if args.state_dir is not None else default_root()
    existing = next((path for path in (root, *root.absolute().parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(
            f"--state-dir {root}: {existing} is not a folder; give a folder (created if absent)"
        )
    return root


def _azure_settings(args: argparse.Namespace) -> AzureSettings:
    from .config import AzureSettings

    settings = AzureSettings.load(
        {
            "batch.endpoint": args.batch_endpoint,
            "batch.account": args.batch_account,
            "storage.account": args.storage_account,
            "storage.blob_endpoint": args.storage_blob_endpoint,
        },
        toml_path=args.config,
    )
    register_secrets(settings.secrets)
    return settings


def _backend(args: argparse.Namespace, *, requests: RequestTally | None = None) -> Backend:
    if args.backend == "azure":
        from .backends.azure import AzureBackend

        return AzureBackend(_azure_settings(args), requests=requests)
    root = _state_root(args)
    return LocalBackend(root, tool_dirs=_tool_dirs(root))


def _tool_dirs(root: Path) -> list[Path]:
    """The bundled ffmpeg, first on the tasks' PATH, so the shipped example (or any command calling ffmpeg)
    runs without installing it; a workload that needs no ffmpeg runs without it too."""
    try:
        return [ffmpeg.tool_dir(root)]
    except ToolNotFoundError:
        return []


def _shows_progress(args: argparse.Namespace) -> bool:
    return (
        args.command == "run"
        and sys.stderr.isatty()
        and (args.log_format or default_format(sys.stdout)) == "console"
    )


def _log_level(args: argparse.Namespace) -> str:
    # On a terminal the progress bar tells the story; a line per task state would bury it. Status and logs
    # print what they read: only errors besides.
    if args.command in _READERS:
        return str(args.log_level or "error")
    return str(args.log_level or ("warning" if _shows_progress(args) else "info"))


def _subscribers(args: argparse.Namespace) -> list[Subscriber]:
    subscribers: list[Subscriber] = [LogSubscriber()]
    if _shows_progress(args):
        subscribers.append(ProgressDisplay())
    return subscribers


async def _run(args: argparse.Namespace, report: RunReport | None = None) -> _Outcome:
    workload = await resolve_workload(args, _state_root(args))
    destination: Path | None = args.out or workload.download_to
    if destination is None:
        raise ConfigError("give --out DIR: where the outputs are written (or download_to in the workload)")
    out = _writable_folder(destination, create=False)
    _check_out_apart(args, out)
    _check_inputs_apart(args, workload.inputs)
    cleanup = workload.cleanup
    workload = replace(
        workload,
        download_to=out,
        # The flags add to what the workload file asks for and never undo a deletion it asks for;
        # --pool-after, a choice among three, replaces the file's.
        cleanup=CleanupPolicy(
            delete_input_container=cleanup.delete_input_container and not args.keep_inputs,
            delete_job=cleanup.delete_job or args.delete_job,
            pool=args.pool_after or cleanup.pool,
        ),
    )
    settings = _engine_settings(args)
    subscribers = _subscribers(args)
    async with Orchestrator(_backend(args), subscribers=subscribers, settings=settings) as orchestrator:
        summary = await orchestrator.run(workload, recorder=report.start(workload) if report else None)
    _writable_folder(out)  # there even when no output was fetched
    return _Outcome(summary, out, backend_arg(args))


async def _report(args: argparse.Namespace) -> None:
    await report_command(args, open_backend=lambda: _backend(args), say=_say)


async def _status(args: argparse.Namespace) -> None:
    await status_command(args, open_backend=lambda: _backend(args), resolve_job=_job_of)


async def _logs(args: argparse.Namespace) -> None:
    await logs_command(args, open_backend=lambda: _backend(args))


async def _job_of(args: argparse.Namespace, backend: Backend) -> tuple[str, frozenset[str] | None]:
    """The job `run` with these arguments would use, and the ids of its tasks for the inputs as they are
    now (None when the inputs cannot be staged, moved or unreadable since: then every task of the job)."""
    try:
        workload = await resolve_workload(args, _state_root(args))
    except NothingToRunError:
        raise ConfigError(
            "give --job JOB, or the arguments `run` was given (INPUTS, --workload FILE, --command)"
        ) from None
    try:
        staged = await stage_inputs(workload, backend.storage)
    except (ConfigError, BackendError):
        return workload.job_id, None
    return workload.job_id, frozenset(item.task_id for item in staged)


async def _serve(args: argparse.Namespace) -> str:
    """Run the service until SIGTERM or SIGINT; returns its summary line. A second signal stops at once."""
    if args.watch is not None and not args.watch.is_dir():
        raise ConfigError(f"--watch {args.watch} is not a folder; create it or give another")
    if args.prefix and args.watch is not None:
        raise ConfigError("--prefix goes with --watch-container")
    report = RollingReport.from_args(args)  # an unwritable --report: exit 2 before anything
    _check_out_apart(args, args.out, watch=args.watch)
    workload, pattern = await resolve_service_workload(args)
    workload = replace(
        workload,
        download_to=_writable_folder(args.out),
        # The job, the pool and the input container serve every batch: nothing is deleted after one.
        cleanup=CleanupPolicy(delete_input_container=False, delete_job=False, pool=PoolPolicy.KEEP),
        job_lifetime=JobLifetime.SERVICE,
    )
    from .metrics import Metrics, serve_metrics
    from .service import ContainerSource, FolderSource, Service, Source
    from .service import summary_line as service_summary_line

    requests = RequestTally()
    metrics = Metrics(requests if args.backend == "azure" else None)
    settings = _engine_settings(args)
    subscribers: list[Subscriber] = [*_subscribers(args), metrics]
    backend = _backend(args, requests=requests)
    async with Orchestrator(backend, subscribers=subscribers, settings=settings) as orchestrator:
        # Before the first batch creates the pool: a refused image stops the service (exit 2), never only
        # one batch; a warning is logged. Each batch's run reuses this verdict.
        await orchestrator.check_pool_image(workload.pool)
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_on_signals, stop)
            if args.metrics_port:
                await group.start(serve_metrics, metrics, orchestrator, args.metrics_port)
            source: Source
            if args.watch is not None:
                source = FolderSource(args.watch, pattern)
            else:
                source = ContainerSource(
                    orchestrator.backend.storage, args.watch_container, args.prefix, pattern
                )
                await _container_exists(source)
            service = Service(
                orchestrator, workload, source, metrics, idle_shutdown=args.idle_shutdown,
                new_recorder=report.start(workload) if report else None,
            )  # fmt: skip
            if report is not None:
                group.start_soon(report.keep_writing, lambda: service_summary_line(metrics, workload))
            await service.run(stop)
            if report is not None:
                await report.write(lambda: service_summary_line(metrics, workload))
            group.cancel_scope.cancel()
    return service_summary_line(metrics, workload)


async def _container_exists(source: ContainerSource) -> None:
    try:
        await source.look()
    except NotFoundError:
        raise ConfigError(
            f"--watch-container {source.container}: no such container; create it or give another"
        ) from None


async def _stop_on_signals(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                raise KeyboardInterrupt
            structlog.get_logger("batchpilot").info("service_signal", signal=signal.Signals(signum).name)
            stop.set()


async def _plan(args: argparse.Namespace) -> None:
    workload = await resolve_workload(args, _state_root(args))
    if args.out is not None:
        workload = replace(workload, download_to=args.out)
    if args.backend == "local" and workload.pool.container_images:
        container_runtime()  # the same check `run` makes before it creates anything
    if isinstance(workload.inputs, BlobInputs):
        async with _backend(args) as backend:  # listing blobs creates nothing
            staged = await stage_inputs(workload, backend.storage)
    else:
        staged = await stage_inputs(workload, None)
    image_line = None
    if args.backend == "azure":
        # As `run` would before creating anything: a refusal or an unreachable service stops the plan.
        from .engine import check_pool_image
        from .images import describe

        async with _backend(args) as backend:
            image_line = describe(workload.pool, await check_pool_image(backend.compute, workload.pool))
    for line in plan_lines(workload, staged, backend=args.backend):
        print(line)
    if image_line is not None:
        print(f"  {image_line[0].lower()}{image_line[1:]}")


async def _check(args: argparse.Namespace) -> None:
    if args.backend != "azure":
        root = _state_root(args)
        _say(f"local backend: state in {root}; ffmpeg at {ffmpeg.find_ffmpeg()}; {os.cpu_count()} cores")
        return
    from .backends.azure.check import check as azure_check

    pool = await resolve_pool(args)
    for line in await azure_check(_azure_settings(args), pool=pool):
        _say(line)


async def _cleanup(args: argparse.Namespace) -> None:
    if not (args.job or args.pool or args.container):
        raise ConfigError("nothing to clean up: give --job, --pool and/or --container")
    # Names, never paths: each is checked (Batch's and Storage's rules) before anything is deleted.
    if args.job:
        check_batch_id("job", args.job)
    if args.pool:
        check_batch_id("pool", args.pool)
    for container in args.container:
        check_container_name(container)
    log = structlog.get_logger("batchpilot")
    if args.backend == "local" and (args.pool or args.container):
        await anyio.to_thread.run_sync(_check_no_job_running, _state_root(args))
    async with _backend(args) as backend:
        if args.job:
            await backend.compute.delete_job(args.job)
            log.info("resource_deleted", resource="job", resource_id=args.job)
        if args.pool:
            await backend.compute.delete_pool(args.pool)
            log.info("resource_deleted", resource="pool", resource_id=args.pool)
        for container in args.container:
            await backend.storage.delete_container(container)
            log.info("resource_deleted", resource="container", resource_id=container)


def _check_no_job_running(root: Path) -> None:
    """StateInUseError (one line, naming the process) when a process runs a job of the local state at `root`:
    its pools and containers serve that job, and deleting one under it fails its tasks. Blocking."""
    from .files import FolderLock

    jobs = root / "batch" / "jobs"
    for directory in sorted(jobs.iterdir()) if jobs.is_dir() else ():
        if directory.is_dir():
            what = f"job {directory.name}, which uses the local pools and containers: its state"
            FolderLock(directory, what=what, create=False).release()


def _finish_run(outcome: _Outcome) -> int:
    for line in summary_lines(outcome.summary, outcome.out, outcome.backend):
        _say(line)
    # Pools cost money for as long as they have nodes: what the run leaves behind is said, with its remedy.
    for kept in outcome.summary.kept:
        if kept.resource == "pool":
            delete = cleanup_command(outcome.backend, pool=kept.resource_id)  # with the run's --state-dir
            _say(f"  pool:    {kept.resource_id}: {kept.reason}. Delete it now: {delete}")
    return EXIT_OK if outcome.summary.ok else EXIT_FAILED


def _count(n: int, noun: str) -> str:
    """`1 failed task`, `2 failed tasks`."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _added(summary: RunSummary) -> str:
    """`N added`, with how many of them are new because their definition changed."""
    if not summary.tasks_changed:
        return f"{summary.tasks_added} added"
    because = "its definition" if summary.tasks_changed == 1 else "their definitions"
    return f"{summary.tasks_added} added ({summary.tasks_changed} because {because} changed)"


def summary_lines(summary: RunSummary, out: Path, backend: str) -> list[str]:
    if summary.ok:
        verdict = "done"
    elif summary.timed_out:
        verdict = "TIMED OUT"
    elif summary.lost_contact:
        verdict = "LOST CONTACT"
    else:
        verdict = "FAILED"
    lines = [
        f"batchpilot: {verdict}: {summary.succeeded} of {summary.tasks} tasks succeeded"
        f" in {summary.elapsed_s:.1f} s (job {summary.job_id})",
        f"  inputs:  {summary.uploaded} uploaded, {summary.upload_skipped} unchanged and skipped",
        f"  tasks:   {_added(summary)}, {summary.tasks_existing} already in the job and skipped"
        + (f", {_count(summary.tasks_retried, 'failed task')} retried" if summary.tasks_retried else ""),
        f"  outputs: {summary.downloaded} downloaded to {out}, {summary.download_skipped} already there"
        + (f", {summary.download_failed} FAILED" if summary.download_failed else ""),
    ]
    lines.extend(f"  warning: {one_line(warning)}" for warning in summary.warnings)
    # What a task or the service wrote is escaped and capped; a run of thousands of failures lists a few.
    for failed in summary.failed[:SUMMARY_FAILED_SHOWN]:
        code = f"exit code {failed.exit_code}" if failed.exit_code is not None else "no exit code"
        lines.append(f"  failed:  {failed.task_id} ({code}): {one_line(failed.reason)}")
        tail = failed.stderr_tail.splitlines()[-SUMMARY_TAIL_LINES:]
        lines.extend(f"           | {one_line(line)}" for line in tail)
    if len(summary.failed) > SUMMARY_FAILED_SHOWN:
        lines.append(
            f"  failed:  ... and {len(summary.failed) - SUMMARY_FAILED_SHOWN:,} more: "
            f"batchpilot status --backend {backend} --job {summary.job_id}"
        )
    if summary.timed_out:
        lines.append(
            "  the run hit --timeout; everything is left in place: run the same command again to resume"
        )
    elif summary.lost_contact:
        lines.append(
            f"  {summary.lost_contact}; everything is left in place: run the same command again to resume"
        )
    elif summary.download_failed and summary.succeeded == summary.tasks:
        lines.append(
            f"  outputs missing: {summary.download_failed} could not be saved (output_download_failed in the"
            " log says why); fix that and run the same command again to fetch them: no task runs again"
        )
    elif not summary.ok:
        lines.append(
            "  the job is kept: run the same command again to retry the failed tasks (fix or replace their"
            " inputs first: changed inputs or commands get new tasks), or remove it:"
            f" batchpilot cleanup --backend {backend} --job {summary.job_id}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
