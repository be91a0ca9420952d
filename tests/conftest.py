"""Fixtures shared by the emulator tests and the end-to-end tests: Azurite (one per session, via
scripts/azurite) and the Batch emulator (one per test, on a thread of its own)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from batchpilot.emulator import EmulatorConfig, RunningEmulator, emulator_in_thread
from tests.emulator.support import CANARY_BATCH_KEY, Azurite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's blob service: the one named by AZURITE_BLOB_PORT, or one started for this session."""
    if port := os.environ.get("AZURITE_BLOB_PORT"):
        yield Azurite(int(port))
        return
    script = REPO / "scripts" / "azurite"
    started = subprocess.run([script, "start"], capture_output=True, text=True, timeout=300, check=True)
    values = dict(line.split("=", 1) for line in started.stdout.split())
    try:
        yield Azurite(int(values["AZURITE_PORT"]))
    finally:
        subprocess.run([script, "stop", values["AZURITE_PID"]], timeout=30, check=True)


EmulatorFactory = Callable[..., AbstractContextManager[RunningEmulator]]


@pytest.fixture
def start_emulator(tmp_path: Path) -> EmulatorFactory:
    """Start an emulator with some settings changed: `with start_emulator(faults=...) as emulator:`."""

    def start(**changes: object) -> AbstractContextManager[RunningEmulator]:
        defaults = EmulatorConfig(
            workdir=tmp_path / "emulator", allocation_delay_s=0.05, key=CANARY_BATCH_KEY
        )
        config = replace(defaults, **changes)
        return emulator_in_thread(config)

    return start


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> Iterator[RunningEmulator]:
    """A fresh emulator on a free loopback port: `.endpoint`, `.account`, `.key`, `.stats_url`."""
    with start_emulator() as running:
        yield running
