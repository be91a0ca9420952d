"""The tests' one wait: `tests.waiting.wait_for` returns what the condition found, and fails naming what
never happened, at once when the process it watches ends first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.waiting import wait_for


def test_wait_for_returns_what_the_condition_found():
    seen = iter([None, 0, "ready"])
    assert wait_for(lambda: next(seen), "the third look", interval=0) == "ready"


def test_wait_for_fails_at_once_when_the_process_it_watches_ends_first():
    with subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]) as process:
        process.wait(timeout=30)
        with pytest.raises(AssertionError, match=r"ended \(3\) before the marker"):
            wait_for(lambda: False, "the marker", within=600, alive=process)


def test_wait_for_names_what_never_happened():
    with pytest.raises(AssertionError, match="timed out after 0 s waiting for the marker"):
        wait_for(lambda: False, "the marker", within=0, interval=0)
