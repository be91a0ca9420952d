"""The polling loop: the only part of the monitor that does I/O.

Each round costs one cheap probe (task counts). Tasks are listed only when the counts moved, or, instead of
the probe, right after a listing that brought news; and then only those whose state changed since the last
listing left off, minus a small skew margin (the service's clocks disagree a little). A task can change
while later pages are read, after its own page was: after an unbounded listing of several pages, the next
starts no later than the first page was read; while listings take several pages, each asks only for what
changed before about its start on the service's clock (a lower bound: its latest transition seen, less when
we saw it), so that no change falls inside it unread and none is listed twice, and leaves the rest to the
next. Each page is acted on as it arrives. A periodic full listing guards against counts that lag and
transitions that show up later than that.
Both the interval while tasks keep changing and the period of full listings grow with the job: listing a
big job costs more, and its tasks can afford a little more latency. The state machine turns listings into
events; the schedule between rounds comes from the pure backoff policy. A failed poll changes no task:
unknown is not failed.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import anyio
import structlog

from ..backends.base import Compute
from ..backoff import BackoffPolicy
from ..clock import Clock, SystemClock
from ..errors import BackendError, LostContactError, TransientBackendError
from ..events import Event, MonitorDegraded, MonitorRecovered, TaskFailed
from ..records import TaskCounts, TaskView
from ..text import TAIL_BYTES, tail_text
from .state import TaskTracker

_log = structlog.get_logger("batchpilot.monitor")
STDERR_TAIL_LINES = 10
_PAGE = 1000  # tasks per page of a listing (the service's maximum)
INTERVALS_KEPT = 100  # a run monitored for days polls tens of thousands of times: keep the latest


@dataclass(frozen=True, slots=True)
class PollSettings:
    """How the monitor polls a job (times are `timedelta`s; the schedule's are seconds in `backoff`).

    Each round is a cheap task-counts probe, or a listing of the tasks changed since the watermark (minus
    `skew`); a full listing every `reconcile_every` per 1,000 tasks. While tasks keep changing the interval
    (from one round's start to the next's) is `busy_per_task` per task, at most `busy_max` (within the
    backoff's bounds), and it grows by the backoff while nothing changes. A poll unanswered within
    `poll_timeout` counts as failed; after `degraded_after` failures in a row the run is degraded
    (MonitorDegraded), and after `give_up_after` of failures (None: never) it stops with LostContactError.
    `ConfigError` from `BackoffPolicy` for impossible bounds.
    """

    backoff: BackoffPolicy = BackoffPolicy()
    # Between full listings, for each page (1,000 tasks) of the job: a full listing costs a request per page,
    # so a big job's full listings come less often and cost about the same per minute as a small job's.
    reconcile_every: timedelta = timedelta(seconds=60)
    # How much earlier than the watermark a transition may still show up (the service's clocks disagree a
    # little). Each incremental listing asks again for what changed within it, so it stays small; a later
    # one is seen at the next full listing.
    skew: timedelta = timedelta(seconds=1)
    # While tasks keep changing, the interval is this much per expected task (at least backoff.initial, at
    # most busy_max): 0.25 s up to 500 tasks, 5 s from 10,000 on. Past 10,000 a longer interval saves no
    # bytes (each change is listed about once either way) and only adds latency: 100,000 tasks at 15 s
    # (the backoff's cap) saw their completions 31 s late at the median, against 3.2 s at 10,000.
    busy_per_task: timedelta = timedelta(milliseconds=0.5)
    busy_max: timedelta = timedelta(seconds=5)
    # A poll with no answer by then counts as failed (the SDK's own timeouts are far longer).
    poll_timeout: timedelta = timedelta(seconds=120)
    degraded_after: int = 3
    # How long polls may keep failing before the run stops with LostContactError (None: never).
    give_up_after: timedelta | None = timedelta(minutes=15)

    def for_tasks(self, count: int) -> PollSettings:
        """These settings for a job of `count` tasks: the busy interval and the full listings' period grown
        with its size."""
        backoff = self.backoff
        per_task = count * self.busy_per_task.total_seconds()
        busy = min(max(backoff.initial, min(per_task, self.busy_max.total_seconds())), backoff.cap)
        pages = max(1, math.ceil(count / _PAGE))
        return replace(
            self, backoff=replace(backoff, initial=busy), reconcile_every=self.reconcile_every * pages
        )


@dataclass(slots=True)
class PollStats:
    """What one run's monitor did so far: requests by kind (`probes` of task counts, `listings`, of which
    `full_listings`), `tasks_listed` in all, failed polls (all, and in a row now), whether it is `degraded`,
    and the latest intervals it waited (at most `INTERVALS_KEPT`, oldest first), in seconds. Live: it changes
    while the run is monitored."""

    probes: int = 0
    listings: int = 0
    full_listings: int = 0
    tasks_listed: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    degraded: bool = False
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=INTERVALS_KEPT))


@dataclass(slots=True)
class _Listing:
    """What one listing saw: its pages, whether it brought news, the watermark after its first page, the
    service's clock less ours (a lower bound) and how long it took."""

    pages: int = 0
    news: bool = False
    first_page_to: datetime | None = None
    offset: timedelta | None = None
    took: timedelta = timedelta(0)


class _Rebound(Exception):
    """An unbounded listing stopped at its second page, to be asked again bounded at `offset`."""

    def __init__(self, offset: timedelta, *, news: bool) -> None:
        super().__init__("listing to be bounded")
        self.offset = offset
        self.news = news  # its first page brought news


class Poller:
    def __init__(
        self,
        compute: Compute,
        tracker: TaskTracker,
        publish: Callable[[Event], Awaitable[None]],
        *,
        settings: PollSettings = PollSettings(),
        clock: Clock | None = None,
        draw: Callable[[], float] = random.random,
        new_job: bool = False,
    ) -> None:
        self._compute = compute
        self._tracker = tracker
        self._publish = publish
        # Sized for every task of the run, also while they are still being submitted.
        self._settings = settings.for_tasks(tracker.expected_count)
        self._clock = clock or SystemClock()
        self._draw = draw
        # The job was made for this run, so every task in it is being added now: the first tasks listed tell
        # the service's clock (in a job with a history, the first page's times may be hours old).
        self._new_job = new_job
        self._last_counts: TaskCounts | None = None
        self._last_full: datetime | None = None
        # Where the next listing starts (less the skew): set by the last listing that ended well (one cut
        # short by a failure may have moved the tracker's watermark past transitions its unread pages held).
        self._listed_to: datetime | None = None
        # The service's clock less ours, a lower bound (its latest transition seen less when we saw it), kept
        # while listings take several pages; None: the next listing is unbounded.
        self._offset: timedelta | None = None
        self._busy = False
        self._nap: anyio.CancelScope | None = None
        self._failing_since: datetime | None = None
        self.stats = PollStats()

    async def run(self) -> None:
        """Poll until every expected task is completed.

        Raises LostContactError when polls have failed for longer than `PollSettings.give_up_after`.
        """
        base: float | None = None
        while not self._tracker.done:
            started = self._clock.now()
            retry_after: float | None = None
            changed = False
            try:
                changed = await self._poll_once()
            except (TransientBackendError, TimeoutError) as exc:
                retry_after = exc.retry_after if isinstance(exc, TransientBackendError) else None
                await self._poll_failed(exc)
            else:
                await self._poll_succeeded()
            if self._tracker.done:
                return
            base = self._settings.backoff.next_base(base, changed=changed)
            delay = self._settings.backoff.delay(base, unit=self._draw(), retry_after=retry_after)
            self.stats.intervals.append(delay)
            if retry_after is None:
                # From one round's start to the next's: a big job's listing of several seconds (100,000
                # tasks: about 3 s in 5) eats into the interval instead of adding to it. A Retry-After is
                # waited in full.
                delay = max(0.0, delay - (self._clock.now() - started).total_seconds())
            with anyio.CancelScope() as self._nap:
                await self._clock.sleep(delay)
            self._nap = None

    def wake(self) -> None:
        """Cut the wait before the next round short (e.g. the tracker may be done: submission ended)."""
        if self._nap is not None:
            self._nap.cancel()

    def _answer_within(self) -> AbstractContextManager[anyio.CancelScope]:
        """Bounds one request, not the publishing after it: a slow subscriber must not fail a poll."""
        return anyio.fail_after(self._settings.poll_timeout.total_seconds())

    async def _poll_failed(self, exc: Exception) -> None:
        """Unknown is not failed: no task changes. A few failures in a row make the run say it is degraded."""
        now = self._clock.now()
        self.stats.failed_polls += 1
        self.stats.consecutive_failures += 1
        if self._failing_since is None:
            self._failing_since = now
        error = str(exc) or f"no answer within {self._settings.poll_timeout.total_seconds():g} s"
        code = exc.code if isinstance(exc, TransientBackendError) else "PollTimeout"
        job_id = self._tracker.job_id
        _log.warning("poll_failed", job_id=job_id, error=error, code=code)
        failing_for = now - self._failing_since
        give_up_after = self._settings.give_up_after
        if give_up_after is not None and failing_for >= give_up_after:
            raise LostContactError(
                f"could not read the tasks of job {job_id} for {_minutes(failing_for)}"
                f" ({self.stats.consecutive_failures} polls failed, last: {error});"
                " the tasks go on without us",
                code=code,
            )
        if self.stats.consecutive_failures == self._settings.degraded_after:
            self.stats.degraded = True
            remaining = None if give_up_after is None else (give_up_after - failing_for).total_seconds()
            await self._publish(
                MonitorDegraded(
                    run_id=self._tracker.run_id,
                    job_id=job_id,
                    failed_polls=self.stats.consecutive_failures,
                    error=error,
                    gives_up_in_s=remaining,
                )
            )

    async def _poll_succeeded(self) -> None:
        if self.stats.degraded and self._failing_since is not None:
            await self._publish(
                MonitorRecovered(
                    run_id=self._tracker.run_id,
                    job_id=self._tracker.job_id,
                    failed_polls=self.stats.consecutive_failures,
                    degraded_s=round((self._clock.now() - self._failing_since).total_seconds(), 3),
                )
            )
        self.stats.consecutive_failures = 0
        self.stats.degraded = False
        self._failing_since = None

    async def _poll_once(self) -> bool:
        job_id = self._tracker.job_id
        now = self._clock.now()
        full_due = self._last_full is None or now - self._last_full >= self._settings.reconcile_every
        if self._busy and not full_due:
            # The last listing brought news, so more is likely: a filtered listing costs no more than the
            # probe would, and the probe would only say to list. The next quiet round probes again.
            moved = False
        else:
            with self._answer_within():
                counts = await self._compute.task_counts(job_id)
            self.stats.probes += 1
            now = self._clock.now()
            moved = counts != self._last_counts
            self._last_counts = counts
            if not (moved or full_due):
                return False
        since = None
        if not full_due and self._listed_to is not None:
            since = self._listed_to - self._settings.skew
        # While listings take several pages, each asks only for what changed before about its start on the
        # service's clock (a lower bound of it: no change of a task whose page is read later can fall
        # inside), and leaves the rest to the next one. Unbounded, what changes while its pages are read is
        # listed twice, by it and by the next (see `_listed_to`).
        before = None if self._offset is None else self._clock.now() + self._offset
        # The first look at a job still being filled would chase the submission to its end, page after page.
        filling = self._new_job and self._tracker.submitting
        rebound = since is None and before is None and filling
        try:
            listing = await self._list(since, before, rebound=rebound)
        except _Rebound as stopped:
            # It reached a second page: asked again, bounded by what its first page (the first tasks added,
            # moments ago) told of the service's clock.
            before = self._clock.now() + stopped.offset
            listing = await self._list(since, before, rebound=False)
            listing.news = listing.news or stopped.news
        watermark = self._tracker.watermark
        if before is not None:
            self._listed_to = before  # everything that changed before it was read; the rest is the next's
        elif listing.pages > 1 and listing.first_page_to is not None and watermark is not None:
            # A task of an early page may change after its page was read, and later pages move the watermark
            # past that change. The first page was read no earlier than the watermark after it, nor earlier
            # than the last page less the time the listing took. One page is one consistent look: no margin
            # after it (adding one anyway would widen the next listing by the time this one took, which
            # makes that one longer, and so on).
            self._listed_to = max(listing.first_page_to, watermark - listing.took)
        else:
            self._listed_to = watermark
        if (listing.pages > 1 or filling) and listing.offset is not None:
            # Kept while listings take several pages, and while tasks are being added (they will).
            self._offset = listing.offset if self._offset is None else max(self._offset, listing.offset)
        elif not filling:
            self._offset = None  # the next listing is unbounded: no change after a bound is left unread
        news = listing.news
        self.stats.listings += 1
        if since is None:
            self.stats.full_listings += 1
            self._last_full = now
        # After a bounded listing, the next round lists (at the busy interval): what changed after the bound
        # has not been read.
        self._busy = news or before is not None
        return moved or news or before is not None

    async def _list(self, since: datetime | None, before: datetime | None, *, rebound: bool) -> _Listing:
        """List the tasks changed in [since, before] (None: unbounded), acting on each page as it arrives.

        With `rebound`, raises _Rebound when a second page arrives once the first told the service's time.
        """
        listing = _Listing()
        started = self._clock.now()

        async def take(views: list[TaskView]) -> None:
            # Each page is acted on as it arrives: a listing of 100 pages publishes its first news at once.
            began = anyio.current_time()
            if rebound and listing.pages == 1 and listing.offset is not None:
                raise _Rebound(listing.offset, news=listing.news)
            listing.pages += 1
            self.stats.tasks_listed += len(views)
            events = self._tracker.observe(views, at=self._clock.now())
            watermark = self._tracker.watermark
            if watermark is not None:
                # No transition is later than the service's clock when it is read: a lower bound of the
                # service's time less ours.
                evidence = watermark - self._clock.now()
                listing.offset = evidence if listing.offset is None else max(listing.offset, evidence)
                if listing.pages == 1:
                    listing.first_page_to = watermark
            listing.news = listing.news or bool(events)
            for event in events:
                if isinstance(event, TaskFailed):
                    event = replace(event, stderr_tail=await self._stderr_tail(event.task_id))
                await self._publish(event)
            request.deadline += anyio.current_time() - began  # the poll's timeout bounds the requests only

        job_id = self._tracker.job_id
        with self._answer_within() as request:
            # Tasks added since the last listing and still queued bring nothing to know: left out (100,000
            # tasks added in 25 s were each read once queued, then running, then completed).
            await self._compute.list_tasks(
                job_id, changed_since=since, changed_until=before, queued=False, on_page=take
            )
        listing.took = self._clock.now() - started
        return listing

    async def _stderr_tail(self, task_id: str) -> str:
        return await read_stderr_tail(self._compute, self._tracker.job_id, task_id)


async def read_stderr_tail(
    compute: Compute, job_id: str, task_id: str, *, lines: int = STDERR_TAIL_LINES
) -> str:
    """The last `lines` lines of a task's stderr, read from its last `TAIL_BYTES` bytes only (a byte range: a
    task can write gigabytes, BatchExplorer#457), each line capped and escaped (`text.tail_text`); "" when it
    cannot be read. Used by the run's summary, `batchpilot status` and the run report alike."""
    try:
        data = await compute.read_task_file(job_id, task_id, "stderr.txt", tail=TAIL_BYTES + 1)
    except BackendError:
        # Gone (the node), unreachable, or a range the file no longer has: the summary still names the task
        # and its failure code, `batchpilot logs` reads the _logs/ copy, and a tail never fails a run.
        return ""
    # More came before, and not a whole line: the first line read is cut.
    partial = len(data) > TAIL_BYTES and data[-TAIL_BYTES - 1 : -TAIL_BYTES] != b"\n"
    return tail_text(data[-TAIL_BYTES:], lines=lines, partial=partial)


def _minutes(span: timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{span.total_seconds():.0f} s"
