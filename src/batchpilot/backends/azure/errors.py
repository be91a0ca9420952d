"""The one place where azure.core exceptions become `batchpilot.errors`.

Every call into an Azure SDK goes through `translated(...)`. The mapping looks at the HTTP status and the
service's error code (Batch: `error.code`; Storage: `error_code`), never at message text. Messages are built
from the operation, status, code and the service's first message line, then passed through `redact`, so no
key, connection string or SAS signature can travel in an exception. A code the user can act on (a quota, a
pool still being deleted, a pool that could not get its nodes) becomes its own type (`QuotaReachedError`,
`PoolBeingDeletedError`, `AllocationFailedError`), with a message that says what happened; what to do about
it is the caller's to say (the CLI adds the `batchpilot cleanup ...` remedy).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from ...errors import (
    AllocationFailedError,
    AuthenticationError,
    BackendError,
    NotFoundError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
    RequestTooLargeError,
    TransientBackendError,
)
from ...redact import redact

_TOO_LARGE_CODES = frozenset({"RequestBodyTooLarge", "RequestEntityTooLarge"})
_AUTH_STATUSES = frozenset({401, 403})
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_QUOTAS = "in the Azure portal (Batch account > Quotas)"


class Kind(enum.Enum):
    """The kind of refusal a service code names, beyond what its HTTP status says."""

    QUOTA = "quota"
    POOL_BEING_DELETED = "pool being deleted"
    ALLOCATION = "allocation"


@dataclass(frozen=True, slots=True)
class Explained:
    """What a service code means: the cause in words, its kind, and for a quota which one."""

    cause: str
    kind: Kind
    quota: Quota | None = None


_SPOT_CORES = Explained(
    "the Batch account's spot (low-priority) core quota is reached", Kind.QUOTA, Quota.SPOT_CORES
)
# By lower-cased service code (Batch spells some codes in two ways).
_CODES = {
    "poolquotareached": Explained("the Batch account's pool quota is reached", Kind.QUOTA, Quota.POOLS),
    "activejobandschedulequotareached": Explained(
        "the Batch account's quota of active jobs is reached", Kind.QUOTA, Quota.ACTIVE_JOBS
    ),
    "poolbeingdeleted": Explained("a pool of that id is still being deleted", Kind.POOL_BEING_DELETED),
    # Resize errors: why a pool has fewer nodes than asked for.
    "accountcorequotareached": Explained(
        "the Batch account's dedicated core quota is reached", Kind.QUOTA, Quota.DEDICATED_CORES
    ),
    "accountvmseriescorequotareached": Explained(
        "the Batch account's dedicated core quota for this VM series is reached",
        Kind.QUOTA,
        Quota.VM_SERIES_CORES,
    ),
    "accountlowprioritycorequotareached": _SPOT_CORES,
    "accountspotcorequotareached": _SPOT_CORES,
    "allocationfailed": Explained("Azure could not allocate the VMs", Kind.ALLOCATION),
    "allocationtimedout": Explained("allocating the VMs timed out", Kind.ALLOCATION),
}
# Where the Azure side of a quota is changed: logged with a pool short of nodes (the run goes on, so no
# exception carries it).
_QUOTA_FIXES = {
    Quota.POOLS: f"raise the pool quota {_QUOTAS}",
    Quota.ACTIVE_JOBS: f"raise the job quota {_QUOTAS}",
    Quota.DEDICATED_CORES: f"raise the dedicated core quota {_QUOTAS}",
    Quota.VM_SERIES_CORES: f"raise that VM series' quota {_QUOTAS}",
    Quota.SPOT_CORES: f"raise the spot core quota {_QUOTAS}, or use dedicated nodes instead",
}


def explain(code: str | None) -> Explained | None:
    """What a service code means, when batchpilot knows."""
    return _CODES.get((code or "").lower())


def azure_fix(explained: Explained) -> str:
    """What can be changed on the Azure side about `explained` (no batchpilot command)."""
    if explained.quota is not None:
        return _QUOTA_FIXES[explained.quota]
    return "try again later, with other node counts or VM size, or in another region"


def explained_error(
    explained: Explained, message: str, *, code: str | None, pool_id: str | None = None
) -> BackendError:
    """The typed error for `explained`; `pool_id` is the run's pool, left in place, where there is one."""
    if explained.kind is Kind.QUOTA:
        assert explained.quota is not None  # every quota code names its quota
        return QuotaReachedError(message, quota=explained.quota, kept_pool=pool_id, code=code)
    if explained.kind is Kind.POOL_BEING_DELETED:
        return PoolBeingDeletedError(message, pool_id=pool_id, code=code)
    return AllocationFailedError(message, kept_pool=pool_id, code=code)


def service_code(exc: HttpResponseError) -> str | None:
    """The service's error code: Batch puts it in `error.code`, Storage in `error_code`."""
    code = getattr(exc, "error_code", None)
    # Storage sets a StorageErrorCode member (a str Enum whose str() is the member name) for known codes.
    if isinstance(code, enum.Enum):
        code = code.value
    if isinstance(code, str) and code:
        return code
    if exc.error is not None and exc.error.code:
        return str(exc.error.code)
    return None


def _service_message(exc: HttpResponseError) -> str:
    message = exc.error.message if exc.error is not None and exc.error.message else exc.reason or ""
    # Services append "RequestId:...\nTime:..." lines; the first line is the part a person needs.
    return str(message).strip().splitlines()[0] if str(message).strip() else ""


def retry_after_seconds(exc: HttpResponseError, *, now: datetime | None = None) -> float | None:
    """The server's Retry-After (seconds, or an HTTP date) as seconds from now; None when absent or bad."""
    # HttpResponseError types `response` as a protocol without headers; every transport's response has them.
    headers: Mapping[str, str] = getattr(exc.response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0)):
        if headers.get(name):
            try:
                return max(0.0, float(headers[name]) / scale)
            except ValueError:
                return None
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def translate(exc: AzureError, operation: str, secrets: tuple[str, ...] = ()) -> BackendError:
    """The batchpilot error for `exc`, raised while doing `operation` (e.g. "create pool tutorial")."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        # No HTTP answer at all (DNS, refused connection, reset): worth another try later.
        return TransientBackendError(
            redact(f"{operation}: cannot reach the service ({exc.message})", secrets)
        )
    if not isinstance(exc, HttpResponseError):
        return BackendError(redact(f"{operation}: {type(exc).__name__}: {exc.message}", secrets))
    status = exc.status_code or 0
    code = service_code(exc)
    detail = _service_message(exc)
    described = f"{status} {code}" if code else str(status)
    message = redact(
        f"{operation}: {described}: {detail}" if detail else f"{operation}: {described}", secrets
    )
    if isinstance(exc, ClientAuthenticationError) or status in _AUTH_STATUSES:
        return AuthenticationError(
            redact(
                f"{operation}: credentials refused ({described}); check the account key or the Entra ID "
                "sign-in and its role assignment",
                secrets,
            ),
            code=code,
        )
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFoundError(message, code=code)
    if status == 413 or code in _TOO_LARGE_CODES:
        return RequestTooLargeError(message, code=code)
    if explained := explain(code):
        return explained_error(
            explained, redact(f"{operation}: {explained.cause} ({described})", secrets), code=code
        )
    if status in _TRANSIENT_STATUSES:
        return TransientBackendError(message, code=code, retry_after=retry_after_seconds(exc))
    return BackendError(message, code=code)


@contextmanager
def translated(operation: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """Run the block, turning any Azure SDK exception into its batchpilot error."""
    try:
        yield
    except AzureError as exc:
        raise translate(exc, operation, secrets) from exc
