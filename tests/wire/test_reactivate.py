"""The Azure adapter's Reactivate Task (issue 15 item 2), on the wire: Batch REST
`POST /jobs/{job}/tasks/{task}/reactivate`, 204 on success; 409 JobCompleted is a JobEndedError (Batch
reactivates no task in a completed job), 409 TaskSucceeded / TaskNotCompleted a BackendError with the code."""

from __future__ import annotations

import pytest

from batchpilot.backends.azure import AzureBackend
from batchpilot.errors import BackendError, JobEndedError

from .conftest import Http

API = "2025-06-01"


async def test_reactivate_sends_batch_s_request(http: Http, backend: AzureBackend) -> None:
    http.batch("POST", "/jobs/job-1/tasks/task-7/reactivate", 204)

    await backend.compute.reactivate_task("job-1", "task-7")

    [sent] = http.sent()
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/jobs/job-1/tasks/task-7/reactivate",
        {"api-version": API},
    )


async def test_reactivate_in_a_completed_job_is_job_ended(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/jobs/job-1/tasks/task-7/reactivate", 409, "JobCompleted")

    with pytest.raises(JobEndedError, match="job job-1 has ended") as raised:
        await backend.compute.reactivate_task("job-1", "task-7")
    assert (raised.value.job_id, raised.value.reason) == ("job-1", "JobCompleted")


@pytest.mark.parametrize("code", ["TaskSucceeded", "TaskNotCompleted"])
async def test_reactivate_of_a_task_that_did_not_fail_says_why(
    http: Http, backend: AzureBackend, code: str
) -> None:
    http.batch_error("POST", "/jobs/job-1/tasks/task-7/reactivate", 409, code)

    with pytest.raises(BackendError) as raised:
        await backend.compute.reactivate_task("job-1", "task-7")
    assert not isinstance(raised.value, JobEndedError)
    assert raised.value.code == code
