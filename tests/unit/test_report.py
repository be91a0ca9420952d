"""The run report's pure parts: attempts from the recorder, node time, bounds, escaping, atomic writes."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot.errors import ConfigError
from batchpilot.events import FailedTask, RunStarted
from batchpilot.monitor.state import TaskTracker
from batchpilot.recorder import AttemptOutcome, RunRecorder, TaskAttempt
from batchpilot.records import FailureInfo, TaskResult, TaskState
from batchpilot.report.model import (
    MAX_FAILURES,
    Attempt,
    Outcome,
    RunInfo,
    attempts_of,
    build_report,
    failure_of,
    node_kind,
    node_label,
    node_time,
)
from batchpilot.report.render import FAILURES_OPEN, chart_data, render_html
from batchpilot.report.sources import RollingRuns, of_job, of_run
from batchpilot.report.write import ReportWriteError, check_report_path, write_report
from batchpilot.spec import CleanupPolicy
from tests.helpers import FakeCompute, at, view

NODE_D = "tvmps_" + "a" * 64 + "_d"
NODE_P = "tvmps_" + "b" * 64 + "_p"
INFO = RunInfo(source="run", backend="azure", job_id="job-1", workload="w", pool_id="pool-1")


def _recorded(task_id: str, outcome: AttemptOutcome, start: float | None, end: float | None, **extra: object):
    fields: dict[str, object] = {"node_id": NODE_D, "exit_code": None, "retry_count": 0, "requeue_count": 0}
    fields.update(extra)
    return TaskAttempt(
        task_id=task_id,
        start=at(start) if start is not None else None,
        end=at(end) if end is not None else None,
        outcome=outcome,
        **fields,  # type: ignore[arg-type]
    )


def test_recorded_attempts_become_bars_of_their_outcome():
    bars = attempts_of(
        [
            _recorded("a", AttemptOutcome.RETRIED, 0, 5, exit_code=1),  # failed, then retried
            _recorded("a", AttemptOutcome.SUCCEEDED, 6, 9, exit_code=0, retry_count=1),
            _recorded("b", AttemptOutcome.REQUEUED, 0, 3),  # its node went away
            _recorded("c", AttemptOutcome.UNFINISHED, 2, None),
            _recorded("d", AttemptOutcome.UNFINISHED, None, None),  # queued, never ran: not drawn
        ]
    )
    assert [(bar.task_id, bar.outcome) for bar in bars] == [
        ("a", Outcome.RETRIED),
        ("a", Outcome.SUCCEEDED),
        ("b", Outcome.REQUEUED),
        ("c", Outcome.RUNNING),
    ]
    assert bars[1].retry_count == 1
    assert bars[3].end is None


def test_a_live_retry_through_the_state_machine_and_recorder_is_two_bars():
    tracker = TaskTracker("run-1", "job-1", ["t"])
    recorder = RunRecorder()
    snapshots = [
        [view("t", TaskState.RUNNING, 1, node_id=NODE_D, start_time=at(1))],
        [view("t", TaskState.ACTIVE, 5, node_id=NODE_D, exit_code=1, retry_count=1, start_time=at(1))],
        [view("t", TaskState.RUNNING, 6, node_id=NODE_P, retry_count=1, start_time=at(6))],
        [
            view(
                "t",
                TaskState.COMPLETED,
                9,
                node_id=NODE_P,
                exit_code=0,
                retry_count=1,
                result=TaskResult.SUCCESS,
                start_time=at(6),
                end_time=at(9),
            )
        ],
    ]
    for number, views in enumerate(snapshots):
        for event in tracker.observe(views, at=at(number)):
            recorder.observe(event)
    bars = attempts_of(recorder.record().attempts)
    assert [(bar.outcome, bar.node_id) for bar in bars] == [
        (Outcome.RETRIED, NODE_D),
        (Outcome.SUCCEEDED, NODE_P),
    ]
    assert (bars[0].start, bars[0].end) == (at(1), at(5))
    assert (bars[1].start, bars[1].end) == (at(6), at(9))


def test_an_attempt_cut_short_is_requeued_not_retried():
    tracker = TaskTracker("run-1", "job-1", ["t"])
    recorder = RunRecorder()
    snapshots = [
        [view("t", TaskState.RUNNING, 1, node_id=NODE_P, start_time=at(1))],
        [view("t", TaskState.ACTIVE, 4, node_id=NODE_P, requeue_count=1, start_time=at(1))],
    ]
    for number, views in enumerate(snapshots):
        for event in tracker.observe(views, at=at(10 + number)):
            recorder.observe(event)
    [bar] = attempts_of(recorder.record().attempts)
    assert bar.outcome is Outcome.REQUEUED
    assert (bar.start, bar.end) == (at(1), at(4))  # the service's times, not when the poll saw it


def test_node_time_counts_busy_as_the_union_of_attempts_and_asked_nodes_as_allocated():
    attempts = [
        Attempt("a", NODE_D, at(0), at(30), Outcome.SUCCEEDED),
        Attempt("b", NODE_D, at(20), at(60), Outcome.SUCCEEDED),  # overlaps a: busy 0-60, not 70
        Attempt("c", NODE_P, at(0), at(30), Outcome.REQUEUED),
    ]
    rows = node_time(attempts, window=(at(0), at(120)), dedicated_nodes=2, spot_nodes=1, now=at(120))
    by_kind = {row.kind: row for row in rows}
    assert by_kind["dedicated"].nodes == 2
    assert by_kind["dedicated"].allocated_min == pytest.approx(4.0)  # 2 nodes x 2 minutes
    assert by_kind["dedicated"].busy_min == pytest.approx(1.0)
    assert by_kind["dedicated"].idle_share == pytest.approx(0.75)
    assert by_kind["spot"].busy_min == pytest.approx(0.5)
    # Without the pool's counts (report --job): the nodes seen, from the first start to the last end.
    seen = node_time(attempts, window=None, dedicated_nodes=None, spot_nodes=None, now=at(120))
    assert {row.kind: row.nodes for row in seen} == {"dedicated": 1, "spot": 1}


def test_node_kinds_and_labels_follow_batch_node_ids():
    assert node_kind(NODE_D) == "dedicated"
    assert node_kind(NODE_P) == "spot"
    assert node_kind("batchpilot-local-pool-slot-3") == "dedicated"
    assert node_label(NODE_P) == "bbbbbbbb…_p"
    assert node_label("batchpilot-local-pool-slot-3") == "batchpilot-local-pool-slot-3"


def test_a_failure_reason_gives_its_code_and_the_stderr_tail_is_bounded():
    failure = failure_of(FailedTask("t", 1, "FailureExitCode: the task exited with 1", "x" * 10_000 + "END"))
    assert failure.failure_code == "FailureExitCode"
    assert failure.stderr_tail.endswith("END")
    assert len(failure.stderr_tail) == 4_000
    refused = failure_of(FailedTask("t", None, "not added: InvalidPropertyValue: bad", ""))
    assert refused.failure_code == "InvalidPropertyValue"
    assert failure_of(FailedTask("t", 2, "exit code 2", "")).failure_code is None


def test_failures_listed_are_bounded_and_counted():
    failures = [failure_of(FailedTask(f"t{i}", 1, "FailureExitCode: x", "")) for i in range(MAX_FAILURES + 7)]
    data = build_report(INFO, attempts=[], failures=failures, generated_at=at(0))
    assert len(data.failures) == MAX_FAILURES
    assert data.failures_not_listed == 7
    assert "7 more failures are not listed" in render_html(data, script="")


def test_hostile_text_is_escaped_and_cannot_close_the_data_island():
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    attempts = [Attempt(f"t-{evil}", evil, at(0), at(1), Outcome.FAILED, exit_code=1)]
    failures = [failure_of(FailedTask(f"t-{evil}", 1, f"Code: {evil}", f"stderr {evil} sig=SECRETSIG"))]
    data = build_report(INFO, attempts=attempts, failures=failures, summary_lines=[evil], generated_at=at(2))
    page = render_html(data, script="", redact=lambda text: text.replace("SECRETSIG", "REDACTED"))
    assert "<script>alert" not in page
    assert "<img" not in page
    assert "SECRETSIG" not in page
    island = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert island is not None
    assert json.loads(island.group(1))["datasets"]["attempts"][0]["t"] == f"t-{evil}"
    assert page.count("<script") == 3  # the data island, the charting library, the page's own


def test_what_a_reader_sees_without_clicking_or_scrolling_sideways():
    # Found looking at a real run's report in Chromium: the failures' stderr was folded away, the summary's
    # long lines ran off its box, and the timeline said "task slot on the local backend" on Azure.
    failed = [failure_of(FailedTask(f"t{i}", 1, "FailureExitCode: x", f"err {i}")) for i in range(12)]
    data = build_report(INFO, attempts=[], failures=failed, summary_lines=["x" * 300], generated_at=at(1))
    page = render_html(data, script="")
    assert page.count("<details open>") == FAILURES_OPEN == 10
    assert page.count("<details>") == 2  # the rest stay folded: a page of 100 failures stays readable
    assert "white-space:pre-wrap" in page
    assert "<summary>stderr, last line</summary>" in page  # not "last 1 lines"
    assert chart_data(data, str)["specs"]["timeline"]["vconcat"][-1]["title"] == "task attempts by node"
    local = build_report(RunInfo(source="run", backend="local", job_id="j"), attempts=[], generated_at=at(1))
    assert "task slot" in chart_data(local, str)["specs"]["timeline"]["vconcat"][-1]["title"]


def test_a_rolling_report_of_one_batch_says_so_in_the_singular():
    runs = RollingRuns()
    runs.new_recorder()
    assert runs.data(INFO, generated_at=at(1)).notes[0] == "the latest batch"


def test_the_durations_chart_draws_whole_counts_within_its_axis():
    spec = chart_data(build_report(INFO, attempts=[], generated_at=at(1)), str)["specs"]["durations"]
    # Bars binned in a transform and drawn from their bin's start (x) to its end (x2): the axis spans every
    # bar (binned in the encoding, the last bar overran the axis into the legend).
    assert {"bin": {"maxbins": 40}, "field": "d", "as": ["d0", "d1"]} in spec["transform"]
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["x2"]["field"]) == ("d0", "d1")
    # A count axis labels whole numbers only (d3 picks a step of 0.5 for a count of 1 or 2).
    assert spec["encoding"]["y"]["axis"]["labelExpr"] == "datum.value % 1 ? '' : datum.label"


def test_the_page_needs_nothing_from_the_network():
    data = build_report(
        INFO, attempts=[Attempt("t", NODE_D, at(0), at(1), Outcome.SUCCEEDED)], generated_at=at(1)
    )
    page = render_html(data, script="")
    assert "default-src 'none'" in page
    assert "connect-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)


def test_the_report_of_an_interrupted_run_draws_what_was_under_way():
    recorder = RunRecorder()
    recorder.observe(
        RunStarted(run_id="r", at=at(0), workload="w", job_id="job-1", pool_id="pool-1", input_count=1,
                   input_container="i", output_container="o", download_to=None, cleanup=CleanupPolicy())
    )  # fmt: skip
    for event in TaskTracker("r", "job-1", ["t"]).observe(
        [view("t", TaskState.RUNNING, 1, node_id=NODE_D, start_time=at(1))], at=at(1)
    ):
        recorder.observe(event)
    data = of_run(recorder, INFO, generated_at=at(11), summary=None)
    assert [(a.outcome, a.duration_s(data.generated_at)) for a in data.attempts] == [(Outcome.RUNNING, 10.0)]
    assert data.counts["running"] == 1


async def test_report_of_a_job_takes_each_tasks_latest_record_and_failed_stderr():
    class Compute(FakeCompute):
        async def read_task_file(
            self, job_id: str, task_id: str, name: str, *, tail: int | None = None
        ) -> bytes:
            return b"\n".join(f"line {i}".encode() for i in range(100))

    compute = Compute()
    times = {"start_time": at(1), "end_time": at(9)}
    compute.set("ok", TaskState.COMPLETED, 9, node_id=NODE_D, exit_code=0, result=TaskResult.SUCCESS,
                retry_count=2, **times)  # fmt: skip
    failure = FailureInfo("usererror", "FailureExitCode", "exit 3")
    compute.set("bad", TaskState.COMPLETED, 8, node_id=NODE_P, exit_code=3, result=TaskResult.FAILURE,
                failure=failure, **times)  # fmt: skip
    compute.set("waiting", TaskState.ACTIVE, 0)
    data = await of_job(compute, "job-1", RunInfo(source="job", backend="azure", job_id="job-1"),
                        generated_at=at(20))  # fmt: skip
    assert sorted((a.task_id, a.outcome) for a in data.attempts) == [
        ("bad", Outcome.FAILED),
        ("ok", Outcome.SUCCEEDED),
    ]
    assert data.failures[0].failure_code == "FailureExitCode"
    assert data.failures[0].stderr_tail.splitlines() == [f"line {i}" for i in range(90, 100)]
    assert data.summary_lines == ("job job-1: 3 tasks: 1 succeeded, 1 failed, 0 running, 1 waiting",)
    assert any("only each task's latest attempt" in note for note in data.notes)


def test_a_rolling_report_keeps_the_latest_runs_only():
    runs = RollingRuns(max_runs=3, max_attempts=100)
    for number in range(10):
        recorder = runs.new_recorder()
        for event in TaskTracker(f"r{number}", "job", ["t"]).observe(
            [view("t", TaskState.COMPLETED, number, node_id=NODE_D, exit_code=0, result=TaskResult.SUCCESS,
                  start_time=at(number), end_time=at(number + 0.5))],
            at=at(number),
        ):  # fmt: skip
            recorder.observe(event)
    data = runs.data(INFO, generated_at=at(20))
    assert "the latest 3 batches" in data.notes
    assert len(data.attempts) == 3
    assert runs.runs_dropped == 7
    assert "7 earlier batches are not drawn" in data.notes


def test_the_report_path_is_checked_before_anything(tmp_path: Path):
    assert check_report_path(tmp_path / "r.html") == tmp_path / "r.html"
    assert list(tmp_path.iterdir()) == []  # nothing left behind by the check
    with pytest.raises(ConfigError, match="is a folder"):
        check_report_path(tmp_path)
    with pytest.raises(ConfigError, match="does not exist; create it"):
        check_report_path(tmp_path / "missing" / "r.html")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError):
        check_report_path(tmp_path / "file" / "r.html")


def test_the_report_path_never_replaces_what_is_not_a_report(tmp_path: Path):
    # Found by hand: `--report /etc/passwd` replaced the file, and `--report /dev/full` turned the device
    # into a regular file (the report is renamed over its path). Only an earlier report is replaced.
    precious = tmp_path / "data.csv"
    precious.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"exists and is not a batchpilot report; .* choose another name"):
        check_report_path(precious)
    assert precious.read_text() == "a,b\n1,2\n"
    with pytest.raises(ConfigError, match="is not a regular file"):
        check_report_path(Path("/dev/null"))
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="is not a regular file"):
        check_report_path(tmp_path / "pipe")
    (tmp_path / "link.html").symlink_to(precious)
    with pytest.raises(ConfigError, match="not a batchpilot report"):
        check_report_path(tmp_path / "link.html")
    earlier = tmp_path / "r.html"
    data = build_report(INFO, attempts=[], generated_at=at(1))
    write_report(earlier, render_html(data, script=""))
    assert check_report_path(earlier) == earlier  # a report is rewritten, as every run with --report does
    (tmp_path / "empty.html").write_text("")
    assert check_report_path(tmp_path / "empty.html") == tmp_path / "empty.html"  # nothing to lose
    with pytest.raises(ConfigError, match=r"^--out .* is not a batchpilot report"):
        check_report_path(precious, flag="--out")  # `report --job` names its own option


def test_a_report_is_replaced_whole_or_not_at_all(tmp_path: Path):
    target = tmp_path / "r.html"
    assert write_report(target, "first") == 5
    write_report(target, "second")
    assert target.read_text() == "second"
    gone = tmp_path / "gone"
    gone.mkdir()
    gone.rmdir()
    with pytest.raises(ReportWriteError, match="could not write the report"):
        write_report(gone / "r.html", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_durations_slowest_and_counts():
    attempts = [Attempt(f"t{i}", NODE_D, at(0), at(i), Outcome.SUCCEEDED) for i in range(1, 40)]
    data = build_report(INFO, attempts=attempts, generated_at=at(50))
    assert [a.task_id for a in data.slowest[:3]] == ["t39", "t38", "t37"]
    assert len(data.slowest) == 20
    assert data.counts["succeeded"] == 39
    assert data.origin == at(0)
    assert data.generated_at - data.origin == timedelta(seconds=50)
