"""Inputs to `StagedInput`s: local files hashed (their content decides their task ids), or blobs listed.

Shared by `run` and `plan`, so that the ids and commands a plan shows are the ones a run uses.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path, PurePath
from typing import cast

import anyio

from .backends.base import Storage
from .errors import ConfigError, NotFoundError, UnreadableInputError
from .files import md5_and_size
from .spec import BlobInputs, StagedInput, Workload
from .tasks import check_distinct, identify_in_place


async def stage_inputs(
    workload: Workload, storage: Storage | None, *, concurrency: int = 16
) -> list[StagedInput]:
    """Each input with its fingerprint and task id (its input and its task's definition: `tasks.identify`),
    in the workload's order. `storage` lists blob inputs; `concurrency` is how many worker threads hash
    local inputs at once. ConfigError, before anything is uploaded, for an input that cannot be read, and
    for two inputs or outputs that would land on the same name (`tasks.check_distinct`)."""
    if isinstance(workload.inputs, BlobInputs):
        if storage is None:
            raise ConfigError("inputs in a storage container need a backend to list them")
        staged = await _list_blobs(workload.inputs, storage)
    else:
        staged = await _hash_files(workload.inputs, concurrency, _folders(workload))
    check_distinct(workload.template, staged)
    identify_in_place(workload, staged)  # no second list: 100,000 staged inputs weigh 35 MB
    return staged


def input_folders(workload: Workload) -> dict[Path, str]:
    """Each local input's folder below the input root (POSIX; "" at the root): the workload's `input_root`
    when every input is inside it, else the inputs' common folder. A flat folder of inputs gives "" to all,
    so their blob names and task ids are their file names' as before folders were kept."""
    paths = workload.inputs if not isinstance(workload.inputs, BlobInputs) else ()
    return dict(zip(paths, _folders(workload), strict=True))


def _folders(workload: Workload) -> list[str]:
    """`input_folders`' folders as a list in the inputs' order: each folder's text is one object for all the
    inputs in it, and no path is hashed (a dict keyed by 100,000 paths caches a hash in each)."""
    paths = workload.inputs if not isinstance(workload.inputs, BlobInputs) else ()
    if not paths:
        return []
    # Each input's parent folder, absolute; one text per distinct folder.
    distinct: dict[str, str] = {}
    parents = [
        distinct.setdefault(parent, parent)
        for parent in (os.path.dirname(os.path.abspath(path)) for path in paths)
    ]
    root = os.path.abspath(workload.input_root) if workload.input_root is not None else None
    if root is None or any(os.path.commonpath([root, parent]) != root for parent in distinct):
        root = os.path.commonpath(list(distinct))
    below: dict[str, str] = {}
    for parent in distinct:
        folder = os.path.relpath(parent, root)
        below[parent] = "" if folder == "." else PurePath(folder).as_posix()
    return [below[parent] for parent in parents]


# Local inputs are hashed in worker-thread trips of many inputs each: a trip per input cost more than
# hashing a small one (100,000 inputs of 16 bytes: 27 s). A trip takes the next inputs in line until it has
# run this long (at least one input, so a large file is a trip of its own), and `concurrency` trips run at
# once; a cancelled run waits for the trips under way, each of about this long (or one input's hashing).
_TRIP_SECONDS = 0.02


async def _hash_files(paths: tuple[Path, ...], concurrency: int, folders: list[str]) -> list[StagedInput]:
    """Every input hashed, in the inputs' order; one UnreadableInputError naming the first that cannot be
    read (in the inputs' order, and how many others), raised after all were tried, never from inside the
    fan-out (where it would arrive as a group)."""
    misnamed = [
        path for path, folder in zip(paths, folders, strict=True) if not _is_text(f"{folder}/{path.name}")
    ]
    if misnamed:
        # A name of bytes that are no UTF-8 cannot be a blob name (a blob name is text): one line naming it,
        # with its bytes written out, before any input is read.
        others = f" (and {len(misnamed) - 1} more)" if len(misnamed) > 1 else ""
        raise UnreadableInputError(
            f"input {_shown(misnamed[0])} has a name that is not UTF-8 text, which a blob name must "
            f"be{others}; rename it or remove it",
            paths=tuple(str(path) for path in misnamed),
        )

    staged: list[StagedInput | None] = [None] * len(paths)
    unreadable: dict[int, str] = {}
    # Shared by the trips: `next` on a count is atomic under the GIL, so each input is taken by one trip.
    cursor = itertools.count()
    count = len(paths)

    def trip() -> bool:
        """Hash the next inputs in line for about _TRIP_SECONDS; False once none is left."""
        until = time.monotonic() + _TRIP_SECONDS
        while (index := next(cursor)) < count:
            path = paths[index]
            try:
                md5_hex, size = md5_and_size(path)
            except OSError as exc:
                unreadable[index] = exc.strerror or type(exc).__name__
            else:
                staged[index] = StagedInput.for_path(path, md5_hex, size, folder=folders[index])
            if time.monotonic() >= until:
                return True
        return False

    async def hasher() -> None:
        while await anyio.to_thread.run_sync(trip):
            pass

    async with anyio.create_task_group() as group:
        for _ in range(max(1, min(concurrency, count))):
            group.start_soon(hasher)
    if unreadable:
        first = min(unreadable)
        others = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise UnreadableInputError(
            f"cannot read input {paths[first]} ({unreadable[first]}){others}; fix its permissions or remove"
            " it",
            paths=tuple(str(paths[index]) for index in sorted(unreadable)),
        )
    return cast(list[StagedInput], staged)


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
