"""Workload files: the `[workload]` table of a TOML file, read into the same frozen dataclasses as the API.

    [workload]
    name = "gzip-logs"                   # the job id derives from it (default: the file's name)
    inputs = "logs/*.log"                # a glob, relative to this file's folder, or blobs already in
                                         # storage: { container = "raw-logs", prefix = "2024/" }
    command = "gzip -k {input}"          # placeholders: {input} {input_name} {stem} {output_dir} {task_id}
    outputs = ["{input_name}.gz"]        # file patterns relative to output_dir, fetched to download_to;
                                         # each must match a file, or the task fails, unless written
                                         # { pattern = "{stem}.log", optional = true }

The optional tables `[workload.pool]`, `[workload.constraints]`, `[workload.container]` and
`[workload.cleanup]` hold the rest (see `KEYS`). Every mistake is one `ConfigError` line naming the file, the
line and the key: TOML syntax errors carry tomllib's own position, semantic ones the line where the key is
written (found by scanning the text, since tomllib keeps no positions). The same reader serves `--command`
one-offs, with the flag named instead of a line.

Reading is blocking (the file, and the glob that finds the inputs): call it from a worker thread.
"""

from __future__ import annotations

import enum
import errno
import glob
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar

from .attempts import RETRY_COUNT_RULE, is_retry_count
from .errors import ConfigError
from .files import read_small_file
from .spec import (
    PLACEHOLDERS,
    BlobInputs,
    CleanupPolicy,
    ContainerSettings,
    ImageReference,
    PoolPolicy,
    PoolSpec,
    StartTask,
    TaskConstraints,
    TaskTemplate,
    Workload,
    template_fields,
)

TABLE = "workload"
_Choice = TypeVar("_Choice", bound=enum.StrEnum)

# Every key a workload file may hold, by table; anything else is a mistake worth naming (a typo would
# otherwise be silently ignored).
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")

KEYS: Mapping[str, frozenset[str]] = {
    "workload.inputs": frozenset({"container", "prefix"}),
    "workload": frozenset(
        {
            "name", "inputs", "command", "outputs", "output_dir", "download_to", "timeout", "environment",
            "pool", "constraints", "container", "cleanup", "retry_failed",
        }
    ),
    "workload.pool": frozenset(
        {
            "id", "vm_size", "image", "node_agent_sku_id", "dedicated_nodes", "spot_nodes",
            "task_slots_per_node", "start_task",
        }
    ),
    "workload.pool.image": frozenset({"publisher", "offer", "sku", "version"}),
    "workload.pool.start_task": frozenset(
        {"command_line", "run_elevated", "wait_for_success", "max_retries"}
    ),
    "workload.constraints": frozenset({"max_wall_clock", "max_retries", "retention"}),
    "workload.container": frozenset({"image", "run_options"}),
    "workload.cleanup": frozenset({"delete_input_container", "delete_job", "pool"}),
}  # fmt: skip

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Far beyond any run, and far enough from timedelta's limit that sums such as a timeout plus a task's max
# wall clock stay in range.
MAX_DURATION = timedelta(days=3650)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_LINE = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_TABLE_LINE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a run uses for anything the workload does not say: the CLI fills these per backend."""

    name: str
    pool: PoolSpec
    timeout: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class _Source:
    """Where the workload's text came from, to point at a key: a file and its text, or a flag."""

    origin: str
    text: str = ""

    def error(self, key: str, problem: str) -> ConfigError:
        line = _line_of(self.text, key) if self.text else None
        where = f"{self.origin}:{line}" if line else self.origin
        return ConfigError(f"{where}: {key}: {problem}")


def read_workload_table(path: Path) -> dict[str, Any] | None:
    """The `[workload]` table of a TOML file, or None when the file has none. Raises ConfigError if the file
    cannot be read or is not TOML."""
    text = _read_text(path)
    table = _parse(text, str(path)).get(TABLE)
    return table if isinstance(table, dict) else None


def load_workload(
    path: Path, defaults: Defaults, *, inputs: tuple[Path, ...] | None = None, inputs_from: Path | None = None
) -> Workload:
    """The workload in `path`'s `[workload]` table. `inputs` replaces the file's inputs outright (generated
    samples); `inputs_from` (a folder or a glob from the command line) replaces where they are looked for,
    a folder keeping the file's file-name pattern (`*.mp4`)."""
    text = _read_text(path)
    document = _parse(text, str(path))
    if not isinstance(document.get(TABLE), dict):
        raise ConfigError(f"{path}: no [{TABLE}] table; start the workload with a line `[{TABLE}]`")
    source = _Source(str(path), text)
    return _build(document[TABLE], source, path.parent, defaults, inputs, inputs_from)


def one_off_workload(
    command: str,
    outputs: tuple[str, ...],
    inputs_from: Path | None,
    defaults: Defaults,
    *,
    inputs: tuple[Path, ...] | None = None,
    optional_outputs: tuple[str, ...] = (),
) -> Workload:
    """`batchpilot run INPUTS --command '...' --outputs '*.mp3'`: the same rules as a file, named by flag.
    `inputs` replaces the inputs outright, as in `load_workload`; `optional_outputs` (--optional-outputs)
    are output patterns that may match no file."""
    patterns: list[Any] = [*outputs, *({"pattern": p, "optional": True} for p in optional_outputs)]
    table: dict[str, Any] = {"command": command, "outputs": patterns}
    return _build(table, _Source("--command/--outputs"), Path.cwd(), defaults, inputs, inputs_from)


# --- building -----------------------------------------------------------------------------------------------


def _build(
    table: dict[str, Any],
    source: _Source,
    base: Path,
    defaults: Defaults,
    inputs: tuple[Path, ...] | None,
    inputs_from: Path | None,
) -> Workload:
    reader = _Reader(source)
    reader.check_keys(TABLE, table)
    template = _template(table, reader)
    pool = _pool(reader.table(table, "workload.pool"), reader, defaults.pool)
    if template.container is not None and not pool.container_images:
        pool = replace(pool, container_images=(template.container.image,))
    sources: tuple[Path, ...] | BlobInputs | None = inputs
    input_root: Path | None = None
    if sources is None:
        if isinstance(table.get("inputs"), dict) and inputs_from is None:
            sources = _blob_inputs(reader.table(table, "workload.inputs"), reader)
        else:
            pattern = reader.string(table, "workload.inputs", required=inputs_from is None)
            sources = _find_inputs(pattern, base, inputs_from, source)
            input_root = _input_root(pattern, base, inputs_from)
    download_to = reader.string(table, "workload.download_to")
    cleanup = reader.table(table, "workload.cleanup")
    environment = reader.table(table, "workload.environment", check=False)
    for key in environment:
        # The variable name goes into the task's environment as is: the OS refuses `=` and NUL in it.
        if not key or "=" in key or "\0" in key:
            raise source.error(f"workload.environment.{_key_text(key)}", "not a usable variable name")
        reader.string(environment, f"workload.environment.{_key_text(key)}", name=key)
    timeout = reader.duration(table, "workload.timeout")
    return Workload(
        name=reader.string(table, "workload.name") or defaults.name,
        inputs=sources,
        template=template,
        pool=pool,
        download_to=(base / download_to) if download_to else None,
        cleanup=CleanupPolicy(
            delete_input_container=reader.boolean(cleanup, "workload.cleanup.delete_input_container", True),
            delete_job=reader.boolean(cleanup, "workload.cleanup.delete_job", False),
            pool=reader.choice(cleanup, "workload.cleanup.pool", PoolPolicy, PoolPolicy.KEEP),
        ),
        timeout=timeout or defaults.timeout,
        environment=tuple(sorted(environment.items())),
        input_root=input_root,
        retry_failed=reader.boolean(table, "workload.retry_failed", True),
    )


def _blob_inputs(table: dict[str, Any], reader: _Reader) -> BlobInputs:
    """`inputs = { container = "raw", prefix = "2024/" }`: blobs already in storage."""
    container = reader.string(table, "workload.inputs.container", required=True)
    if not _CONTAINER_NAME.fullmatch(container):
        raise reader.source.error(
            "workload.inputs.container",
            "must be a container name: 3-63 lowercase letters, digits and hyphens",
        )
    return BlobInputs(container, reader.string(table, "workload.inputs.prefix"))


def _template(table: dict[str, Any], reader: _Reader) -> TaskTemplate:
    command = reader.string(table, "workload.command", required=True)
    outputs, optional = reader.outputs(table, "workload.outputs")
    allowed = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
    # Checked here, key by key, so the message points at the line; TaskTemplate checks again for the API.
    for key, text in [("workload.command", command)] + [("workload.outputs", p) for p in outputs]:
        try:
            unknown = sorted(set(template_fields(text)) - PLACEHOLDERS)
        except ConfigError as exc:
            raise reader.source.error(key, str(exc)) from None
        if unknown:
            raise reader.source.error(key, f"unknown placeholder {{{unknown[0]}}}; use one of {allowed}")
    limits = reader.table(table, "workload.constraints")
    container = reader.table(table, "workload.container")
    image = reader.string(container, "workload.container.image", required=bool(container))
    try:
        return TaskTemplate(
            command=command,
            outputs=outputs,
            optional_outputs=optional,
            output_dir=reader.string(table, "workload.output_dir") or ".",
            constraints=TaskConstraints(
                max_wall_clock=reader.duration(limits, "workload.constraints.max_wall_clock"),
                max_task_retry_count=reader.retry_count(limits, "workload.constraints.max_retries", 0),
                retention=reader.duration(limits, "workload.constraints.retention"),
            ),
            container=ContainerSettings(
                image, reader.string(container, "workload.container.run_options") or ""
            )
            if container
            else None,
        )
    except ConfigError as exc:
        raise reader.source.error("workload.output_dir", str(exc)) from None


def _pool(table: dict[str, Any], reader: _Reader, default: PoolSpec) -> PoolSpec:
    image = reader.table(table, "workload.pool.image")
    dedicated = reader.integer(table, "workload.pool.dedicated_nodes", None, minimum=0)
    spot = reader.integer(table, "workload.pool.spot_nodes", None, minimum=0)
    if dedicated is None and spot is None:
        dedicated, spot = default.dedicated_nodes, default.spot_nodes
    try:
        return PoolSpec(
            pool_id=reader.string(table, "workload.pool.id") or default.pool_id,
            vm_size=reader.string(table, "workload.pool.vm_size") or default.vm_size,
            image=ImageReference(
                publisher=reader.string(image, "workload.pool.image.publisher") or default.image.publisher,
                offer=reader.string(image, "workload.pool.image.offer") or default.image.offer,
                sku=reader.string(image, "workload.pool.image.sku") or default.image.sku,
                version=reader.string(image, "workload.pool.image.version") or default.image.version,
            )
            if image
            else default.image,
            node_agent_sku_id=reader.string(table, "workload.pool.node_agent_sku_id")
            or default.node_agent_sku_id,
            # One count given means the other is zero: a default added to it would be a surprise bill.
            dedicated_nodes=dedicated or 0,
            spot_nodes=spot or 0,
            task_slots_per_node=reader.integer(
                table, "workload.pool.task_slots_per_node", default.task_slots_per_node, minimum=1
            )
            or 1,
            start_task=_start_task(table, reader) or default.start_task,
        )
    except ConfigError as exc:
        raise reader.source.error("workload.pool", str(exc)) from None


def _start_task(pool: dict[str, Any], reader: _Reader) -> StartTask | None:
    key = "workload.pool.start_task"
    value = pool.get("start_task")
    if value is None:
        return None
    if isinstance(value, str):
        return StartTask(value)
    table = reader.table(pool, key)
    return StartTask(
        command_line=reader.string(table, f"{key}.command_line", required=True),
        run_elevated=reader.boolean(table, f"{key}.run_elevated", True),
        wait_for_success=reader.boolean(table, f"{key}.wait_for_success", True),
        max_task_retry_count=reader.retry_count(table, f"{key}.max_retries", 1),
    )


def _find_inputs(pattern: str, base: Path, inputs_from: Path | None, source: _Source) -> tuple[Path, ...]:
    if inputs_from is not None:
        if inputs_from.is_dir():
            # A folder on the command line keeps the workload's file-name pattern (`*.mp4`), or takes all.
            name_pattern = Path(pattern).name if pattern else "*"
            where = f"matching {name_pattern} in {inputs_from}"
            found = _files(str(inputs_from.joinpath(name_pattern)))
        elif glob.has_magic(str(inputs_from)):
            where, found = f"matching {inputs_from}", _files(str(inputs_from))
        elif inputs_from.is_file():
            where, found = str(inputs_from), (inputs_from,)
        else:
            raise ConfigError(f"input folder {inputs_from} does not exist; give a folder, a file or a glob")
        if not found:
            raise ConfigError(f"no files {where}; add some, or give other inputs")
        return found
    found = _files(pattern if Path(pattern).is_absolute() else str(base / pattern))
    if not found:
        raise source.error("workload.inputs", f"no files match {pattern!r} (relative to {base})")
    return found


def _input_root(pattern: str | None, base: Path, inputs_from: Path | None) -> Path:
    """The folder inputs keep their folders below: a folder given, or the part of a glob before its first
    wildcard (`logs/**/*.log`: `logs`), or a file's own folder."""
    where = inputs_from if inputs_from is not None else Path(pattern or ".")
    if inputs_from is None and not where.is_absolute():
        where = base / where
    if inputs_from is not None and where.is_dir():
        return where
    fixed: list[str] = []
    for part in where.parts:
        if glob.has_magic(part):
            return Path(*fixed) if fixed else Path(".")
        fixed.append(part)
    return where.parent


def _files(pattern: str) -> tuple[Path, ...]:
    return tuple(sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()))


# --- reading values -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reader:
    """Typed access to a TOML table's values; each wrong type or unknown key becomes one line."""

    source: _Source

    def check_keys(self, name: str, table: Mapping[str, Any]) -> None:
        allowed = KEYS[name]
        for key in table:
            if key not in allowed:
                raise self.source.error(
                    f"{name}.{_key_text(key)}", f"unknown key; [{name}] takes {', '.join(sorted(allowed))}"
                )

    def table(self, parent: Mapping[str, Any], key: str, *, check: bool = True) -> dict[str, Any]:
        value = parent.get(_last(key))
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.source.error(key, f"must be a table, not {_kind(value)}")
        if check:
            self.check_keys(key, value)
        return value

    def string(
        self, table: Mapping[str, Any], key: str, *, required: bool = False, name: str | None = None
    ) -> str:
        """`name` is the key in `table` when `key` (as shown) is not simply its last part."""
        value = table.get(_last(key) if name is None else name)
        if value is None:
            if required:
                raise self.source.error(key, "missing; it is required")
            return ""
        if not isinstance(value, str):
            raise self.source.error(key, f"must be a non-empty string, not {_kind(value)}")
        if required and not value.strip():
            raise self.source.error(key, "must not be empty")
        if "\0" in value:
            # TOML allows "\u0000"; no command line, path or variable can hold it.
            raise self.source.error(key, "must not contain a NUL character (\\u0000)")
        return value

    def strings(self, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(_last(key), [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item and "\0" not in item for item in value
        ):
            raise self.source.error(key, 'must be a list of file patterns, like ["*.gz"]')
        return tuple(value)

    def outputs(self, table: Mapping[str, Any], key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Output patterns, each a string or `{ pattern = "...", optional = true }`: (all, the optional)."""
        value = table.get(_last(key), [])
        items = [value] if isinstance(value, str | dict) else value
        problem = 'must be a list of file patterns, like ["*.gz"] or [{ pattern = "*.log", optional = true }]'
        if not isinstance(items, list):
            raise self.source.error(key, problem)
        patterns: list[str] = []
        optional: list[str] = []
        for item in items:
            if isinstance(item, dict):
                if set(item) - {"pattern", "optional"} or not isinstance(item.get("optional", False), bool):
                    raise self.source.error(key, problem)
                pattern = item.get("pattern")
                if item.get("optional", False) and isinstance(pattern, str):
                    optional.append(pattern)
            else:
                pattern = item
            if not isinstance(pattern, str) or not pattern or "\0" in pattern:
                raise self.source.error(key, problem)
            patterns.append(pattern)
        return tuple(patterns), tuple(optional)

    def integer(self, table: Mapping[str, Any], key: str, default: int | None, *, minimum: int) -> int | None:
        value = table.get(_last(key))
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.source.error(key, f"must be a whole number of at least {minimum}, not {_shown(value)}")
        return value

    def retry_count(self, table: Mapping[str, Any], key: str, default: int) -> int:
        """A maxTaskRetryCount: -1 (retry without limit, as Batch) or 0..100."""
        value = table.get(_last(key))
        if value is None:
            return default
        if not is_retry_count(value):
            raise self.source.error(key, f"{RETRY_COUNT_RULE}, not {_shown(value)}")
        return int(value)

    def choice(self, table: Mapping[str, Any], key: str, options: type[_Choice], default: _Choice) -> _Choice:
        value = table.get(_last(key), default.value)
        if not isinstance(value, str) or value not in {option.value for option in options}:
            names = ", ".join(f'"{option.value}"' for option in options)
            raise self.source.error(key, f"must be one of {names}, not {_shown(value)}")
        return options(value)

    def boolean(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(_last(key), default)
        if not isinstance(value, bool):
            raise self.source.error(key, f"must be true or false, not {_shown(value)}")
        return value

    def duration(self, table: Mapping[str, Any], key: str) -> timedelta | None:
        value = table.get(_last(key))
        if value is None:
            return None
        duration = parse_duration(value)
        if duration is None:
            raise self.source.error(
                key,
                f'must be a duration like 90, "90s", "15m", "2h" or "1d", of at most {MAX_DURATION.days}d,'
                f" not {_shown(value)}",
            )
        return duration


def parse_duration(value: object) -> timedelta | None:
    """Seconds as a number, or text such as "90", "90s", "15m", "2h", "1d"; None unless it is more than zero
    and at most MAX_DURATION."""
    seconds: float
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        return None
    # Written so that NaN fails too; an int too large for a float compares exactly.
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        return None
    return timedelta(seconds=seconds)


def _last(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _key_text(key: str) -> str:
    """A key as TOML would write it: bare, or quoted (non-printable characters escaped, so that a message
    stays one line)."""
    return key if _BARE_KEY.fullmatch(key) else repr(key)


def _kind(value: object) -> str:
    kinds = {
        str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
        datetime: "a date-time", date: "a date", time: "a time",
    }  # fmt: skip
    return kinds.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def _shown(value: object) -> str:
    """A wrong value as the message shows it: simple values as written in TOML, others by their kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str | int | float) else _kind(value)


# A workload file is a few lines of settings: one far larger is a mistake (or an attack on the parser).
MAX_WORKLOAD_FILE_BYTES = 1 << 20


def _read_text(path: Path) -> str:
    try:
        return read_small_file(path, MAX_WORKLOAD_FILE_BYTES).decode("utf-8")
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ConfigError(
                f"the workload file {path} is over {MAX_WORKLOAD_FILE_BYTES:,} bytes; give a workload file"
            ) from None
        if exc.errno == errno.EINVAL:
            raise ConfigError(f"the workload file {path} is not a regular file; give a TOML file") from None
        raise ConfigError(f"cannot read the workload file {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; workload files are TOML") from None


def _parse(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise ConfigError(f"{origin}: arrays or tables nested too deeply to be a workload") from None
    except ValueError as exc:
        # tomllib's message ends with "(at line N, column M)". A plain ValueError is an integer too long
        # for Python to read (over 4300 digits).
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None


def _line_of(text: str, dotted: str) -> int | None:
    """The line where `dotted` (e.g. `workload.pool.vm_size`) is written; else where its parent is."""
    lines: dict[str, int] = {}
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if table := _TABLE_LINE.match(line):
            current = _normalize(table.group(1))
            lines.setdefault(current, number)
        elif key := _KEY_LINE.match(line):
            full = f"{current}.{_normalize(key.group(1))}" if current else _normalize(key.group(1))
            lines.setdefault(full, number)
    while dotted:
        if dotted in lines:
            return lines[dotted]
        dotted = dotted.rpartition(".")[0]
    return None


def _normalize(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))
