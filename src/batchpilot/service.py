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
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskGroup

from .backends.base import Storage
from .engine import Orchestrator
from .errors import BackendError, BatchpilotError
from .metrics import Metrics
from .spec import BlobInputs, Workload

_log = structlog.get_logger("batchpilot.service")

Stat = tuple[int, int]  # size, mtime in ns


@dataclass(frozen=True, slots=True)
class WatchSettings:
    settle_s: float = 1.0
    min_interval_s: float = 0.25
    max_interval_s: float = 5.0
    growth: float = 1.5


class Settler:
    """Pure: which files are complete, given successive looks at a folder (name -> (size, mtime)) and when.

    A name is ready when its stat has not changed for `settle_s` across at least two looks, and it was not
    already taken with that same stat (a file rewritten later is taken again: new content, a new task).
    """

    def __init__(self, settle_s: float) -> None:
        self._settle_s = settle_s
        self._since: dict[str, tuple[Stat, float]] = {}
        self._taken: dict[str, Stat] = {}

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
            except FileNotFoundError:
                continue  # removed between the listing and the stat
    return found


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
    """Feeds `workload` (its inputs replaced by each batch of new inputs in `source`) to `orchestrator`."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        workload: Workload,
        source: Source,
        metrics: Metrics,
        settings: WatchSettings = WatchSettings(),
    ) -> None:
        self._orchestrator = orchestrator
        self._workload = workload
        self._source = source
        self._metrics = metrics
        self._settings = settings

    async def run(self, stop: anyio.Event) -> None:
        """Watch and run until `stop` is set; then finish uploads and submissions in flight and return."""
        async with anyio.create_task_group() as runs:
            async with anyio.create_task_group() as watching:
                watching.start_soon(self._watch, runs)
                await stop.wait()
                watching.cancel_scope.cancel()
            _log.info("service_stopping", detail="no new inputs; finishing uploads and submissions in flight")
            self._orchestrator.stop_monitoring()

    async def _watch(self, runs: TaskGroup) -> None:
        settings = self._settings
        settler = Settler(settings.settle_s)
        interval = settings.min_interval_s
        where = self._source.describe()
        _log.info("service_watching", source=where)
        while True:
            try:
                snapshot = await self._source.look()
            except (OSError, BackendError) as exc:
                # Unknown is not empty: files already taken stay taken, and the next look tries again.
                _log.warning("watch_failed", source=where, error=str(exc))
                await anyio.sleep(settings.max_interval_s)
                continue
            ready, settling = settler.observe(snapshot, anyio.current_time())
            if ready:
                self._metrics.inputs_seen += len(ready)
                runs.start_soon(self._run_batch, ready)
            busy = bool(ready) or settling
            interval = (
                settings.min_interval_s if busy else min(interval * settings.growth, settings.max_interval_s)
            )
            await anyio.sleep(interval)

    async def _run_batch(self, names: Sequence[str]) -> None:
        workload = replace(self._workload, inputs=self._source.inputs(names))
        _log.info("service_batch", inputs=list(names))
        try:
            await self._orchestrator.run(workload)
        except (BatchpilotError, OSError) as exc:
            # One batch's failure (a file removed while it was uploaded, say) is reported and the service
            # goes on; its inputs are retried when they change or when the service starts again.
            _log.error("service_batch_failed", inputs=list(names), error=str(exc))


def summary_line(metrics: Metrics, workload: Workload) -> str:
    counters = metrics.counters
    unfinished = (
        counters["submitted"] + counters["already_in_job"] - counters["succeeded"] - counters["failed"]
    )
    line = (
        f"batchpilot: serve stopped: {metrics.inputs_seen} inputs seen,"
        f" {counters['submitted']} tasks submitted, {counters['succeeded']} succeeded,"
        f" {counters['failed']} failed (job {workload.job_id})"
    )
    if unfinished > 0:
        line += f"; {unfinished} not finished yet: start the service again to pick them up"
    return line
