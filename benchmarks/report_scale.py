"""The run report at scale (issue 18): its size, and how long a browser takes to draw it.

    .venv/bin/python -m benchmarks.report_scale [--tasks 100 10000] [--repeat 3] [--keep DIR]

For each size, a synthetic run of N tasks on 100 nodes (80 dedicated, 20 spot), seeded: task records as
Batch reports them (node, start, end, exit code; 2% failed with a 20-line stderr, 1% retried once, 0.5%
requeued once) go through the same path as a live run (the monitor's state machine, the run's RunRecorder,
`report.sources.of_run`), are rendered and written as `run --report` does, then opened in headless Chromium
(Debian's package) `--repeat` times, each in a fresh profile. Render time is the page's own
`performance.now()` when every chart is drawn (`<body data-render-ms>`), from navigation start: parsing the
0.9 MB script included. The targets: under 5 MB and under 3 s at 10,000 tasks.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchpilot.events import RunStarted, TaskFailed
from batchpilot.monitor.state import TaskTracker
from batchpilot.recorder import RunRecorder
from batchpilot.recorder import Stage as RunStage
from batchpilot.records import FailureInfo, TaskResult, TaskState, TaskView
from batchpilot.report.model import RunInfo
from batchpilot.report.render import javascript_bundle, render_html
from batchpilot.report.sources import of_run
from batchpilot.report.write import write_report
from batchpilot.spec import CleanupPolicy
from tests.e2e.report_browser import open_report

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node_ids(count: int) -> list[str]:
    """Batch-shaped node ids, the first 80% dedicated (`_d`), the rest spot (`_p`)."""
    return [
        f"tvmps_{random.Random(i).getrandbits(256):064x}_{'d' if i < count * 0.8 else 'p'}"
        for i in range(count)
    ]


LIMIT_MB, LIMIT_S = 5.0, 3.0


def synthetic_run(tasks: int, *, nodes: int = 100, seed: int = 1) -> RunRecorder:
    """A recorder fed as a live run's would be: what the service reports, through the state machine."""
    rnd = random.Random(seed)
    node_id = node_ids(nodes)
    recorder = RunRecorder()
    run_id, job_id = "bench", "job-bench"
    started = RunStarted(run_id=run_id, at=T0, workload="bench", job_id=job_id, pool_id="pool-bench",
                         input_count=tasks, input_container="in", output_container="out", download_to=None,
                         cleanup=CleanupPolicy())  # fmt: skip
    recorder.observe(started)
    for stage, start, end in ((RunStage.POOL, 0, 40), (RunStage.UPLOAD, 0, 25), (RunStage.NODES, 40, 180)):
        recorder.stage_started(stage, T0 + timedelta(seconds=start))
        recorder.stage_ended(stage, T0 + timedelta(seconds=end))
    tracker = TaskTracker(run_id, job_id, [f"task-{i:05d}" for i in range(tasks)])
    free = [180.0] * nodes
    for i in range(tasks):
        task_id = f"task-{i:05d}"
        attempts = 2 if rnd.random() < 0.015 else 1
        retried = attempts == 2 and rnd.random() < 2 / 3
        previous_end = 0.0
        for attempt in range(attempts):
            node = min(range(nodes), key=free.__getitem__)
            start = max(free[node], previous_end + 1)  # a retry starts after the attempt before it ended
            end = start + rnd.uniform(20, 90)
            free[node] = end + rnd.uniform(0, 3)
            previous_end = end
            last = attempt == attempts - 1
            failed = last and rnd.random() < 0.02
            counts = {"retry_count": attempt if retried else 0, "requeue_count": 0 if retried else attempt}
            at = T0 + timedelta(seconds=start)
            running = TaskView(task_id, TaskState.RUNNING, at, node_id=node_id[node], start_time=at, **counts)
            if last:
                ended = TaskView(
                    task_id, TaskState.COMPLETED, T0 + timedelta(seconds=end), node_id=node_id[node],
                    exit_code=1 if failed else 0, result=TaskResult.FAILURE if failed else TaskResult.SUCCESS,
                    failure=FailureInfo("usererror", "FailureExitCode", "exit 1") if failed else None,
                    start_time=at, end_time=T0 + timedelta(seconds=end), **counts,
                )  # fmt: skip
            else:
                more = {
                    "retry_count": counts["retry_count"] + retried,
                    "requeue_count": counts["requeue_count"],
                }
                more["requeue_count"] += not retried
                ended = TaskView(task_id, TaskState.ACTIVE, T0 + timedelta(seconds=end),
                                 node_id=node_id[node], exit_code=1 if retried else None, start_time=at,
                                 **more)  # fmt: skip
            for view in (running, ended):
                for event in tracker.observe([view], at=view.state_transition_time):
                    if isinstance(event, TaskFailed):  # as the poller adds it
                        tail = "\n".join(f"error line {n} of {task_id}" for n in range(20))
                        event = replace(event, stderr_tail=tail)
                    recorder.observe(event)
    end = T0 + timedelta(seconds=max(free))
    recorder.stage_started(RunStage.SUBMISSION, T0 + timedelta(seconds=25))
    recorder.stage_ended(RunStage.SUBMISSION, T0 + timedelta(seconds=60))
    recorder.stage_started(RunStage.MONITORING, T0 + timedelta(seconds=60))
    recorder.stage_ended(RunStage.MONITORING, end)
    return recorder


def measure(tasks: int, repeat: int, folder: Path) -> tuple[int, float, float, list[float]]:
    recorder = synthetic_run(tasks)
    summary = recorder.summary(elapsed_s=0.0, timed_out=False, monitoring_stopped=False)
    last_end = max(a.end for a in recorder.record().attempts if a.end is not None)
    info = RunInfo(
        "run", "azure", "job-bench", "bench", "pool-bench", "bench", dedicated_nodes=80, spot_nodes=20
    )
    started = time.perf_counter()
    data = of_run(recorder, info, generated_at=last_end, summary=summary, summary_lines=["synthetic run"])
    html = render_html(data)
    path = folder / f"report-{tasks}.html"
    size = write_report(path, html)
    python_s = time.perf_counter() - started
    loads = []
    for number in range(repeat):
        page = open_report(path, screenshot=folder / f"report-{tasks}-{number}.png" if number == 0 else None)
        assert not page.console_errors, page.console_errors
        assert not page.network_requests, page.network_requests
        assert int(page.dataset["timelineBars"]) == len(data.attempts), page.dataset
        loads.append(page.load_s)
    return len(data.attempts), size / 1e6, python_s, loads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the reports and screenshots in this folder")
    args = parser.parse_args()
    javascript_bundle()  # built once per process (about 1 s), not counted in the figures
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'tasks':>7} {'attempts':>8} {'size MB':>8} {'build+render s':>14}  browser s (median, max)")
        for tasks in args.tasks:
            attempts, size_mb, python_s, loads = measure(tasks, args.repeat, folder)
            verdict = "ok" if size_mb < LIMIT_MB and max(loads) < LIMIT_S else "OVER"
            print(
                f"{tasks:>7} {attempts:>8} {size_mb:>8.2f} {python_s:>14.2f}"
                f" {statistics.median(loads):>15.2f}, {max(loads):.2f}   {verdict}"
            )


if __name__ == "__main__":
    main()
