"""The command line's side of the run report: `run --report`, `serve --report` and `batchpilot report`.

The report is written when the run ends, whatever the end (done, failed, timed out, interrupted); a report
that cannot be written is one line and changes neither the run's exit code nor its outputs. `serve` rewrites
its report atomically at most every `--report-every` seconds, and once more when it stops. Rendering (the
charting library, ~1 s the first time in a process) runs in a worker thread in `serve`, off the event loop.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from .backends.base import Backend
from .errors import ConfigError, NotFoundError
from .events import RunSummary
from .logging import redact_text
from .recorder import RunRecorder
from .report.model import ReportData, RunInfo
from .report.sources import RollingRuns, of_job, of_run
from .report.write import ReportWriteError, check_report_path, write_report
from .spec import PoolSpec, Workload

Say = Callable[[str], None]
DEFAULT_EVERY_S = 30.0


def add_report_option(parser: argparse.ArgumentParser, *, rolling: bool = False) -> None:
    """`--report FILE.html` (and, for `serve`, `--report-every SECONDS`)."""
    when = (
        "rewritten while the service runs and when it stops"
        if rolling
        else "written when the run ends, also when it failed, timed out or was interrupted"
    )
    parser.add_argument(
        "--report", type=Path, metavar="FILE.html",
        help=f"a self-contained HTML report (timeline per node, durations, failures, node time), {when}",
    )  # fmt: skip
    if rolling:
        parser.add_argument(
            "--report-every", type=_seconds, default=DEFAULT_EVERY_S, metavar="SECONDS",
            help=f"rewrite --report at most this often (default: {DEFAULT_EVERY_S:.0f})",
        )  # fmt: skip


def add_report_command(
    commands: argparse._SubParsersAction[Any],
    *,
    backend_options: Callable[[argparse.ArgumentParser], None],
    log_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    report = commands.add_parser(
        "report",
        help="write the HTML report of a job from the task records the service keeps",
        description=(
            "Build the run report of a job afterwards, from the service alone (each task's node, start and "
            "end times, exit code, retry and requeue counts, and the stderr of failed tasks while their node "
            "keeps it): it works after the orchestrator died, or on another machine. The service keeps only "
            "a task's latest attempt; `run --report` draws every attempt and the run's stages."
        ),
    )
    report.add_argument("--job", required=True, help="the job's id (the run's summary names it)")
    report.add_argument(
        "--out", type=Path, metavar="FILE.html", help="where to write it (default: ./JOB-report.html)"
    )
    backend_options(report)
    log_options(report)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and 86400 seconds")
    return value


def _pool_nodes(pool: PoolSpec, backend: str) -> tuple[int, int]:
    """The rows the timeline has: nodes on Batch; task slots on the local backend (all dedicated)."""
    if backend == "local":
        return pool.total_slots, 0
    return pool.dedicated_nodes, pool.spot_nodes


def _info(source: str, backend: str, workload: Workload) -> RunInfo:
    dedicated, spot = _pool_nodes(workload.pool, backend)
    return RunInfo(
        source=source,
        backend=backend,
        job_id=workload.job_id,
        workload=workload.name,
        pool_id=workload.pool.pool_id,
        dedicated_nodes=dedicated,
        spot_nodes=spot,
    )


def _render_and_write(path: Path, data: ReportData) -> int:
    from .report.render import render_html  # the charting library loads only when a report is written

    return write_report(path, render_html(data, redact=redact_text))


@dataclass
class RunReport:
    """`run --report`: checked before anything is created, written when the run ends."""

    path: Path
    backend: str
    recorder: RunRecorder = field(default_factory=RunRecorder)
    info: RunInfo | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunReport | None:
        """None without --report; ConfigError (exit 2) when the path cannot be written."""
        if args.report is None:
            return None
        return cls(check_report_path(args.report), args.backend)

    def start(self, workload: Workload) -> RunRecorder:
        """The recorder to give `Orchestrator.run` for this workload."""
        self.info = _info("run", self.backend, workload)
        return self.recorder

    def finish(self, summary: RunSummary | None, lines: Sequence[str], say: Say) -> None:
        """Write the report (`summary` None: the run ended early). Says one line either way; never raises
        for a report that cannot be written."""
        if self.info is None or self.recorder.run_id is None:
            return  # the run never started: nothing to draw
        if summary is None:
            summary = self.recorder.summary(elapsed_s=0.0, timed_out=False, monitoring_stopped=False)
        data = of_run(
            self.recorder, self.info, generated_at=datetime.now(UTC), summary=summary, summary_lines=lines
        )
        try:
            size = _render_and_write(self.path, data)
        except ReportWriteError as exc:
            say(f"batchpilot: {exc}; the run and its outputs are not affected")
            return
        say(f"  report:  {self.path} ({size / 1e6:.1f} MB, {len(data.attempts)} task attempts)")


@dataclass
class RollingReport:
    """`serve --report`: the service's latest batches, rewritten at most every `every_s` seconds."""

    path: Path
    every_s: float
    backend: str
    info: RunInfo | None = None
    runs: RollingRuns = field(default_factory=RollingRuns)
    _failing: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RollingReport | None:
        """None without --report; ConfigError (exit 2) when the path cannot be written."""
        if args.report is None:
            return None
        return cls(check_report_path(args.report), args.report_every, args.backend)

    def start(self, workload: Workload) -> Callable[[], RunRecorder]:
        """What makes each batch's recorder (give it to `Service(new_recorder=...)`)."""
        self.info = _info("serve", self.backend, workload)
        return self.runs.new_recorder

    async def keep_writing(self, lines: Callable[[], str]) -> None:
        """Rewrite the report every `every_s` seconds until cancelled."""
        while True:
            await anyio.sleep(self.every_s)
            await self.write(lines)

    async def write(self, lines: Callable[[], str]) -> None:
        if self.info is None:
            return
        data = self.runs.data(self.info, generated_at=datetime.now(UTC), summary_lines=[lines()])
        try:
            await anyio.to_thread.run_sync(_render_and_write, self.path, data)
        except ReportWriteError as exc:
            if not self._failing:  # one warning per stretch of failures, not one per rewrite
                structlog.get_logger("batchpilot.report").warning("report_not_written", error=str(exc))
            self._failing = True
            return
        self._failing = False


async def report_command(args: argparse.Namespace, *, open_backend: Callable[[], Backend], say: Say) -> None:
    """`batchpilot report --job JOB [--out FILE.html]`."""
    path: Path = args.out or Path(f"{re.sub(r'[^A-Za-z0-9_.-]', '_', args.job)[:64]}-report.html")
    check_report_path(path, flag="--out")
    async with open_backend() as backend:
        try:
            data = await of_job(
                backend.compute,
                args.job,
                RunInfo(source="job", backend=args.backend, job_id=args.job),
                generated_at=datetime.now(UTC),
            )
        except NotFoundError:
            raise ConfigError(
                f"--job {args.job}: no such job on the {args.backend} backend; give the job id a run's"
                " summary names (and the same --backend and --state-dir)"
            ) from None
    try:
        size = await anyio.to_thread.run_sync(_render_and_write, path, data)
    except ReportWriteError as exc:
        raise ConfigError(f"{exc}; choose another --out") from None
    say(f"batchpilot: report of job {args.job}: {path} ({size / 1e6:.1f} MB, {data.tasks} tasks)")
