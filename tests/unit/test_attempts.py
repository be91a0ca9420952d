"""What follows an attempt, as a table: Batch's rule (Batch REST: TaskConstraints.maxTaskRetryCount),
which the local backend and the emulator both follow through `attempts.after_attempt`."""

from __future__ import annotations

import pytest

from batchpilot.attempts import Decision, Interruption, after_attempt, is_retry_count, reactivation_refused
from batchpilot.records import FailureInfo, TaskResult, TaskState

EXIT_1 = FailureInfo(
    "usererror", "FailureExitCode", "The task exited with an exit code representing a failure"
)
WALL_CLOCK = FailureInfo("usererror", "MaxWallClockTimeExpiry", "The task ran longer than its wall clock")
TOKEN = FailureInfo("usererror", "BlobAccessDenied", "403 AuthenticationFailed")
UPLOAD_DENIED = FailureInfo("usererror", "FileUploadAccessDenied", "403 AuthenticationFailed")
NO_PROGRAM = FailureInfo("usererror", "CommandProgramNotFound", "no such program")
UPLOAD_FAILED = FailureInfo("servererror", "FileUploadFailed", "out.mp3: connection reset")
ENDED = FailureInfo("usererror", "TaskEnded", "The task was ended because its job was terminated")


@pytest.mark.parametrize(
    ("exit_code", "failure", "retry_count", "limit", "interrupted", "expected"),
    [
        # Success completes the task, whatever its retries.
        (0, None, 0, 0, None, Decision.SUCCEED),
        (0, None, 3, 3, None, Decision.SUCCEED),
        (0, None, 7, -1, None, Decision.SUCCEED),
        # A nonzero exit is retried up to the limit: 3 means up to 4 tries.
        (1, EXIT_1, 0, 0, None, Decision.FAIL),
        (1, EXIT_1, 0, 1, None, Decision.RETRY),
        (1, EXIT_1, 1, 1, None, Decision.FAIL),
        (1, EXIT_1, 2, 3, None, Decision.RETRY),
        (1, EXIT_1, 3, 3, None, Decision.FAIL),
        (1, EXIT_1, 100, 100, None, Decision.FAIL),
        # -1: without limit.
        (1, EXIT_1, 0, -1, None, Decision.RETRY),
        (1, EXIT_1, 1000, -1, None, Decision.RETRY),
        # A zero exit with a failure (an output that could not be uploaded) is a failure.
        (0, UPLOAD_FAILED, 0, 1, None, Decision.RETRY),
        (0, UPLOAD_FAILED, 1, 1, None, Decision.FAIL),
        # No exit code at all (the program was not found): retried as any failure.
        (None, NO_PROGRAM, 0, 2, None, Decision.RETRY),
        # A retry cannot mend a spent wall clock or a refused token.
        (None, WALL_CLOCK, 0, 5, None, Decision.FAIL),
        (None, WALL_CLOCK, 0, -1, None, Decision.FAIL),
        (None, TOKEN, 0, -1, None, Decision.FAIL),
        (0, UPLOAD_DENIED, 0, 3, None, Decision.FAIL),
        # A node that went away requeues the task, not counted as a retry, even past the limit.
        (None, None, 0, 0, Interruption.NODE_LOST, Decision.REQUEUE),
        (None, None, 5, 5, Interruption.NODE_LOST, Decision.REQUEUE),
        # An attempt ended on purpose completes the task as failed.
        (None, ENDED, 0, -1, Interruption.TERMINATED, Decision.FAIL),
        (None, ENDED, 0, 3, Interruption.TERMINATED, Decision.FAIL),
    ],
)
def test_after_an_attempt(exit_code, failure, retry_count, limit, interrupted, expected):
    decision = after_attempt(
        exit_code=exit_code,
        failure=failure,
        retry_count=retry_count,
        max_task_retry_count=limit,
        interrupted=interrupted,
    )
    assert decision is expected


@pytest.mark.parametrize(
    ("value", "valid"),
    [(-1, True), (0, True), (1, True), (100, True), (-2, False), (101, False), (True, False), (2.0, False)],
)
def test_a_retry_count_is_minus_one_or_zero_to_a_hundred(value, valid):
    assert is_retry_count(value) is valid


@pytest.mark.parametrize(
    ("state", "result", "refused"),
    [
        (TaskState.ACTIVE, None, "TaskNotCompleted"),
        (TaskState.RUNNING, None, "TaskNotCompleted"),
        (TaskState.COMPLETED, TaskResult.SUCCESS, "TaskSucceeded"),
        (TaskState.COMPLETED, TaskResult.FAILURE, None),
    ],
)
def test_only_a_failed_completed_task_is_reactivated(
    state: TaskState, result: TaskResult | None, refused: str | None
) -> None:
    assert reactivation_refused(state, result) == refused
