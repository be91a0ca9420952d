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
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sequence
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


class Chunker:
    """Forms collections one task at a time, in order: at most `max_count` tasks and about `max_bytes` each.

    `push(task)` returns the collection that is full once `task` does not fit in it (`task` then starts
    the next one), else None; `flush()` returns the last, unfinished one (None if empty). A single task
    larger than `max_bytes` gets a collection of its own: the service will judge it. Pure: the submitter
    uses it to form each collection just before it is sent, `chunk_tasks` to split a list.
    """

    def __init__(
        self,
        *,
        max_count: int = MAX_TASKS_PER_REQUEST,
        max_bytes: int = _BYTES_BUDGET,
        size_of: Callable[[TaskSpec], int] = estimated_size,
    ) -> None:
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._current: list[TaskSpec] = []
        self._bytes = _ENVELOPE_BYTES

    def push(self, task: TaskSpec) -> list[TaskSpec] | None:
        size = self._size_of(task) + 1
        full: list[TaskSpec] | None = None
        if self._current and (len(self._current) >= self._max_count or self._bytes + size > self._max_bytes):
            full, self._current, self._bytes = self._current, [], _ENVELOPE_BYTES
        self._current.append(task)
        self._bytes += size
        return full

    def flush(self) -> list[TaskSpec] | None:
        last, self._current, self._bytes = self._current or None, [], _ENVELOPE_BYTES
        return last


def chunk_tasks(
    tasks: Iterable[TaskSpec],
    *,
    max_count: int = MAX_TASKS_PER_REQUEST,
    max_bytes: int = _BYTES_BUDGET,
    size_of: Callable[[TaskSpec], int] = estimated_size,
) -> list[list[TaskSpec]]:
    """Split tasks, in order, into collections of at most `max_count` and about `max_bytes` (see Chunker)."""
    chunker = Chunker(max_count=max_count, max_bytes=max_bytes, size_of=size_of)
    chunks = [full for task in tasks if (full := chunker.push(task)) is not None]
    last = chunker.flush()
    return [*chunks, last] if last is not None else chunks


async def _chunks(
    tasks: Iterable[TaskSpec] | AsyncIterable[TaskSpec],
) -> AsyncGenerator[list[TaskSpec], None]:
    """The collections of `tasks`, each formed when asked for: a lazy source builds a collection's tasks only
    then (plus the one task that starts the next collection)."""
    chunker = Chunker()
    if isinstance(tasks, AsyncIterable):
        async for task in tasks:
            if (full := chunker.push(task)) is not None:
                yield full
    else:
        for task in tasks:
            if (full := chunker.push(task)) is not None:
                yield full
    if (last := chunker.flush()) is not None:
        yield last


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
    """Adds tasks to a job in collections (add-collection requests), `in_flight` requests at a time.

    The tasks are taken lazily: each collection is formed (a lazy source's tasks built) just before it is
    sent, and dropped once answered, so that 100,000 task definitions never live at once: at most
    `2 * in_flight` collections are held (`in_flight` being sent, the others waiting for a slot or a retry).
    """

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
        self._held = 2 * max(1, in_flight)
        self._attempts = attempts
        self._backoff = backoff
        self._clock = clock or SystemClock()
        self._draw = draw

    async def submit(
        self,
        job_id: str,
        tasks: Iterable[TaskSpec] | AsyncIterable[TaskSpec],
        *,
        on_chunk: Callable[[Sequence[AddTaskResult]], Awaitable[None]] | None = None,
    ) -> SubmitReport:
        """Add `tasks` (a sequence, or an iterable or async iterable that builds each task when asked) to
        `job_id`, in order; each collection's results go to `on_chunk` once it is answered (a task retried
        after a server error comes after the others of its collection). Every task gets a final result in
        the report (a task not added is `rejected` with its reason). An exception of the source stops the
        forming of collections and is raised as it is once those already sent are answered (and given to
        `on_chunk`); one of `on_chunk` or of `compute` cancels the others."""
        report = SubmitReport()
        held = anyio.Semaphore(self._held)

        async def send(chunk: list[TaskSpec]) -> None:
            try:
                results = await self._send(job_id, chunk, report)
                del chunk  # its definitions are not kept while the next ones are built
                report.take(results)
                if on_chunk is not None:
                    await on_chunk(results)
            finally:
                held.release()

        failed: Exception | None = None
        async with anyio.create_task_group() as group:
            chunks = _chunks(tasks)
            try:
                while True:
                    await held.acquire()  # a collection is formed only when it can be held
                    try:
                        chunk = await anext(chunks, None)
                    except Exception as exc:  # the source's: nothing of it is left to send
                        failed = exc
                        chunk = None
                    if chunk is None:
                        held.release()
                        break
                    group.start_soon(send, chunk)
                    del chunk
            finally:
                await chunks.aclose()
        if failed is not None:
            raise failed
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
