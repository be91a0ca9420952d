"""batchpilot: run parallel workloads on Azure Batch or locally, with an async, event-driven orchestrator.

async with Orchestrator() as orchestrator:          # the local backend by default
    summary = await orchestrator.run(workload)
"""

from collections.abc import Sequence

from .backends.base import Backend, Compute, Storage
from .backends.local import LocalBackend
from .bus import EventBus, EventStream, Subscriber
from .clock import Clock
from .engine import EngineSettings
from .engine import Orchestrator as _EngineOrchestrator
from .errors import (
    AllocationFailedError,
    BackendError,
    BatchpilotError,
    ConfigError,
    JobEndedError,
    LostContactError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
)
from .events import (
    Event,
    InputUploaded,
    JobReady,
    MonitorDegraded,
    MonitorRecovered,
    NodesReady,
    OutputDownloaded,
    OutputDownloadFailed,
    PoolDeletionPending,
    PoolReady,
    ResourceDeleted,
    ResourceKept,
    RunFinished,
    RunStarted,
    RunSummary,
    TaskFailed,
    TaskRequeued,
    TasksSubmitted,
    TaskStateChanged,
    TaskSucceeded,
)
from .records import TaskState
from .spec import (
    BlobInputs,
    CleanupPolicy,
    ImageReference,
    JobLifetime,
    JobSpec,
    PoolPolicy,
    PoolSpec,
    StartTask,
    TaskConstraints,
    TaskSpec,
    TaskTemplate,
    Workload,
)
from .subscribers.log import LogSubscriber

__version__ = "0.1.0"


class Orchestrator(_EngineOrchestrator):
    """`async with Orchestrator() as orch: summary = await orch.run(workload)`: the engine
    (`batchpilot.engine.Orchestrator`) on the local backend, `LocalBackend()`, unless given another
    (`Orchestrator(AzureBackend(settings))`). The engine itself names no backend; this is where the default
    is chosen."""

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        subscribers: Sequence[Subscriber] = (),
        settings: EngineSettings = EngineSettings(),
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            LocalBackend() if backend is None else backend,
            subscribers=subscribers,
            settings=settings,
            clock=clock,
        )


__all__ = (
    "AllocationFailedError",
    "Backend",
    "BackendError",
    "BatchpilotError",
    "BlobInputs",
    "CleanupPolicy",
    "Compute",
    "ConfigError",
    "EngineSettings",
    "Event",
    "EventBus",
    "EventStream",
    "ImageReference",
    "InputUploaded",
    "JobEndedError",
    "JobLifetime",
    "JobReady",
    "JobSpec",
    "LocalBackend",
    "LogSubscriber",
    "LostContactError",
    "MonitorDegraded",
    "MonitorRecovered",
    "NodesReady",
    "Orchestrator",
    "OutputDownloadFailed",
    "OutputDownloaded",
    "PoolBeingDeletedError",
    "PoolDeletionPending",
    "PoolPolicy",
    "PoolReady",
    "PoolSpec",
    "Quota",
    "QuotaReachedError",
    "ResourceDeleted",
    "ResourceKept",
    "RunFinished",
    "RunStarted",
    "RunSummary",
    "StartTask",
    "Storage",
    "Subscriber",
    "TaskConstraints",
    "TaskFailed",
    "TaskRequeued",
    "TaskSpec",
    "TaskState",
    "TaskStateChanged",
    "TaskSucceeded",
    "TaskTemplate",
    "TasksSubmitted",
    "Workload",
    "__version__",
)
