"""`batchpilot serve`: one pool and one job, fed with new inputs as they arrive in a watched folder.

Runs are idempotent (deterministic task ids, an existing job reused, existing tasks not re-added, outputs on
disk not fetched again), so the service is a loop of ordinary runs: each batch of new or changed files is one
`Orchestrator.run` of the same workload (same job id, nothing deleted afterwards), several at once. On a
restart the first look takes every file present and the engine skips what the job already has.

Stopping: the watcher stops, runs still uploading or submitting finish those stages, monitoring stops
(`Orchestrator.stop_monitoring`); tasks stay in the job and the next start picks them up.

A file is taken once it is complete: its size and modification time unchanged across two looks at least
`settle_s` apart. The folder is looked at often while files are arriving or settling, then less and less
often (up to `max_interval_s`) while nothing changes.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskGroup

from .engine import Orchestrator
from .errors import BatchpilotError
from .metrics import Metrics
from .spec import Workload

_log = structlog.get_logger("batchpilot.service")

Stat = tuple[int, int]  # size, mtime in ns


@dataclass(frozen=True, slots=True)
class WatchSettings:
    pattern: str = "*"
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


class Service:
    """Feeds `workload` (its inputs replaced by each batch of new files in `folder`) to `orchestrator`."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        workload: Workload,
        folder: Path,
        metrics: Metrics,
        settings: WatchSettings = WatchSettings(),
    ) -> None:
        self._orchestrator = orchestrator
        self._workload = workload
        self._folder = folder
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
        _log.info("service_watching", folder=str(self._folder), pattern=settings.pattern)
        while True:
            try:
                snapshot = await anyio.to_thread.run_sync(scan, self._folder, settings.pattern)
            except OSError as exc:
                _log.warning("watch_failed", folder=str(self._folder), error=str(exc))
                snapshot = {}
            ready, settling = settler.observe(snapshot, anyio.current_time())
            if ready:
                self._metrics.inputs_seen += len(ready)
                runs.start_soon(self._run_batch, [self._folder / name for name in ready])
            busy = bool(ready) or settling
            interval = (
                settings.min_interval_s if busy else min(interval * settings.growth, settings.max_interval_s)
            )
            await anyio.sleep(interval)

    async def _run_batch(self, paths: Sequence[Path]) -> None:
        workload = replace(self._workload, inputs=tuple(paths))
        _log.info("service_batch", inputs=[path.name for path in paths])
        try:
            await self._orchestrator.run(workload)
        except BatchpilotError as exc:
            # One batch's failure is reported and the service goes on; its files are retried when they
            # change or when the service starts again.
            _log.error("service_batch_failed", inputs=[path.name for path in paths], error=str(exc))


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
