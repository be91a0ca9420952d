"""Bounded fan-out over many items without a task per item."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sized
from typing import TypeVar

import anyio

T = TypeVar("T")


async def for_each(items: Iterable[T], call: Callable[[T], Awaitable[None]], *, concurrency: int) -> None:
    """Await `call(item)` for every item, at most `concurrency` at a time, in the items' order of start.

    A fixed set of workers pulls from one iterator: a task per item waiting on a limiter costs about 6 KB
    each while it waits, which is 58 MB of the orchestrator's peak for 10,000 inputs. The first error cancels
    the rest, as in a task group.
    """
    if isinstance(items, Sized):  # never more workers than items: `concurrency` may be any count
        concurrency = min(concurrency, len(items))
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await call(item)

    async with anyio.create_task_group() as group:
        for _ in range(max(1, concurrency)):
            group.start_soon(worker)
