"""What a long-lived orchestrator has done, in Prometheus' exposition format, served on loopback with a
health check.

`Metrics` is a subscriber: it counts events (tasks submitted, succeeded, failed, requeued, outputs fetched,
runs) into counters and histograms (task duration, and detection latency: from a task's end, as the service
reports it, to when the run saw it) of `prometheus_client`, in a `CollectorRegistry` of its own (never the
library's global one). Gauges that are not events (tasks of the runs in flight by state, each subscriber's
queue depth, the poller's current interval, polls failing now) are read from the attached orchestrator when
`/metrics` is scraped, so nothing is kept per task or per run: a service that runs many batches keeps the same
few series. `/metrics` is `generate_latest(registry)` answered by our aiohttp handler: no second server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .errors import ConfigError
from .events import (
    Event,
    MonitorDegraded,
    OutputDownloaded,
    OutputDownloadFailed,
    RunFinished,
    RunStarted,
    TaskFailed,
    TaskRequeued,
    TasksSubmitted,
    TaskStateChanged,
    TaskSucceeded,
)
from .records import TaskState
from .request_tally import RequestTally

if TYPE_CHECKING:  # aiohttp only for serving, loaded when the server starts
    from aiohttp import web

    from .monitor.poller import PollStats
    from .recorder import RunRecorder

_log = structlog.get_logger("batchpilot.metrics")
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Counters of events: name (exposed as batchpilot_<name>_total) and help.
_EVENT_COUNTERS = (
    ("submitted", "Tasks added to the job."),
    ("already_in_job", "Tasks found in the job already, so not added again."),
    ("rejected", "Tasks the service refused to add."),
    ("succeeded", "Tasks that succeeded."),
    ("failed", "Tasks that failed."),
    ("requeued", "Tasks requeued (preemption or retry)."),
    ("outputs_downloaded", "Output files fetched."),
    ("outputs_skipped", "Output files already in the download folder."),
    ("outputs_failed", "Output files that could not be fetched."),
    ("runs_started", "Runs started (a service starts one per batch of new inputs)."),
    ("runs_finished", "Runs finished."),
    ("monitor_degraded", "Times polls kept failing long enough for a run to report itself degraded."),
)
# Seconds. A task runs for seconds to hours; a completion is seen within a poll interval (up to 15 s by
# default, longer while polls fail).
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)


class Observed(Protocol):
    """What the scrape reads from the orchestrator (`batchpilot.engine.Orchestrator` has it)."""

    def queue_depths(self) -> dict[str, int]: ...

    def monitoring(self) -> dict[str, PollStats]: ...

    def recorders(self) -> dict[str, RunRecorder]: ...


class Metrics:
    """Counts events into its own `registry` (a `prometheus_client.CollectorRegistry`); `render()` writes
    them, with the attached orchestrator's gauges, in Prometheus' text format.

    `requests` is the Azure backend's count of requests (None on the local backend). `attach(orchestrator)`
    before scraping gives the gauges their values; unattached, they read as zero.
    """

    def __init__(self, requests: RequestTally | None = None) -> None:
        self.requests = requests
        self.registry = CollectorRegistry()
        self._orchestrator: Observed | None = None
        self._events = {
            name: Counter(f"batchpilot_{name}", text, registry=self.registry)
            for name, text in _EVENT_COUNTERS
        }
        self._inputs_seen = Counter(
            "batchpilot_inputs_seen", "Inputs taken by the watcher.", registry=self.registry
        )
        self._pool_scaled = Counter(
            "batchpilot_pool_scaled",
            "Pool resizes by the idle shutdown: to zero nodes, and back to the workload's (full).",
            ["size"],
            registry=self.registry,
        )
        for size in ("zero", "full"):
            self._pool_scaled.labels(size=size)
        self._task_duration = Histogram(
            "batchpilot_task_duration_seconds",
            "Tasks' run time, from their start to their end as the service reports them, by outcome.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._detection_latency = Histogram(
            "batchpilot_detection_latency_seconds",
            "From a task's end, as the service reports it, to when the monitor saw it completed.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._completed = 0  # tasks seen completed, for the tasks gauge
        self.registry.register(_Gauges(self))

    def attach(self, orchestrator: Observed) -> None:
        """Read the gauges from `orchestrator` at each scrape."""
        self._orchestrator = orchestrator

    async def __call__(self, event: Event) -> None:
        count = self._events
        if isinstance(event, TasksSubmitted):
            count["submitted"].inc(event.added)
            count["already_in_job"].inc(event.existing)
            count["rejected"].inc(len(event.rejected))
        elif isinstance(event, TaskStateChanged):
            if event.state is TaskState.COMPLETED and event.previous is not TaskState.COMPLETED:
                self._completed += 1
        elif isinstance(event, TaskSucceeded | TaskFailed):
            outcome = "succeeded" if isinstance(event, TaskSucceeded) else "failed"
            count[outcome].inc()
            if event.duration_s is not None:
                self._task_duration.labels(outcome=outcome).observe(max(0.0, event.duration_s))
            if event.end_time is not None:
                self._detection_latency.observe(max(0.0, (event.at - event.end_time).total_seconds()))
        elif isinstance(event, TaskRequeued):
            count["requeued"].inc()
        elif isinstance(event, OutputDownloaded):
            count["outputs_skipped" if event.skipped else "outputs_downloaded"].inc()
        elif isinstance(event, OutputDownloadFailed):
            count["outputs_failed"].inc()
        elif isinstance(event, RunStarted):
            count["runs_started"].inc()
        elif isinstance(event, RunFinished):
            count["runs_finished"].inc()
        elif isinstance(event, MonitorDegraded):
            count["monitor_degraded"].inc()

    def inputs_taken(self, count: int) -> None:
        """`count` new inputs taken by whoever feeds the orchestrator (the service's watcher)."""
        self._inputs_seen.inc(count)

    def pool_scaled(self, size: str) -> None:
        """One resize by the idle shutdown, to `size` ("zero" or "full")."""
        self._pool_scaled.labels(size=size).inc()

    def count(self, name: str, **labels: str) -> int:
        """The value of counter `batchpilot_<name>_total` (with `labels`), e.g. `count("succeeded")`,
        `count("pool_scaled", size="zero")`; 0 for one never counted."""
        value = self.registry.get_sample_value(f"batchpilot_{name}_total", labels)
        return int(value or 0)

    def tasks_by_state(self) -> dict[TaskState, int]:
        """Tasks of the runs in flight by their last seen state, and every task seen completed."""
        counts = dict.fromkeys(TaskState, 0)
        if self._orchestrator is not None:
            for recorder in self._orchestrator.recorders().values():
                for state, number in recorder.tasks_by_state().items():
                    if state is not TaskState.COMPLETED:
                        counts[state] += number
        counts[TaskState.COMPLETED] = self._completed
        return counts

    def render(self) -> str:
        """Every metric in Prometheus' text format (version 0.0.4)."""
        return generate_latest(self.registry).decode()


class _Gauges(Collector):
    """The values read at scrape time: the orchestrator's gauges and the backend's request counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self._metrics
        tasks = GaugeMetricFamily("batchpilot_tasks", "Tasks by their last seen state.", labels=["state"])
        for state, number in metrics.tasks_by_state().items():
            tasks.add_metric([state.value], number)
        yield tasks
        orchestrator = metrics._orchestrator
        depths: Mapping[str, int] = orchestrator.queue_depths() if orchestrator is not None else {}
        monitored = list(orchestrator.monitoring().values()) if orchestrator is not None else []
        queue = GaugeMetricFamily(
            "batchpilot_subscriber_queue_depth",
            "Events waiting in each subscriber's inbox.",
            labels=["subscriber"],
        )
        for name, depth in sorted(depths.items()):
            queue.add_metric([name], depth)
        yield queue
        intervals = [stats.intervals[-1] for stats in monitored if stats.intervals]
        yield GaugeMetricFamily(
            "batchpilot_poll_interval_seconds",
            "The monitor's latest interval between polls (0 when nothing is monitored).",
            value=max(intervals, default=0.0),
        )
        yield GaugeMetricFamily(
            "batchpilot_failing_polls",
            "Polls failed in a row now; above 0, task states are unknown until a poll succeeds.",
            value=max((stats.consecutive_failures for stats in monitored), default=0),
        )
        if metrics.requests is not None:
            for name, text, counts in (
                (
                    "requests",
                    "Requests sent to Batch and Storage, retries included, by kind.",
                    metrics.requests.requests,
                ),
                (
                    "throttled",
                    "Requests the services throttled (429, 503), by kind.",
                    metrics.requests.throttled,
                ),
            ):
                family = CounterMetricFamily(f"batchpilot_{name}", text, labels=["kind"])
                for kind, number in sorted(counts.items()):
                    family.add_metric([kind], number)
                yield family


def metrics_app(metrics: Metrics, orchestrator: Observed) -> web.Application:
    """An aiohttp app answering /healthz (`ok`) and /metrics (`metrics.render()`, gauges from
    `orchestrator`)."""
    from aiohttp import web

    metrics.attach(orchestrator)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    return app


async def serve_metrics(
    metrics: Metrics,
    orchestrator: Observed,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /healthz and /metrics on 127.0.0.1:`port` until cancelled; reports the port once listening.

    Raises ConfigError when the port cannot be listened on."""
    from aiohttp import web

    runner = web.AppRunner(metrics_app(metrics, orchestrator), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --metrics-port"
            ) from None
        _log.info("metrics_serving", url=f"http://127.0.0.1:{port}/metrics")
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
