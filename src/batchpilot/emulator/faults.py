"""Fault injection: what can go wrong, how often, and the deterministic dice that decide it.

Every decision comes from a `random.Random` seeded by the config, so a run with the same seed and the same
sequence of requests sees the same faults. Per-task decisions (preemption, simulated durations) are seeded by
the task's identity instead of the request order, so they do not depend on how requests interleave.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass, field

from ..errors import ConfigError


class RequestKind(enum.StrEnum):
    """What a request does; faults are aimed at kinds and statistics are counted per kind."""

    POOL_ADD = "pool.add"
    POOL_LIST = "pool.list"
    POOL_GET = "pool.get"
    POOL_EXISTS = "pool.exists"
    POOL_DELETE = "pool.delete"
    NODE_LIST = "node.list"
    JOB_ADD = "job.add"
    JOB_LIST = "job.list"
    JOB_GET = "job.get"
    JOB_UPDATE = "job.update"
    JOB_DELETE = "job.delete"
    JOB_TERMINATE = "job.terminate"
    TASK_COUNTS = "job.taskcounts"
    TASK_ADD = "task.add"
    TASK_ADD_COLLECTION = "task.addcollection"
    TASK_LIST = "task.list"
    TASK_GET = "task.get"
    TASK_FILE = "task.file"
    OTHER = "other"


class Fault(enum.StrEnum):
    THROTTLE = "throttled"
    SERVER_ERROR = "server_error"
    DROP_AFTER_APPLY = "dropped_after_apply"
    PREEMPT = "preempted"


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """How often each fault happens. Rates are probabilities in [0, 1]; zero turns a fault off.

    `kinds` limits the request faults (429, 500) to some request kinds (empty: every kind);
    `drop_kinds` does the same for dropped connections. `budget` caps how many times each fault fires in
    total (None: no cap), so a test can ask for exactly one 429 and watch the SDK retry it.
    """

    seed: int = 0
    latency_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_s: int = 1
    rate_500: float = 0.0
    kinds: frozenset[RequestKind] = frozenset()
    drop_after_apply: float = 0.0
    drop_kinds: frozenset[RequestKind] = frozenset({RequestKind.TASK_ADD_COLLECTION})
    preempt: float = 0.0
    preempt_after_s: float = 0.2
    counts_lag_s: float = 0.0
    budget: int | None = None

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_500", "drop_after_apply", "preempt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.counts_lag_s < 0 or self.preempt_after_s < 0:
            raise ConfigError("latency, counts lag and preemption delay must not be negative")


@dataclass(slots=True)
class FaultInjector:
    """Rolls the dice for each request and each task attempt, and remembers how often each fault fired."""

    config: FaultConfig
    fired: dict[Fault, int] = field(default_factory=dict)
    _preemptions_decided: int = field(default=0, init=False)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)

    def request_fault(self, kind: RequestKind) -> Fault | None:
        """A 429 or a 500 to answer instead of applying the request, or None."""
        if self.config.kinds and kind not in self.config.kinds:
            return None
        if self._roll(Fault.THROTTLE, self.config.rate_429):
            return Fault.THROTTLE
        if self._roll(Fault.SERVER_ERROR, self.config.rate_500):
            return Fault.SERVER_ERROR
        return None

    def drop_after_apply(self, kind: RequestKind) -> bool:
        return kind in self.config.drop_kinds and self._roll(
            Fault.DROP_AFTER_APPLY, self.config.drop_after_apply
        )

    def preempts(self, job_id: str, task_id: str, requeue_count: int) -> bool:
        """Whether this attempt is preempted. Only a task's first attempt is, so every task completes."""
        if requeue_count > 0 or self.config.preempt == 0.0:
            return False
        # The budget counts preemptions decided, not landed: several tasks start before the first one lands.
        if self.config.budget is not None and self._preemptions_decided >= self.config.budget:
            return False
        chosen = task_random(self.config.seed, "preempt", job_id, task_id).random() < self.config.preempt
        self._preemptions_decided += chosen
        return chosen

    def record(self, fault: Fault) -> None:
        """Count a fault that happened; preemption is counted when it lands, not when it is decided."""
        self.fired[fault] = self.fired.get(fault, 0) + 1

    def _roll(self, fault: Fault, rate: float) -> bool:
        if rate == 0.0 or self._exhausted(fault):
            return False
        if self._rng.random() >= rate:
            return False
        self.record(fault)
        return True

    def _exhausted(self, fault: Fault) -> bool:
        return self.config.budget is not None and self.fired.get(fault, 0) >= self.config.budget


def task_random(seed: int, purpose: str, *identity: str) -> random.Random:
    """A generator that depends only on the seed and what it is for, not on the order of events."""
    digest = hashlib.sha256("\0".join((str(seed), purpose, *identity)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
