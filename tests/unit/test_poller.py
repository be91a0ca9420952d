"""The polling loop over a fake Compute and a fake clock: what it asks for, and when."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import anyio
import pytest

from batchpilot.backoff import BackoffPolicy
from batchpilot.errors import LostContactError, TransientBackendError
from batchpilot.events import Event, MonitorDegraded, MonitorRecovered, TaskSucceeded
from batchpilot.monitor.poller import Poller, PollSettings
from batchpilot.monitor.state import TaskTracker
from batchpilot.records import TaskCounts, TaskResult, TaskState
from tests.helpers import FakeClock, FakeCompute, at

A, R, C = TaskState.ACTIVE, TaskState.RUNNING, TaskState.COMPLETED
SETTINGS = PollSettings(
    backoff=BackoffPolicy(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
    reconcile_every=timedelta(seconds=30),
    skew=timedelta(seconds=2),
)


def make(
    compute: FakeCompute, clock: FakeClock, expected: list[str], settings: PollSettings = SETTINGS
) -> tuple[Poller, list[Event]]:
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    tracker = TaskTracker("run", "job", expected)
    return Poller(compute, tracker, publish, settings=settings, clock=clock, draw=lambda: 0.5), events


async def test_probes_first_lists_only_when_counts_move_and_backs_off_while_idle():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", A, 0)
    script = {4.0: lambda: compute.set("t", R, 5), 50.0: lambda: compute.set("t", C, 51, exit_code=0)}
    elapsed = 0.0

    def advance(seconds: float) -> None:
        nonlocal elapsed
        before, elapsed = elapsed, elapsed + seconds
        for when, change in script.items():
            if before < when <= elapsed:
                change()

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["t"])
    await poller.run()
    assert [e.kind for e in events if isinstance(e, TaskSucceeded)] == ["task_succeeded"]
    # The interval grows while nothing moves and resets when something does: never a fixed loop.
    assert clock.sleeps[:3] == [1.0, 2.0, 4.0]
    assert 8.0 in clock.sleeps
    assert poller.stats.probes > poller.stats.listings
    assert len(set(clock.sleeps)) > 1


async def test_incremental_listing_uses_the_watermark_minus_skew_and_full_reconcile_is_periodic():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("a", R, 10)
    compute.set("b", A, 0)
    ticks = iter(range(1000))

    def advance(_: float) -> None:
        n = next(ticks)
        if n == 2:
            compute.set("a", C, 20, exit_code=0)
        if n == 40:
            compute.set("b", C, 200, exit_code=0)

    clock.on_sleep = advance
    poller, _ = make(compute, clock, ["a", "b"])
    await poller.run()
    listings = compute.calls_named("list_tasks")
    assert listings[0] is None  # the first look is a full one
    incremental = [since for since in listings if since is not None]
    assert incremental, "changes after the first look are listed incrementally"
    assert incremental[0] == at(8)  # the watermark (t=10) minus the skew (2 s)
    assert poller.stats.full_listings >= 2  # periodic reconcile


async def test_lagging_counts_are_caught_by_the_periodic_reconcile():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 1)
    frozen = TaskCounts(running=1)
    compute.counts_override = frozen  # counts never move
    sleeps = iter(range(1000))

    def advance(_: float) -> None:
        # After the listing that follows news (the first look), so that only the reconcile can see it.
        if next(sleeps) == 2:
            compute.set("t", C, 2, exit_code=0, result=TaskResult.SUCCESS)

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["t"])
    await poller.run()
    assert any(isinstance(e, TaskSucceeded) for e in events)
    assert poller.stats.full_listings == 2
    assert sum(clock.sleeps) >= SETTINGS.reconcile_every.total_seconds()


async def test_a_listing_that_brought_news_is_followed_by_a_listing_not_a_probe():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("a", R, 1)
    compute.set("b", R, 1)
    steps = iter(range(1000))

    def advance(_: float) -> None:
        step = next(steps)
        if step < 2:
            compute.set("ab"[step], C, 2 + step, exit_code=0, result=TaskResult.SUCCESS)

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["a", "b"])
    await poller.run()
    assert sum(isinstance(e, TaskSucceeded) for e in events) == 2
    # The first look and both completions each brought news: one probe, three listings.
    assert (poller.stats.probes, poller.stats.listings) == (1, 3)


async def test_a_failed_poll_changes_no_task_and_honours_retry_after():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 1)
    failures = [TransientBackendError("throttled", retry_after=12.0)]
    original = compute.task_counts

    async def flaky(job_id: str) -> TaskCounts:
        if failures and compute.calls_named("list_tasks"):
            raise failures.pop()
        return await original(job_id)

    compute.task_counts = flaky

    def advance(_: float) -> None:
        if not failures:
            compute.set("t", C, 30, exit_code=0)

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["t"])
    await poller.run()
    assert 12.0 in clock.sleeps
    assert poller.stats.failed_polls == 1
    assert [e.kind for e in events].count("task_failed") == 0
    assert poller._tracker.done


@pytest.mark.parametrize("expected", [[], ["x"]])
async def test_a_job_already_complete_needs_one_look(expected):
    compute, clock = FakeCompute(), FakeClock()
    for task_id in expected:
        compute.set(task_id, C, 1, exit_code=0)
    poller, _ = make(compute, clock, expected)
    await poller.run()
    assert clock.sleeps == []


def failing_polls(compute: FakeCompute, failures: int | None, error: Exception) -> None:
    """The next `failures` probes raise `error` (None: every probe from now on)."""
    original = compute.task_counts
    left = failures

    async def flaky(job_id: str) -> TaskCounts:
        nonlocal left
        if left is None or left > 0:
            if left is not None:
                left -= 1
            raise error
        return await original(job_id)

    compute.task_counts = flaky


async def test_an_outage_degrades_the_run_then_it_recovers_and_no_task_is_failed_for_it():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 1)
    failing_polls(compute, 5, TransientBackendError("server busy", code="ServerBusy"))
    clock.on_sleep = lambda _: compute.set("t", C, 60, exit_code=0) if clock.current > at(200) else None
    poller, events = make(compute, clock, ["t"])
    await poller.run()
    kinds = [event.kind for event in events]
    assert kinds[0] == "monitor_degraded"
    assert kinds.count("monitor_recovered") == 1
    assert kinds[-1] == "task_succeeded"
    assert "task_failed" not in kinds
    degraded = events[0]
    assert isinstance(degraded, MonitorDegraded)
    assert (degraded.failed_polls, degraded.error) == (3, "server busy")
    assert degraded.gives_up_in_s is not None
    assert degraded.gives_up_in_s > 0
    recovered = events[kinds.index("monitor_recovered")]
    assert isinstance(recovered, MonitorRecovered)
    assert recovered.failed_polls == 5
    stats = poller.stats
    assert (stats.failed_polls, stats.consecutive_failures, stats.degraded) == (5, 0, False)
    # Backing off while the service fails: no fixed interval.
    assert clock.sleeps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]


async def test_polls_failing_past_the_deadline_stop_the_run_with_lost_contact():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 1)
    failing_polls(compute, None, TransientBackendError("connection reset", code="ConnectionError"))
    settings = replace(SETTINGS, give_up_after=timedelta(minutes=2))
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    poller = Poller(compute, TaskTracker("run", "job", ["t"]), publish, settings=settings, clock=clock)
    lost = r"could not read the tasks of job job for 2 min .*connection reset"
    with pytest.raises(LostContactError, match=lost):
        await poller.run()
    assert [event.kind for event in events] == ["monitor_degraded"]
    assert sum(clock.sleeps) >= 120


async def test_a_poll_without_an_answer_in_time_counts_as_failed():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 1)
    original = compute.task_counts
    hangs = [True]

    async def hanging(job_id: str) -> TaskCounts:
        if hangs:
            hangs.pop()
            await anyio.sleep_forever()
        return await original(job_id)

    compute.task_counts = hanging
    clock.on_sleep = lambda _: compute.set("t", C, 5, exit_code=0)
    settings = replace(SETTINGS, poll_timeout=timedelta(seconds=0.05))
    poller = Poller(compute, TaskTracker("run", "job", ["t"]), _ignore, settings=settings, clock=clock)
    await poller.run()
    assert poller.stats.failed_polls == 1
    assert poller._tracker.done


async def _ignore(event: Event) -> None:
    pass


@pytest.mark.parametrize(
    ("tasks", "busy", "reconcile_s"),
    [(1, 1.0, 30), (1000, 1.0, 30), (1001, 1.0, 60), (4000, 2.0, 120), (10_000, 5.0, 300),
     (50_000, 5.0, 1500)],
)  # fmt: skip
def test_a_bigger_job_gets_a_longer_busy_interval_and_rarer_full_listings(tasks, busy, reconcile_s):
    # 0.5 ms per task, from the initial 1 s up to busy_max (5 s), though the backoff's cap is 8 s
    sized = SETTINGS.for_tasks(tasks)
    assert sized.backoff == replace(SETTINGS.backoff, initial=busy)
    assert sized.reconcile_every == timedelta(seconds=reconcile_s)  # 30 s per page of 1,000 tasks
    assert replace(sized, backoff=SETTINGS.backoff, reconcile_every=SETTINGS.reconcile_every) == SETTINGS


@pytest.mark.parametrize(("tasks", "interval"), [(40, 1.0), (4000, 2.0)])
async def test_while_tasks_keep_changing_the_interval_grows_with_the_job(tasks, interval):
    compute, clock = FakeCompute(), FakeClock()
    ids = [f"t{n}" for n in range(tasks)]
    for task_id in ids:
        compute.set(task_id, R, 0)
    batches = iter(range(0, tasks, tasks // 4))

    def advance(_: float) -> None:
        first = next(batches, None)
        if first is not None:
            for task_id in ids[first : first + tasks // 4]:  # while the poller waited
                compute.set(task_id, C, (clock.current - at(0)).total_seconds() - 0.5, exit_code=0)

    clock.on_sleep = advance
    poller, events = make(compute, clock, ids)
    await poller.run()
    assert sum(isinstance(e, TaskSucceeded) for e in events) == tasks
    assert clock.sleeps == [interval] * 4  # every round brought news: never backed off, never reset lower


async def test_a_task_that_changed_while_later_pages_were_read_is_seen_by_the_next_listing():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("a", R, 0)
    compute.set("b", R, 0)
    for n in range(1000):  # another run's tasks in the job: they make the listing span two pages
        compute.set(f"other-{n}", C, 0, exit_code=0)
    unpaged = compute.list_tasks

    async def list_tasks(job_id: str, changed_since=None, *, changed_until=None, queued=True, on_page=None):
        if len(compute.calls_named("list_tasks")) != 1:
            return await unpaged(job_id, changed_since, on_page=on_page)
        # The second listing takes 5 s over its pages: `a` completes after its page was read, `b` before
        # its own page is. The watermark becomes b's time, 4 s past a's: beyond the skew (2 s).
        first_page = [view for view in await unpaged(job_id, changed_since) if view.task_id != "b"]
        await on_page(first_page)
        clock.current += timedelta(seconds=5)
        compute.set("a", C, 2, exit_code=0)
        compute.set("b", C, 6, exit_code=0)
        await on_page([compute.tasks["b"]])
        return []

    compute.list_tasks = list_tasks
    compute.page_size = 2000  # the first look is one page: the second listing is not bounded
    poller, events = make(compute, clock, ["a", "b"])
    await poller.run()
    assert {e.task_id for e in events if isinstance(e, TaskSucceeded)} == {"a", "b"}
    # The third listing starts the listing's 5 s earlier than the watermark minus the skew, so it finds `a`
    # at once instead of at the next full listing, 30 s on.
    assert compute.calls_named("list_tasks")[2] == at(6 - 2 - 5)
    assert compute.bounds[:2] == [None, None]
    assert poller.stats.full_listings == 1


async def test_a_listing_of_one_page_adds_no_margin_however_long_it_took():
    compute, clock = FakeCompute(), FakeClock()
    compute.set("a", R, 0)
    slow = compute.list_tasks

    async def list_tasks(job_id: str, changed_since=None, *, changed_until=None, queued=True, on_page=None):
        clock.current += timedelta(seconds=5)
        return await slow(job_id, changed_since, on_page=on_page)

    def advance(_: float) -> None:
        compute.set("a", C, (clock.current - at(0)).total_seconds(), exit_code=0)

    compute.list_tasks = list_tasks
    clock.on_sleep = advance
    poller, _ = make(compute, clock, ["a"])
    await poller.run()
    # The first look (full, at t=0, back at t=5) saw `a` running since t=0; the next starts at 0 - skew.
    assert compute.calls_named("list_tasks") == [None, at(0 - 2)]


async def test_each_page_of_a_listing_is_published_before_the_next_page_is_read():
    # A 100-page first look must not keep its first pages' news until the last page is in.
    compute, clock = FakeCompute(page_size=2), FakeClock()
    for n in range(6):
        compute.set(f"t{n}", C, n, exit_code=0)
    published: list[list[str]] = []  # the tasks published by the time each page is handed out
    listed = compute.list_tasks

    async def list_tasks(job_id: str, changed_since=None, *, changed_until=None, queued=True, on_page=None):
        async def page(views):
            published.append(sorted(e.task_id for e in events if isinstance(e, TaskSucceeded)))
            await on_page(views)

        return await listed(job_id, changed_since, on_page=page)

    compute.list_tasks = list_tasks
    poller, events = make(compute, clock, [f"t{n}" for n in range(6)])
    await poller.run()
    assert published == [[], ["t0", "t1"], ["t0", "t1", "t2", "t3"]]
    assert sum(isinstance(e, TaskSucceeded) for e in events) == 6
    assert poller.stats.tasks_listed == 6


async def test_a_listing_cut_short_by_a_failure_is_listed_again_from_where_it_started():
    # Its first page moved the tracker's watermark past transitions its unread pages held: the next listing
    # starts from the last listing that ended well, or it would miss them.
    compute, clock = FakeCompute(page_size=1), FakeClock()
    compute.set("a", R, 0)
    compute.set("b", R, 0)
    listed = compute.list_tasks
    rounds = iter(range(1000))

    async def list_tasks(job_id: str, changed_since=None, *, changed_until=None, queued=True, on_page=None):
        second = len(compute.calls_named("list_tasks")) == 1  # the first look saw both running

        async def page(views):
            await on_page(views)
            if second and views[0].task_id == "a":
                raise TransientBackendError("connection reset while reading the next page")

        return await listed(job_id, changed_since, on_page=page)

    def advance(_: float) -> None:
        if next(rounds) == 0:
            compute.set("b", C, 5, exit_code=0)  # earlier than a's, on the page after a's
            compute.set("a", C, 9, exit_code=0)

    compute.list_tasks = list_tasks
    clock.on_sleep = advance
    poller, events = make(compute, clock, ["a", "b"])
    await poller.run()
    assert {e.task_id for e in events if isinstance(e, TaskSucceeded)} == {"a", "b"}
    listings = compute.calls_named("list_tasks")
    assert listings[1] == listings[2] == at(0 - 2)  # the failed listing is asked again as it was
    assert poller.stats.full_listings == 1
    assert poller.stats.failed_polls == 1


async def test_after_a_listing_of_several_pages_the_next_asks_only_for_what_changed_until_about_now():
    # Unbounded, a listing of many pages gets again, in the next, every change made while its later pages
    # were read. Bounded by a lower bound of the service's time (its latest transition less when we saw
    # it), nothing of a later page can change inside it; what changed after the bound is the next's.
    compute, clock = FakeCompute(page_size=1), FakeClock()
    compute.set("a", R, -4)  # the service's clock is 3 s behind ours; its last change, 1 s before we look
    compute.set("b", R, -4)
    rounds = iter(range(1000))

    def advance(_: float) -> None:
        if next(rounds) == 0:  # at 1 s on our clock, -2 s on the service's
            compute.set("a", C, -3.5, exit_code=0)  # before the bound: 1 s + (-4 s - 0 s) = -3 s
            compute.set("b", C, -2.5, exit_code=0)  # after it

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["a", "b"])
    await poller.run()
    assert [e.task_id for e in events if isinstance(e, TaskSucceeded)] == ["a", "b"]
    listings = compute.calls_named("list_tasks")
    assert compute.bounds == [None, at(-3), None]  # the bounded listing got one page: the next is not
    assert listings == [None, at(-4 - 2), at(-3 - 2)]  # each from where the last left off, less the skew
    # Tasks added since the last listing and still queued are left out (of the incremental ones: the
    # service applies it only with `changed_since`).
    assert compute.queued == [False, False, False]
    assert poller.stats.full_listings == 1


async def test_a_bounded_listing_that_found_nothing_is_followed_by_one_that_is_not():
    # Everything changed after the bound, and the counts do not say so (they lag): the next round must list
    # anyway, or the changes would wait for the next full listing.
    compute, clock = FakeCompute(page_size=1), FakeClock()
    compute.set("a", R, -4)
    compute.set("b", R, -4)
    compute.counts_override = TaskCounts(running=2)
    rounds = iter(range(1000))

    def advance(_: float) -> None:
        if next(rounds) == 0:
            compute.set("a", C, -2.5, exit_code=0)
            compute.set("b", C, -2.5, exit_code=0)

    clock.on_sleep = advance
    poller, events = make(compute, clock, ["a", "b"])
    await poller.run()
    assert sum(isinstance(e, TaskSucceeded) for e in events) == 2
    assert compute.bounds == [None, at(-3), None]
    assert poller.stats.full_listings == 1  # not found by a reconcile 30 s on


async def test_the_first_look_at_a_job_still_being_filled_is_bounded_after_its_first_page():
    # Unbounded, it would read page after page as long as tasks are added (25 s at 100,000 tasks), and see
    # none of them end meanwhile. Its first page (the first tasks added) tells the service's clock: it is
    # asked again up to then, and every later listing while tasks are added is bounded too, however short.
    compute, clock = FakeCompute(page_size=1), FakeClock()
    for task_id in "abc":
        compute.set(task_id, A, -1)  # added 1 s before the first look
    tracker = TaskTracker("run", "job", ["a", "b", "c"], submitting=True)
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    poller = Poller(compute, tracker, publish, settings=SETTINGS, clock=clock, draw=lambda: 0.5, new_job=True)
    rounds = iter(range(1000))

    def advance(_: float) -> None:
        step = next(rounds)
        if step == 0:
            compute.set("a", C, 0.5, exit_code=0)  # after the next listing's bound (1 s - 1 s = 0 s)
        if step == 1:
            tracker.submission_ended()
            for task_id in "bc":
                compute.set(task_id, C, 1.5, exit_code=0)

    clock.on_sleep = advance
    await poller.run()
    assert sum(isinstance(e, TaskSucceeded) for e in events) == 3
    listings = compute.calls_named("list_tasks")
    assert listings[:3] == [None, None, at(-1 - 2)]  # the first look, stopped at its second page; asked again
    assert compute.bounds[:3] == [None, at(-1), at(1 - 1)]  # bounded while tasks are added
    assert poller.stats.full_listings == 1


async def test_the_interval_runs_from_one_round_start_to_the_next():
    # A big job's listing takes seconds: it eats into the interval instead of adding to it.
    compute, clock = FakeCompute(), FakeClock()
    compute.set("t", R, 0)
    listed = compute.list_tasks

    async def slow_listing(job_id: str, changed_since=None, **options):
        clock.current += timedelta(seconds=0.25)
        return await listed(job_id, changed_since, **options)

    def advance(_: float) -> None:
        if len(clock.sleeps) == 2:
            compute.set("t", C, (clock.current - at(0)).total_seconds(), exit_code=0)

    compute.list_tasks = slow_listing
    clock.on_sleep = advance
    poller, _ = make(compute, clock, ["t"])
    await poller.run()
    assert clock.sleeps == [1.0 - 0.25, 2.0 - 0.25]  # each round listed, for 0.25 s
    assert list(poller.stats.intervals) == [1.0, 2.0]


async def test_the_first_look_at_a_job_with_a_history_is_not_bounded_by_its_first_page():
    # Re-run into a job whose first tasks ended hours ago: their times tell nothing of the service's clock
    # now, and bounded by them the monitor would replay the job's history at the pace it happened.
    compute, clock = FakeCompute(page_size=1), FakeClock()
    compute.set("old", C, -7200, exit_code=0)
    compute.set("new", A, -1)
    tracker = TaskTracker("run", "job", ["old", "new"], submitting=True)
    poller = Poller(compute, tracker, _ignore, settings=SETTINGS, clock=clock, draw=lambda: 0.5)

    def advance(_: float) -> None:
        tracker.submission_ended()
        compute.set("new", C, (clock.current - at(0)).total_seconds() - 0.5, exit_code=0)

    clock.on_sleep = advance
    await poller.run()
    assert compute.calls_named("list_tasks")[0] is None
    assert compute.bounds[0] is None
    assert len(compute.calls_named("list_tasks")) == len(compute.bounds) <= 3  # read whole, not stopped
    assert tracker.done
