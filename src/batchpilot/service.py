"""`batchpilot serve`: one pool and one job, fed with new inputs as they arrive in a folder or a container.

Runs are idempotent (deterministic task ids, an existing job reused, existing tasks not re-added, outputs on
disk not fetched again), so the service is a loop of ordinary runs: each batch of new or changed files is one
`Orchestrator.run` of the same workload (same job id, nothing deleted afterwards), several at once. On a
restart the first look takes every file present and the engine skips what the job already has.

Stopping: the watcher stops, runs still uploading or submitting finish those stages, monitoring stops
(`Orchestrator.stop_monitoring`); tasks stay in the job and the next start picks them up.

A file is taken once it is complete: its size and modification time unchanged across two looks at least
`settle_s` apart (a blob: its size and MD5). The source is looked at often while inputs are arriving or
settling, then less and less often (up to `max_interval_s`) while nothing changes.

Idle shutdown (optional): after a stretch with no work (no run in flight, no input being taken, no task of
the job active or running), the pool is resized to zero nodes; the first new input brings it back to the
workload's node counts before its batch is submitted. The pool is the service's own: the one its workload
names, created by the service or by an earlier start of it, so it is resized whoever created it; a pool
that other work shares should not be given to a service with an idle shutdown.
"""

from __future__ import annotations

import enum
import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskGroup

from .backends.base import Storage
from .backoff import BackoffPolicy
from .clock import Clock, SystemClock
from .engine import Orchestrator
from .errors import (
    BackendError,
    BatchpilotError,
    InputError,
    NotFoundError,
    StateInUseError,
    TransientBackendError,
)
from .files import FolderLock
from .metrics import Metrics
from .recorder import RunRecorder
from .spec import BlobInputs, Workload

_log = structlog.get_logger("batchpilot.service")

Stat = tuple[int, int]  # size, mtime in ns


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How the source is looked at, in seconds: a file is taken once unchanged for `settle_s`; looks come
    every `min_interval_s` while inputs arrive, then `growth` times further apart up to `max_interval_s`."""

    settle_s: float = 1.0
    min_interval_s: float = 0.25
    max_interval_s: float = 5.0
    growth: float = 1.5

    @property
    def backoff(self) -> BackoffPolicy:
        """The looks' schedule (no jitter: one service looks at its own source)."""
        return BackoffPolicy(
            initial=self.min_interval_s, factor=self.growth, cap=self.max_interval_s, jitter=0.0
        )


class Settler:
    """Pure: which files are complete, given successive looks at a folder (name -> (size, mtime)) and when.

    A name is ready when its stat has not changed for `settle_s` across at least two looks, and it was not
    already taken with that same stat (a file rewritten later is taken again: new content, a new task).
    """

    def __init__(self, settle_s: float) -> None:
        self._settle_s = settle_s
        self._since: dict[str, tuple[Stat, float]] = {}
        self._taken: dict[str, Stat] = {}

    def release(self, names: Iterable[str]) -> None:
        """Take these again once they settle: their batch could not reach the service."""
        for name in names:
            self._taken.pop(name, None)

    def observe(self, snapshot: Mapping[str, Stat], now: float) -> tuple[list[str], bool]:
        """The names complete now, and whether any other file is still settling."""
        ready: list[str] = []
        settling = False
        since: dict[str, tuple[Stat, float]] = {}
        for name, stat in snapshot.items():
            if self._taken.get(name) == stat:
                continue
            previous = self._since.get(name)
            first_seen = previous[1] if previous is not None and previous[0] == stat else now
            since[name] = (stat, first_seen)
            if previous is not None and previous[0] == stat and now - first_seen >= self._settle_s:
                ready.append(name)
                self._taken[name] = stat
                del since[name]
            else:
                settling = True
        self._since = since
        for name in [name for name in self._taken if name not in snapshot]:
            del self._taken[name]
        return sorted(ready), settling


def scan(folder: Path, pattern: str) -> dict[str, Stat]:
    """Regular files directly in `folder` matching `pattern`; hidden files (partial copies) are ignored."""
    found: dict[str, Stat] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not fnmatch.fnmatch(entry.name, pattern):
                continue
            try:
                if entry.is_file():
                    info = entry.stat()
                    found[entry.name] = (info.st_size, info.st_mtime_ns)
            except OSError:
                # Removed between the listing and the stat, or a link that leads nowhere (a loop): not a
                # file, and never a reason to miss the folder's other inputs.
                continue
    return found


class PoolSize(enum.StrEnum):
    FULL = "full"  # the workload's node counts
    ZERO = "zero"


class IdleShutdown:
    """Pure: when to take the pool to zero nodes and when to bring it back, from whether there is work.

    After `idle_s` without work the pool should go to zero; as soon as there is work, back to full size.
    Its size is unknown until a resize is recorded (an earlier start may have left it either way), so the
    first work brings it to full size and the first idle stretch takes it to zero. A resize that failed is
    not recorded, so the next look asks for it again.
    """

    def __init__(self, idle_s: float, now: float) -> None:
        self._idle_s = idle_s
        self._idle_since: float | None = now
        self._size: PoolSize | None = None

    def wanted(self, busy: bool, now: float) -> PoolSize | None:
        """The size to resize the pool to now, or None when it is right as it is."""
        if busy:
            self._idle_since = None
            return None if self._size is PoolSize.FULL else PoolSize.FULL
        if self._idle_since is None:
            self._idle_since = now
        due = now - self._idle_since >= self._idle_s
        return PoolSize.ZERO if due and self._size is not PoolSize.ZERO else None

    def resized(self, size: PoolSize) -> None:
        self._size = size


class Source(Protocol):
    """Where a service takes its inputs from: a look at what is there now, and the inputs for some names."""

    def describe(self) -> str: ...

    async def look(self) -> dict[str, Stat]: ...

    def inputs(self, names: Sequence[str]) -> tuple[Path, ...] | BlobInputs: ...


@dataclass(frozen=True, slots=True)
class FolderSource:
    folder: Path
    pattern: str = "*"

    def describe(self) -> str:
        return f"folder {self.folder} ({self.pattern})"

    async def look(self) -> dict[str, Stat]:
        return await anyio.to_thread.run_sync(scan, self.folder, self.pattern)

    def inputs(self, names: Sequence[str]) -> tuple[Path, ...]:
        return tuple(self.folder / name for name in names)

    def unreadable(self, names: Sequence[str]) -> dict[str, str]:
        """The inputs among `names` that cannot be read (opened, and their first byte read), with the
        system's reason. Blocking: call it in a worker thread."""
        found = {}
        root = os.path.realpath(self.folder)
        for name in names:
            path = self.folder / name
            # A link is taken only to a file inside the folder: one dropped in to lead elsewhere (a key in
            # ~/.ssh) would upload what it points at.
            if path.is_symlink() and os.path.commonpath([root, os.path.realpath(path)]) != root:
                found[name] = "a link to a file outside the watched folder"
                continue
            try:
                # Non-blocking: a FIFO put in place of a listed file would wait for a writer forever.
                descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                try:
                    if not S_ISREG(os.fstat(descriptor).st_mode):
                        found[name] = "not a regular file"
                        continue
                    os.read(descriptor, 1)
                finally:
                    os.close(descriptor)
            except OSError as exc:
                found[name] = exc.strerror or type(exc).__name__
        return found


@dataclass(frozen=True, slots=True)
class ContainerSource:
    """Blobs under `prefix` in `container` whose base name matches `pattern`; a blob is committed whole, so
    it is complete as soon as it is listed; its size and MD5 tell a rewrite."""

    storage: Storage
    container: str
    prefix: str = ""
    pattern: str = "*"

    def describe(self) -> str:
        return f"container {self.container}/{self.prefix} ({self.pattern})"

    async def look(self) -> dict[str, Stat]:
        blobs = await self.storage.list_blobs(self.container, self.prefix)
        return {
            blob.name: (blob.size, int(blob.md5_hex, 16) if blob.md5_hex else 0)
            for blob in blobs
            if fnmatch.fnmatch(PurePosixPath(blob.name).name, self.pattern)
        }

    def inputs(self, names: Sequence[str]) -> BlobInputs:
        return BlobInputs(self.container, self.prefix, names=tuple(names))


class Service:
    """Feeds `workload` (its inputs replaced by each batch of new inputs in `source`) to `orchestrator`.

    `clock` paces the looks and dates them (the settle time, the idle shutdown); the system clock by default.
    `new_recorder`, when given, makes each batch's `RunRecorder` (a rolling report keeps the latest ones).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        workload: Workload,
        source: Source,
        metrics: Metrics,
        settings: WatchSettings = WatchSettings(),
        idle_shutdown: timedelta | None = None,
        *,
        clock: Clock | None = None,
        new_recorder: Callable[[], RunRecorder] | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._new_recorder = new_recorder
        self._workload = workload
        self._source = source
        self._metrics = metrics
        self._settings = settings
        self._idle_shutdown = idle_shutdown
        self._clock = clock or SystemClock()
        self._runs_in_flight = 0
        self._settler = Settler(settings.settle_s)
        self._released: set[str] = set()  # inputs taken again for a retry: seen once already

    async def run(self, stop: anyio.Event) -> None:
        """Watch and run until `stop` is set; then finish uploads and submissions in flight and return.
        StateInUseError when another process watches the same folder (each input would run twice)."""
        lock = None
        if isinstance(self._source, FolderSource):
            folder = self._source.folder
            lock = await anyio.to_thread.run_sync(
                lambda: FolderLock(folder, what="the watched folder", create=False)
            )
        try:
            await self._serve(stop)
        finally:
            if lock is not None:
                lock.release()

    async def _serve(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as runs:
            async with anyio.create_task_group() as watching:
                watching.start_soon(self._watch, runs)
                await stop.wait()
                watching.cancel_scope.cancel()
            _log.info("service_stopping", detail="no new inputs; finishing uploads and submissions in flight")
            self._orchestrator.stop_monitoring()

    async def _watch(self, runs: TaskGroup) -> None:
        settings = self._settings
        settler = self._settler
        backoff = settings.backoff
        interval = backoff.initial
        where = self._source.describe()
        _log.info("service_watching", source=where)
        idle = None
        if self._idle_shutdown is not None:
            idle = IdleShutdown(self._idle_shutdown.total_seconds(), self._now())
        while True:
            try:
                snapshot = await self._source.look()
            except (OSError, BackendError) as exc:
                # Unknown is not empty: files already taken stay taken, and the next look tries again.
                _log.warning("watch_failed", source=where, error=str(exc))
                await self._clock.sleep(settings.max_interval_s)
                continue
            now = self._now()
            ready, settling = settler.observe(snapshot, now)
            busy = bool(ready) or settling
            if idle is not None:
                # Before a batch starts: its tasks are submitted to a pool that is coming back.
                await self._scale(idle, busy=busy or self._runs_in_flight > 0, now=now)
            if ready:
                self._metrics.inputs_taken(sum(name not in self._released for name in ready))
                self._released.difference_update(ready)
                self._runs_in_flight += 1
                runs.start_soon(self._run_batch, ready)
            interval = backoff.next_base(interval, changed=busy)
            await self._clock.sleep(interval)

    def _now(self) -> float:
        """Seconds on the service's clock, for the settle time and the idle shutdown."""
        return self._clock.now().timestamp()

    async def _run_batch(self, names: Sequence[str]) -> None:
        retry: str | None = None
        failure: BaseException | None = None
        try:
            # One bad input (unreadable, say) is reported and left out: the others run.
            names = await self._readable(names)
            while names:
                workload = replace(self._workload, inputs=self._source.inputs(names))
                _log.info("service_batch", inputs=list(names))
                recorder = self._new_recorder() if self._new_recorder is not None else None
                try:
                    summary = await self._orchestrator.run(workload, recorder=recorder)
                except (BatchpilotError, OSError, BaseExceptionGroup) as exc:
                    # Task groups wrap what their tasks raise: a batch's own failures are still only its own.
                    error = _batch_error(exc)
                    if error is None:
                        raise
                    if isinstance(error, StateInUseError):
                        raise error from None  # another process runs this job: this service cannot
                    bad = self._unreadable_among(error, names)
                    if bad:  # unreadable since it was looked at: left out, and the others run at once
                        names = [name for name in names if name not in bad]
                        continue
                    failure = error
                else:
                    if summary.unsubmitted:
                        retry = f"{summary.unsubmitted} tasks could not be added"
                    elif summary.lost_contact:
                        retry = summary.lost_contact
                break
        finally:
            self._runs_in_flight -= 1
        if failure is not None:
            # One batch's failure (a file removed while it was uploaded, say) is reported and the service
            # goes on; its inputs are retried when they change or when the service starts again, or at
            # once when only the service's answer was missing.
            _log.error("service_batch_failed", inputs=list(names), error=str(failure))
            if isinstance(failure, TransientBackendError):
                retry = str(failure)
        if retry is not None:
            # Running the batch again is safe: what was uploaded, added or fetched is skipped.
            _log.warning("service_batch_retried", inputs=list(names), reason=retry)
            self._settler.release(names)
            self._released.update(names)

    def _unreadable_among(self, error: BaseException, names: Sequence[str]) -> set[str]:
        """The names among `names` that `error` says cannot be read, each reported as skipped."""
        if not isinstance(error, InputError) or not isinstance(self._source, FolderSource):
            return set()
        paths = set(error.paths)
        bad = {name for name in names if str(self._source.folder / name) in paths}
        for name in sorted(bad):
            _log.error("service_input_skipped", input=name, error=str(error))
        return bad

    async def _readable(self, names: Sequence[str]) -> Sequence[str]:
        """`names` without the inputs of a watched folder that cannot be read, each reported once
        (`service_input_skipped`); they are taken again when they change."""
        if not isinstance(self._source, FolderSource):
            return names
        unreadable = await anyio.to_thread.run_sync(self._source.unreadable, names)
        for name, reason in unreadable.items():
            error = f"cannot read it ({reason}); fix or remove it"
            _log.error("service_input_skipped", input=name, error=error)
        return [name for name in names if name not in unreadable]

    async def _scale(self, idle: IdleShutdown, *, busy: bool, now: float) -> None:
        size = idle.wanted(busy, now)
        if size is PoolSize.ZERO and await self._job_has_work():
            size = idle.wanted(True, now)  # the job's own tasks are work too
        if size is None:
            return
        pool = self._workload.pool
        dedicated, spot = (pool.dedicated_nodes, pool.spot_nodes) if size is PoolSize.FULL else (0, 0)
        try:
            await self._orchestrator.backend.compute.resize_pool(pool.pool_id, dedicated, spot)
        except NotFoundError:
            pass  # no pool yet: nothing to pay for, and the next run creates it at full size
        except BackendError as exc:
            _log.warning("pool_scale_failed", pool_id=pool.pool_id, size=size.value, error=str(exc))
            return
        else:
            _log.info(
                "pool_scaled",
                pool_id=pool.pool_id,
                size=size.value,
                dedicated_nodes=dedicated,
                spot_nodes=spot,
            )
            self._metrics.pool_scaled(size.value)
        idle.resized(size)

    async def _job_has_work(self) -> bool:
        """Whether the job has tasks active or running (left by an earlier start, or by a run that timed
        out). When that cannot be told the answer is yes: the pool is not taken away on a guess."""
        job_id = self._workload.job_id
        try:
            counts = await self._orchestrator.backend.compute.task_counts(job_id)
        except NotFoundError:
            return False
        except BackendError as exc:
            _log.warning("idle_check_failed", job_id=job_id, error=str(exc))
            return True
        return counts.active + counts.running > 0


def summary_line(metrics: Metrics, workload: Workload) -> str:
    """The line `serve` ends with: inputs seen, tasks submitted, succeeded and failed, what is left."""
    count = metrics.count
    # A collection sent again after its answer was lost finds its tasks in the job: submitted all the same.
    submitted = count("submitted") + count("already_in_job")
    succeeded, failed = count("succeeded"), count("failed")
    unfinished = submitted - succeeded - failed
    line = (
        f"batchpilot: serve stopped: {count('inputs_seen')} inputs seen,"
        f" {submitted} tasks submitted, {succeeded} succeeded,"
        f" {failed} failed (job {workload.job_id})"
    )
    if unfinished > 0:
        line += f"; {unfinished} not finished yet: start the service again to pick them up"
    return line


def _batch_error(exc: BaseException) -> BaseException | None:
    """The error that explains a batch's failure: `exc` itself, or for a group whose every leaf is a
    BatchpilotError or OSError, its first leaf; None for anything else (a cancellation, a bug), which is not
    the batch's to swallow."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc if isinstance(exc, BatchpilotError | OSError) else None
    matched, rest = exc.split((BatchpilotError, OSError))
    if rest is not None or matched is None:
        return None
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
