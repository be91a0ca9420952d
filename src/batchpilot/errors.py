"""One exception family for everything batchpilot raises on purpose.

`ConfigError` is a user mistake (bad flag, missing setting, unreadable input): the CLI prints its message as
one line and exits 2. `BackendError` is the service (or the local machine standing in for it) saying no; its
subclasses name the cases a caller acts on (`TransientBackendError`: try again later; `PoolBeingDeletedError`:
wait; `QuotaReachedError`, `AllocationFailedError`, `JobEndedError`: a person has to act). Messages say what
happened, never what to type: the CLI adds the remedy (`batchpilot cleanup ...`) from the type and its
fields, so an embedder gets no command-line advice. Messages never carry secrets: backends build them from
service codes and resource names, and the log chain redacts anything that slips through.
"""

from __future__ import annotations

import enum


class BatchpilotError(Exception):
    """Root of every error batchpilot raises deliberately."""


class ConfigError(BatchpilotError):
    """A user mistake: a flag, setting, input or path that cannot work. Exit code 2."""


class ToolNotFoundError(ConfigError):
    """A program the workload needs (ffmpeg, docker) is not available."""


class UnsupportedImageError(ConfigError):
    """The pool's image or node agent is one the service does not take (not listed, past its end of Batch
    support, a node agent that does not go with it, or the wrong Hyper-V generation for the VM size).
    Raised before anything is created; the message names a supported replacement."""


class BackendError(BatchpilotError):
    """The compute or storage service refused or failed a request. `code` is the service's error code
    (e.g. "PoolQuotaReached"), or None; it is for logs and reports: callers branch on the subclass."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientBackendError(BackendError):
    """Worth retrying: throttling (HTTP 429, 503 ServerBusy), server errors (5xx), dropped connections.
    `retry_after` is the server's Retry-After in seconds, or None."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RequestTooLargeError(BackendError):
    """The request body exceeded the service's limit (Batch: 413 RequestBodyTooLarge; an add-collection
    request takes at most 100 tasks and 1 MB); the caller should send less per request."""


class NotFoundError(BackendError):
    """The pool, job, task, container or blob named does not exist (HTTP 404: e.g. Batch's PoolNotFound,
    JobNotFound, Storage's ContainerNotFound, BlobNotFound)."""


class AuthenticationError(BackendError):
    """The service rejected our credentials (HTTP 401/403, e.g. AuthenticationFailed). Never retried."""


class LostContactError(BackendError):
    """Polls kept failing past the deadline: task states are unknown, and the tasks go on without us."""


class PoolBeingDeletedError(BackendError):
    """A pool of this id is still being deleted: Batch refuses the id (409 PoolBeingDeleted) until the
    deletion ends, which takes minutes. `pool_id` names it when known. The engine waits it out."""

    def __init__(
        self, message: str, *, pool_id: str | None = None, code: str | None = "PoolBeingDeleted"
    ) -> None:
        super().__init__(message, code=code)
        self.pool_id = pool_id


class Quota(enum.Enum):
    """A Batch account quota (Batch: "Batch service quotas and limits")."""

    POOLS = "pools"
    ACTIVE_JOBS = "active jobs"
    DEDICATED_CORES = "dedicated cores"
    VM_SERIES_CORES = "dedicated cores of a VM series"
    SPOT_CORES = "spot (low-priority) cores"


class QuotaReachedError(BackendError):
    """The Batch account's `quota` is used up, so a pool, a job or nodes could not be had.

    `kept_pool` names this run's pool when it was left in place (created, or kept without nodes), which
    costs money until it is deleted; None when no pool of the run exists."""

    def __init__(
        self, message: str, *, quota: Quota, kept_pool: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.quota = quota
        self.kept_pool = kept_pool


class AllocationFailedError(BackendError):
    """Azure could not allocate the pool's VMs (AllocationFailed, AllocationTimedOut): none is to be had now
    of that size in that region. `kept_pool` as in `QuotaReachedError`."""

    def __init__(self, message: str, *, kept_pool: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.kept_pool = kept_pool


class JobEndedError(BackendError):
    """Job `job_id` has ended (completed or terminated; `reason` is Batch's termination reason) and takes
    no new tasks, yet the run has tasks to add. `generations` are the ids of the job and of each later
    generation that had ended too (`spec.job_generation_id`), when a run walked them all. Deleting them, or
    running under another name, mends it."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        reason: str,
        code: str | None = "JobCompleted",
        generations: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.job_id = job_id
        self.reason = reason
        self.generations = generations or (job_id,)


class ImageCheckError(BackendError):
    """The service's supported images could not be read, so the pool's image is unchecked: nothing was
    created, and the run stops rather than skip the check."""


class InputError(ConfigError):
    """Some inputs (`paths`, as given) cannot run as they are; the others could. A one-shot run stops (exit
    2); `batchpilot serve` reports and leaves out just these, and runs the rest of its batch."""

    def __init__(self, message: str, *, paths: tuple[str, ...]) -> None:
        super().__init__(message)
        self.paths = paths


class UnreadableInputError(InputError):
    """Inputs that cannot be read, or not uploaded under their name (`paths`, as given); the message names
    the first and counts the rest."""


class NamesMeetError(InputError):
    """Two inputs, or their outputs, would land on the same name (BatchExplorer#2956): `paths` holds the later
    input, so that the first one can still run."""


class NothingToRunError(ConfigError):
    """The command line names no inputs, sample, workload file or command. Exit 2."""


class StateInUseError(ConfigError):
    """Another process holds a folder this one would write (a job's state, a watched folder). Exit 2."""
