"""Which workload a `batchpilot run` or `batchpilot plan` command means, and the flags that shape it.

In order: `--sample N` (the shipped ffmpeg example on N generated clips), `--workload FILE`, a one-off
`--command` (with `--outputs`), the `[workload]` table of batchpilot.toml (or `--config FILE`), and last the
shipped ffmpeg example on the INPUTS given, so the tutorial's `batchpilot run VIDEOS --out MP3S` still works.
Flags given on the command line win over the file; the file wins over the per-backend defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import anyio

from .config import DEFAULT_TOML
from .errors import ConfigError, NothingToRunError
from .spec import PoolSpec, Workload, batch_id
from .workload_file import Defaults, load_workload, one_off_workload, read_workload_table
from .workloads import ffmpeg

# The tutorial's pool on Azure: five spot nodes.
AZURE_DEFAULT_SPOT_NODES = 5


def add_workload_arguments(
    parser: argparse.ArgumentParser,
    *,
    positive_int: Callable[[str], int],
    non_negative_int: Callable[[str], int],
    duration: Callable[[str], timedelta],
    service: bool = False,
) -> None:
    """The flags `run`, `plan` and (without INPUTS and --sample) `serve` share. The argparse type converters
    come from the CLI module."""
    if not service:
        parser.add_argument(
            "inputs", nargs="?", type=Path, metavar="INPUTS",
            help="a folder, a file or a quoted glob of inputs; replaces the workload's own inputs",
        )  # fmt: skip
    parser.add_argument(
        "--workload", type=Path, metavar="FILE",
        help="a TOML file with a [workload] table: inputs, command, outputs, pool, constraints, container",
    )  # fmt: skip
    parser.add_argument(
        "--command", dest="command_template", metavar="TEMPLATE",
        help="a one-off command per input, e.g. 'gzip -k {input}'; placeholders: {input} {input_name} "
        "{stem} {output_dir} {task_id}",
    )  # fmt: skip
    parser.add_argument(
        "--outputs", action="append", default=[], metavar="PATTERN",
        help="with --command: output files to fetch, e.g. '*.gz' (repeatable); a pattern that matches no "
        "file fails its task",
    )  # fmt: skip
    parser.add_argument(
        "--optional-outputs", action="append", default=[], metavar="PATTERN",
        help="with --command: output files to fetch if the command wrote them (repeatable)",
    )  # fmt: skip
    if not service:
        parser.add_argument(
            "--sample", type=positive_int, metavar="N",
            help="the shipped ffmpeg example (MP4 to MP3) on N generated MP4s",
        )  # fmt: skip
    parser.add_argument("--name", help="run name; the job id derives from it (default: from the workload)")
    parser.add_argument(
        "--nodes", type=non_negative_int, metavar="N",
        help="dedicated nodes (local: parallel slots, default: the machine's cores; Azure default: 0); the "
        "pool needs at least one node of either kind",
    )  # fmt: skip
    parser.add_argument(
        "--spot-nodes", type=non_negative_int, metavar="N",
        help="spot nodes (Azure; with neither flag nor a workload setting, the tutorial's 5 spot nodes)",
    )  # fmt: skip
    parser.add_argument(
        "--no-retry-failed", dest="retry_failed", action="store_false",
        help="do not retry the tasks of the job that failed (by default, running the same command again "
        "retries them; workload key retry_failed = false)",
    )  # fmt: skip
    parser.add_argument("--vm-size", help="node size on Azure (default: Standard_D2s_v5)")
    parser.add_argument("--task-slots", type=positive_int, metavar="N", help="tasks per node at once")
    parser.add_argument(
        "--timeout", type=duration, metavar="DURATION",
        help="give up after this long, leaving everything in place to resume (default: 1h)",
    )  # fmt: skip


def _defaults(args: argparse.Namespace) -> Defaults:
    dedicated, spot = (os.cpu_count() or 1, 0) if args.backend == "local" else (0, AZURE_DEFAULT_SPOT_NODES)
    return Defaults(
        name="run",
        pool=PoolSpec(
            batch_id("batchpilot", args.backend, "pool"), dedicated_nodes=dedicated, spot_nodes=spot
        ),
    )


async def resolve_service_workload(args: argparse.Namespace) -> tuple[Workload, str]:
    """What `serve` runs on each batch of new inputs (its inputs left empty, filled per batch), and the
    file-name pattern of the inputs to take from the watched folder or container: `--workload FILE`,
    `--command`, the `[workload]` of batchpilot.toml, else the shipped ffmpeg example (`*.mp4`)."""
    defaults = _defaults(args)
    watch: Path | None = args.watch
    if args.command_template is not None:
        if args.workload:
            raise ConfigError("give either --workload FILE or --command TEMPLATE, not both")
        workload = await anyio.to_thread.run_sync(
            lambda: one_off_workload(
                args.command_template,
                tuple(args.outputs),
                None,
                defaults,
                inputs=(),
                optional_outputs=tuple(args.optional_outputs),
            )
        )
        pattern = "*"
    else:
        if args.outputs or args.optional_outputs:
            raise ConfigError("--outputs goes with --command; a workload file lists its outputs itself")
        path = args.workload or await _workload_in_settings(args.config) or ffmpeg.WORKLOAD_FILE
        table = await anyio.to_thread.run_sync(read_workload_table, path)
        inputs = (table or {}).get("inputs", "*")
        if not isinstance(inputs, str):
            raise ConfigError(
                f"{path}: workload.inputs names blobs; `serve --watch` takes files from a folder, so give"
                ' the workload a file pattern such as "*.mp4"'
            )
        pattern = Path(inputs).name
        workload = await _load(path, defaults, inputs=())
    # One job per watched folder or container, the same on every start, so a restart resumes it.
    if watch is not None:
        name = _name_for(f"{workload.name}-serve", watch)
    else:
        where = f"{args.watch_container}/{args.prefix}"
        name = batch_id(f"{workload.name}-serve", args.watch_container, unique_by=where)
    workload = _renamed(workload, name)
    return _with_flags(workload, args), pattern


async def resolve_workload(args: argparse.Namespace, state_root: Path) -> Workload:
    """The workload the command line means, with its flags applied. Reads files in a worker thread."""
    defaults = _defaults(args)
    inputs_from: Path | None = args.inputs
    if args.sample is not None:
        if args.workload or args.command_template or inputs_from:
            raise ConfigError(
                "--sample runs the shipped ffmpeg example; drop INPUTS, --workload and --command"
            )
        samples = await ffmpeg.make_samples(args.sample, state_root / "samples")
        workload = await _load(ffmpeg.WORKLOAD_FILE, defaults, inputs=samples)
        workload = _renamed(workload, f"{workload.name}-sample-{args.sample}")
    elif args.command_template is not None:
        if args.workload:
            raise ConfigError("give either --workload FILE or --command TEMPLATE, not both")
        if inputs_from is None:
            raise ConfigError("--command needs INPUTS: a folder, a file or a quoted glob")
        workload = await anyio.to_thread.run_sync(
            lambda: one_off_workload(
                args.command_template,
                tuple(args.outputs),
                inputs_from,
                defaults,
                optional_outputs=tuple(args.optional_outputs),
            )
        )
        workload = _renamed(workload, _name_for("run", inputs_from))
    else:
        if args.outputs or args.optional_outputs:
            raise ConfigError("--outputs goes with --command; a workload file lists its outputs itself")
        path = args.workload or await _workload_in_settings(args.config)
        if path is None and inputs_from is None:
            raise NothingToRunError(
                "nothing to run: give INPUT_DIR, --sample N, --workload FILE or --command (see --help)"
            )
        workload = await _load(path or ffmpeg.WORKLOAD_FILE, defaults, inputs_from=inputs_from)
        if inputs_from is not None:
            # The same workload on another folder is another job, so their tasks never mix.
            workload = _renamed(workload, _name_for(workload.name, inputs_from))
    return _with_flags(workload, args)


async def _load(
    path: Path, defaults: Defaults, *, inputs: tuple[Path, ...] | None = None, inputs_from: Path | None = None
) -> Workload:
    named = replace(defaults, name=path.stem)  # a file without a name is named after itself
    return await anyio.to_thread.run_sync(
        lambda: load_workload(path, named, inputs=inputs, inputs_from=inputs_from)
    )


async def _workload_in_settings(config: Path | None) -> Path | None:
    """batchpilot.toml (or --config FILE) when it has a [workload] table."""
    path = config or DEFAULT_TOML
    if config is None and not await anyio.Path(path).is_file():
        return None
    table = await anyio.to_thread.run_sync(read_workload_table, path)
    return path if table is not None else None


def _name_for(base: str, inputs_from: Path) -> str:
    where = inputs_from.resolve()
    return batch_id(base, where.name if where.is_dir() else where.stem, unique_by=str(where))


def _renamed(workload: Workload, name: str) -> Workload:
    # Empty derived names are derived again from the new name.
    return replace(workload, name=name, job_id="", input_container="", output_container="")


def _with_flags(workload: Workload, args: argparse.Namespace) -> Workload:
    pool = workload.pool
    if args.nodes is not None or args.spot_nodes is not None:
        pool = replace(pool, dedicated_nodes=args.nodes or 0, spot_nodes=args.spot_nodes or 0)
    if args.vm_size:
        pool = replace(pool, vm_size=args.vm_size)
    if args.task_slots is not None:
        pool = replace(pool, task_slots_per_node=args.task_slots)
    timeout: timedelta = args.timeout or workload.timeout
    workload = replace(workload, pool=pool, timeout=timeout)
    if not args.retry_failed:
        workload = replace(workload, retry_failed=False)
    return _renamed(workload, args.name) if args.name else workload


async def resolve_pool(args: argparse.Namespace) -> PoolSpec:
    """The pool `run` would use, for `check`: that of --workload FILE, else of batchpilot.toml's [workload]
    (or --config FILE's), else of the shipped ffmpeg example. Its inputs are not looked for."""
    path = args.workload or await _workload_in_settings(args.config) or ffmpeg.WORKLOAD_FILE
    workload = await _load(path, _defaults(args), inputs=())
    return workload.pool
