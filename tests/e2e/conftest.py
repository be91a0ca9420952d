from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.emulator.support import AZURITE_KEY, CANARY_BATCH_KEY

Run = Callable[..., subprocess.CompletedProcess[str]]


# The secrets every end-to-end run is given: none may appear in anything the CLI prints.
CANARIES = (CANARY_BATCH_KEY, AZURITE_KEY)
_UNREDACTED_SAS = re.compile(r"sig=(?!REDACTED)")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
    env.update(BATCHPILOT_HOME=str(home), BATCHPILOT_TEST_CAPTURE=str(capture_file(home.parent)), **extra)
    return env


def cli_command(*args: str) -> list[str]:
    """The CLI as `python -m batchpilot.cli`, with its output also copied for the leak check."""
    return [sys.executable, str(Path(__file__).with_name("cli_tee.py")), *args]


def kill_when_logged(args: list[str], env: dict[str, str], log: Path, marker: str) -> None:
    """Start the CLI, and SIGKILL it (no chance to clean anything up) once its log holds `marker`."""
    with (
        log.open("w") as stdout,
        subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE) as run,
    ):
        deadline = time.monotonic() + 60
        try:
            while marker not in log.read_text():
                assert time.monotonic() < deadline, f"the run never logged {marker}"
                assert run.poll() is None, "the run ended before it could be killed"
                time.sleep(0.05)
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()


def capture_file(tmp_path: Path) -> Path:
    return tmp_path / "cli-output.log"


def leaked_secrets(text: str) -> list[str]:
    """The canaries, and any SAS signature, found in `text` (what a leak check reports)."""
    found = [f"canary {canary[:8]}..." for canary in CANARIES if canary in text]
    found += [f"SAS signature at {match.start()}" for match in _UNREDACTED_SAS.finditer(text)]
    return found


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
