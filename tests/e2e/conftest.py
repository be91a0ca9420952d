from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
    env.update(BATCHPILOT_HOME=str(home), **extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchpilot.cli", *args]


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
