"""A listing's tasks are read from the service's JSON, not through the SDK's models (they cost most of a
listing's time): the same TaskView as the SDK's model gives, for a task as the real service answered it
(../shared/recordings' test_batch_files, never copied: api-version 2023-05-01.17.0, 7-digit times) and for
a failed one with every field the monitor reads."""

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


FAILED = {
    "id": "t-9",
    "state": "completed",
    "stateTransitionTime": "2030-01-02T03:06:00.1234567Z",
    "executionInfo": {
        "startTime": "2030-01-02T03:05:00Z",
        "endTime": "2030-01-02T03:06:00.1234567Z",
        "exitCode": 1,
        "retryCount": 2,
        "requeueCount": 1,
        "result": "failure",
        "failureInfo": {"category": "userError", "code": "FailureExitCode", "message": "exit code 1"},
    },
    "nodeInfo": {"nodeId": "tvmps_1_d", "poolId": "p", "nodeUrl": "https://x/pools/p/nodes/tvmps_1_d"},
}


@pytest.mark.parametrize(
    "task", [pytest.param(recorded_task(), id="recorded"), pytest.param(FAILED, id="failed")]
)
def test_a_task_read_from_its_json_is_the_task_the_sdk_model_gives(task: dict[str, Any]) -> None:
    assert task_view_from_wire(task) == task_view(bm.BatchTask(task))


def test_times_keep_their_microseconds_and_are_utc() -> None:
    view = task_view_from_wire(FAILED)
    assert view.state_transition_time == datetime(2030, 1, 2, 3, 6, 0, 123456, tzinfo=UTC)
    assert view.failure is not None
    assert view.failure.category == "usererror"
