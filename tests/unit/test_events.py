"""The event bus: isolation, backpressure, drain, and `async for` consumption. No sleeps: gates."""

from __future__ import annotations

import anyio
import pytest
import structlog

from batchpilot.bus import EventBus
from batchpilot.events import Event, RunStarted, TaskSucceeded
from batchpilot.spec import CleanupPolicy


def succeeded(n: int) -> TaskSucceeded:
    return TaskSucceeded(run_id="r", job_id="j", task_id=f"t{n}", exit_code=0, duration_s=1.0)


class Recorder:
    def __init__(self, gate: anyio.Event | None = None) -> None:
        self.seen: list[Event] = []
        self.gate = gate

    async def __call__(self, event: Event) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(event)


async def test_a_slow_subscriber_does_not_delay_the_others():
    slow, fast = Recorder(gate=anyio.Event()), Recorder()
    async with EventBus(inbox_size=100) as bus:
        bus.subscribe(slow)
        bus.subscribe(fast)
        for n in range(50):
            await bus.publish(succeeded(n))
        await anyio.wait_all_tasks_blocked()
        assert len(fast.seen) == 50
        assert slow.seen == []
        slow.gate.set()
        await bus.drain()
        assert len(slow.seen) == 50


async def test_a_full_inbox_applies_backpressure_to_the_publisher():
    slow = Recorder(gate=anyio.Event())
    published = 0
    async with EventBus(inbox_size=2) as bus:
        bus.subscribe(slow)

        async def publish_many() -> None:
            nonlocal published
            for n in range(10):
                await bus.publish(succeeded(n))
                published += 1

        async with anyio.create_task_group() as group:
            group.start_soon(publish_many)
            await anyio.wait_all_tasks_blocked()
            # one event is being handled (blocked on the gate), two wait in the inbox, the fourth send waits
            assert published == 3
            slow.gate.set()
        assert published == 10


async def test_a_failing_subscriber_is_logged_isolated_and_keeps_receiving():
    calls = 0

    async def broken(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    good = Recorder()
    with structlog.testing.capture_logs() as logs:
        async with EventBus() as bus:
            bus.subscribe(broken, name="broken")
            bus.subscribe(good)
            for n in range(3):
                await bus.publish(succeeded(n))
            await bus.drain()
    assert calls == 3
    assert len(good.seen) == 3
    failures = [log for log in logs if log["event"] == "subscriber_failed"]
    assert len(failures) == 3
    assert failures[0]["subscriber"] == "broken"
    assert failures[0]["event_kind"] == "task_succeeded"


async def test_drain_waits_for_events_that_subscribers_publish_themselves():
    final = Recorder()

    async with EventBus() as bus:

        async def relay(event: Event) -> None:
            if isinstance(event, TaskSucceeded) and event.task_id == "t0":
                await bus.publish(succeeded(99), source=relay)

        bus.subscribe(relay)
        bus.subscribe(final)
        await bus.publish(succeeded(0))
        await bus.drain()
        assert [e.task_id for e in final.seen] == ["t0", "t99"]


async def test_a_subscriber_with_concurrency_handles_events_at_once():
    gate = anyio.Event()
    started = 0

    async def handler(event: Event) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    async with EventBus() as bus:
        bus.subscribe(handler, concurrency=4)
        for n in range(6):
            await bus.publish(succeeded(n))
        await anyio.wait_all_tasks_blocked()
        assert started == 4
        gate.set()
        await bus.drain()
        assert started == 6
        assert bus.queue_depths() == {"handler": 0}


async def test_events_stream_yields_everything_until_the_bus_closes():
    received: list[Event] = []
    async with anyio.create_task_group() as group, EventBus() as bus:
        stream = bus.stream()

        async def consume() -> None:
            async for event in stream:
                received.append(event)

        group.start_soon(consume)
        started = RunStarted(
            run_id="r", workload="w", job_id="j", pool_id="p", input_count=1, input_container="i",
            output_container="o", download_to=None, cleanup=CleanupPolicy(),
        )  # fmt: skip
        await bus.publish(started)
        await bus.publish(succeeded(1))
    assert [event.kind for event in received] == ["run_started", "task_succeeded"]


async def test_subscribing_needs_an_open_bus():
    with pytest.raises(RuntimeError, match="open"):
        EventBus().subscribe(Recorder())


def test_events_are_frozen_and_carry_utc_times():
    event = succeeded(1)
    assert event.at.tzinfo is not None
    with pytest.raises(AttributeError):
        event.task_id = "x"  # type: ignore[misc]


async def test_concurrent_drains_all_return():
    gate = Recorder(gate=anyio.Event())
    finished = 0
    async with EventBus() as bus:
        bus.subscribe(gate)
        await bus.publish(succeeded(1))

        async def drain() -> None:
            nonlocal finished
            await bus.drain()
            finished += 1

        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            group.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            assert finished == 0
            gate.gate.set()
    assert finished == 2


async def test_a_burst_reaches_every_subscriber_in_order_and_a_long_queue_never_holds_the_loop():
    """Publishing puts an event in each inbox without a trip through the event loop per inbox, and a
    subscriber takes what is queued in a row; still every event arrives, in order, and other tasks run while
    a subscriber works through a long queue (it lets them every so many events)."""
    first, second = Recorder(), Recorder()
    progress: list[int] = []
    async with anyio.create_task_group() as group, EventBus(inbox_size=1000) as bus:
        bus.subscribe(first, name="first")
        bus.subscribe(second, name="second")

        async def watch() -> None:
            while True:
                progress.append(len(first.seen))
                await anyio.lowlevel.checkpoint()

        group.start_soon(watch)
        for n in range(500):
            await bus.publish(succeeded(n))
        assert bus.queue_depths() == {"first": 500, "second": 500}  # queued, none handled yet
        await bus.drain()
        group.cancel_scope.cancel()
    assert [event.task_id for event in first.seen] == [f"t{n}" for n in range(500)]
    assert second.seen == first.seen
    assert any(0 < seen < 500 for seen in progress)  # the watcher ran while the queue was worked through


async def test_a_publisher_already_cancelled_delivers_nothing():
    seen = Recorder()
    async with EventBus() as bus:
        bus.subscribe(seen)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await bus.publish(succeeded(1))
        await bus.publish(succeeded(2))
        await bus.drain()
    assert [event.task_id for event in seen.seen] == ["t2"]
