"""Nothing read from a task or the service is unbounded, and nothing a task wrote drives a terminal (issue 15
item 5; BatchExplorer#457): the pure text functions, the log chain's processor, the summary's lines, the
tails read by byte range on the local and in-memory backends, and the poller that reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from batchpilot.backends.local import LocalBackend
from batchpilot.cli import SUMMARY_FAILED_SHOWN, summary_lines
from batchpilot.engine import Orchestrator
from batchpilot.errors import BackendError
from batchpilot.events import FailedTask, RunSummary
from batchpilot.logging import bound_values, redact_secrets, register_secrets
from batchpilot.spec import JobSpec, PoolSpec, TaskSpec, TaskTemplate, Workload
from batchpilot.testing import Fail, FakeClock, InMemoryBackend
from batchpilot.text import (
    FIELD_CHARS,
    LINE_CHARS,
    TAIL_BYTES,
    bounded,
    cap,
    escape_controls,
    one_line,
    tail_text,
)
from tests.waiting import eventually

HOSTILE = "ok\x1b[2J\x1b]52;c;ZXZpbA==\x07\x9b31m\rhid\u202etxt\x00\x7f\u2066"


def test_escape_controls_writes_out_every_control_but_newline_and_tab() -> None:
    assert escape_controls(HOSTILE + "\n\tend") == (
        "ok\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07\\x9b31m\\rhid\\u202etxt\\x00\\x7f\\u2066\n\tend"
    )
    assert escape_controls("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"  # text is text


def test_one_line_escapes_newlines_too_and_caps() -> None:
    assert one_line("a\nb\r\nc") == "a\\nb\\r\\nc"
    line = one_line("x" * 5000 + "\x1b", 100)
    assert line == "x" * 100 + "... (4,901 more characters)"


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 10**6])
def test_cap_keeps_short_text_and_says_how_much_was_cut(size: int) -> None:
    text = "y" * size
    capped = cap(text, 100)
    assert (
        capped == text if size <= 100 else capped.startswith("y" * 100) and f"{size - 100:,} more" in capped
    )
    assert len(capped) < 140


def test_tail_text_keeps_the_last_lines_each_capped() -> None:
    data = b"".join(f"line {n}\n".encode() for n in range(100))
    assert tail_text(data, lines=3) == "line 97\nline 98\nline 99"
    assert tail_text(b"e" * 50_000, lines=10).startswith("e" * LINE_CHARS + "... (")
    assert tail_text(b"cut start\nwhole\n", partial=True) == "whole"
    assert tail_text(b"only a cut line", partial=True) == "only a cut line"
    assert tail_text(b"dos\r\nline\r\n") == "dos\nline"
    assert tail_text(b"\xff\xfebad utf-8") == "\ufffd\ufffdbad utf-8"
    assert tail_text(HOSTILE.encode()) == one_line(HOSTILE, LINE_CHARS)


def test_bounded_caps_strings_lists_and_dicts() -> None:
    value = {"ids": [f"t{n}" for n in range(1000)], "tail": "z" * 10**6, "n": 3, "nested": {"k": "\x1b"}}
    result = bounded(value, items=10)
    assert isinstance(result, dict)
    assert result["ids"][:2] == ["t0", "t1"]
    assert result["ids"][-1] == "... and 990 more"
    assert len(result["tail"]) < FIELD_CHARS + 50
    assert result["n"] == 3
    assert result["nested"] == {"k": "\\x1b"}


def test_the_log_chain_bounds_every_field_after_redacting() -> None:
    secret = "s3cr3t-account-key-" + "k" * 60
    register_secrets([secret])
    event = {"event": "task_failed", "stderr_tail": "x" * (FIELD_CHARS - 10) + secret + HOSTILE}
    line = bound_values(None, "warning", redact_secrets(None, "warning", event))
    assert secret[:20] not in json.dumps(line)  # masked whole before any cut
    assert "\x1b" not in line["stderr_tail"]
    assert len(line["stderr_tail"]) < FIELD_CHARS + 50
    assert bound_values(None, "error", {"exception": "T" * 15_000})["exception"] == "T" * 15_000


def _summary(failed: int, tail: str) -> RunSummary:
    return RunSummary(
        run_id="r", job_id="job", workload="w", tasks=failed, succeeded=0,
        failed=tuple(FailedTask(f"t{n}", 1, "Code: " + HOSTILE * 1000, tail) for n in range(failed)),
        uploaded=0, upload_skipped=0, tasks_added=failed, tasks_existing=0, downloaded=0, download_skipped=0,
        download_failed=0, elapsed_s=1.0, warnings=("warn\x1b[31m",),
    )  # fmt: skip


def test_the_summary_is_bounded_and_escaped_whatever_the_tasks_wrote() -> None:
    tail = "\n".join(["e" * 10**5] * 50 + [HOSTILE])
    lines = summary_lines(_summary(5000, tail), Path("out"), "local")
    text = "\n".join(lines)
    assert len(text.encode()) < 1_000_000
    assert all(len(line) < FIELD_CHARS + 100 for line in lines)
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\u202e" not in text
    assert "  warning: warn\\x1b[31m" in lines
    assert sum(line.startswith("  failed:  t") for line in lines) == SUMMARY_FAILED_SHOWN
    assert (
        f"  failed:  ... and {5000 - SUMMARY_FAILED_SHOWN:,} more: batchpilot status --backend local" in text
    )


async def test_the_local_backend_reads_a_tail_with_a_seek(tmp_path: Path) -> None:
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        command = "sh -c 'head -c 3000000 /dev/zero | tr \"\\0\" e >&2; echo END >&2; exit 1'"
        await backend.compute.add_tasks("job", [TaskSpec("t1", command)])

        async def completed() -> bool:
            return bool((await backend.compute.task_counts("job")).completed)

        await eventually(completed, "the task to complete", within=30)
        data = await backend.compute.read_task_file("job", "t1", "stderr.txt", tail=10)
        assert data == b"eeeeeeEND\n"
        assert await backend.compute.read_task_file("job", "t1", "stdout.txt", tail=10) == b""
        assert len(await backend.compute.read_task_file("job", "t1", "stderr.txt")) == 3_000_004


async def test_the_monitor_reads_only_the_end_of_a_failed_tasks_stderr(tmp_path: Path) -> None:
    stderr = "e" * 10_000_000 + "\nlast words\x1b[2J\n"
    backend = InMemoryBackend(script=lambda task: Fail(exit_code=2, stderr=stderr), clock=FakeClock())
    (tmp_path / "a.txt").write_text("a")
    workload = Workload(
        name="tail", inputs=(tmp_path / "a.txt",), template=TaskTemplate("run {input}", ()),
        pool=PoolSpec("pool", dedicated_nodes=1), download_to=None,
    )  # fmt: skip
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(workload)
    [failed] = summary.failed
    assert failed.stderr_tail == "last words\\x1b[2J"  # the cut line before it is dropped
    assert len(failed.stderr_tail) < 1000
    assert ("read_task_file", (failed.task_id, "stderr.txt")) in backend.compute.calls
    assert TAIL_BYTES < 10_000


def test_capture_logs_still_sees_the_events() -> None:
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger().warning("x", value="v")
    assert logs[0]["value"] == "v"


async def test_a_tail_that_cannot_be_read_never_fails_the_run(tmp_path: Path) -> None:
    backend = InMemoryBackend(script=lambda task: Fail(exit_code=2, stderr="x"), clock=FakeClock())

    async def refused(*args: object, **kwargs: object) -> bytes:
        raise BackendError("403 AuthorizationFailure", code="AuthorizationFailure")

    backend.compute.read_task_file = refused  # type: ignore[method-assign]
    (tmp_path / "a.txt").write_text("a")
    workload = Workload(
        name="tail", inputs=(tmp_path / "a.txt",), template=TaskTemplate("run {input}", ()),
        pool=PoolSpec("pool", dedicated_nodes=1), download_to=None,
    )  # fmt: skip
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(workload)
    [failed] = summary.failed
    assert (failed.exit_code, failed.stderr_tail) == (2, "")
