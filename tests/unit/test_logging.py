"""The log chain: JSON lines with stable keys, and no secret in any line, ours or the SDKs'."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
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


class _Flushes(io.StringIO):
    """A stream that keeps what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


@pytest.fixture
def flushes():
    stream = _Flushes()
    configure_logging(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


async def test_info_lines_are_flushed_together_once_per_loop_turn_and_warnings_at_once(flushes):
    log = structlog.get_logger("test")
    for n in range(3):
        log.info("task_state_changed", task_id=f"t{n}")
    assert flushes.flushed == []  # written, not yet flushed
    await anyio.lowlevel.checkpoint()  # the loop's next turn
    assert len(flushes.flushed) == 1
    assert [json.loads(line)["task_id"] for line in flushes.flushed[0].splitlines()] == ["t0", "t1", "t2"]
    log.info("task_state_changed", task_id="t3")
    log.warning("task_failed", task_id="t4")  # flushed at once, with the line before it
    assert flushes.flushed[-1].splitlines()[-2:] == flushes.getvalue().splitlines()[-2:]
    assert len(flushes.getvalue().splitlines()) == 5


def test_outside_an_event_loop_each_line_is_flushed(flushes):
    log = structlog.get_logger("test")
    log.info("a")
    log.info("b")
    assert [len(text.splitlines()) for text in flushes.flushed] == [1, 2]


@pytest.mark.parametrize("ending", ["return", "raise"])
def test_no_line_is_lost_when_the_loop_ends_or_the_program_fails(ending):
    """The last lines of a run, written in its loop's last turn, reach the pipe however the program ends:
    its loop returning, or failing with an exception."""
    script = f"""
import anyio, structlog
from batchpilot.logging import configure_logging
configure_logging(fmt="json")
async def main():
    for n in range(200):
        structlog.get_logger("t").info("line", n=n)
    if "{ending}" == "raise":
        raise RuntimeError("the run crashed")
anyio.run(main)
structlog.get_logger("t").info("after")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    if ending == "raise":
        assert done.returncode == 1
        assert "the run crashed" in done.stderr
        assert events == ["line"] * 200
    else:
        assert done.returncode == 0, done.stderr
        assert events == ["line"] * 200 + ["after"]


async def test_the_log_subscriber_follows_a_new_configuration(json_log):
    subscriber = LogSubscriber()
    done = TaskSucceeded(run_id="r1", job_id="j1", task_id="t1", exit_code=0, duration_s=0.5)
    await subscriber(done)
    with structlog.testing.capture_logs() as captured:
        await subscriber(done)
    await subscriber(done)
    assert [entry["event"] for entry in captured] == ["task_succeeded"]
    assert [line["task_id"] for line in lines(json_log)] == ["t1", "t1"]
