"""The log chain: JSON lines with stable keys, and no secret in any line, ours or the SDKs'."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest
import structlog

from batchpilot.events import TaskFailed, TaskSucceeded
from batchpilot.logging import configure_logging, register_secrets
from batchpilot.records import FailureInfo
from batchpilot.subscribers.log import LogSubscriber, event_fields

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5"


@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_event_is_one_json_line_with_stable_keys(json_log):
    failure = FailureInfo("usererror", "FailureExitCode", "exit 1")
    await LogSubscriber()(
        TaskFailed(run_id="r1", job_id="j1", task_id="t1", exit_code=1, failure=failure, duration_s=0.5)
    )
    (line,) = lines(json_log)
    assert line["event"] == "task_failed"
    assert line["level"] == "warning"
    assert (line["run_id"], line["job_id"], line["task_id"], line["exit_code"]) == ("r1", "j1", "t1", 1)
    assert line["failure_code"] == "FailureExitCode"
    assert line["timestamp"].endswith("Z")


def test_secrets_are_redacted_in_our_lines_exceptions_and_stdlib_loggers(json_log):
    register_secrets([KEY])
    log = structlog.get_logger("test")
    url = "https://acct.blob.core.windows.net/c/b?sv=2024&sp=r&sig=abc%2Fdef%3D&se=2026"
    log.info("uploaded", url=url, detail=f"key is {KEY}")
    try:
        raise RuntimeError(f"failed with AccountKey={KEY};EndpointSuffix=x")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("azure.core.test").warning("request to %s with key %s", url, KEY)
    text = json_log.getvalue()
    assert KEY not in text
    assert "abc%2Fdef" not in text
    assert "sig=REDACTED" in text
    assert len(lines(json_log)) == 3


def test_event_fields_flatten_enums_and_paths():
    fields = event_fields(
        TaskFailed(run_id="r", job_id="j", task_id="t", exit_code=None, failure=None, duration_s=None)
    )
    assert fields == {
        "run_id": "r", "job_id": "j", "task_id": "t", "exit_code": None, "failure": None, "duration_s": None,
        "stderr_tail": "", "node_id": None, "start_time": None, "end_time": None,
    }  # fmt: skip


def test_event_times_are_logged_as_iso_8601():
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    fields = event_fields(
        TaskSucceeded(run_id="r", job_id="j", task_id="t", exit_code=0, duration_s=1.5, start_time=start)
    )
    assert fields["start_time"] == "2026-01-01T12:00:00+00:00"
    assert json.loads(json.dumps(fields))["end_time"] is None


def test_the_log_file_keeps_info_when_the_console_shows_warnings_only(tmp_path):
    stream, log_file = io.StringIO(), tmp_path / "run.log"
    try:
        configure_logging(fmt="json", level="warning", stream=stream, log_file=log_file)
        log = structlog.get_logger("test")
        log.info("task_succeeded", task_id="t1")
        log.warning("task_failed", task_id="t2")
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert [line["event"] for line in lines(stream)] == ["task_failed"]
    in_file = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert in_file == ["task_succeeded", "task_failed"]
