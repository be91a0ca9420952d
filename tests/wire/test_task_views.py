"""A listing's tasks are read from the service's JSON, not through the SDK's models (they cost most of a
listing's time): the same TaskView as the SDK's model gives, for a task as the real service answered it
(../shared/recordings' test_batch_files, never copied: api-version 2023-05-01.17.0, 7-digit times) and for
the same task taken to a failed completion in code, every field the monitor reads set."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as bm

from batchpilot.backends.azure.models import task_view, task_view_from_wire

RECORDING = (
    Path(__file__).resolve().parents[2].parent
    / "shared/recordings/azure-sdk-for-python/test_batch.pyTestBatchtest_batch_files[async].json"
)


def recorded_task() -> dict[str, Any]:
    entries = json.loads(RECORDING.read_text())["Entries"]
    return next(
        entry["ResponseBody"]
        for entry in entries
        if entry["RequestMethod"] == "GET" and entry["RequestUri"].split("?")[0].endswith("/tasks/test_task")
    )


def failed_task() -> dict[str, Any]:
    """The recorded task taken to a failed completion, every field the monitor reads set: its own creation
    time (7 digits) as its end, the node it would have run on named as the service names nodes."""
    task = recorded_task()
    ended = task["creationTime"]
    node = "tvmps_" + "0" * 64 + "_d"
    return {
        **task,
        "state": "completed",
        "stateTransitionTime": ended,
        "executionInfo": {
            **task["executionInfo"],
            "startTime": ended,
            "endTime": ended,
            "exitCode": 1,
            "retryCount": 2,
            "requeueCount": 1,
            "result": "failure",
            "failureInfo": {"category": "userError", "code": "FailureExitCode", "message": "exit code 1"},
        },
        "nodeInfo": {"nodeId": node, "poolId": "p"},
    }


@pytest.mark.parametrize(
    "task", [pytest.param(recorded_task(), id="recorded"), pytest.param(failed_task(), id="failed")]
)
def test_a_task_read_from_its_json_is_the_task_the_sdk_model_gives(task: dict[str, Any]) -> None:
    assert task_view_from_wire(task) == task_view(bm.BatchTask(task))


def test_times_keep_their_microseconds_and_are_utc() -> None:
    view = task_view_from_wire(failed_task())
    # The recording's 2023-09-07T06:26:55.6167653Z: seven digits, of which Python keeps six.
    assert view.state_transition_time == datetime(2023, 9, 7, 6, 26, 55, 616765, tzinfo=UTC)
    assert view.failure is not None
    assert view.failure.category == "usererror"
