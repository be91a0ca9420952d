"""Fetch each task's outputs as soon as it succeeds, not at the end of the run.

Outputs live in the run's output container under `<task_id>/`; they land in the run's download folder without
that prefix. A file already there with the same size (and MD5, when the store knows it) is not fetched again,
so a re-run fetches only what is missing. Downloads go through a temporary name, so an interrupted one never
leaves a partial file under the final name.

A file that cannot be written here (a full disk, a read-only or unwritable folder, a file where a folder
should be) fails that one download, with the path, the system's reason and the remedy; the others go on, and
the run's summary counts it as failed (from the OutputDownloadFailed event: the run's recorder keeps the
counts, not the downloader), so the same command run again fetches it.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..backends.base import Backend
from ..errors import BackendError
from ..events import Event, OutputDownloaded, OutputDownloadFailed, RunStarted, TaskSucceeded
from ..files import md5_of
from ..records import BlobInfo
from ..spec import leaves_root

Publish = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Run:
    job_id: str
    container: str
    folder: Path


class OutputDownloader:
    def __init__(self, backend: Backend, publish: Publish) -> None:
        # The backend, not its storage: a backend's clients exist only once it is opened.
        self._backend = backend
        self._publish = publish
        self._runs: dict[str, _Run] = {}  # the runs in flight that download, until forget()

    def forget(self, run_id: str) -> None:
        """Drop what is known of a run that has ended (`Orchestrator.run` calls it when the run returns)."""
        self._runs.pop(run_id, None)

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and event.download_to is not None:
            self._runs[event.run_id] = _Run(event.job_id, event.output_container, event.download_to)
        elif isinstance(event, TaskSucceeded) and (run := self._runs.get(event.run_id)) is not None:
            await self._fetch_task(event.run_id, run, event.task_id)

    async def _fetch_task(self, run_id: str, run: _Run, task_id: str) -> None:
        prefix = f"{task_id}/"
        try:
            blobs = await self._backend.storage.list_blobs(run.container, prefix)
        except BackendError as exc:
            await self._failed(run_id, run, task_id, prefix, str(exc))
            return
        for blob in blobs:
            relative = blob.name.removeprefix(prefix)
            if leaves_root(relative) or posixpath.normpath(relative) in (".", ""):
                # A task writes its outputs through its own token, so a blob's name is data from outside:
                # one that would land outside --out is reported, never followed.
                error = f"blob name {blob.name!r} leaves the download folder {run.folder}; not fetched"
                await self._failed(run_id, run, task_id, blob.name, error)
                continue
            dest = run.folder / posixpath.normpath(relative)
            try:
                skipped = await _already_there(blob, dest)
                if not skipped:
                    await self._backend.storage.download(run.container, blob.name, dest)
            except (BackendError, OSError) as exc:
                error = _cannot_save(dest, exc) if isinstance(exc, OSError) else str(exc)
                await self._failed(run_id, run, task_id, blob.name, error)
                continue
            await self._publish(
                OutputDownloaded(
                    run_id=run_id,
                    job_id=run.job_id,
                    task_id=task_id,
                    blob_name=blob.name,
                    path=dest,
                    size=blob.size,
                    skipped=skipped,
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


_REMEDIES = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space or raise the disk quota",
    errno.EACCES: "make its folder writable",
    errno.EPERM: "make its folder writable",
    errno.EROFS: "the file system is read-only: download elsewhere",
    errno.ENOTDIR: "a file stands where a folder of its path should be: move it",
    errno.EEXIST: "a file stands where a folder of its path should be: move it",
    errno.EISDIR: "a folder stands where the file should be: move it",
}


def _cannot_save(dest: Path, exc: OSError) -> str:
    """One line: the file, the system's reason (the path in `exc` may be a temporary name), the remedy."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    remedy = _REMEDIES.get(exc.errno or 0, "fix that")
    return f"cannot save {dest}: {reason}; {remedy}, then run the same command again to fetch it"


async def _already_there(blob: BlobInfo, dest: Path) -> bool:
    def sync() -> bool:
        if not dest.is_file() or dest.stat().st_size != blob.size:
            return False
        return blob.md5_hex is None or md5_of(dest) == blob.md5_hex

    return await anyio.to_thread.run_sync(sync)
