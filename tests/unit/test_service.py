"""The service's pure parts (when a file is complete, the metrics text) and the engine hook it stands on:
a run told to stop monitoring ends after submission, leaving its tasks in the job."""

from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchpilot import CleanupPolicy, LocalBackend, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.backends.azure.requests import request_kind
from batchpilot.bus import EventBus
from batchpilot.events import (
    Event,
    MonitorDegraded,
    OutputDownloaded,
    RunSummary,
    TasksSubmitted,
    TaskStateChanged,
    TaskSucceeded,
)
from batchpilot.metrics import Metrics
from batchpilot.monitor.poller import PollStats
from batchpilot.recorder import RunRecorder
from batchpilot.records import AddStatus, TaskCounts, TaskState
from batchpilot.service import (
    FolderSource,
    IdleShutdown,
    PoolSize,
    Service,
    Settler,
    WatchSettings,
    scan,
    summary_line,
)
from batchpilot.spec import JobLifetime
from batchpilot.testing import InMemoryBackend, ScriptedTask, Succeed
from tests.helpers import FakeClock, FakeCompute


def test_a_file_is_taken_once_unchanged_for_the_settle_time_across_two_looks():
    settler = Settler(settle_s=1.0)
    assert settler.observe({"a.mp4": (10, 1)}, now=0.0) == ([], True)
    assert settler.observe({"a.mp4": (20, 2)}, now=0.5) == ([], True)  # still being written
    assert settler.observe({"a.mp4": (20, 2)}, now=1.0) == ([], True)  # unchanged, but not for long enough
    assert settler.observe({"a.mp4": (20, 2)}, now=1.5) == (["a.mp4"], False)
    assert settler.observe({"a.mp4": (20, 2)}, now=9.0) == ([], False)  # taken once only


def test_a_rewritten_file_is_taken_again_and_a_removed_one_forgotten():
    settler = Settler(settle_s=0.0)
    settler.observe({"a": (1, 1), "b": (1, 1)}, now=0.0)
    assert settler.observe({"a": (1, 1), "b": (1, 1)}, now=1.0) == (["a", "b"], False)
    assert settler.observe({"a": (2, 2)}, now=2.0) == ([], True)
    assert settler.observe({"a": (2, 2), "b": (1, 1)}, now=3.0) == (["a"], True)
    assert settler.observe({"a": (2, 2), "b": (1, 1)}, now=4.0) == (["b"], False)


def test_a_released_file_is_taken_again_once_it_settles():
    settler = Settler(settle_s=1.0)
    settler.observe({"a": (1, 1)}, now=0.0)
    assert settler.observe({"a": (1, 1)}, now=1.0) == (["a"], False)
    settler.release(["a"])  # its batch could not reach the service
    assert settler.observe({"a": (1, 1)}, now=2.0) == ([], True)
    assert settler.observe({"a": (1, 1)}, now=3.0) == (["a"], False)


async def test_a_batch_whose_tasks_could_not_be_added_is_run_again(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("a")

    def copies(task: ScriptedTask) -> Succeed:  # what `cp {input} {stem}.copy` leaves
        [(name, content)] = task.inputs.items()
        return Succeed(files={f"{Path(name).stem}.copy": content})

    backend = InMemoryBackend(script=copies)
    # The submitter's five attempts in the first run all fail: the batch is run again.
    backend.compute.refuse_adds(5, status=AddStatus.SERVER_ERROR, code="ServerBusy")
    workload = Workload(
        name="retry",
        inputs=(),
        template=TaskTemplate("/bin/cp {input} {stem}.copy", outputs=("{stem}.copy",)),
        pool=PoolSpec("retry-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
        # As `batchpilot serve` runs it: a service's job never ends by itself (a one-shot run's job, told to
        # end once its tasks are done while it has none, would end at once, as on Batch).
        job_lifetime=JobLifetime.SERVICE,
    )
    metrics = Metrics()
    fetched = anyio.Event()

    async def on_fetched(event: Event) -> None:
        if isinstance(event, OutputDownloaded):
            fetched.set()

    settings = WatchSettings(settle_s=0.0, min_interval_s=0.01, max_interval_s=0.05)
    # The submitter's backoff between its five attempts (about 7.5 s) passes on a fake clock.
    clock = FakeClock()
    async with Orchestrator(backend, subscribers=[metrics, on_fetched], clock=clock) as orchestrator:
        stop = anyio.Event()
        service = Service(orchestrator, workload, FolderSource(folder), metrics, settings, clock=clock)
        async with anyio.create_task_group() as group:
            group.start_soon(service.run, stop)
            with anyio.fail_after(30):
                await fetched.wait()
            stop.set()
    assert (tmp_path / "out" / "a.copy").read_text() == "a"
    assert metrics.count("runs_started") == 2  # the first batch, then the same input again
    assert metrics.count("inputs_seen") == 1
    assert metrics.count("succeeded") == 1


def test_scan_takes_matching_regular_files_and_skips_hidden_ones(tmp_path: Path):
    (tmp_path / "a.mp4").write_bytes(b"12345")
    (tmp_path / ".b.mp4.part").write_bytes(b"1")
    (tmp_path / "c.txt").write_bytes(b"1")
    (tmp_path / "d.mp4").mkdir()
    found = scan(tmp_path, "*.mp4")
    assert list(found) == ["a.mp4"]
    assert found["a.mp4"][0] == 5


class _Orchestrator:
    """What a scrape reads from an orchestrator: its runs in flight, inboxes and monitors."""

    def __init__(self, recorders: dict[str, RunRecorder], stats: PollStats) -> None:
        self._recorders, self._stats = recorders, stats

    def queue_depths(self) -> dict[str, int]:
        return {"download": 3, 'we"ird': 0}

    def monitoring(self) -> dict[str, PollStats]:
        return {"r": self._stats}

    def recorders(self) -> dict[str, RunRecorder]:
        return self._recorders


async def test_metrics_count_events_and_render_prometheus_text():
    metrics = Metrics()
    recorder = RunRecorder()
    metrics.attach(_Orchestrator({"r": recorder}, PollStats(consecutive_failures=4, intervals=[1.0, 2.5])))
    metrics.inputs_taken(2)
    submitted = TasksSubmitted(run_id="r", job_id="j", added=2, existing=0)
    events: list[Event] = [submitted]
    for task_id, state in (("t1", TaskState.RUNNING), ("t2", TaskState.RUNNING), ("t1", TaskState.COMPLETED)):
        events.append(TaskStateChanged(run_id="r", job_id="j", task_id=task_id, previous=None, state=state))
    end = datetime(2026, 1, 1, tzinfo=UTC)
    events.append(
        TaskSucceeded(
            run_id="r", at=end + timedelta(seconds=3), job_id="j", task_id="t1", exit_code=0, duration_s=42.0,
            start_time=end - timedelta(seconds=42), end_time=end,
        )
    )  # fmt: skip
    events.append(MonitorDegraded(run_id="r", job_id="j", failed_polls=3, error="reset", gives_up_in_s=60.0))
    for event in events:
        recorder.observe(event)
        await metrics(event)
    text = metrics.render()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert {
        ("batchpilot_tasks", (("state", "running"),)): 1,
        ("batchpilot_tasks", (("state", "completed"),)): 1,
        ("batchpilot_tasks", (("state", "active"),)): 0,
        ("batchpilot_inputs_seen_total", ()): 2,
        ("batchpilot_submitted_total", ()): 2,
        ("batchpilot_succeeded_total", ()): 1,
        ("batchpilot_failed_total", ()): 0,
        ("batchpilot_subscriber_queue_depth", (("subscriber", "download"),)): 3,
        ("batchpilot_subscriber_queue_depth", (("subscriber", 'we"ird'),)): 0,
        ("batchpilot_poll_interval_seconds", ()): 2.5,
        ("batchpilot_monitor_degraded_total", ()): 1,
        ("batchpilot_failing_polls", ()): 4,
        # A 42 s task, seen 3 s after it ended.
        ("batchpilot_task_duration_seconds_count", (("outcome", "succeeded"),)): 1,
        ("batchpilot_task_duration_seconds_bucket", (("le", "30.0"), ("outcome", "succeeded"))): 0,
        ("batchpilot_task_duration_seconds_bucket", (("le", "60.0"), ("outcome", "succeeded"))): 1,
        ("batchpilot_detection_latency_seconds_sum", ()): 3.0,
        ("batchpilot_detection_latency_seconds_bucket", (("le", "2.0"),)): 0,
        ("batchpilot_detection_latency_seconds_bucket", (("le", "5.0"),)): 1,
    }.items() <= samples.items()
    assert "# TYPE batchpilot_succeeded_total counter" in text.splitlines()
    assert 'batchpilot_tasks{state="completed"} 1' in text  # as the end-to-end tests and the README read it


def test_metrics_and_the_service_load_no_azure_sdk():
    code = (
        "import sys, batchpilot.metrics, batchpilot.service; "
        "print(sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize(
    ("service", "method", "url", "kind"),
    [
        (
            "batch",
            "GET",
            "https://a.b.batch.azure.com/jobs/j-1/taskcounts?api-version=x",
            "batch GET /jobs/*/taskcounts",
        ),
        (
            "batch",
            "POST",
            "http://127.0.0.1:1/jobs/j/addtaskcollection",
            "batch POST /jobs/*/addtaskcollection",
        ),
        ("batch", "GET", "http://h/pools/p/nodes", "batch GET /pools/*/nodes"),
        ("blob", "PUT", "http://h/acct/c/a.mp4?sig=SECRET", "blob PUT blob"),
        ("blob", "PUT", "http://h/c?restype=container", "blob PUT container"),
        ("blob", "GET", "http://h/c?restype=container&comp=list&prefix=x", "blob GET list"),
        ("blob", "PUT", "http://h/c/b?comp=block&blockid=1", "blob PUT block"),
    ],
)
def test_requests_are_counted_by_kind_without_their_ids(service: str, method: str, url: str, kind: str):
    assert request_kind(service, method, url) == kind


async def test_a_publish_cancelled_while_an_inbox_is_full_does_not_leave_drain_waiting():
    gate = anyio.Event()

    async def slow(_: object) -> None:
        await gate.wait()

    async with EventBus(inbox_size=1) as bus:
        bus.subscribe(slow)
        event = TasksSubmitted(run_id="r", job_id="j", added=1, existing=0)
        await bus.publish(event)  # taken by the subscriber, which waits
        await anyio.wait_all_tasks_blocked()
        await bus.publish(event)  # fills the inbox
        with anyio.move_on_after(0.05):
            await bus.publish(event)  # blocked on the full inbox, then cancelled
        gate.set()
        with anyio.fail_after(5):
            await bus.drain()


async def test_stop_monitoring_ends_a_run_after_submission_and_the_next_run_resumes(tmp_path: Path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    gate = tmp_path / "gate"
    for name in ("a", "b"):
        (inputs / f"{name}.txt").write_text(name)
    script = (
        "import pathlib, shutil, sys, time\n"
        "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.02)\n"
        "shutil.copy(sys.argv[1], sys.argv[2] + '.out')"
    )
    command = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{input}} {{stem}} {shlex.quote(str(gate))}"
    )
    workload = Workload(
        name="stoppable",
        inputs=(inputs / "a.txt", inputs / "b.txt"),
        template=TaskTemplate(command=command, outputs=("{stem}.out",)),
        pool=PoolSpec("stoppable-pool", dedicated_nodes=2),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
    )
    submitted = anyio.Event()

    async def on_event(event: object) -> None:
        if isinstance(event, TasksSubmitted):
            submitted.set()

    async with Orchestrator(LocalBackend(tmp_path / "state"), subscribers=[on_event]) as orchestrator:
        async with anyio.create_task_group() as group:
            result: list[RunSummary] = []

            async def run() -> None:
                result.append(await orchestrator.run(workload))

            group.start_soon(run)
            with anyio.fail_after(30):
                await submitted.wait()
                orchestrator.stop_monitoring()
        [stopped] = result
    assert stopped.stopped
    assert not stopped.ok
    assert stopped.tasks_added == 2
    gate.write_text("go")
    async with Orchestrator(LocalBackend(tmp_path / "state")) as orchestrator:
        with anyio.fail_after(30):
            resumed = await orchestrator.run(workload)
    assert resumed.ok, resumed
    assert (resumed.tasks_added, resumed.tasks_existing, resumed.downloaded) == (0, 2, 2)


def test_idle_shutdown_takes_the_pool_to_zero_after_the_idle_time_and_back_with_work():
    idle = IdleShutdown(idle_s=60.0, now=0.0)
    assert idle.wanted(busy=False, now=59.0) is None
    assert idle.wanted(busy=False, now=60.0) is PoolSize.ZERO
    idle.resized(PoolSize.ZERO)
    assert idle.wanted(busy=False, now=500.0) is None  # asked once per idle stretch
    assert idle.wanted(busy=True, now=501.0) is PoolSize.FULL
    idle.resized(PoolSize.FULL)
    assert idle.wanted(busy=True, now=502.0) is None
    assert idle.wanted(busy=False, now=600.0) is None  # the idle time counts from the end of the work
    assert idle.wanted(busy=False, now=659.0) is None
    assert idle.wanted(busy=False, now=660.0) is PoolSize.ZERO


def test_idle_shutdown_starts_not_knowing_the_size_and_asks_again_after_a_failed_resize():
    idle = IdleShutdown(idle_s=10.0, now=0.0)
    # An earlier start may have left the pool at zero: the first work asks for it at full size.
    assert idle.wanted(busy=True, now=1.0) is PoolSize.FULL
    assert idle.wanted(busy=True, now=2.0) is PoolSize.FULL  # not recorded: that resize failed
    idle.resized(PoolSize.FULL)
    assert idle.wanted(busy=False, now=3.0) is None
    assert idle.wanted(busy=False, now=13.0) is PoolSize.ZERO
    assert idle.wanted(busy=False, now=14.0) is PoolSize.ZERO  # not recorded either: asked again


def test_metrics_count_pool_resizes_by_size():
    metrics = Metrics()
    metrics.pool_scaled("zero")
    metrics.pool_scaled("zero")
    metrics.pool_scaled("full")
    lines = set(metrics.render().splitlines())
    assert {
        'batchpilot_pool_scaled_total{size="zero"} 2.0',
        'batchpilot_pool_scaled_total{size="full"} 1.0',
    } <= lines


async def test_the_service_counts_the_jobs_tasks_as_work_and_resizes_to_the_workloads_counts(tmp_path: Path):
    compute = FakeCompute(counts_override=TaskCounts(running=1))
    backend = SimpleNamespace(name="fake", compute=compute, storage=None)
    workload = Workload(
        name="idle",
        inputs=(tmp_path / "a.txt",),
        template=TaskTemplate(command="true", outputs=()),
        pool=PoolSpec("idle-pool", dedicated_nodes=2, spot_nodes=3),
    )
    metrics = Metrics()
    service = Service(Orchestrator(backend), workload, FolderSource(tmp_path), metrics)  # type: ignore[arg-type]
    idle = IdleShutdown(idle_s=10.0, now=0.0)

    await service._scale(idle, busy=False, now=10.0)
    # A task left running (by an earlier start, say) is work: the pool is brought to full size, not to zero.
    assert compute.calls_named("resize_pool") == [("idle-pool", 2, 3)]
    compute.counts_override = TaskCounts(completed=1, succeeded=1)
    await service._scale(idle, busy=False, now=19.0)  # the first look without work: idle from here
    await service._scale(idle, busy=False, now=28.0)
    assert len(compute.calls_named("resize_pool")) == 1
    await service._scale(idle, busy=False, now=29.0)
    assert compute.calls_named("resize_pool") == [("idle-pool", 2, 3), ("idle-pool", 0, 0)]
    assert (metrics.count("pool_scaled", size="full"), metrics.count("pool_scaled", size="zero")) == (1, 1)


async def test_the_summary_counts_tasks_a_resent_collection_found_as_submitted():
    metrics = Metrics()
    metrics.inputs_taken(3)
    await metrics(TasksSubmitted(run_id="r", job_id="j", added=2, existing=1))
    for task_id in ("t1", "t2", "t3"):
        await metrics(TaskSucceeded(run_id="r", job_id="j", task_id=task_id, exit_code=0, duration_s=1.0))
    workload = Workload(
        name="s", inputs=(Path("a.mp4"),), template=TaskTemplate("true", outputs=()), pool=PoolSpec("p")
    )
    line = summary_line(metrics, workload)
    assert "3 inputs seen, 3 tasks submitted, 3 succeeded, 0 failed" in line
    assert "not finished" not in line
