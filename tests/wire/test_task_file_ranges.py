"""A task file's end is read by byte range on Batch (issue 15 item 5): its properties for the size (HEAD,
Content-Length, as the service answers in ../shared/recordings' test_batch_files), then `ocp-range:
bytes=first-last` (Batch takes no suffix range). The recorded HEAD carries no ocp-batch-file-mode header."""

from __future__ import annotations

from batchpilot.backends.azure import AzureBackend
from tests.wire.conftest import BATCH, Http

FILE = "/jobs/job-1/tasks/t1/files/stderr.txt"
HEAD_HEADERS = {  # the recorded answer's headers (test_batch_files), with this file's size
    "Content-Type": "text/plain",
    "ocp-batch-file-isdirectory": "False",
    "ocp-batch-file-url": "https%3A%2F%2Facct.westeurope.batch.azure.com%2Fjobs%2Fjob-1%2Ftasks%2Ft1%2Ffiles",
    "ocp-creation-time": "Thu, 07 Sep 2023 06:26:58 GMT",
}


async def test_the_last_bytes_are_read_by_range(http: Http, backend: AzureBackend) -> None:
    http.add(
        BATCH + FILE + "?api-version=2025-06-01",
        "HEAD",
        headers={**HEAD_HEADERS, "Content-Length": "50000000"},
    )
    http.add(BATCH + FILE + "?api-version=2025-06-01", body=b"e" * 4096, content_type="text/plain")

    assert await backend.compute.read_task_file("job-1", "t1", "stderr.txt", tail=4096) == b"e" * 4096
    head, get = http.sent()
    assert (head.method, get.method) == ("HEAD", "GET")
    assert get.headers["ocp-range"] == "bytes=49995904-49999999"


async def test_a_file_shorter_than_the_tail_is_read_from_its_start(http: Http, backend: AzureBackend) -> None:
    http.add(
        BATCH + FILE + "?api-version=2025-06-01", "HEAD", headers={**HEAD_HEADERS, "Content-Length": "5"}
    )
    http.add(BATCH + FILE + "?api-version=2025-06-01", body=b"oops\n", content_type="text/plain")

    assert await backend.compute.read_task_file("job-1", "t1", "stderr.txt", tail=4096) == b"oops\n"
    assert http.sent()[1].headers["ocp-range"] == "bytes=0-4"


async def test_an_empty_file_costs_no_read(http: Http, backend: AzureBackend) -> None:
    http.add(
        BATCH + FILE + "?api-version=2025-06-01", "HEAD", headers={**HEAD_HEADERS, "Content-Length": "0"}
    )

    assert await backend.compute.read_task_file("job-1", "t1", "stderr.txt", tail=4096) == b""
    assert [sent.method for sent in http.sent()] == ["HEAD"]


async def test_a_file_cut_short_since_its_size_was_read_is_empty_not_an_error(
    http: Http, backend: AzureBackend
) -> None:
    """A new attempt truncates stderr.txt between the two requests: 416 InvalidRange."""
    http.add(
        BATCH + FILE + "?api-version=2025-06-01", "HEAD", headers={**HEAD_HEADERS, "Content-Length": "9000"}
    )
    http.batch_error("GET", FILE, 416, "InvalidRange")

    assert await backend.compute.read_task_file("job-1", "t1", "stderr.txt", tail=4096) == b""
