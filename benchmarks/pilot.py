"""batchpilot's side: the Orchestrator embedded with the Azure backend and default EngineSettings.

A subscriber notes the wall time of the last InputUploaded, the last TasksSubmitted and each task's
TaskSucceeded. For the scenario whose inputs are already in storage, the storage's `upload` answers "skipped"
without a request (the Orchestrator still hashes every input and signs a SAS for each task).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from batchpilot import Orchestrator
from batchpilot.backends.azure import AzureBackend
from batchpilot.config import AzureSettings
from batchpilot.events import Event, InputUploaded, TasksSubmitted, TaskSucceeded
from batchpilot.monitor.poller import PollStats
from batchpilot.records import UploadOutcome
from batchpilot.spec import CleanupPolicy, PoolSpec, TaskTemplate, Workload

from .common import TASK_COMMAND, SideConfig, SideResult


class _Recorder:
    """Stage boundaries and this process's CPU at each; `all_submitted` is set once `expected` tasks are."""

    def __init__(self, result: SideResult, expected: int) -> None:
        self._result = result
        self._expected = expected
        self._submitted = 0
        self._uploaded_cpu = time.process_time()
        self.all_submitted = anyio.Event()

    async def __call__(self, event: Event) -> None:
        now = time.time()
        if isinstance(event, InputUploaded):
            self._result.uploaded = now
            self._uploaded_cpu = time.process_time()
        elif isinstance(event, TasksSubmitted):
            self._result.submitted = now
            self._result.submit_cpu_s = time.process_time() - self._uploaded_cpu
            self._submitted += event.added + event.existing + len(event.rejected)
            if self._submitted >= self._expected:
                self.all_submitted.set()
        elif isinstance(event, TaskSucceeded):
            self._result.seen.setdefault(event.task_id, now)


class _PreStagedStorage:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def upload(
        self, container: str, blob_name: str, source: Path, md5_hex: str, *, check_existing: bool = True
    ) -> UploadOutcome:
        return UploadOutcome.SKIPPED


class _PreStagedBackend:
    """The Azure backend with inputs counted as already uploaded."""

    name = "azure"

    def __init__(self, inner: AzureBackend) -> None:
        self._inner = inner

    @property
    def compute(self) -> Any:
        return self._inner.compute

    @property
    def storage(self) -> Any:
        return _PreStagedStorage(self._inner.storage)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)


async def run(config: SideConfig) -> SideResult:
    result = SideResult(side="batchpilot")
    settings = AzureSettings.load(
        env={
            "AZURE_BATCH_ENDPOINT": config.endpoint,
            "AZURE_BATCH_ACCOUNT": config.account,
            "AZURE_BATCH_ACCESS_KEY": config.key,
            "AZURE_STORAGE_CONNECTION_STRING": config.storage_connection_string,
        },
        toml_path=None,
    )
    workload = Workload(
        name=config.name,
        inputs=tuple(Path(name) for name in config.inputs),
        template=TaskTemplate(command=TASK_COMMAND, outputs=("{stem}.mp3",) if config.outputs else ()),
        pool=PoolSpec(f"{config.name}-pool", dedicated_nodes=config.nodes, task_slots_per_node=config.slots),
        cleanup=CleanupPolicy(delete_input_container=False),
        timeout=timedelta(hours=1),
    )
    azure = AzureBackend(settings)
    backend: Any = azure if config.upload else _PreStagedBackend(azure)
    recorder = _Recorder(result, len(config.inputs))
    async with Orchestrator(backend, subscribers=[recorder]) as orchestrator:
        result.started = time.time()
        if config.submit_only:
            async with anyio.create_task_group() as group:

                async def stop_when_submitted() -> None:
                    await recorder.all_submitted.wait()
                    group.cancel_scope.cancel()

                group.start_soon(stop_when_submitted)
                await orchestrator.run(workload)
            result.finished = result.submitted
            return result
        summary = await orchestrator.run(workload)
        result.finished = max(result.seen.values(), default=time.time())
        stats = orchestrator.poll_stats[summary.run_id]
        assert isinstance(stats, PollStats)
        result.tasks_listed = stats.tasks_listed
    result.ok = summary.ok
    if not summary.ok:
        result.note = f"{summary.succeeded} succeeded, {len(summary.failed)} failed"
    return result
