"""The emulator's settings: one frozen dataclass, mapped one-to-one from `batchpilot emulator` flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .faults import FaultConfig
from .images import DEFAULT_IMAGES, SupportedImage

# The key of the emulator's default account: any base64 works; this one says what it is when decoded.
DEFAULT_ACCOUNT = "emulator"
DEFAULT_KEY = "YmF0Y2hwaWxvdC1lbXVsYXRvci1ub3QtYS1zZWNyZXQtLWRldmVsb3BtZW50LW9ubHk="


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Where the emulator listens, which account it answers for, and how it behaves.

    Pool start tasks are never run: the emulator logs that once and puts the bundled ffmpeg on PATH instead,
    which is what the tutorial's start task installs.

    host, port         where to listen; port 0 picks a free port (the bound one is reported)
    account, key       the SharedKey account name and its base64 key; requests signed otherwise get 403
    workdir            where task directories live; None uses a temporary directory removed at shutdown
    allocation_delay_s how long new nodes stay `starting` before they turn `idle` and take tasks
    scheduling_delay_s how long a task just added waits (`active`) before a node may take it, and how long a
                       job whose tasks are all complete stays active before `terminatejob` ends it: the
                       service schedules asynchronously (its recorded answers read a task just added back
                       as `active`, a new job as `active`)
    deletion_delay_s   how long a deleted pool or job stays in `deleting` before it disappears
    simulate_s         (min, max) seconds: tasks take a duration in that range without running a process
    faults             fault injection (latency, 429, 500, dropped connections, preemption, lagging counts,
                       an outage of list calls, SAS expiry checks) and the account's quotas
    supported_images   what List Supported Images answers (`GET /supportedimages`); a pool whose node agent
                       is not listed or is past its `batchSupportEndOfLife` is refused, as is growing one
    """

    host: str = "127.0.0.1"
    port: int = 0
    account: str = DEFAULT_ACCOUNT
    key: str = DEFAULT_KEY
    workdir: Path | None = None
    allocation_delay_s: float = 0.2
    scheduling_delay_s: float = 0.2
    deletion_delay_s: float = 0.2
    simulate_s: tuple[float, float] | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    supported_images: tuple[SupportedImage, ...] = DEFAULT_IMAGES

    def __post_init__(self) -> None:
        if min(self.allocation_delay_s, self.deletion_delay_s, self.scheduling_delay_s) < 0:
            raise ConfigError("delays must not be negative")
        if self.simulate_s is not None:
            low, high = self.simulate_s
            if not 0 <= low <= high:
                raise ConfigError(f"simulated durations need 0 <= min <= max, got {low}..{high}")
