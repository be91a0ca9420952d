"""Requests the Azure SDKs send, counted by kind, and those the services throttled.

The SDKs call a `raw_response_hook` after every attempt (retries included). `response_hook(tally, service)`
makes one: it logs each retryable response (path only: a query may carry a SAS) and counts the request
under a kind built from the method and the path with its ids replaced by `*`, e.g. `batch GET
/jobs/*/taskcounts`, `blob PUT container`, `blob GET list`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from azure.core.pipeline import PipelineResponse

from ...request_tally import RequestTally

__all__ = ("RETRYABLE", "THROTTLED", "RequestTally", "request_kind", "response_hook")

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


def response_hook(tally: RequestTally, service: str) -> Callable[[PipelineResponse[Any, Any]], None]:
    """An SDK `raw_response_hook` that counts each attempt in `tally` under its kind, and logs each retryable
    response (path only: a query may carry a SAS)."""

    def on_response(response: PipelineResponse[Any, Any]) -> None:
        request = response.http_request
        status = response.http_response.status_code
        tally.count(request_kind(service, request.method, request.url), throttled=status in THROTTLED)
        if status in RETRYABLE:
            _log.warning(
                "service_retryable_response",
                method=request.method,
                path=urlsplit(request.url).path,
                status=status,
                retry_after=response.http_response.headers.get("Retry-After"),
            )

    return on_response
