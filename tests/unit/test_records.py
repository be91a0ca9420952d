"""The monitor keeps the last `TaskView` of each of a run's tasks: a view holds one shared object per node id
and, for a completed task whose end time is its transition time (as the service reports it), one datetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from batchpilot import records
from batchpilot.records import TaskResult, TaskState, TaskView

T0 = datetime(2026, 3, 1, 12, 0, 0, 413640, tzinfo=UTC)


def _fresh(text: str) -> str:
    """An equal text that is another object, as each listing parsed gives."""
    return "".join(list(text))


def _completed(task_id: str, node_id: str, end: datetime, entered: datetime) -> TaskView:
    return TaskView(
        task_id, TaskState.COMPLETED, entered, node_id=node_id, exit_code=0, result=TaskResult.SUCCESS,
        start_time=end - timedelta(seconds=1), end_time=end,
    )  # fmt: skip


def test_views_on_one_node_share_its_id() -> None:
    node = "tvmps_" + "1" * 64 + "_d"  # the shape of the service's node ids
    first, second = _fresh(node), _fresh(node)
    assert first is not second
    a = _completed("a", first, T0, T0)
    b = _completed("b", second, T0, T0)
    assert a.node_id == b.node_id == node
    assert a.node_id is b.node_id
    assert TaskView("c", TaskState.ACTIVE, T0).node_id is None


def test_the_node_ids_kept_are_bounded() -> None:
    for n in range(records._NODE_IDS_KEPT * 2 + 3):
        view = TaskView("t", TaskState.RUNNING, T0, node_id=f"node-{n}")
        assert view.node_id == f"node-{n}"
        assert len(records._node_ids) <= records._NODE_IDS_KEPT


def test_an_end_time_equal_to_the_transition_time_is_one_object_and_other_times_stay() -> None:
    equal = datetime.fromisoformat(T0.isoformat())
    assert equal is not T0
    view = _completed("a", "n", equal, T0)
    assert view.end_time == T0
    assert view.end_time is view.state_transition_time
    later = _completed("b", "n", T0 + timedelta(microseconds=1), T0)
    assert later.end_time == T0 + timedelta(microseconds=1)
    # The same instant in another zone keeps its own zone: a view gives back what it was given.
    elsewhere = T0.astimezone(timezone(timedelta(hours=2)))
    other = _completed("c", "n", elsewhere, T0)
    assert other.end_time is elsewhere
    assert other.end_time.utcoffset() == timedelta(hours=2)
