"""What happens to a task after one of its attempts ends: Batch's rule, in one pure function that the local
backend and the emulator both follow.

Batch tries a task once and retries it, while its exit code is nonzero, up to `maxTaskRetryCount` times:
0 never retries, -1 retries without limit (Batch REST: TaskConstraints.maxTaskRetryCount). A task that ran
out of its wall clock, or whose storage token was refused, is not retried: a retry could only fail the same
way. An attempt cut short because its node went away (a spot node preempted, a node removed, or, locally,
the orchestrator stopping) is requeued: it goes back to the queue without counting as a retry. An attempt
ended on purpose (its job terminated, its node removed with `terminate`) completes the task as failed.
"""

from __future__ import annotations

import enum

from .records import FailureInfo, TaskResult, TaskState

# Batch: "If the maximum retry count is -1, the Batch service retries the task without limit."
UNLIMITED_RETRIES = -1
# The largest count a workload may ask for. Batch documents -1 and counts from 0; the reference pages
# consulted name no maximum, so 100 is batchpilot's bound on what a workload file can ask.
MAX_TASK_RETRY_COUNT = 100
# Failures a retry cannot mend: the wall clock counts from the task's first start, and a refused token stays
# refused.
FINAL_FAILURES = frozenset({"MaxWallClockTimeExpiry", "BlobAccessDenied", "FileUploadAccessDenied"})


class Interruption(enum.Enum):
    """Why an attempt ended before its command did."""

    NODE_LOST = "node lost"  # preempted, its node left the pool, or the local orchestrator stopped
    TERMINATED = "terminated"  # its job was terminated, or its node removed with `terminate`


class Decision(enum.Enum):
    """What becomes of the task. SUCCEED and FAIL complete it; RETRY and REQUEUE put it back in the queue,
    RETRY adding one to its retry count, REQUEUE to its requeue count."""

    SUCCEED = "succeed"
    FAIL = "fail"
    RETRY = "retry"
    REQUEUE = "requeue"


def after_attempt(
    *,
    exit_code: int | None,
    failure: FailureInfo | None,
    retry_count: int,
    max_task_retry_count: int,
    interrupted: Interruption | None = None,
) -> Decision:
    """Decide what follows an attempt that ended with `exit_code` (None when the command never ran or did
    not end on its own) and `failure` (Batch's failure info, None when there was none), for a task already
    retried `retry_count` times whose limit is `max_task_retry_count` (-1: no limit). Pure; raises nothing."""
    if interrupted is Interruption.NODE_LOST:
        return Decision.REQUEUE
    if interrupted is Interruption.TERMINATED:
        return Decision.FAIL
    if failure is None and exit_code == 0:
        return Decision.SUCCEED
    if failure is not None and failure.code in FINAL_FAILURES:
        return Decision.FAIL
    if max_task_retry_count == UNLIMITED_RETRIES or retry_count < max_task_retry_count:
        return Decision.RETRY
    return Decision.FAIL


RETRY_COUNT_RULE = f"must be -1 (retry without limit) or a whole number from 0 to {MAX_TASK_RETRY_COUNT}"


def is_retry_count(value: object) -> bool:
    """Whether `value` can be a maxTaskRetryCount: -1, or a whole number from 0 to 100 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value == UNLIMITED_RETRIES or 0 <= value <= MAX_TASK_RETRY_COUNT


def reactivation_refused(state: TaskState, result: TaskResult | None) -> str | None:
    """Why Batch's Reactivate Task refuses a task in `state` with `result`, as the service's 409 code
    (`TaskNotCompleted`, `TaskSucceeded`); None when it takes it: only a task that completed with a failure
    runs again under its id (Batch REST: Reactivate Task)."""
    if state is not TaskState.COMPLETED:
        return "TaskNotCompleted"
    if result is TaskResult.SUCCESS:
        return "TaskSucceeded"
    return None
