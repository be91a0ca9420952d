"""Requests sent to the services, counted by kind, and those the services throttled.

A neutral record, so that whoever reports the counts (`/metrics`) imports no SDK: the Azure backend fills one
through its SDKs' response hook (`batchpilot.backends.azure.requests.response_hook`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestTally:
    """Requests by kind (e.g. `batch GET /jobs/*/taskcounts`, retries included) and, of those, the ones the
    services throttled (429, 503); shared between a backend that counts and whoever reports them."""

    requests: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)

    def count(self, kind: str, *, throttled: bool) -> None:
        """One more request of `kind`; `throttled` when the service answered 429 or 503."""
        self.requests[kind] += 1
        if throttled:
            self.throttled[kind] += 1
