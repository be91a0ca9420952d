"""Growing waits, as pure functions: decide here, sleep elsewhere (through a `Clock`).

Every wait that grows in batchpilot goes through `BackoffPolicy`: the monitor's polling, the submitter's
retries of refused collections, and the waits for a pool being deleted, resized or getting its nodes. The
interval starts small so that a quick change is seen quickly, grows by `factor` while nothing changes (a long
wait costs few requests), snaps back to `initial` when something changes, never exceeds `cap`, and never
undercuts a server's Retry-After. Jitter spreads many orchestrators polling one account; the random draw is a
parameter, so a schedule is reproducible in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """A schedule of waits in seconds: `initial`, then times `factor` up to `cap`, each +/- `jitter`.

    `initial` and `cap` are seconds (0 < initial <= cap), `factor` >= 1, `jitter` a fraction in [0, 1) of
    the interval. Raises ConfigError for values outside those ranges.
    """

    initial: float = 0.25
    factor: float = 1.6
    cap: float = 15.0
    jitter: float = 0.1  # +/- this fraction of the interval

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ConfigError("poll intervals need 0 < initial <= cap")
        if self.factor < 1:
            raise ConfigError("the poll backoff factor must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ConfigError("poll jitter must be a fraction in [0, 1)")

    def next_base(self, previous: float | None, *, changed: bool) -> float:
        """The un-jittered interval (seconds) after a look: reset on change, otherwise grow up to the cap."""
        if previous is None or changed:
            return self.initial
        return max(self.initial, min(previous * self.factor, self.cap))

    def delay(self, base: float, *, unit: float, retry_after: float | None = None) -> float:
        """The time to wait (seconds): `base` jittered by `unit` (a draw in [0, 1)), at least any
        Retry-After (seconds)."""
        jittered = min(base * (1 + self.jitter * (2 * unit - 1)), self.cap)
        return max(jittered, retry_after) if retry_after is not None else jittered
