"""Adding tasks: a pure chunker and an async submitter with several collections in flight.

The service takes at most 100 tasks and 1 MB of body per add-collection request. The chunker keeps under both
using an estimate of each task's JSON size with a margin; if the service still says the body is too large, the
submitter halves the chunk. Per-task server errors and transient failures of a whole request are retried with
backoff; `TaskExists` is success, since ids are deterministic and a re-run finds the task it already added;
for a task resent after its request's answer was lost (the request may have been applied before its
connection dropped), `TaskExists` means this run added it, and it is reported as added.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from .backends.base import Compute
from .backoff import BackoffPolicy
from .clock import Clock, SystemClock
from .errors import RequestTooLargeError, TransientBackendError
from .records import AddStatus, AddTaskResult
from .spec import TaskSpec

MAX_TASKS_PER_REQUEST = 100
MAX_REQUEST_BYTES = 1_000_000
# Our estimate uses our own field names; the wire JSON differs a little (camelCase, nesting), hence a margin.
_BYTES_BUDGET = int(MAX_REQUEST_BYTES * 0.7)
_ENVELOPE_BYTES = 64

_log = structlog.get_logger("batchpilot.submit")


def estimated_size(task: TaskSpec) -> int:
    return len(json.dumps(dataclasses.asdict(task), default=str).encode())


def chunk_tasks(
    tasks: Iterable[TaskSpec],
    *,
    max_count: int = MAX_TASKS_PER_REQUEST,
    max_bytes: int = _BYTES_BUDGET,
    size_of: Callable[[TaskSpec], int] = estimated_size,
) -> list[list[TaskSpec]]:
    """Split tasks, in order, into collections of at most `max_count` and about `max_bytes`.

    A single task larger than `max_bytes` gets a chunk of its own: the service will judge it.
    """
    chunks: list[list[TaskSpec]] = []
    current: list[TaskSpec] = []
    current_bytes = _ENVELOPE_BYTES
    for task in tasks:
        size = size_of(task) + 1
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            chunks.append(current)
            current, current_bytes = [], _ENVELOPE_BYTES
        current.append(task)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


@dataclass(slots=True)
class SubmitReport:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    rejected: list[AddTaskResult] = field(default_factory=list)
    requests: int = 0
    retries: int = 0

    def take(self, results: Iterable[AddTaskResult]) -> None:
        for result in results:
            if result.status is AddStatus.ADDED:
                self.added.append(result.task_id)
            elif result.status is AddStatus.EXISTS:
                self.existing.append(result.task_id)
            else:
                self.rejected.append(result)


class Submitter:
    def __init__(
        self,
        compute: Compute,
        *,
        in_flight: int = 4,
        attempts: int = 5,
        backoff: BackoffPolicy = BackoffPolicy(initial=0.5, factor=2.0, cap=30.0),
        clock: Clock | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._compute = compute
        self._limiter = anyio.CapacityLimiter(max(1, in_flight))
        self._attempts = attempts
        self._backoff = backoff
        self._clock = clock or SystemClock()
        self._draw = draw

    async def submit(
        self,
        job_id: str,
        tasks: Sequence[TaskSpec],
        *,
        on_chunk: Callable[[Sequence[AddTaskResult]], Awaitable[None]] | None = None,
    ) -> SubmitReport:
        report = SubmitReport()

        async def send(chunk: list[TaskSpec]) -> None:
            results = await self._send(job_id, chunk, report)
            report.take(results)
            if on_chunk is not None:
                await on_chunk(results)

        async with anyio.create_task_group() as group:
            for chunk in chunk_tasks(tasks):
                group.start_soon(send, chunk)
        return report

    async def _send(self, job_id: str, chunk: list[TaskSpec], report: SubmitReport) -> list[AddTaskResult]:
        """Add one chunk; returns a final result for every task in it."""
        final: list[AddTaskResult] = []
        pending = chunk
        base: float | None = None
        # Tasks sent in a request whose answer was lost (or that got a server error): the service may have
        # added them, so on a resend TaskExists means this run added them, not that they were there before.
        unanswered: set[str] = set()
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            try:
                async with self._limiter:
                    report.requests += 1
                    results = await self._compute.add_tasks(job_id, pending)
            except RequestTooLargeError:
                if len(pending) == 1:
                    return [*final, _too_large(pending[0])]
                middle = len(pending) // 2
                halves = [
                    await self._send(job_id, part, report) for part in (pending[:middle], pending[middle:])
                ]
                return [*final, *halves[0], *halves[1]]
            except TransientBackendError as exc:
                retry_after = exc.retry_after
                unanswered.update(task.task_id for task in pending)
                if attempt == self._attempts:
                    return [*final, *(_gave_up(task, str(exc)) for task in pending)]
                _log.warning(
                    "add_tasks_retry", job_id=job_id, tasks=len(pending), attempt=attempt, error=str(exc)
                )
            else:
                results = [_added_by_resend(r) if r.task_id in unanswered else r for r in results]
                by_id = {task.task_id: task for task in pending}
                retry = [by_id[r.task_id] for r in results if r.status is AddStatus.SERVER_ERROR]
                unanswered.update(task.task_id for task in retry)
                final.extend(r for r in results if r.status is not AddStatus.SERVER_ERROR)
                if not retry:
                    return final
                if attempt == self._attempts:
                    return [*final, *(r for r in results if r.status is AddStatus.SERVER_ERROR)]
                _log.warning("add_tasks_partial_retry", job_id=job_id, tasks=len(retry), attempt=attempt)
                pending = retry
            report.retries += 1
            base = self._backoff.next_base(base, changed=False)
            await self._clock.sleep(self._backoff.delay(base, unit=self._draw(), retry_after=retry_after))
        raise AssertionError("unreachable: the last attempt returns")


def _added_by_resend(result: AddTaskResult) -> AddTaskResult:
    """TaskExists for a task this run sent before without an answer: the earlier request added it."""
    if result.status is not AddStatus.EXISTS:
        return result
    return AddTaskResult(result.task_id, AddStatus.ADDED)


def _too_large(task: TaskSpec) -> AddTaskResult:
    return AddTaskResult(
        task.task_id,
        AddStatus.CLIENT_ERROR,
        "RequestBodyTooLarge",
        "this task alone is over the service's 1 MB request limit: shorten its command line or file lists",
    )


def _gave_up(task: TaskSpec, error: str) -> AddTaskResult:
    return AddTaskResult(task.task_id, AddStatus.SERVER_ERROR, "RetriesExhausted", error)
