"""Typed events and the bus that fans them out to subscribers.

Every event is a frozen dataclass with `run_id`, `at` (UTC) and a stable `kind`, the name it is logged under.
A subscriber is any `async def __call__(event)`. The bus gives each subscriber its own bounded inbox and its
own task, so a slow downloader never delays the monitor or the logger; a publisher waits only when an inbox
is full (backpressure). A subscriber that raises is logged and keeps receiving later events. `drain()` waits
until every inbox is empty, so a run ends only after its events are all handled.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .backends.base import FailureInfo, TaskState
from .spec import CleanupPolicy

_log = structlog.get_logger("batchpilot.events")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    run_id: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    workload: str
    job_id: str
    pool_id: str
    input_count: int
    input_container: str
    output_container: str
    download_to: Path | None
    cleanup: CleanupPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class InputUploaded(Event):
    kind: ClassVar[str] = "input_uploaded"
    blob_name: str
    size: int
    skipped: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolDeletionPending(Event):
    """The pool's id is still being deleted (a previous run's cleanup): the run waits until it is gone."""

    kind: ClassVar[str] = "pool_deletion_pending"
    pool_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolReady(Event):
    kind: ClassVar[str] = "pool_ready"
    pool_id: str
    created: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodesReady(Event):
    """The pool has nodes that can run tasks (on Azure this can take minutes after PoolReady)."""

    kind: ClassVar[str] = "nodes_ready"
    pool_id: str
    nodes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobReady(Event):
    kind: ClassVar[str] = "job_ready"
    job_id: str
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksSubmitted(Event):
    kind: ClassVar[str] = "tasks_submitted"
    job_id: str
    added: int
    existing: int
    rejected: tuple[tuple[str, str], ...] = ()  # (task_id, reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStateChanged(Event):
    kind: ClassVar[str] = "task_state_changed"
    job_id: str
    task_id: str
    previous: TaskState | None
    state: TaskState
    node_id: str | None = None
    exit_code: int | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    requeue_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(Event):
    kind: ClassVar[str] = "task_succeeded"
    job_id: str
    task_id: str
    exit_code: int | None
    duration_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(Event):
    kind: ClassVar[str] = "task_failed"
    job_id: str
    task_id: str
    exit_code: int | None
    failure: FailureInfo | None
    duration_s: float | None
    stderr_tail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRequeued(Event):
    kind: ClassVar[str] = "task_requeued"
    job_id: str
    task_id: str
    previous: TaskState
    retry_count: int
    requeue_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorDegraded(Event):
    """Several polls in a row failed: task states are unknown (not failed) until one succeeds again."""

    kind: ClassVar[str] = "monitor_degraded"
    job_id: str
    failed_polls: int
    error: str
    gives_up_in_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorRecovered(Event):
    kind: ClassVar[str] = "monitor_recovered"
    job_id: str
    failed_polls: int
    degraded_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputDownloaded(Event):
    kind: ClassVar[str] = "output_downloaded"
    job_id: str
    task_id: str
    blob_name: str
    path: Path
    size: int
    skipped: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputDownloadFailed(Event):
    kind: ClassVar[str] = "output_download_failed"
    job_id: str
    task_id: str
    blob_name: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceDeleted(Event):
    kind: ClassVar[str] = "resource_deleted"
    resource: str  # "container" | "job" | "pool"
    resource_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceKept(Event):
    """A resource the run leaves in place, with the command that removes it (pools cost money)."""

    kind: ClassVar[str] = "resource_kept"
    resource: str
    resource_id: str
    reason: str
    delete_command: str


@dataclass(frozen=True, slots=True)
class FailedTask:
    task_id: str
    exit_code: int | None
    reason: str
    stderr_tail: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    job_id: str
    workload: str
    tasks: int
    succeeded: int
    failed: tuple[FailedTask, ...]
    uploaded: int
    upload_skipped: int
    tasks_added: int
    tasks_existing: int
    downloaded: int
    download_skipped: int
    download_failed: int
    elapsed_s: float
    timed_out: bool = False
    stopped: bool = False  # monitoring was stopped (a service shutting down) before every task finished
    # Why monitoring gave up on a service that stopped answering; the tasks went on without us.
    lost_contact: str | None = None
    # Tasks the service could not take even after retries (5xx, throttling, lost connections): a re-run
    # adds them, unlike tasks it refused as invalid.
    unsubmitted: int = 0

    @property
    def ok(self) -> bool:
        return (
            not self.timed_out
            and not self.stopped
            and self.lost_contact is None
            and self.succeeded == self.tasks
            and not self.failed
            and self.download_failed == 0
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    summary: RunSummary


Subscriber = Callable[[Event], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Inbox:
    name: str
    subscriber: Subscriber
    send: MemoryObjectSendStream[Event]
    pending: int = 0
    idle: anyio.Event | None = None

    def done_one(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.idle is not None:
            self.idle.set()


class EventStream:
    """`async for event in stream`: the events published after the stream was opened, until the bus closes."""

    def __init__(self, receive: MemoryObjectReceiveStream[Event]) -> None:
        self._receive = receive

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        async with self._receive:
            async for event in self._receive:
                yield event


class EventBus:
    """Fan-out of events to subscribers, each with a bounded inbox and a task of its own."""

    def __init__(self, *, inbox_size: int = 1024) -> None:
        self._inbox_size = inbox_size
        self._inboxes: list[_Inbox] = []
        self._streams: list[MemoryObjectSendStream[Event]] = []
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        # Closing the send side lets each subscriber finish what is queued and end; the task group waits.
        # When the owner is failing or cancelled, queued work is abandoned instead.
        if exc is not None and self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        for inbox in self._inboxes:
            inbox.send.close()
        for stream in self._streams:
            stream.close()
        assert self._task_group is not None
        return await self._task_group.__aexit__(exc_type, exc, tb)

    def subscribe(self, subscriber: Subscriber, *, name: str | None = None, concurrency: int = 1) -> None:
        """Deliver every later event to `subscriber`, `concurrency` at a time (in order when 1)."""
        if self._task_group is None:
            raise RuntimeError("subscribe() needs the bus to be open (async with EventBus())")
        send, receive = anyio.create_memory_object_stream[Event](self._inbox_size)
        inbox = _Inbox(name or _describe(subscriber), subscriber, send)
        self._inboxes.append(inbox)
        for _ in range(max(1, concurrency)):
            self._task_group.start_soon(self._pump, inbox, receive.clone(), name=f"subscriber:{inbox.name}")
        receive.close()

    def stream(self, max_buffer: float = math.inf) -> EventStream:
        """A stream of every event from now on. Unbounded by default: the reader sets its own pace."""
        send, receive = anyio.create_memory_object_stream[Event](max_buffer)
        self._streams.append(send)
        return EventStream(receive)

    async def publish(self, event: Event, *, source: Subscriber | None = None) -> None:
        """Deliver to every subscriber but `source` (a subscriber that publishes never feeds itself)."""
        for inbox in self._inboxes:
            if inbox.subscriber is source:
                continue
            inbox.pending += 1
            try:
                await inbox.send.send(event)
            except BaseException:
                # Not delivered (cancelled while waiting, or the bus closed): nothing to wait for in drain().
                inbox.done_one()
                raise
        for stream in list(self._streams):
            try:
                await stream.send(event)
            except anyio.BrokenResourceError:
                self._streams.remove(stream)  # the reader went away

    async def drain(self) -> None:
        """Wait until every subscriber has handled every event published so far, including their own."""
        while busy := next((inbox for inbox in self._inboxes if inbox.pending), None):
            # Several runs may drain at once: they share one event per inbox, renewed only once it fired.
            if busy.idle is None or busy.idle.is_set():
                busy.idle = anyio.Event()
            await busy.idle.wait()

    def queue_depths(self) -> dict[str, int]:
        return {inbox.name: inbox.pending for inbox in self._inboxes}

    async def _pump(self, inbox: _Inbox, receive: MemoryObjectReceiveStream[Event]) -> None:
        async with receive:
            async for event in receive:
                try:
                    await inbox.subscriber(event)
                except Exception:
                    # Isolation, not silence: the failure is logged with its traceback and the others go on.
                    _log.exception("subscriber_failed", subscriber=inbox.name, event_kind=event.kind)
                finally:
                    inbox.done_one()


def _describe(subscriber: Subscriber) -> str:
    return getattr(subscriber, "__name__", None) or type(subscriber).__name__
