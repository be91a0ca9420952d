"""The protocols every backend implements: `Compute`, `Storage` and the `Backend` that holds both.

The engine talks only to these. A backend translates its own errors into `batchpilot.errors` at this
boundary (the core never imports `azure.*`), and returns plain frozen records, never SDK models.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from ..errors import BatchpilotError
from ..images import ImageVerdict
from ..records import (
    AddTaskResult,
    BlobDownload,
    BlobInfo,
    Ensured,
    Permission,
    TaskCounts,
    TaskView,
    UploadOutcome,
)
from ..spec import JobSpec, PoolSpec, TaskSpec

# Takes one page of a task listing (`Compute.list_tasks(on_page=...)`).
PageHandler = Callable[[list[TaskView]], Awaitable[None]]


class Compute(Protocol):
    """Pools, jobs and tasks: Batch, or the local machine standing in for it."""

    async def ensure_pool(self, spec: PoolSpec) -> Ensured:
        """Create the pool, or reuse one of that id (`Ensured.created` False; `warnings` say how it differs
        from `spec`, one line each). A pool still being deleted raises PoolBeingDeletedError (Batch refuses
        the id until the deletion ends); other refusals raise BackendError."""
        ...

    async def check_pool_image(self, spec: PoolSpec) -> ImageVerdict:
        """Whether the service takes the pool's image, node agent and VM size today (`images.judge` over
        Batch's List Supported Images), or, when a pool of that id exists, the image it runs. Creates
        nothing. BackendError when the service cannot be asked; a backend without images answers ok."""
        ...

    async def wait_for_nodes(self, pool_id: str) -> int:
        """Return once the pool has nodes that can run tasks (how many). Raise BackendError when it cannot
        get any (quota, allocation failure, start task failed). Unbounded: the caller sets a deadline."""
        ...

    async def ensure_job(self, spec: JobSpec) -> Ensured:
        """Create the job, or reuse it; a reused job's max wall clock is extended to end no sooner than
        `spec.max_wall_clock` from now, so that a resumed run gets the time a new one would."""
        ...

    async def end_job_when_done(self, job_id: str) -> None:
        """No more tasks will be added: the job ends by itself once every task has completed."""
        ...

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        """Add one collection (at most 100 tasks, under 1 MB). Raises RequestTooLargeError when over."""
        ...

    async def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Run a task that failed again under the same id: it turns active, its exit code, failure info,
        times, node and retry count cleared (Batch REST: Reactivate Task, POST
        /jobs/{job}/tasks/{task}/reactivate). BackendError (code TaskNotCompleted or TaskSucceeded) for a
        task that did not fail; JobEndedError when the job has ended (409 JobCompleted: Batch reactivates no
        task in a completed job); NotFoundError for an unknown job or task."""
        ...

    async def task_counts(self, job_id: str) -> TaskCounts:
        """The cheap probe. May lag behind `list_tasks`."""
        ...

    async def list_tasks(
        self,
        job_id: str,
        changed_since: datetime | None = None,
        *,
        changed_until: datetime | None = None,
        queued: bool = True,
        on_page: PageHandler | None = None,
    ) -> list[TaskView]:
        """Every task of the job, or only those whose state changed at or after `changed_since`, and (with
        `changed_until`) at or before `changed_until`: a task that changed again since is left out. With
        `queued=False`, the tasks added at or after `changed_since` and still queued (active) may be left
        out: nothing is known of them yet but that they are there.

        With `on_page`, each page of the answer (up to 1,000 tasks on Batch; the whole answer where there
        are no pages) is handed to it as it arrives, awaited before the next page is asked for, and the list
        returned is empty: a listing of 100,000 tasks is then acted on page by page and never held whole."""
        ...

    async def read_task_file(self, job_id: str, task_id: str, name: str, *, tail: int | None = None) -> bytes:
        """A file from the task's directory, e.g. `stderr.txt`, from the node the task ran on. With `tail`,
        only its last `tail` bytes, read as a byte range (Batch: the file's properties for its size, then
        `ocp-range: bytes=first-last`), so a task's 50 MB stderr costs what its end does; None reads it
        whole (bound it yourself). NotFoundError when absent (the node or the task's files are gone)."""
        ...

    async def delete_job(self, job_id: str) -> None:
        """Ask for the job and its tasks to be deleted; return once asked, not once gone. A job that is
        absent or already being deleted is not an error."""
        ...

    async def delete_pool(self, pool_id: str) -> None:
        """Ask for the pool and its nodes to be deleted (Batch takes minutes); return once asked. A pool
        that is absent or already being deleted is not an error."""
        ...

    async def resize_pool(self, pool_id: str, dedicated: int, spot: int) -> None:
        """Ask for `dedicated` + `spot` nodes (zero is allowed); return once the request is taken, not when
        the nodes are there (`wait_for_nodes` waits for them). A node removed finishes the tasks it is
        running first. A resize still under way is stopped and replaced. NotFoundError when no such pool."""
        ...


class Storage(Protocol):
    """Blob containers: Azure Blob Storage, or folders on disk."""

    async def ensure_container(self, container: str) -> bool:
        """Create the container if absent; True when it was created."""
        ...

    async def upload(
        self, container: str, blob_name: str, source: Path, md5_hex: str, *, check_existing: bool = True
    ) -> UploadOutcome:
        """Upload one file, skipping it when a blob of the same size and MD5 is already there.

        `check_existing=False` skips that look (a request per blob on Azure) where nothing can be there yet:
        in a container created by this run."""
        ...

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        """The blobs whose names start with `prefix`, by name. NotFoundError when no such container."""
        ...

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        """Write the blob to `dest` via a temporary name, so a partial file never has the final name."""
        ...

    async def download_prefix(
        self,
        container: str,
        prefix: str,
        plan: Callable[[Sequence[BlobInfo]], Iterable[tuple[BlobInfo, Path]]],
    ) -> list[BlobDownload]:
        """List the blobs whose names start with `prefix` and download those `plan` picks, in one go (the
        local storage makes one worker-thread trip of it; a remote store lists, then downloads one by one).

        `plan` is called once with the listing, by name, and returns the (blob, destination) pairs to
        fetch; it may run in a worker thread, so it must not touch the event loop. A destination already
        holding a file of the blob's size and content is left as it is (`skipped`; its MD5 is read only
        when the sizes match); the others are written as `download` writes them. One `BlobDownload` per
        pair, in order; a pair that fails carries its error (BackendError, or the OSError of writing) and
        the others go on. NotFoundError when no such container; BackendError when the listing fails."""
        ...

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        """A URL a task can use to reach the container with exactly `permissions` until `expiry` from now."""
        ...

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        """A URL a task can use to reach one blob with exactly `permissions` until `expiry` from now."""
        ...

    async def delete_container(self, container: str) -> None:
        """Delete the container and its blobs; an absent container is not an error."""
        ...


class Backend(Protocol):
    """A Compute and a Storage, opened and closed together with `async with`."""

    @property
    def name(self) -> str:
        """A short name for logs and messages: `local`, `azure`, `memory`."""
        ...

    @property
    def compute(self) -> Compute:
        """Pools, jobs and tasks; usable once the backend is open."""
        ...

    @property
    def storage(self) -> Storage:
        """Blob containers; usable once the backend is open."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...


async def download_each(
    storage: Storage,
    container: str,
    picks: Iterable[tuple[BlobInfo, Path]],
    holds: Callable[[BlobInfo, Path], Awaitable[bool]],
) -> list[BlobDownload]:
    """`Storage.download_prefix` after its listing, for a store that downloads one blob per request: each
    pick skipped when `holds(blob, dest)` says the destination has its content, else `storage.download`ed;
    one `BlobDownload` per pick, in order, a failure (BatchpilotError, OSError) carried by its pick."""
    done = []
    for blob, dest in picks:
        try:
            if await holds(blob, dest):
                done.append(BlobDownload(blob, dest, skipped=True))
                continue
            await storage.download(container, blob.name, dest)
        except (BatchpilotError, OSError) as exc:
            done.append(BlobDownload(blob, dest, error=exc))
        else:
            done.append(BlobDownload(blob, dest))
    return done
