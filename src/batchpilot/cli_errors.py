"""The CLI's one line for an error: what happened (the exception's message) and, for the kinds a person can
mend, what to do, with the `batchpilot cleanup ...` command where one helps.

Backends and the engine raise typed errors that say what happened (`QuotaReachedError`,
`AllocationFailedError`, `PoolBeingDeletedError`, `JobEndedError`); the remedies are the command line's, so an
embedder of the library never receives command-line advice. Pure.
"""

from __future__ import annotations

from .errors import (
    AllocationFailedError,
    BackendError,
    JobEndedError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
)
from .subscribers.cleanup import cleanup_command

_QUOTAS = "in the Azure portal (Batch account > Quotas)"
_NODE_SETTINGS = (
    "the pool's node counts or VM size (--nodes, --spot-nodes, --vm-size, or the workload's pool)"
)


def _quota_fix(quota: Quota, backend: str) -> str:
    if quota is Quota.POOLS:
        return (
            f"raise the pool quota {_QUOTAS}, or delete unused pools: {cleanup_command(backend, pool='ID')}"
        )
    if quota is Quota.ACTIVE_JOBS:
        return (
            f"raise the job quota {_QUOTAS}, or delete jobs you no longer need:"
            f" {cleanup_command(backend, job='ID')}"
        )
    if quota is Quota.DEDICATED_CORES:
        return f"raise the dedicated core quota {_QUOTAS}, lower {_NODE_SETTINGS}, or delete unused pools"
    if quota is Quota.VM_SERIES_CORES:
        return f"raise that VM series' quota {_QUOTAS}, or change {_NODE_SETTINGS}"
    return f"raise the spot core quota {_QUOTAS}, use dedicated nodes instead, or lower {_NODE_SETTINGS}"


def remedy(exc: BackendError, backend: str) -> str | None:
    """What the user can do about `exc` on the `backend` ("azure", "local"), or None when the message says
    all there is."""
    kept: str | None = None
    if isinstance(exc, QuotaReachedError):
        fix, kept = _quota_fix(exc.quota, backend), exc.kept_pool
    elif isinstance(exc, AllocationFailedError):
        fix, kept = f"try again later, or change {_NODE_SETTINGS}, or use another region", exc.kept_pool
    elif isinstance(exc, PoolBeingDeletedError):
        fix = "wait until it is gone (a few minutes) and run again, or choose another pool id"
    elif isinstance(exc, JobEndedError):
        if len(exc.generations) > 1:
            fix = (
                f"delete them ({cleanup_command(backend, job=exc.job_id)}, and the same for each of"
                f" {exc.generations[1]} ... {exc.generations[-1]}) and run again, or run under another name"
            )
        else:
            fix = (
                f"delete it ({cleanup_command(backend, job=exc.job_id)}) and run again, or run under another"
                " name"
            )
    else:
        return None
    if kept is not None:
        fix += f"; pool {kept} is kept, to remove it: {cleanup_command(backend, pool=kept)}"
    return fix


def backend_error_line(exc: BackendError, backend: str) -> str:
    """`batchpilot: <kind>: <what happened>[; <remedy>]`. The kinds with a remedy are named by their family,
    BackendError, as the line has always named them."""
    fix = remedy(exc, backend)
    if fix is None:
        return f"batchpilot: {type(exc).__name__}: {exc}"
    return f"batchpilot: BackendError: {exc}; {fix}"
