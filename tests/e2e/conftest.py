"""Fixtures of the end-to-end tests: a fresh BATCHPILOT_HOME, the CLI as a user runs it, the leak check after
each test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Helpers live in support.py (test files import them from there); these are what the fixtures use.
from tests.e2e.support import Run, capture_file, cli_command, cli_env, leaked_secrets


@pytest.fixture(autouse=True)
def no_secret_in_cli_output(tmp_path: Path) -> Iterator[None]:
    """After each test: no log line, event, error or summary that any CLI run printed holds a secret."""
    yield
    capture = capture_file(tmp_path)
    if capture.exists():
        assert leaked_secrets(capture.read_text(errors="replace")) == []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def batchpilot(home: Path) -> Run:
    """Run the CLI as a user would, in a fresh BATCHPILOT_HOME, stdout not a terminal (JSON logs)."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(*args), env=env or cli_env(home), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    return run
