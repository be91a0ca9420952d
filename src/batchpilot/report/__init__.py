"""The run report: one self-contained HTML page with a run's timeline, durations, failures and node time.

`model` (pure data: attempts, stages, node time), `sources` (from a run's recorder, a service's latest runs,
or the task records the service keeps), `render` (HTML and the charts' specs), `write` (checked and atomic
file writes). Importing this package loads no charting code: `render` does, when called.
"""

from __future__ import annotations

from .model import Attempt, Failure, NodeTime, Outcome, ReportData, RunInfo, Stage, build_report
from .sources import RollingRuns, of_job, of_run
from .write import ReportWriteError, check_report_path, write_report

__all__ = (
    "Attempt",
    "Failure",
    "NodeTime",
    "Outcome",
    "ReportData",
    "ReportWriteError",
    "RollingRuns",
    "RunInfo",
    "Stage",
    "build_report",
    "check_report_path",
    "of_job",
    "of_run",
    "write_report",
)
