"""What a long-lived orchestrator has done, as Prometheus text, served on loopback with a health check.

`Metrics` is a subscriber: it counts events (tasks submitted, succeeded, failed, requeued, outputs fetched)
and keeps each task's last seen state. Gauges that are not events (each subscriber's queue depth, the
poller's current interval) are read from the orchestrator when `/metrics` is scraped. The text format is a
few lines per metric, so it is written here by hand rather than through prometheus_client, which would bring
a global registry and a second HTTP server for the same three numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from .backends.azure.requests import RequestTally
from .engine import Orchestrator
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

_log = structlog.get_logger("batchpilot.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Counts events; `render()` writes them, with the orchestrator's gauges, in Prometheus' text format."""

    def __init__(self, requests: RequestTally | None = None) -> None:
        self.requests = requests  # the Azure backend's count of requests; None on the local backend
        self.inputs_seen = 0  # counted by whoever feeds the orchestrator (the service's watcher)
        self.counters: Counter[str] = Counter()
        self._states: dict[tuple[str, str], TaskState] = {}

    async def __call__(self, event: Event) -> None:
        counters = self.counters
        if isinstance(event, TasksSubmitted):
            counters["submitted"] += event.added
            counters["already_in_job"] += event.existing
            counters["rejected"] += len(event.rejected)
        elif isinstance(event, TaskStateChanged):
            self._states[(event.job_id, event.task_id)] = event.state
        elif isinstance(event, TaskSucceeded):
            counters["succeeded"] += 1
        elif isinstance(event, TaskFailed):
            counters["failed"] += 1
        elif isinstance(event, TaskRequeued):
            counters["requeued"] += 1
        elif isinstance(event, OutputDownloaded):
            counters["outputs_skipped" if event.skipped else "outputs_downloaded"] += 1
        elif isinstance(event, OutputDownloadFailed):
            counters["outputs_failed"] += 1
        elif isinstance(event, RunStarted):
            counters["runs_started"] += 1
        elif isinstance(event, RunFinished):
            counters["runs_finished"] += 1
        elif isinstance(event, MonitorDegraded):
            counters["monitor_degraded"] += 1

    def tasks_by_state(self) -> dict[TaskState, int]:
        counts = dict.fromkeys(TaskState, 0)
        for state in self._states.values():
            counts[state] += 1
        return counts

    def render(
        self, *, queue_depths: Mapping[str, int], poll_interval_s: float | None, failing_polls: int
    ) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: Mapping[str, float]) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples.items())

        counters = self.counters
        metric(
            "batchpilot_tasks",
            "gauge",
            "Tasks by their last seen state.",
            {f'{{state="{state.value}"}}': count for state, count in self.tasks_by_state().items()},
        )
        metric(
            "batchpilot_inputs_seen_total", "counter", "Inputs taken by the watcher.", {"": self.inputs_seen}
        )
        for name, help_text in (
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
        ):
            metric(f"batchpilot_{name}_total", "counter", help_text, {"": counters[name]})
        metric(
            "batchpilot_pool_scaled_total",
            "counter",
            "Pool resizes by the idle shutdown: to zero nodes, and back to the workload's (full).",
            {f'{{size="{size}"}}': counters[f"pool_scaled_{size}"] for size in ("zero", "full")},
        )
        if self.requests is not None:
            for name, help_text, counts in (
                (
                    "requests",
                    "Requests sent to Batch and Storage, retries included, by kind.",
                    self.requests.requests,
                ),
                (
                    "throttled",
                    "Requests the services throttled (429, 503), by kind.",
                    self.requests.throttled,
                ),
            ):
                metric(
                    f"batchpilot_{name}_total",
                    "counter",
                    help_text,
                    {f'{{kind="{_label(kind)}"}}': count for kind, count in sorted(counts.items())},
                )
        metric(
            "batchpilot_subscriber_queue_depth",
            "gauge",
            "Events waiting in each subscriber's inbox.",
            {f'{{subscriber="{_label(name)}"}}': depth for name, depth in sorted(queue_depths.items())},
        )
        metric(
            "batchpilot_poll_interval_seconds",
            "gauge",
            "The monitor's latest interval between polls (0 when nothing is monitored).",
            {"": poll_interval_s or 0.0},
        )
        metric(
            "batchpilot_failing_polls",
            "gauge",
            "Polls failed in a row now; above 0, task states are unknown until a poll succeeds.",
            {"": failing_polls},
        )
        return "\n".join(lines) + "\n"

    def render_for(self, orchestrator: Orchestrator) -> str:
        monitored = orchestrator.monitoring().values()
        intervals = [stats.intervals[-1] for stats in monitored if stats.intervals]
        return self.render(
            queue_depths=orchestrator.queue_depths(),
            poll_interval_s=max(intervals, default=None),
            failing_polls=max((stats.consecutive_failures for stats in monitored), default=0),
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 6))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_app(metrics: Metrics, orchestrator: Orchestrator) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render_for(orchestrator).encode(), content_type=None,
                            headers={"Content-Type": CONTENT_TYPE})  # fmt: skip

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    return app


async def serve_metrics(
    metrics: Metrics,
    orchestrator: Orchestrator,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /healthz and /metrics on 127.0.0.1:`port` until cancelled; reports the port once listening."""
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
