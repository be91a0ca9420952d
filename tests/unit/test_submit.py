from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from batchpilot.errors import RequestTooLargeError, TransientBackendError
from batchpilot.records import AddStatus, AddTaskResult
from batchpilot.spec import TaskSpec
from batchpilot.submit import MAX_TASKS_PER_REQUEST, Submitter
from tests.helpers import FakeClock, FakeCompute


def tasks(n: int, command_size: int = 10) -> list[TaskSpec]:
    return [TaskSpec(f"t{i}", "x" * command_size) for i in range(n)]


async def test_requests_run_several_at_once_and_never_exceed_the_limit():
    in_flight = peak = 0
    release = anyio.Event()
    compute = FakeCompute()
    original = compute.add_tasks

    async def slow_add(job_id, batch):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return await original(job_id, batch)

    compute.add_tasks = slow_add
    report = None

    async def submit():
        nonlocal report
        report = await Submitter(compute, in_flight=3).submit("job", tasks(1000))

    async with anyio.create_task_group() as group:
        group.start_soon(submit)
        await anyio.wait_all_tasks_blocked()
        assert peak == 3
        release.set()
    assert len(report.added) == 1000
    assert all(len(batch) <= MAX_TASKS_PER_REQUEST for batch in compute.calls_named("add_tasks"))


async def test_task_exists_counts_as_success():
    compute = FakeCompute(
        add_results=lambda batch: [
            AddTaskResult(t.task_id, AddStatus.EXISTS if i % 2 else AddStatus.ADDED)
            for i, t in enumerate(batch)
        ]
    )
    report = await Submitter(compute).submit("job", tasks(10))
    assert (len(report.added), len(report.existing), report.rejected) == (5, 5, [])


async def test_a_too_large_body_splits_the_chunk_until_it_fits():
    compute = FakeCompute()
    original = compute.add_tasks

    async def picky(job_id, batch):
        if len(batch) > 25:
            compute.calls.append(("too_large", len(batch)))
            raise RequestTooLargeError("too big", code="RequestBodyTooLarge")
        return await original(job_id, batch)

    compute.add_tasks = picky
    report = await Submitter(compute).submit("job", tasks(100))
    assert sorted(report.added, key=lambda s: int(s[1:])) == [f"t{i}" for i in range(100)]
    assert compute.calls_named("too_large") == [100, 50, 50]
    assert [len(b) for b in compute.calls_named("add_tasks")] == [25, 25, 25, 25]


async def test_a_single_task_too_large_is_rejected_not_retried_forever():
    compute = FakeCompute()

    async def never(job_id, batch):
        raise RequestTooLargeError("too big")

    compute.add_tasks = never
    report = await Submitter(compute).submit("job", tasks(2))
    assert [(r.task_id, r.error_code) for r in report.rejected] == [
        ("t0", "RequestBodyTooLarge"),
        ("t1", "RequestBodyTooLarge"),
    ]


async def test_transient_errors_retry_honouring_retry_after():
    clock = FakeClock()
    failures = [TransientBackendError("throttled", code="TooManyRequests", retry_after=7.0)]
    compute = FakeCompute()
    original = compute.add_tasks

    async def flaky(job_id, batch):
        if failures:
            raise failures.pop()
        return await original(job_id, batch)

    compute.add_tasks = flaky
    report = await Submitter(compute, clock=clock, draw=lambda: 0.5).submit("job", tasks(3))
    assert len(report.added) == 3
    assert clock.sleeps == [7.0]
    assert report.retries == 1


async def test_per_task_server_errors_are_retried_for_those_tasks_only():
    clock = FakeClock()
    attempts: list[list[str]] = []

    def results(batch):
        attempts.append([t.task_id for t in batch])
        first = len(attempts) == 1
        return [
            AddTaskResult(
                t.task_id, AddStatus.SERVER_ERROR if first and t.task_id == "t1" else AddStatus.ADDED
            )
            for t in batch
        ]

    report = await Submitter(FakeCompute(add_results=results), clock=clock, draw=lambda: 0.5).submit(
        "job", tasks(3)
    )
    assert attempts == [["t0", "t1", "t2"], ["t1"]]
    assert sorted(report.added) == ["t0", "t1", "t2"]


async def test_persistent_failure_gives_up_with_a_reason_per_task():
    async def down(job_id, batch):
        raise TransientBackendError("503 server busy")

    compute = FakeCompute()
    compute.add_tasks = down
    clock = FakeClock()
    report = await Submitter(compute, attempts=3, clock=clock, draw=lambda: 0.5).submit("job", tasks(2))
    assert [r.error_code for r in report.rejected] == ["RetriesExhausted", "RetriesExhausted"]
    assert len(clock.sleeps) == 2
    assert clock.sleeps[1] > clock.sleeps[0]  # backoff grows


async def test_client_errors_are_reported_not_retried():
    def reject(batch):
        return [
            AddTaskResult(t.task_id, AddStatus.CLIENT_ERROR, "InvalidPropertyValue", "bad") for t in batch
        ]

    compute = FakeCompute(add_results=reject)
    report = await Submitter(compute).submit("job", tasks(2))
    assert len(compute.calls_named("add_tasks")) == 1
    assert [r.error_code for r in report.rejected] == ["InvalidPropertyValue"] * 2


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101])
async def test_counts_at_the_edges(count):
    compute = FakeCompute()
    report = await Submitter(compute).submit("job", tasks(count))
    assert len(report.added) == count
    assert len(compute.calls_named("add_tasks")) == (count + 99) // 100


# --- 17: task definitions built a collection at a time ----------------------------------------------------


async def test_tasks_are_built_a_collection_at_a_time_not_all_before_the_first_is_sent():
    """100,000 definitions (SAS URLs, command lines) must not live at once: a collection is built just
    before it is sent, and at most 2 x in_flight collections are held."""
    total, in_flight = 2000, 2
    built = 0
    built_at_send: list[int] = []

    async def source():
        nonlocal built
        for task in tasks(total):
            built += 1
            yield task

    compute = FakeCompute()
    original = compute.add_tasks

    async def add(job_id, batch):
        built_at_send.append(built)
        await anyio.lowlevel.checkpoint()  # others get to run, as on a real request
        return await original(job_id, batch)

    compute.add_tasks = add
    seen: list[list[str]] = []

    async def on_chunk(results):
        seen.append([r.task_id for r in results])

    report = await Submitter(compute, in_flight=in_flight).submit("job", source(), on_chunk=on_chunk)
    assert len(report.added) == total
    # At each request, only the collections that may be held (and the next one's first task) are built.
    assert built_at_send[0] <= 2 * in_flight * MAX_TASKS_PER_REQUEST + 1
    assert all(
        count <= (i + 1 + 2 * in_flight) * MAX_TASKS_PER_REQUEST + 1 for i, count in enumerate(built_at_send)
    )
    # Every collection's results come back, each task once.
    assert sorted(i for ids in seen for i in ids) == sorted(f"t{i}" for i in range(total))


async def test_a_lazy_sources_error_is_raised_and_what_was_sent_is_answered_first():
    async def source():
        for task in tasks(250):
            if task.task_id == "t180":
                raise RuntimeError("cannot sign")
            yield task

    compute = FakeCompute()
    answered: list[int] = []

    async def on_chunk(results):
        answered.append(len(results))

    with pytest.raises(RuntimeError, match="cannot sign"):
        await Submitter(compute).submit("job", source(), on_chunk=on_chunk)
    assert [len(batch) for batch in compute.calls_named("add_tasks")] == answered == [100]


async def test_a_one_shot_iterable_is_taken_as_it_comes():
    compute = FakeCompute()
    report = await Submitter(compute).submit("job", iter(tasks(250)))
    assert sorted(report.added) == sorted(f"t{i}" for i in range(250))
    assert [len(batch) for batch in compute.calls_named("add_tasks")] == [100, 100, 50]
