"""batchpilot: run parallel workloads on Azure Batch or locally, with an async, event-driven orchestrator.

async with Orchestrator() as orchestrator:          # the local backend by default
    summary = await orchestrator.run(workload)

Everything an embedder names is exported here: the orchestrator and its settings, the workload and its
parts, the events and the summary, the records the backend protocols return, the protocols themselves, the
clock, and every exception batchpilot raises on purpose. `batchpilot.testing` holds an in-memory backend and a
fake clock for tests. tests/unit/test_public_api.py checks that every type these signatures name is exported.
"""

from collections.abc import Sequence

# First: it imports structlog without rich (see batchpilot.logging), before any module imports structlog.
from . import logging as _logging  # noqa: F401
from .backends.base import Backend, Compute, Storage
from .backends.local import LocalBackend
from .backoff import BackoffPolicy
from .bus import EventBus, EventStream, Subscriber
from .clock import Clock, SystemClock
from .engine import EngineSettings
from .engine import Orchestrator as _EngineOrchestrator
from .errors import (
    AllocationFailedError,
    AuthenticationError,
    BackendError,
    BatchpilotError,
    ConfigError,
    ImageCheckError,
    InputError,
    JobEndedError,
    LostContactError,
    NamesMeetError,
    NotFoundError,
    NothingToRunError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
    RequestTooLargeError,
    StateInUseError,
    ToolNotFoundError,
    TransientBackendError,
    UnreadableInputError,
    UnsupportedImageError,
)
from .events import (
    Event,
    FailedTask,
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
from .images import ImageVerdict, Reason, SupportedImage, Verdict
from .monitor.poller import PollSettings, PollStats
from .recorder import AttemptOutcome, RunRecord, RunRecorder, Stage, StageSpan, TaskAttempt
from .records import (
    AddStatus,
    AddTaskResult,
    BlobDownload,
    BlobInfo,
    Ensured,
    FailureInfo,
    Permission,
    TaskCounts,
    TaskResult,
    TaskState,
    TaskView,
    UploadOutcome,
)
from .spec import (
    BlobInputs,
    CleanupPolicy,
    ContainerSettings,
    ImageReference,
    JobLifetime,
    JobSpec,
    OutputFile,
    PoolPolicy,
    PoolSpec,
    ResourceFile,
    StartTask,
    TaskConstraints,
    TaskSpec,
    TaskTemplate,
    UploadCondition,
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
    "AddStatus",
    "AddTaskResult",
    "AllocationFailedError",
    "AttemptOutcome",
    "AuthenticationError",
    "Backend",
    "BackendError",
    "BackoffPolicy",
    "BatchpilotError",
    "BlobDownload",
    "BlobInfo",
    "BlobInputs",
    "CleanupPolicy",
    "Clock",
    "Compute",
    "ConfigError",
    "ContainerSettings",
    "EngineSettings",
    "Ensured",
    "Event",
    "EventBus",
    "EventStream",
    "FailedTask",
    "FailureInfo",
    "ImageCheckError",
    "ImageReference",
    "ImageVerdict",
    "InputError",
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
    "NamesMeetError",
    "NodesReady",
    "NotFoundError",
    "NothingToRunError",
    "Orchestrator",
    "OutputDownloadFailed",
    "OutputDownloaded",
    "OutputFile",
    "Permission",
    "PollSettings",
    "PollStats",
    "PoolBeingDeletedError",
    "PoolDeletionPending",
    "PoolPolicy",
    "PoolReady",
    "PoolSpec",
    "Quota",
    "QuotaReachedError",
    "Reason",
    "RequestTooLargeError",
    "ResourceDeleted",
    "ResourceFile",
    "ResourceKept",
    "RunFinished",
    "RunRecord",
    "RunRecorder",
    "RunStarted",
    "RunSummary",
    "Stage",
    "StageSpan",
    "StartTask",
    "StateInUseError",
    "Storage",
    "Subscriber",
    "SupportedImage",
    "SystemClock",
    "TaskAttempt",
    "TaskConstraints",
    "TaskCounts",
    "TaskFailed",
    "TaskRequeued",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TaskStateChanged",
    "TaskSucceeded",
    "TaskTemplate",
    "TaskView",
    "TasksSubmitted",
    "ToolNotFoundError",
    "TransientBackendError",
    "UnreadableInputError",
    "UnsupportedImageError",
    "UploadCondition",
    "UploadOutcome",
    "Verdict",
    "Workload",
    "__version__",
)
