"""What the end-to-end tests share: the CLI as a subprocess, its environment, the leak check, the Azure
flavour's helpers, checks of the outputs, and waiting (`wait_for`). Test files import from here, never
from one another; conftest.py holds only fixtures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
from azure.storage.blob import BlobServiceClient

from batchpilot.emulator import RunningEmulator
from batchpilot.workloads.ffmpeg import media_info
from tests.emulator.support import AZURITE_KEY, CANARY_BATCH_KEY, Azurite
from tests.waiting import DEADLINE_S, wait_for

__all__ = (
    "CANARIES",
    "DEADLINE_S",
    "JOB",
    "SAMPLE_SECONDS",
    "Run",
    "Served",
    "assert_playable_mp3",
    "azure_env",
    "capture_file",
    "cli_command",
    "cli_env",
    "containers",
    "delete_run_containers",
    "emulator_stats",
    "events",
    "kill_when_logged",
    "leaked_secrets",
    "leftovers",
    "run_azure",
    "wait_for",
)

Run = Callable[..., subprocess.CompletedProcess[str]]

# The secrets every end-to-end run is given: none may appear in anything the CLI prints.
CANARIES = (CANARY_BATCH_KEY, AZURITE_KEY)
_UNREDACTED_SAS = re.compile(r"sig=(?!REDACTED)")
# The sample workload's job on the Azure flavour, and the length of each sample.
JOB = "batchpilot-ffmpeg-sample-5"
SAMPLE_SECONDS = 3.0


# --- the CLI ----------------------------------------------------------------------------------------------


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
        try:
            wait_for(lambda: marker in log.read_text(), f"the run to log {marker}", alive=run)
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()


class Served:
    """One `batchpilot serve` process; `stop()` sends SIGTERM and returns (exit code, stdout, stderr)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            cli_command("serve", *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> tuple[int, list[dict], str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=DEADLINE_S)
        return self.process.returncode, [json.loads(line) for line in out.splitlines()], err


# --- secrets ----------------------------------------------------------------------------------------------


def capture_file(tmp_path: Path) -> Path:
    return tmp_path / "cli-output.log"


def leaked_secrets(text: str) -> list[str]:
    """The canaries, and any SAS signature, found in `text` (what a leak check reports)."""
    found = [f"canary {canary[:8]}..." for canary in CANARIES if canary in text]
    found += [f"SAS signature at {match.start()}" for match in _UNREDACTED_SAS.finditer(text)]
    return found


# --- the Azure flavour: the emulator and Azurite ----------------------------------------------------------


def azure_env(home: Path, emulator: RunningEmulator, azurite: Azurite) -> dict[str, str]:
    return cli_env(
        home,
        AZURE_BATCH_ENDPOINT=emulator.endpoint,
        AZURE_BATCH_ACCOUNT=emulator.account,
        AZURE_BATCH_ACCESS_KEY=emulator.key,
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )


def run_azure(env: dict[str, str], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command("run", "--backend", "azure", "--sample", "5", "--out", str(out), *extra),
        env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def emulator_stats(emulator: RunningEmulator) -> dict:
    async def fetch() -> dict:
        async with aiohttp.ClientSession() as session, session.get(emulator.stats_url) as response:
            return await response.json()

    return anyio.run(fetch)


def containers(azurite: Azurite) -> set[str]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return {container.name for container in service.list_containers()}


def delete_run_containers(azurite: Azurite) -> None:
    """Azurite lives for the whole session: each test starts without this job's containers."""
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        for container in service.list_containers(name_starts_with=JOB):
            service.delete_container(container.name)


# --- outputs ----------------------------------------------------------------------------------------------


def assert_playable_mp3(path: Path, seconds: float = SAMPLE_SECONDS) -> None:
    info = media_info(path)
    assert info.audio_codec == "mp3", path
    assert info.duration_s == pytest.approx(seconds, abs=0.3), path
    assert not info.has_video


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name]
