from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from batchpilot.concurrency import for_each


async def test_every_item_is_called_once_with_at_most_the_limit_in_flight():
    in_flight = peak = 0
    seen: list[int] = []

    async def call(item: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.lowlevel.checkpoint()
        seen.append(item)
        in_flight -= 1

    await for_each(range(50), call, concurrency=4)
    assert sorted(seen) == list(range(50))
    assert peak == 4


async def test_the_items_are_started_in_their_order():
    started: list[int] = []

    async def call(item: int) -> None:
        started.append(item)
        await anyio.lowlevel.checkpoint()

    await for_each(range(20), call, concurrency=3)
    assert started == list(range(20))


async def test_the_first_error_stops_the_rest_and_is_raised():
    started: list[int] = []

    async def call(item: int) -> None:
        started.append(item)
        if item == 2:
            raise ValueError("bad item")
        await anyio.sleep_forever()

    with pytest.raises(ExceptionGroup) as caught:
        await for_each(range(100), call, concurrency=3)
    assert caught.group_contains(ValueError, match="bad item")
    assert len(started) < 100
