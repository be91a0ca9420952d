"""Requests the Azure SDKs send, counted by kind, and those the services throttled.

The SDKs call a `raw_response_hook` after every attempt (retries included). `RequestTally.hook(service)`
makes one: it logs each retryable response (path only: a query may carry a SAS) and counts the request
under a kind built from the method and the path with its ids replaced by `*`, e.g. `batch GET
/jobs/*/taskcounts`, `blob PUT container`, `blob GET list`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from azure.core.pipeline import PipelineResponse

_log = structlog.get_logger("batchpilot.azure")
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
THROTTLED = frozenset({429, 503})  # Storage says "server busy" with 503
_BATCH_WORDS = frozenset(
    {"pools", "jobs", "tasks", "taskcounts", "addtaskcollection", "files", "nodes", "terminate", "resize"}
)


def request_kind(service: str, method: str, url: str) -> str:
    """`batch GET /jobs/*/tasks`, `blob PUT blob`, `blob GET list`: what a request does, without its ids."""
    parts = urlsplit(url)
    if service == "batch":
        segments = [part if part.lower() in _BATCH_WORDS else "*" for part in parts.path.split("/") if part]
        return f"batch {method} /{'/'.join(segments)}"
    query = parse_qs(parts.query)
    comp = query.get("comp", [""])[0]
    target = "container" if query.get("restype", [""])[0] == "container" else "blob"
    return f"{service} {method} {comp or target}"


@dataclass(slots=True)
class RequestTally:
    """Requests by kind and, of those, the ones throttled; shared with whoever reports them (/metrics)."""

    requests: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)

    def hook(self, service: str) -> Callable[[PipelineResponse[Any, Any]], None]:
        def on_response(response: PipelineResponse[Any, Any]) -> None:
            request = response.http_request
            status = response.http_response.status_code
            kind = request_kind(service, request.method, request.url)
            self.requests[kind] += 1
            if status in THROTTLED:
                self.throttled[kind] += 1
            if status in RETRYABLE:
                _log.warning(
                    "service_retryable_response",
                    method=request.method,
                    path=urlsplit(request.url).path,
                    status=status,
                    retry_after=response.http_response.headers.get("Retry-After"),
                )

        return on_response
