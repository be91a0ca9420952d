"""Inputs to `StagedInput`s: local files hashed (their content decides their task ids), or blobs listed.

Shared by `run` and `plan`, so that the ids and commands a plan shows are the ones a run uses.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import anyio

from .backends.base import Storage
from .concurrency import for_each
from .errors import ConfigError, NotFoundError, UnreadableInputError
from .files import md5_of
from .spec import BlobInputs, StagedInput, Workload
from .tasks import check_distinct, identify


async def stage_inputs(
    workload: Workload, storage: Storage | None, *, concurrency: int = 16
) -> list[StagedInput]:
    """Each input with its fingerprint and task id (its input and its task's definition: `tasks.identify`),
    in the workload's order. `storage` lists blob inputs. ConfigError, before anything is uploaded, for an
    input that cannot be read, and for two inputs or outputs that would land on the same name
    (`tasks.check_distinct`)."""
    if isinstance(workload.inputs, BlobInputs):
        if storage is None:
            raise ConfigError("inputs in a storage container need a backend to list them")
        staged = await _list_blobs(workload.inputs, storage)
    else:
        staged = await _hash_files(workload.inputs, concurrency, input_folders(workload))
    check_distinct(workload.template, staged)
    return identify(workload, staged)


def input_folders(workload: Workload) -> dict[Path, str]:
    """Each local input's folder below the input root (POSIX; "" at the root): the workload's `input_root`
    when every input is inside it, else the inputs' common folder. A flat folder of inputs gives "" to all,
    so their blob names and task ids are their file names' as before folders were kept."""
    paths = workload.inputs if not isinstance(workload.inputs, BlobInputs) else ()
    if not paths:
        return {}
    absolute = {path: os.path.abspath(path) for path in paths}
    parents = [os.path.dirname(where) for where in absolute.values()]
    root = os.path.abspath(workload.input_root) if workload.input_root is not None else None
    if root is None or any(os.path.commonpath([root, parent]) != root for parent in parents):
        root = os.path.commonpath(parents)
    folders = {}
    for path, where in absolute.items():
        folder = os.path.relpath(os.path.dirname(where), root)
        folders[path] = "" if folder == "." else PurePath(folder).as_posix()
    return folders


async def _hash_files(
    paths: tuple[Path, ...], concurrency: int, folders: dict[Path, str]
) -> list[StagedInput]:
    """Every input hashed; one ConfigError naming the first that cannot be read (and how many others),
    raised after all were tried, never from inside the fan-out (where it would arrive as a group)."""
    staged: dict[Path, StagedInput] = {}
    unreadable: dict[Path, str] = {}
    misnamed = [path for path in paths if not _is_text(f"{folders.get(path, '')}/{path.name}")]
    if misnamed:
        # A name of bytes that are no UTF-8 cannot be a blob name (a blob name is text): one line naming it,
        # with its bytes written out, before any input is read.
        others = f" (and {len(misnamed) - 1} more)" if len(misnamed) > 1 else ""
        raise UnreadableInputError(
            f"input {_shown(misnamed[0])} has a name that is not UTF-8 text, which a blob name must "
            f"be{others}; rename it or remove it",
            paths=tuple(str(path) for path in misnamed),
        )

    def read(path: Path) -> StagedInput:
        return StagedInput.for_path(path, md5_of(path), path.stat().st_size, folder=folders.get(path, ""))

    async def stage(path: Path) -> None:
        try:
            staged[path] = await anyio.to_thread.run_sync(read, path)
        except OSError as exc:
            unreadable[path] = exc.strerror or type(exc).__name__

    await for_each(paths, stage, concurrency=concurrency)
    if unreadable:
        path = next(path for path in paths if path in unreadable)
        others = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise UnreadableInputError(
            f"cannot read input {path} ({unreadable[path]}){others}; fix its permissions or remove it",
            paths=tuple(str(path) for path in unreadable),
        )
    return [staged[path] for path in paths]


def _is_text(name: str) -> bool:
    """False for a name holding bytes that are no UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: Path) -> str:
    """`path` as text, its bytes that are no UTF-8 written out (`\\xff`)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


async def _list_blobs(source: BlobInputs, storage: Storage) -> list[StagedInput]:
    where = f"container {source.container!r}" + (f" under {source.prefix!r}" if source.prefix else "")
    try:
        blobs = await storage.list_blobs(source.container, source.prefix)
    except NotFoundError:
        raise ConfigError(f"{where} does not exist; check workload.inputs.container") from None
    if source.names:
        wanted = set(source.names)
        blobs = [blob for blob in blobs if blob.name in wanted]
    staged = [
        StagedInput.for_blob(blob.name, blob.md5_hex, blob.size, prefix=source.prefix) for blob in blobs
    ]
    if not staged:
        raise ConfigError(f"no blobs in {where}; upload some, or check workload.inputs.prefix")
    return staged
