"""The one place where azure.core exceptions become `batchpilot.errors`.

Every call into an Azure SDK goes through `translated(...)`. The mapping looks at the HTTP status and the
service's error code (Batch: `error.code`; Storage: `error_code`), never at message text. Messages are built
from the operation, status, code and the service's first message line, then passed through `redact`, so no
key, connection string or SAS signature can travel in an exception. A code the user can act on (a quota, a
pool still being deleted, a pool that could not get its nodes) is explained instead, with what to do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
    AuthenticationError,
    BackendError,
    NotFoundError,
    RequestTooLargeError,
    TransientBackendError,
)
from ...redact import redact

_TOO_LARGE_CODES = frozenset({"RequestBodyTooLarge", "RequestEntityTooLarge"})
_AUTH_STATUSES = frozenset({401, 403})
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_QUOTAS = "in the Azure portal (Batch account > Quotas)"
_NODE_SETTINGS = (
    "the pool's node counts or VM size (--nodes, --spot-nodes, --vm-size, or the workload's pool)"
)
_SPOT_CORE_QUOTA = (
    "the Batch account's spot (low-priority) core quota is reached",
    f"raise the spot core quota {_QUOTAS}, use dedicated nodes instead, or lower {_NODE_SETTINGS}",
)
# By lower-cased service code (Batch spells some codes in two ways): what happened, and what to do about it.
_REMEDIES = {
    "poolquotareached": (
        "the Batch account's pool quota is reached",
        f"raise the pool quota {_QUOTAS}, or delete unused pools: "
        "batchpilot cleanup --backend azure --pool ID",
    ),
    "activejobandschedulequotareached": (
        "the Batch account's quota of active jobs is reached",
        f"raise the job quota {_QUOTAS}, or delete jobs you no longer need: "
        "batchpilot cleanup --backend azure --job ID",
    ),
    "poolbeingdeleted": (
        "a pool of that id is still being deleted",
        "wait until it is gone (a few minutes) and run again, or choose another pool id",
    ),
    # Resize errors: why a pool has fewer nodes than asked for.
    "accountcorequotareached": (
        "the Batch account's dedicated core quota is reached",
        f"raise the dedicated core quota {_QUOTAS}, lower {_NODE_SETTINGS}, or delete unused pools",
    ),
    "accountvmseriescorequotareached": (
        "the Batch account's dedicated core quota for this VM series is reached",
        f"raise that VM series' quota {_QUOTAS}, or change {_NODE_SETTINGS}",
    ),
    "accountlowprioritycorequotareached": _SPOT_CORE_QUOTA,
    "accountspotcorequotareached": _SPOT_CORE_QUOTA,
    "allocationfailed": (
        "Azure could not allocate the VMs",
        f"try again later, or change {_NODE_SETTINGS}, or use another region",
    ),
    "allocationtimedout": (
        "allocating the VMs timed out",
        f"try again later, or change {_NODE_SETTINGS}, or use another region",
    ),
}


def remedy(code: str | None) -> tuple[str, str] | None:
    """What a service code means and what the user can do about it, when batchpilot knows."""
    return _REMEDIES.get((code or "").lower())


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
    if explained := remedy(code):
        cause, fix = explained
        return BackendError(redact(f"{operation}: {cause} ({described}); {fix}", secrets), code=code)
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
