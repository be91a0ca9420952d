"""The task state machine, table-driven: observations in, events out."""

from __future__ import annotations

import pytest

from batchpilot.events import TaskFailed, TaskRequeued, TaskStateChanged, TaskSucceeded
from batchpilot.monitor.state import TaskTracker, Verdict, classify
from batchpilot.records import FailureInfo, TaskResult, TaskState
from tests.helpers import at, view

A, P, R, C = TaskState.ACTIVE, TaskState.PREPARING, TaskState.RUNNING, TaskState.COMPLETED


@pytest.mark.parametrize(
    ("known", "seen", "verdict"),
    [
        (None, view("t", A, 0), Verdict.NEW),
        (view("t", A, 1), view("t", R, 2), Verdict.FORWARD),
        (view("t", A, 1), view("t", C, 2), Verdict.FORWARD),  # steps missed between polls
        (view("t", R, 2), view("t", R, 2), Verdict.DUPLICATE),
        (view("t", R, 2), view("t", A, 1), Verdict.STALE),  # an older page seen after a newer one
        (view("t", C, 5), view("t", R, 3), Verdict.STALE),
        (view("t", R, 2), view("t", A, 3), Verdict.REQUEUE),  # preempted
        (view("t", R, 2), view("t", P, 3), Verdict.REQUEUE),  # back to a lower stage
        (view("t", R, 2), view("t", R, 4), Verdict.REQUEUE),  # ran again: a newer transition, same state
        (view("t", R, 2), view("t", R, 2, retry_count=1), Verdict.REQUEUE),
        (view("t", C, 2), view("t", A, 3), Verdict.REQUEUE),  # reactivated
    ],
)
def test_classify(known, seen, verdict):
    assert classify(known, seen) == verdict


def kinds(events):
    return [type(event).__name__ for event in events]


def test_a_task_through_its_life_emits_one_event_per_change_and_a_success():
    tracker = TaskTracker("run", "job", ["t"])
    steps = [
        (view("t", A, 0), ["TaskStateChanged"]),
        (view("t", A, 0), []),  # duplicate
        (view("t", P, 1), ["TaskStateChanged"]),
        (view("t", R, 2, node_id="n1"), ["TaskStateChanged"]),
        (view("t", C, 3, exit_code=0, result=TaskResult.SUCCESS, start_time=at(2), end_time=at(3)),
         ["TaskStateChanged", "TaskSucceeded"]),
        (view("t", C, 3, exit_code=0, result=TaskResult.SUCCESS), []),
    ]  # fmt: skip
    for observation, expected in steps:
        assert kinds(tracker.observe([observation], at=at(10))) == expected
    assert tracker.done
    assert tracker.watermark == at(3)


def test_the_watermark_follows_every_task_listed_not_only_ours():
    # A service's batches share a job: while ours wait in the queue, the others' changes move the watermark,
    # so that the next listing starts after them instead of at our tasks' creation.
    tracker = TaskTracker("run", "job", ["ours"])
    assert tracker.observe([view("ours", A, 1), view("theirs", C, 40, exit_code=0)], at=at(50)) != []
    assert tracker.watermark == at(40)
    assert tracker.observe([view("theirs", C, 60, exit_code=0)], at=at(70)) == []  # not ours: no event
    assert tracker.watermark == at(60)


def test_state_changed_carries_previous_and_new_state():
    tracker = TaskTracker("run", "job", ["t"])
    tracker.observe([view("t", A, 0)], at=at(0))
    (event,) = tracker.observe([view("t", R, 1, node_id="n1")], at=at(1))
    assert isinstance(event, TaskStateChanged)
    assert (event.previous, event.state, event.node_id, event.run_id, event.job_id) == (
        A,
        R,
        "n1",
        "run",
        "job",
    )
    assert event.at == at(1)


def test_preemption_emits_requeue_then_the_task_can_still_succeed():
    tracker = TaskTracker("run", "job", ["t"])
    tracker.observe([view("t", R, 1)], at=at(1))
    events = tracker.observe([view("t", A, 2, requeue_count=1)], at=at(2))
    assert kinds(events) == ["TaskRequeued", "TaskStateChanged"]
    requeued = events[0]
    assert isinstance(requeued, TaskRequeued)
    assert (requeued.previous, requeued.requeue_count) == (R, 1)
    changed = events[1]
    assert isinstance(changed, TaskStateChanged)
    assert (changed.previous, changed.state, changed.requeue_count) == (R, A, 1)
    assert not tracker.done
    events = tracker.observe([view("t", C, 3, exit_code=0)], at=at(3))
    assert kinds(events) == ["TaskStateChanged", "TaskSucceeded"]
    assert tracker.done


def test_a_retry_seen_only_as_a_higher_retry_count_is_a_requeue():
    tracker = TaskTracker("run", "job", ["t"])
    tracker.observe([view("t", R, 1)], at=at(1))
    assert kinds(tracker.observe([view("t", R, 5, retry_count=1)], at=at(5))) == [
        "TaskRequeued",
        "TaskStateChanged",
    ]


def test_failure_is_reported_with_its_failure_info_and_exit_code():
    tracker = TaskTracker("run", "job", ["t"])
    failure = FailureInfo("usererror", "FailureExitCode", "exit 1")
    events = tracker.observe(
        [view("t", C, 1, exit_code=1, failure=failure, result=TaskResult.FAILURE)], at=at(1)
    )
    assert kinds(events) == ["TaskStateChanged", "TaskFailed"]
    failed = events[1]
    assert isinstance(failed, TaskFailed)
    assert (failed.exit_code, failed.failure) == (1, failure)


def test_without_a_result_field_success_means_exit_zero_and_no_failure():
    tracker = TaskTracker("run", "job", ["ok", "bad"])
    events = tracker.observe([view("ok", C, 1, exit_code=0), view("bad", C, 1, exit_code=3)], at=at(1))
    assert [type(e) for e in events if not isinstance(e, TaskStateChanged)] == [TaskSucceeded, TaskFailed]


def test_stale_observations_do_not_move_the_state_back():
    tracker = TaskTracker("run", "job", ["t"])
    tracker.observe([view("t", C, 5, exit_code=0)], at=at(5))
    assert tracker.observe([view("t", R, 3), view("t", A, 1)], at=at(6)) == []
    assert tracker.view("t").state is C


def test_tasks_not_expected_are_ignored_and_done_needs_every_expected_task():
    tracker = TaskTracker("run", "job", ["a", "b"])
    assert tracker.observe([view("other", C, 1, exit_code=0)], at=at(1)) == []
    tracker.observe([view("a", C, 1, exit_code=0)], at=at(1))
    assert not tracker.done  # b never seen: never inferred
    tracker.observe([view("b", C, 2, exit_code=0)], at=at(2))
    assert tracker.done


def test_progress_counts_unseen_tasks_as_active():
    tracker = TaskTracker("run", "job", ["a", "b", "c"])
    tracker.observe([view("a", R, 1), view("b", C, 1, exit_code=2)], at=at(1))
    progress = tracker.progress()
    assert progress.by_state == {A: 1, P: 0, R: 1, C: 1}
    assert (progress.total, progress.succeeded, progress.failed) == (3, 0, 1)


def test_an_empty_tracker_is_done():
    assert TaskTracker("run", "job", []).done


def test_a_tracker_made_during_submission_is_not_done_before_submission_ends():
    # Monitoring starts with submission: every task added so far may have completed while more are coming.
    tracker = TaskTracker("run", "job", ["a", "b", "refused"], submitting=True)
    tracker.observe([view("a", C, 1, exit_code=0), view("b", C, 2, exit_code=0)], at=at(2))
    assert not tracker.done  # `refused` is still expected
    tracker.forget(["refused", "never-expected"])
    assert not tracker.done  # submission has not ended: more may still be refused or added
    tracker.submission_ended()
    assert tracker.done
    assert tracker.expected == {"a", "b"}
    assert tracker.progress().total == 2


def test_done_follows_tasks_that_complete_and_are_reactivated_and_forgotten():
    tracker = TaskTracker("run", "job", ["a", "b"])
    tracker.observe([view("a", C, 1, exit_code=1), view("b", C, 1, exit_code=0)], at=at(1))
    assert tracker.done
    tracker.observe([view("a", A, 2)], at=at(2))  # reactivated (a re-run's retry)
    assert not tracker.done
    tracker.observe([view("a", C, 1.5, exit_code=1)], at=at(3))  # stale: older than what is known
    assert not tracker.done
    tracker.observe([view("a", C, 4, exit_code=0), view("a", C, 4, exit_code=0)], at=at(4))
    assert tracker.done
    tracker.forget(["a"])  # a completed task forgotten: the count of completed follows
    assert tracker.done
    tracker.observe([view("b", R, 5, retry_count=1)], at=at(5))
    assert not tracker.done
