"""An emulator on a thread of its own, for synchronous callers: pytest fixtures and benchmark scripts.

The emulator gets its own event loop, so a session-wide emulator outlives each test's loop, and its work
(running tasks, serving requests) never waits on the test's loop or the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from anyio.from_thread import start_blocking_portal

from .app import RunningEmulator, running
from .config import EmulatorConfig


@contextmanager
def emulator_in_thread(config: EmulatorConfig) -> Iterator[RunningEmulator]:
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(running(config)) as emulator:
        yield emulator
