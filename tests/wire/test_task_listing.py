"""A task listing fetches its pages itself (not through the SDK's pager, whose task models cost most of a
listing's CPU): the requests must be the ones the SDK's `list_tasks` sends, page after page through
`odata.nextLink`, counted in the request tally, and a refusal must become the same batchpilot error as
through the SDK. The continuation token is the real service's, as recorded in ../shared/recordings
(test_batch_create_pools, a paged listing; never copied)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from batchpilot.backends.azure import AzureBackend
from batchpilot.backends.azure.errors import translated
from batchpilot.backends.azure.models import TASK_VIEW_FIELDS
from batchpilot.errors import AuthenticationError, BackendError, NotFoundError, TransientBackendError
from batchpilot.records import TaskState, TaskView

from .conftest import BATCH, Http, Sent

API = "2025-06-01"
RECORDING = (
    Path(__file__).resolve().parents[2].parent
    / "shared/recordings/azure-sdk-for-python/test_batch.pyTestBatchtest_batch_create_pools[async].json"
)
SINCE = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
WHERE = "stateTransitionTime ge datetime'2030-01-02T03:04:05.678Z'"
# Headers that differ from one request to the next (signature, time, request id).
_VOLATILE = frozenset({"authorization", "ocp-date", "x-ms-date", "date", "client-request-id"})


def recorded_skiptoken() -> str:
    """The first continuation token the service sent in a recorded paged listing (`^ / = : $` in it)."""
    for entry in json.loads(RECORDING.read_text())["Entries"]:
        body = entry.get("ResponseBody")
        if isinstance(body, dict) and body.get("odata.nextLink"):
            return parse_qs(urlsplit(body["odata.nextLink"]).query)["$skiptoken"][0]
    raise AssertionError("no paged listing in the recording")


def task(task_id: str, state: str = "running") -> dict[str, Any]:
    return {"id": task_id, "state": state, "stateTransitionTime": "2030-01-02T03:05:00Z"}


def serve_two_pages(http: Http, token: str) -> None:
    # As the service links a page: the path, its api-version, the filter and selection, the token.
    link = (
        f"{BATCH}/jobs/job-1/tasks?api-version={API}&$filter={WHERE.replace(' ', '%20')}"
        f"&$select={','.join(TASK_VIEW_FIELDS)}&$skiptoken={token}"
    )
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": [task("a")], "odata.nextLink": link})
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": [task("b", "completed")]})


def stable(sent: Sent) -> tuple[str, str, dict[str, str], dict[str, str]]:
    headers = {k: v for k, v in sent.headers.items() if k not in _VOLATILE}
    return sent.method, sent.path, sent.query, headers


async def sdk_listing(backend: AzureBackend) -> None:
    """What list_tasks did through the SDK's pager (up to d4bd575)."""
    with translated("list tasks of job job-1", backend.settings.secrets):
        pages = backend.compute.client.list_tasks("job-1", filter=WHERE, select=list(TASK_VIEW_FIELDS))
        async for page in pages.by_page():
            async for _ in page:
                pass


async def test_the_pages_are_asked_for_as_the_sdk_asks_for_them(http: Http, backend: AzureBackend) -> None:
    token = recorded_skiptoken()
    serve_two_pages(http, token)
    await sdk_listing(backend)
    by_sdk = [stable(sent) for sent in http.sent()]
    serve_two_pages(http, token)

    views = await backend.compute.list_tasks("job-1", changed_since=SINCE)

    ours = [stable(sent) for sent in http.sent()[len(by_sdk) :]]
    assert ours == by_sdk
    assert len(ours) == 2
    first, second = ours
    assert first[2] == {"api-version": API, "$filter": WHERE, "$select": ",".join(TASK_VIEW_FIELDS)}
    assert second[2]["$skiptoken"] == token  # the recorded token reaches the service unchanged
    assert second[2]["$filter"] == WHERE
    assert [(view.task_id, view.state) for view in views] == [
        ("a", TaskState.RUNNING),
        ("b", TaskState.COMPLETED),
    ]


async def test_every_page_is_counted_in_the_request_tally(http: Http, backend: AzureBackend) -> None:
    serve_two_pages(http, recorded_skiptoken())
    pages: list[list[str]] = []

    async def page(views: list[TaskView]) -> None:
        pages.append([view.task_id for view in views])

    assert await backend.compute.list_tasks("job-1", changed_since=SINCE, on_page=page) == []

    assert pages == [["a"], ["b"]]
    assert backend.requests.requests["batch GET /jobs/*/tasks"] == 2


@pytest.mark.parametrize(
    ("status", "code", "error", "attempts"),
    [
        (404, "JobNotFound", NotFoundError, 1),
        (401, "AuthenticationFailed", AuthenticationError, 1),
        (403, "Forbidden", AuthenticationError, 1),
        (409, "JobBeingDeleted", BackendError, 1),
        (400, "InvalidQueryParameterValue", BackendError, 1),
        (500, "InternalError", TransientBackendError, 3),  # retry_total=2: the SDK's retries, not ours
        (503, "ServerBusy", TransientBackendError, 3),
    ],
)
async def test_a_refused_page_is_the_error_the_sdk_path_raised(
    http: Http, backend: AzureBackend, status: int, code: str, error: type[BackendError], attempts: int
) -> None:
    for _ in range(2):  # the SDK's listing, then ours; each refused after a first page
        link = f"{BATCH}/jobs/job-1/tasks?api-version={API}&$skiptoken=abc"
        http.batch("GET", "/jobs/job-1/tasks", payload={"value": [task("a")], "odata.nextLink": link})
        for _ in range(attempts):
            http.batch_error("GET", "/jobs/job-1/tasks", status, code)
    with pytest.raises(BackendError) as by_sdk:
        await sdk_listing(backend)
    sent_by_sdk = len(http.sent())

    with pytest.raises(BackendError) as ours:
        await backend.compute.list_tasks("job-1", changed_since=SINCE)

    assert type(ours.value) is type(by_sdk.value)
    assert isinstance(ours.value, error)
    assert str(ours.value) == str(by_sdk.value)
    assert ours.value.code == code
    assert len(http.sent()) - sent_by_sdk == sent_by_sdk == 1 + attempts
