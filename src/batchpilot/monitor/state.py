"""The task state machine: observations in, events out, no I/O.

Everything that decides what a task's state is, and which events a change implies, lives here. This module
does not know how observations are obtained (polling, a full listing, a resume), what time it is (the caller
passes `at`), or what happens to the events.

Theory of operation. Batch moves a task `active -> preparing -> running -> completed`, and back to `active`
when a node is preempted or a failed attempt is retried. A poller sees snapshots, so it may miss steps
(`active -> completed` in one look) and may see the same snapshot twice or an older one after a newer one
(lists are paged and filtered with a margin). So:

* an observation older than what we know (by state transition time) is stale and ignored;
* one with the same time and state, and no new retry/requeue count, is a duplicate and ignored;
* a move to a lower stage, or a new attempt at the same stage (newer time, or a higher retry or requeue
  count), is a requeue;
* a move to `completed` finishes the task as succeeded or failed.

Tasks not in the expected set (left in a reused job by an earlier run with other inputs) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from ..events import Event, TaskFailed, TaskRequeued, TaskStateChanged, TaskSucceeded
from ..records import TaskResult, TaskState, TaskView

STAGE = {TaskState.ACTIVE: 0, TaskState.PREPARING: 1, TaskState.RUNNING: 2, TaskState.COMPLETED: 3}


class Verdict:
    """How one observation relates to what is known. Strings, so a table of cases reads well."""

    NEW = "new"
    STALE = "stale"
    DUPLICATE = "duplicate"
    FORWARD = "forward"
    REQUEUE = "requeue"


def classify(known: TaskView | None, seen: TaskView) -> str:
    if known is None:
        return Verdict.NEW
    if seen.state_transition_time < known.state_transition_time:
        return Verdict.STALE
    new_attempt = seen.retry_count > known.retry_count or seen.requeue_count > known.requeue_count
    if seen.state_transition_time == known.state_transition_time and seen.state == known.state:
        return Verdict.REQUEUE if new_attempt else Verdict.DUPLICATE
    if new_attempt or STAGE[seen.state] <= STAGE[known.state]:
        return Verdict.REQUEUE
    return Verdict.FORWARD


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    by_state: dict[TaskState, int]
    succeeded: int
    failed: int


class TaskTracker:
    """The last known view of each expected task, and the events each new observation implies.

    A tracker made while its tasks are still being submitted (`submitting=True`) is told later which of them
    the service refused (`forget`) and when submission has ended (`submission_ended`): it is not `done`
    before then, even if every task submitted so far has completed.
    """

    def __init__(
        self, run_id: str, job_id: str, expected: Iterable[str], *, submitting: bool = False
    ) -> None:
        self.run_id = run_id
        self.job_id = job_id
        self._expected = set(expected)
        self._known: dict[str, TaskView] = {}
        self._completed = 0  # expected tasks whose last known state is completed: `done` in O(1)
        self._submitting = submitting
        self._watermark: datetime | None = None

    @property
    def expected(self) -> frozenset[str]:
        """The tasks waited for (a copy: O(n))."""
        return frozenset(self._expected)

    @property
    def expected_count(self) -> int:
        return len(self._expected)

    @property
    def submitting(self) -> bool:
        """True until `submission_ended`: more of the expected tasks may still be refused."""
        return self._submitting

    @property
    def watermark(self) -> datetime | None:
        """The latest state transition time of any task listed: where an incremental listing can start."""
        return self._watermark

    @property
    def done(self) -> bool:
        """True once submission has ended and every expected task has been seen completed. Never inferred
        from counts."""
        return not self._submitting and self._completed == len(self._expected)

    def forget(self, task_ids: Iterable[str]) -> None:
        """Stop waiting for `task_ids` (the service refused to add them: they will never run)."""
        for task_id in task_ids:
            if task_id not in self._expected:
                continue
            self._expected.discard(task_id)
            known = self._known.pop(task_id, None)
            if known is not None and known.state is TaskState.COMPLETED:
                self._completed -= 1

    def submission_ended(self) -> None:
        """Every task of the run has been submitted (and the refused ones forgotten)."""
        self._submitting = False

    def view(self, task_id: str) -> TaskView | None:
        return self._known.get(task_id)

    def progress(self) -> Progress:
        by_state = dict.fromkeys(TaskState, 0)
        by_state[TaskState.ACTIVE] = len(self._expected) - len(self._known)  # not seen yet: queued
        succeeded = failed = 0
        for view in self._known.values():
            by_state[view.state] += 1
            if view.state is TaskState.COMPLETED:
                if _succeeded(view):
                    succeeded += 1
                else:
                    failed += 1
        return Progress(len(self._expected), by_state, succeeded, failed)

    def observe(self, views: Iterable[TaskView], *, at: datetime) -> list[Event]:
        events: list[Event] = []
        for seen in views:
            # Every task listed moves the watermark, ours or not: a later change of ours comes after it
            # anyway. Only ours would leave it behind, at our queued tasks' creation, while the rest of
            # a shared job (a service's other batches) is listed again and again.
            if self._watermark is None or seen.state_transition_time > self._watermark:
                self._watermark = seen.state_transition_time
            if seen.task_id not in self._expected:
                continue
            known = self._known.get(seen.task_id)
            verdict = classify(known, seen)
            if verdict in (Verdict.STALE, Verdict.DUPLICATE):
                continue
            self._known[seen.task_id] = seen
            self._completed += (seen.state is TaskState.COMPLETED) - (
                known is not None and known.state is TaskState.COMPLETED
            )
            events.extend(self._events_for(known, seen, verdict, at))
        return events

    def _events_for(self, known: TaskView | None, seen: TaskView, verdict: str, at: datetime) -> list[Event]:
        common = _TaskEventFields(run_id=self.run_id, at=at, job_id=self.job_id, task_id=seen.task_id)
        previous = known.state if known is not None else None
        events: list[Event] = []
        if verdict == Verdict.REQUEUE and known is not None:
            events.append(
                TaskRequeued(
                    **common,
                    previous=known.state,
                    retry_count=seen.retry_count,
                    requeue_count=seen.requeue_count,
                    transition_time=seen.state_transition_time,
                    end_time=seen.end_time,
                )
            )
        events.append(
            TaskStateChanged(
                **common,
                previous=previous,
                state=seen.state,
                node_id=seen.node_id,
                exit_code=seen.exit_code,
                failure=seen.failure,
                retry_count=seen.retry_count,
                requeue_count=seen.requeue_count,
                start_time=seen.start_time,
                end_time=seen.end_time,
                transition_time=seen.state_transition_time,
            )
        )
        if seen.state is TaskState.COMPLETED:
            duration = _duration(seen)
            times = _AttemptFields(node_id=seen.node_id, start_time=seen.start_time, end_time=seen.end_time)
            if _succeeded(seen):
                events.append(TaskSucceeded(**common, exit_code=seen.exit_code, duration_s=duration, **times))
            else:
                events.append(
                    TaskFailed(
                        **common, exit_code=seen.exit_code, failure=seen.failure, duration_s=duration, **times
                    )
                )
        return events


class _TaskEventFields(TypedDict):
    run_id: str
    at: datetime
    job_id: str
    task_id: str


class _AttemptFields(TypedDict):
    node_id: str | None
    start_time: datetime | None
    end_time: datetime | None


def _succeeded(view: TaskView) -> bool:
    if view.result is not None:
        return view.result is TaskResult.SUCCESS
    return view.failure is None and view.exit_code == 0


def _duration(view: TaskView) -> float | None:
    if view.start_time is None or view.end_time is None:
        return None
    return (view.end_time - view.start_time).total_seconds()
