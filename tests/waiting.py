"""Waiting for something another process or thread does, where there is no event to wait on.

One helper, in a blocking and an async form: poll a condition with a short sleep until it holds, within a
deadline, and fail naming what never happened. A condition may itself assert (e.g. that the process it
waits on is still alive): its AssertionError ends the wait at once. Prefer waiting on an event wherever
the code under test offers one; these are for subprocesses, files and servers on other threads.
"""

from __future__ import annotations

import inspect
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEADLINE_S = 60.0
INTERVAL_S = 0.05


def wait_for(
    condition: Callable[[], T],
    what: str,
    *,
    within: float = DEADLINE_S,
    interval: float = INTERVAL_S,
    alive: subprocess.Popen[str] | subprocess.Popen[bytes] | None = None,
) -> T:
    """Call `condition` every `interval` seconds until it returns something truthy, and return that.

    AssertionError "timed out after N s waiting for <what>" when `within` seconds pass first, and, with
    `alive`, "ended (exit code) before <what>" at once when that process ends first."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        if alive is not None:
            assert alive.poll() is None, f"ended ({alive.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out after {within:g} s waiting for {what}"
        time.sleep(interval)
    return value


async def eventually(
    condition: Callable[[], Awaitable[T | None] | T | None],
    what: str = "the condition",
    *,
    within: float = 10.0,
    interval: float = INTERVAL_S,
) -> T:
    """`wait_for` for async tests: `condition` may be a plain or an async callable; it is polled (with
    `anyio.sleep`, so the event loop runs) until it returns something other than None or False.

    TimeoutError naming `what` when `within` seconds pass first."""
    try:
        with anyio.fail_after(within):
            while True:
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value is not None and value is not False:
                    return value  # type: ignore[return-value]
                await anyio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {within:g} s waiting for {what}") from None
