"""Counters for tests and benchmarks, served at `GET /_emulator/stats`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .faults import Fault, RequestKind


@dataclass(slots=True)
class Stats:
    requests: Counter[RequestKind] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    bytes_sent: int = 0
    bytes_sent_by_kind: Counter[RequestKind] = field(default_factory=Counter)
    bytes_received: int = 0
    attempts_started: int = 0
    tasks_completed: int = 0

    def to_json(self, faults: dict[Fault, int]) -> dict[str, Any]:
        return {
            "requests": {kind.value: count for kind, count in sorted(self.requests.items())},
            "requests_total": sum(self.requests.values()),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "bytes_sent": self.bytes_sent,
            "bytes_sent_by_kind": {
                kind.value: count for kind, count in sorted(self.bytes_sent_by_kind.items())
            },
            "bytes_received": self.bytes_received,
            "attempts_started": self.attempts_started,
            "tasks_completed": self.tasks_completed,
            "faults": {fault.value: count for fault, count in sorted(faults.items())},
        }
