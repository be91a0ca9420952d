"""Fault injection: what can go wrong, how often, and the deterministic dice that decide it.

Every decision comes from a `random.Random` seeded by the config, so a run with the same seed and the same
sequence of requests sees the same faults. Per-task decisions (preemption, simulated durations) are seeded by
the task's identity instead of the request order, so they do not depend on how requests interleave. The
account's quotas, the outage window and the SAS clock involve no dice: they are conditions, met or not.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError


class RequestKind(enum.StrEnum):
    """What a request does; faults are aimed at kinds and statistics are counted per kind."""

    POOL_ADD = "pool.add"
    POOL_LIST = "pool.list"
    POOL_GET = "pool.get"
    POOL_EXISTS = "pool.exists"
    POOL_DELETE = "pool.delete"
    POOL_RESIZE = "pool.resize"
    POOL_STOP_RESIZE = "pool.stopresize"
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
    IMAGE_LIST = "image.list"
    NODE_GET = "node.get"
    TASK_UPDATE = "task.update"
    TASK_DELETE = "task.delete"
    TASK_TERMINATE = "task.terminate"
    TASK_REACTIVATE = "task.reactivate"
    TASK_FILE_LIST = "task.filelist"
    POOL_UPDATE = "pool.update"
    OTHER = "other"


class Fault(enum.StrEnum):
    THROTTLE = "throttled"
    SERVER_ERROR = "server_error"
    DROP_AFTER_APPLY = "dropped_after_apply"
    PREEMPT = "preempted"
    POOL_QUOTA = "pool_quota_reached"
    JOB_QUOTA = "job_quota_reached"
    CORE_QUOTA = "core_quota_reached"
    SPOT_CORE_QUOTA = "spot_core_quota_reached"
    OUTAGE = "outage"
    SAS_EXPIRED = "sas_expired"


class OutageMode(enum.StrEnum):
    """How a request fails during an outage."""

    SERVER_ERROR = "500"  # answered 500 with a Batch error body
    DROP = "drop"  # the connection is closed without an answer


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """How often each fault happens. Rates are probabilities in [0, 1]; zero turns a fault off.

    `kinds` limits the request faults (429, 500) to some request kinds (empty: every kind);
    `drop_kinds` does the same for dropped connections. `budget` caps how many times each rolled fault fires
    in total (None: no cap), so a test can ask for exactly one 429 and watch the SDK retry it.

    pool_quota, job_quota    pools, and jobs not yet completed, the account may have (None: no limit)
    core_quota               dedicated cores (see `state.cores_per_node`); a pool gets the nodes that fit
    spot_core_quota          the same for spot (low-priority) nodes
    outage_after_s, outage_s an outage starts this long after the first task-add request and lasts this long:
                             requests of `outage_kinds` fail as `outage_mode` says
    sas_clock_ahead_s        nodes check the expiry of each SAS they stage with against their clock plus this
                             many seconds, and Storage's refusal fails the task (None: no check)
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
    pool_quota: int | None = None
    job_quota: int | None = None
    core_quota: int | None = None
    spot_core_quota: int | None = None
    outage_after_s: float | None = None
    outage_s: float = 0.0
    outage_kinds: frozenset[RequestKind] = frozenset(
        {RequestKind.TASK_LIST, RequestKind.TASK_COUNTS, RequestKind.TASK_GET}
    )
    outage_mode: OutageMode = OutageMode.SERVER_ERROR
    sas_clock_ahead_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("rate_429", "rate_500", "drop_after_apply", "preempt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.counts_lag_s < 0 or self.preempt_after_s < 0:
            raise ConfigError("latency, counts lag and preemption delay must not be negative")
        for name in (
            "pool_quota", "job_quota", "core_quota", "spot_core_quota", "outage_after_s", "sas_clock_ahead_s"
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
        if self.outage_s < 0:
            raise ConfigError(f"outage_s must not be negative, got {self.outage_s}")
        if (self.outage_after_s is None) != (self.outage_s == 0):
            raise ConfigError("an outage needs both outage_after_s (when it starts) and outage_s (how long)")


@dataclass(slots=True)
class FaultInjector:
    """Rolls the dice for each request and each task attempt, and remembers how often each fault fired."""

    config: FaultConfig
    fired: dict[Fault, int] = field(default_factory=dict)
    _preemptions_decided: int = field(default=0, init=False)
    _first_task_add: float | None = field(default=None, init=False)
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

    def in_outage(self, kind: RequestKind, now: float) -> bool:
        """Whether a request of `kind` arriving at `now` (monotonic seconds) falls in the outage, which is
        timed from the first task-add request; a request that does is counted."""
        after = self.config.outage_after_s
        if kind in (RequestKind.TASK_ADD, RequestKind.TASK_ADD_COLLECTION) and self._first_task_add is None:
            self._first_task_add = now
        if after is None or self._first_task_add is None or kind not in self.config.outage_kinds:
            return False
        start = self._first_task_add + after
        if not start <= now < start + self.config.outage_s:
            return False
        self.record(Fault.OUTAGE)
        return True

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


def sas_refusal(url: str, at: datetime) -> str | None:
    """Why Azure Storage refuses the SAS in `url` at `at` (its AuthenticationErrorDetail), or None when the
    token has not expired (or the URL carries none)."""
    query = parse_qs(urlsplit(url).query)
    expiry = _sas_time(query.get("se"))
    if expiry is None or at < expiry:
        return None
    start = _sas_time(query.get("st"))
    return (
        "Signature not valid in the specified time frame: "
        f"Start [{format_datetime(start, usegmt=True) if start else ''}] - "
        f"Expiry [{format_datetime(expiry, usegmt=True)}] - Current [{format_datetime(at, usegmt=True)}]"
    )


def _sas_time(values: list[str] | None) -> datetime | None:
    if not values:
        return None
    try:
        moment = datetime.fromisoformat(values[0])
    except ValueError:
        return None
    # SAS times are UTC; a date without a zone still is.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
