"""batchpilot: run parallel workloads on Azure Batch or locally, with an async, event-driven orchestrator.

async with Orchestrator() as orchestrator:          # the local backend by default
    summary = await orchestrator.run(workload)
"""

from .backends.base import Backend, Compute, Storage
from .backends.local import LocalBackend
from .bus import EventBus, EventStream, Subscriber
from .engine import EngineSettings, Orchestrator
from .errors import BackendError, BatchpilotError, ConfigError, LostContactError
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

__all__ = (
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
    "PoolDeletionPending",
    "PoolPolicy",
    "PoolReady",
    "PoolSpec",
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
