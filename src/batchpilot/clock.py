"""Time, behind a small protocol so that the poller, the submitter, the Azure adapter and the service can be
tested with a fake clock instead of sleeping (`batchpilot.testing.FakeClock`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    """Wall-clock time (timezone-aware UTC) and sleeping, both swappable."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (>= 0) seconds; cancellable."""
        ...


class SystemClock:
    """The real clock: `datetime.now(UTC)` and `anyio.sleep`."""

    def now(self) -> datetime:
        """`datetime.now(UTC)`: timezone-aware UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """`anyio.sleep(seconds)`: yields to other tasks, cancellable."""
        await anyio.sleep(seconds)
