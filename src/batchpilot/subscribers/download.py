"""Fetch each task's outputs as soon as it succeeds, not at the end of the run.

Outputs live in the run's output container under `<task_id>/`; they land in the run's download folder without
that prefix. A file already there with the same size (and MD5, when the store knows it) is not fetched again,
so a re-run fetches only what is missing. Downloads go through a temporary name, so an interrupted one never
leaves a partial file under the final name.

A file that cannot be written here (a full disk, a read-only or unwritable folder, a file where a folder
should be) fails that one download, with the path, the system's reason and the remedy; the others go on, and
the run's summary counts it as failed (from the OutputDownloadFailed event: the run's recorder keeps the
counts, not the downloader), so the same command run again fetches it.

Every succeeded task is also held to its declared outputs, on every backend by this same code: each output
pattern that is not optional must have left at least one blob under `<task_id>/`, or the task is reported
as TaskOutputsMissing and the run counts it failed. Batch itself uploads nothing for a pattern that matched
no file and still calls the task a success (azure-docs#37770, azure-powershell#9912), so only a look at the
container tells. This holds with or without a download folder.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import posixpath
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from ..backends.base import Backend
from ..errors import BackendError
from ..events import (
    Event,
    OutputDownloaded,
    OutputDownloadFailed,
    RunStarted,
    TaskOutputsMissing,
    TaskSucceeded,
)
from ..files import remove_stale_partials
from ..records import BlobInfo
from ..spec import leaves_root
from ..tasks import same_name_key

_log = structlog.get_logger("batchpilot.download")

Publish = Callable[..., Awaitable[None]]


class _Plan:
    """Which of a task's blobs to fetch, and where (`Storage.download_prefix`'s plan): called once with the
    listing, possibly in a worker thread. Keeps the listed names (for the required outputs) and, in listing
    order, each blob with the reason it is refused (None: fetched)."""

    def __init__(
        self, task_id: str, prefix: str, folder: Path | None, claimed: dict[str, str], lock: threading.Lock
    ) -> None:
        self._task_id = task_id
        self._prefix = prefix
        self._folder = folder
        self._claimed = claimed
        self._lock = lock
        self.names: list[str] = []
        self.steps: list[tuple[BlobInfo, str | None]] = []

    def __call__(self, blobs: Sequence[BlobInfo]) -> list[tuple[BlobInfo, Path]]:
        self.names = [blob.name for blob in blobs]
        folder = self._folder
        if folder is None:
            return []
        picked = []
        for blob in blobs:
            relative = blob.name.removeprefix(self._prefix)
            if leaves_root(relative) or posixpath.normpath(relative) in (".", ""):
                # A task writes its outputs through its own token, so a blob's name is data from outside:
                # one that would land outside --out is reported, never followed.
                self.steps.append(
                    (blob, f"blob name {blob.name!r} leaves the download folder {folder}; not fetched")
                )
                continue
            dest = folder / posixpath.normpath(relative)
            # Several tasks' plans may run at once, in worker threads.
            with self._lock:
                owner = self._claimed.setdefault(same_name_key(posixpath.normpath(relative)), self._task_id)
            if owner != self._task_id:
                self.steps.append(
                    (
                        blob,
                        f"{dest} is an output of task {owner} too: not overwritten; make the outputs' names"
                        " differ by input, like '{stem}_*.png'",
                    )
                )
                continue
            self.steps.append((blob, None))
            picked.append((blob, dest))
        return picked


@dataclass(frozen=True, slots=True)
class _Run:
    job_id: str
    container: str
    folder: Path | None  # None: outputs stay in the container, only checked


class OutputDownloader:
    def __init__(self, backend: Backend, publish: Publish) -> None:
        # The backend, not its storage: a backend's clients exist only once it is opened.
        self._backend = backend
        self._publish = publish
        self._runs: dict[str, _Run] = {}  # the runs in flight, until forget()
        # Each run's tasks' required output patterns (rendered), by task id, until forget().
        self._required: dict[str, dict[str, tuple[str, ...]]] = {}
        # Each run's download paths (case-folded) and the task whose output took each, until forget(): two
        # tasks' wildcard matches of one name would otherwise overwrite one another (BatchExplorer#2956).
        self._claimed: dict[str, dict[str, str]] = {}
        self._claim_lock = threading.Lock()

    def expect(self, run_id: str, required: dict[str, tuple[str, ...]]) -> None:
        """The output patterns each of the run's tasks must have produced (`TaskTemplate.required_outputs`,
        by task id); the engine gives them before any task of the run can succeed."""
        self._required[run_id] = required

    def forget(self, run_id: str) -> None:
        """Drop what is known of a run that has ended (`Orchestrator.run` calls it when the run returns)."""
        self._runs.pop(run_id, None)
        self._required.pop(run_id, None)
        self._claimed.pop(run_id, None)

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._runs[event.run_id] = _Run(event.job_id, event.output_container, event.download_to)
            if event.download_to is not None:
                # An earlier run killed mid-download left its temporary files: gone with their writer.
                removed = await anyio.to_thread.run_sync(remove_stale_partials, event.download_to)
                if removed:
                    _log.info("stale_partials_removed", folder=str(event.download_to), files=removed)
        elif isinstance(event, TaskSucceeded) and (run := self._runs.get(event.run_id)) is not None:
            await self._fetch_task(event.run_id, run, event.task_id)

    async def _fetch_task(self, run_id: str, run: _Run, task_id: str) -> None:
        prefix = f"{task_id}/"
        required = self._required.get(run_id, {}).get(task_id, ())
        if run.folder is None and not required:
            return  # nothing to fetch, nothing to check: no request
        plan = _Plan(task_id, prefix, run.folder, self._claimed.setdefault(run_id, {}), self._claim_lock)
        try:
            # One request (the local storage: one worker-thread trip) lists the task's blobs and fetches
            # those the plan picks.
            fetched = await self._backend.storage.download_prefix(run.container, prefix, plan)
        except BackendError as exc:
            await self._failed(run_id, run, task_id, prefix, str(exc))
            return
        missing = unmatched_outputs(task_id, required, plan.names)
        if missing:
            await self._publish(
                TaskOutputsMissing(
                    run_id=run_id,
                    job_id=run.job_id,
                    task_id=task_id,
                    patterns=missing,
                    reason=outputs_missing_reason(missing),
                ),
                source=self,
            )
        outcomes = iter(fetched)
        for blob, refused in plan.steps:
            if refused is not None:
                await self._failed(run_id, run, task_id, blob.name, refused)
                continue
            done = next(outcomes, None)
            if done is None:  # a store that returned fewer than it was asked for: not fetched
                await self._failed(run_id, run, task_id, blob.name, "not downloaded (the store skipped it)")
                continue
            if done.error is not None:
                error = (
                    _cannot_save(done.path, done.error)
                    if isinstance(done.error, OSError)
                    else str(done.error)
                )
                await self._failed(run_id, run, task_id, blob.name, error)
                continue
            await self._publish(
                OutputDownloaded(
                    run_id=run_id,
                    job_id=run.job_id,
                    task_id=task_id,
                    blob_name=blob.name,
                    path=done.path,
                    size=blob.size,
                    skipped=done.skipped,
                ),
                source=self,
            )

    async def _failed(self, run_id: str, run: _Run, task_id: str, blob_name: str, error: str) -> None:
        await self._publish(
            OutputDownloadFailed(
                run_id=run_id, job_id=run.job_id, task_id=task_id, blob_name=blob_name, error=error
            ),
            source=self,
        )


def unmatched_outputs(task_id: str, patterns: Sequence[str], blob_names: Iterable[str]) -> tuple[str, ...]:
    """Of a task's rendered output `patterns` (relative to its output dir, as `TaskTemplate.render_outputs`
    gives them), those that no blob in `blob_names` (full names in the output container) came from. A
    pattern naming one file needs the blob `<task id>/<pattern>` (`output_path`); a wildcard pattern needs
    one blob under `<task id>/` whose name, or last part, it matches (Batch keeps a match's name under the
    virtual folder; the local backend keeps its file name). Pure."""
    prefix = f"{task_id}/"
    names = [name.removeprefix(prefix) for name in blob_names if name.startswith(prefix)]
    present = {posixpath.normpath(name) for name in names}
    missing = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            # An input below the input root keeps its folder: `<task id>/<folder>/<pattern>`.
            wanted = posixpath.normpath(pattern)
            found = any(name == wanted or name.endswith(f"/{wanted}") for name in present)
        else:
            last = posixpath.basename(pattern)
            found = any(
                fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(posixpath.basename(name), last)
                for name in names
            )
        if not found:
            missing.append(pattern)
    return tuple(missing)


def outputs_missing_reason(patterns: Sequence[str]) -> str:
    """One line for a task whose output `patterns` matched no file."""
    shown = ", ".join(repr(pattern) for pattern in patterns[:5])
    more = f" and {len(patterns) - 5} more" if len(patterns) > 5 else ""
    return (
        f"no file matched output pattern {shown}{more}: the command succeeded but did not write it (check the"
        " command, or mark the output optional)"
    )


_REMEDIES = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space or raise the disk quota",
    errno.EACCES: "make its folder writable",
    errno.EPERM: "make its folder writable",
    errno.EROFS: "the file system is read-only: download elsewhere",
    errno.ENOTDIR: "a file stands where a folder of its path should be: move it",
    errno.EEXIST: "a file stands where a folder of its path should be: move it",
    errno.EISDIR: "a folder stands where the file should be: move it",
    errno.ENAMETOOLONG: "the name is longer than this file system allows: shorten the output pattern",
}


def _cannot_save(dest: Path, exc: OSError) -> str:
    """One line: the file, the system's reason (the path in `exc` may be a temporary name), the remedy."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    remedy = _REMEDIES.get(exc.errno or 0, "fix that")
    return f"cannot save {dest}: {reason}; {remedy}, then run the same command again to fetch it"
