"""The bus that fans events out to subscribers, and the streams an embedder reads them from.

A subscriber is any `async def __call__(event)`. The bus gives each subscriber its own bounded inbox and its
own task, so a slow downloader never delays the monitor or the logger; a publisher waits only when an inbox
is full (backpressure). A subscriber that raises is logged and keeps receiving later events. `drain()` waits
until every inbox is empty, so a run ends only after its events are all handled.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .events import Event

_log = structlog.get_logger("batchpilot.bus")

# A subscriber's pump takes at most this many queued events in a row before letting other tasks run.
_BATCH = 64


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
        """Deliver to every subscriber but `source` (a subscriber that publishes never feeds itself).

        No trip through the event loop per inbox: an inbox with room takes the event at once, and a
        subscriber's pump takes what several publishes queued in one go; a full inbox makes the publisher
        wait (backpressure). A publisher already cancelled delivers nothing; cancelled while waiting, the
        event reaches the inboxes it reached already, and no others."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        for inbox in self._inboxes:
            if inbox.subscriber is source:
                continue
            inbox.pending += 1
            try:
                try:
                    inbox.send.send_nowait(event)
                except anyio.WouldBlock:
                    await inbox.send.send(event)
            except BaseException:
                # Not delivered (cancelled while waiting, or the bus closed): nothing to wait for in drain().
                inbox.done_one()
                raise
        for stream in list(self._streams):
            try:
                try:
                    stream.send_nowait(event)
                except anyio.WouldBlock:
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
        """Events published but not yet handled, by subscriber name (a subscriber's inbox holds at most
        `inbox_size`; a full one makes publishers wait)."""
        return {inbox.name: inbox.pending for inbox in self._inboxes}

    async def _pump(self, inbox: _Inbox, receive: MemoryObjectReceiveStream[Event]) -> None:
        async with receive:
            handled = 0
            while True:
                # Events already queued are taken without a trip through the event loop each, with a
                # checkpoint every _BATCH of them so that a long queue never holds the loop.
                try:
                    event = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        event = await receive.receive()
                    except anyio.EndOfStream:
                        return
                    handled = 0
                except anyio.EndOfStream:
                    return
                else:
                    handled += 1
                    if handled % _BATCH == 0:
                        await anyio.lowlevel.checkpoint()
                try:
                    await inbox.subscriber(event)
                except Exception:
                    # Isolation, not silence: the failure is logged with its traceback and the others go on.
                    _log.exception("subscriber_failed", subscriber=inbox.name, event_kind=event.kind)
                finally:
                    inbox.done_one()


def _describe(subscriber: Subscriber) -> str:
    return getattr(subscriber, "__name__", None) or type(subscriber).__name__
