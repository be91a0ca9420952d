"""The run report's data, pure: task attempts, stage times, failures and node time, as one `ReportData`.

No I/O and no clock: callers pass what a run recorded and the time. The HTML renderer (`render.py`) and the
writer (`write.py`) take a `ReportData` and nothing else.

Attempts come from the run's `RunRecorder` (`batchpilot.recorder`), fed by the run's events, whose times are
the service's: Batch keeps one record per task about its latest attempt (`executionInfo.startTime`, "the
most recent time at which the task started running", `endTime` once completed, `retryCount`,
`requeueCount`, `nodeInfo.nodeId`). A live run sees those records change and tells attempts apart;
`report --job` has only each task's last record: one attempt per task, its counts saying how many came
before.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..events import FailedTask
from ..recorder import AttemptOutcome, StageSpan, TaskAttempt

# Bounds: a report is read by a person and must stay small (under 5 MB at 10,000 tasks).
MAX_ATTEMPTS = 50_000  # attempts drawn; a rolling `serve` report drops its oldest runs beyond
MAX_FAILURES = 100  # failures listed with their stderr tail
MAX_STDERR_CHARS = 4_000  # of each stderr tail, its end kept
MAX_SLOWEST = 20
MAX_RUNS = 20  # runs a rolling `serve` report keeps


class Outcome(enum.StrEnum):
    """How an attempt ended, as the report colours it. RETRIED and REQUEUED attempts were followed by another
    attempt of the task."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"  # failed, and Batch tried the task again (maxTaskRetryCount)
    REQUEUED = "requeued"  # cut short (a preempted or removed node): back to the queue
    RUNNING = "running"  # not ended when the report was made


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a task on a node, from its start to its end as the service reports them (UTC)."""

    task_id: str
    node_id: str | None
    start: datetime
    end: datetime | None  # None while running
    outcome: Outcome
    exit_code: int | None = None
    retry_count: int = 0
    requeue_count: int = 0

    def duration_s(self, now: datetime) -> float:
        return max(0.0, ((self.end or now) - self.start).total_seconds())


_OUTCOMES = {
    AttemptOutcome.SUCCEEDED: Outcome.SUCCEEDED,
    AttemptOutcome.FAILED: Outcome.FAILED,
    AttemptOutcome.RETRIED: Outcome.RETRIED,
    AttemptOutcome.REQUEUED: Outcome.REQUEUED,
    AttemptOutcome.UNFINISHED: Outcome.RUNNING,
}


def attempts_of(recorded: Iterable[TaskAttempt]) -> list[Attempt]:
    """The recorder's attempts that ran (a start is known), as the report draws them."""
    attempts = []
    for attempt in recorded:
        if attempt.start is None:
            continue  # never seen under way: nothing to draw
        outcome = _OUTCOMES[attempt.outcome]
        attempts.append(
            Attempt(
                task_id=attempt.task_id,
                node_id=attempt.node_id,
                start=attempt.start,
                end=None if outcome is Outcome.RUNNING else max(attempt.end or attempt.start, attempt.start),
                outcome=outcome,
                exit_code=attempt.exit_code,
                retry_count=attempt.retry_count,
                requeue_count=attempt.requeue_count,
            )
        )
    return attempts


@dataclass(frozen=True, slots=True)
class Stage:
    """A stage of a run on the timeline's axis (`batchpilot.recorder.Stage`'s names), UTC."""

    name: str
    start: datetime
    end: datetime


def stages_of(spans: Iterable[StageSpan], now: datetime) -> list[Stage]:
    """The recorder's stage spans; one that has not ended (the run stopped first) ends `now`."""
    return [Stage(span.stage.value, span.start, max(span.end or now, span.start)) for span in spans]


@dataclass(frozen=True, slots=True)
class Failure:
    task_id: str
    exit_code: int | None
    failure_code: str | None
    message: str
    stderr_tail: str  # its last MAX_STDERR_CHARS characters


def failure_of(failed: FailedTask) -> Failure:
    """A summary's failed task. Its reason reads `Code: message` when the service gave a failure code (as
    the engine and the recorder write it), or `not added: Code: message` for a task the service refused."""
    reason = failed.reason
    body = reason.removeprefix("not added: ")
    code, sep, _ = body.partition(": ")
    failure_code = code if sep and code and " " not in code else None
    return Failure(
        task_id=failed.task_id,
        exit_code=failed.exit_code,
        failure_code=failure_code,
        message=reason,
        stderr_tail=failed.stderr_tail[-MAX_STDERR_CHARS:],
    )


@dataclass(frozen=True, slots=True)
class NodeTime:
    """Node time of one kind (dedicated or spot; local task slots count as dedicated), in minutes."""

    kind: str
    nodes: int
    allocated_min: float
    busy_min: float

    @property
    def idle_share(self) -> float:
        return 1 - self.busy_min / self.allocated_min if self.allocated_min > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the report is about. `source` is "run", "serve" or "job" (built afterwards from the service)."""

    source: str
    backend: str
    job_id: str
    workload: str = ""
    pool_id: str = ""
    run_id: str = ""
    # As the pool asks for them (the local backend: its task slots); None when unknown (`report --job`).
    dedicated_nodes: int | None = None
    spot_nodes: int | None = None


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the HTML shows. Times in `attempts` and `stages` are UTC; `origin` is the axis's zero."""

    info: RunInfo
    generated_at: datetime
    origin: datetime
    summary_lines: tuple[str, ...]
    attempts: tuple[Attempt, ...]
    stages: tuple[Stage, ...]
    failures: tuple[Failure, ...]
    failures_not_listed: int
    node_time: tuple[NodeTime, ...]
    slowest: tuple[Attempt, ...]
    attempts_dropped: int = 0
    notes: tuple[str, ...] = ()
    tasks: int = 0
    retried_tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def node_kind(node_id: str | None) -> str:
    """Batch names a node `tvmps_<hash>_d` when dedicated and `..._p` when spot (low priority), as seen in
    the service's recorded responses; anything else (a local task slot) counts as dedicated."""
    return "spot" if node_id is not None and node_id.endswith("_p") else "dedicated"


def node_label(node_id: str | None) -> str:
    """A short row label: Batch's 70-character node ids by the start of their hash and their kind."""
    if node_id is None:
        return "(no node)"
    if node_id.startswith("tvmps_") and len(node_id) > 20:
        return f"{node_id[6:14]}…{node_id[-2:]}"
    return node_id


def _union_s(intervals: list[tuple[float, float]]) -> float:
    total = 0.0
    end = -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def node_time(
    attempts: Sequence[Attempt],
    *,
    window: tuple[datetime, datetime] | None,
    dedicated_nodes: int | None,
    spot_nodes: int | None,
    now: datetime,
) -> tuple[NodeTime, ...]:
    """Allocated node-minutes (nodes x the window they were there for) against busy ones (the union of the
    attempts on each node, clipped to the window). Nodes the pool asked for but no task ran on count as
    allocated and idle; with no pool counts (`report --job`), the nodes seen running tasks count."""
    if window is None:
        if not attempts:
            return ()
        window = (min(a.start for a in attempts), max((a.end or now) for a in attempts))
    lo, hi = window
    span_s = max(0.0, (hi - lo).total_seconds())
    by_node: dict[str | None, list[tuple[float, float]]] = {}
    for attempt in attempts:
        start = max(0.0, (attempt.start - lo).total_seconds())
        end = min(span_s, ((attempt.end or now) - lo).total_seconds())
        if end > start:
            by_node.setdefault(attempt.node_id, []).append((start, end))
        else:
            by_node.setdefault(attempt.node_id, [])
    rows = []
    for kind, asked in (("dedicated", dedicated_nodes), ("spot", spot_nodes)):
        nodes = [node for node in by_node if node_kind(node) == kind]
        count = max(len(nodes), asked or 0)
        if count == 0:
            continue
        busy_s = sum(_union_s(by_node[node]) for node in nodes)
        rows.append(NodeTime(kind, count, allocated_min=count * span_s / 60, busy_min=busy_s / 60))
    return tuple(rows)


def build_report(
    info: RunInfo,
    *,
    attempts: Sequence[Attempt],
    stages: Sequence[Stage] = (),
    failures: Sequence[Failure] = (),
    summary_lines: Sequence[str] = (),
    generated_at: datetime,
    node_window: tuple[datetime, datetime] | None = None,
    attempts_dropped: int = 0,
    notes: Sequence[str] = (),
) -> ReportData:
    """Put the parts together, computing node time, the slowest attempts and the counts by outcome."""
    starts = [a.start for a in attempts] + [s.start for s in stages]
    origin = min(starts) if starts else generated_at
    tasks = {a.task_id for a in attempts}
    retried = {a.task_id for a in attempts if a.retry_count or a.requeue_count}
    counts = {outcome.value: 0 for outcome in Outcome}
    for attempt in attempts:
        counts[attempt.outcome.value] += 1
    slowest = heapq.nlargest(MAX_SLOWEST, attempts, key=lambda a: a.duration_s(generated_at))
    return ReportData(
        info=info,
        generated_at=generated_at,
        origin=origin,
        summary_lines=tuple(summary_lines),
        attempts=tuple(attempts),
        stages=tuple(stages),
        failures=tuple(failures[:MAX_FAILURES]),
        failures_not_listed=max(0, len(failures) - MAX_FAILURES),
        node_time=node_time(
            attempts,
            window=node_window,
            dedicated_nodes=info.dedicated_nodes,
            spot_nodes=info.spot_nodes,
            now=generated_at,
        ),
        slowest=tuple(slowest),
        attempts_dropped=attempts_dropped,
        notes=tuple(notes),
        tasks=len(tasks),
        retried_tasks=len(retried),
        counts=counts,
    )
