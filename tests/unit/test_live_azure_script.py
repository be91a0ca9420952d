"""scripts/live-azure creates billable resources: without settings, or without --yes, it creates nothing.

The real path needs an Azure account and is not run here (it was run against the emulator and Azurite by
hand: check, a one-node pool, two MP3s, cleanup). These run the script as a user would, as a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "live-azure"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BATCH_KEY = "bGl2ZS1henVyZS1jYW5hcnkta2V5"  # must never be printed


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
    clean["BATCHPILOT_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,  # no batchpilot.toml here
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that accepts connections but never answers: any request the script sends shows."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def nobody_connected(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


def test_without_settings_it_refuses_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "--yes")

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("live-azure: error: missing Batch endpoint: set AZURE_BATCH_ENDPOINT")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_without_yes_it_says_what_it_would_create_and_stops(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run(
        tmp_path,
        AZURE_BATCH_ENDPOINT=f"http://127.0.0.1:{port}",
        AZURE_BATCH_ACCOUNT="live",
        AZURE_BATCH_ACCESS_KEY=BATCH_KEY,
        AZURE_STORAGE_CONNECTION_STRING=(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        ),
    )

    assert result.returncode == 2, result.stderr
    plan, stopped = result.stderr.strip().splitlines()
    assert "this creates BILLABLE resources" in plan
    assert (
        "1 dedicated Standard_D2s_v5 node (canonical/ubuntu-24_04-lts/server, batch.node.ubuntu 24.04)"
        in plan
    )
    assert "then deletes all of them" in plan
    assert stopped == "live-azure: nothing was created; run again with --yes to go ahead"
    assert BATCH_KEY not in result.stderr + result.stdout
    assert AZURITE_KEY not in result.stderr + result.stdout
    assert nobody_connected(listener)  # not even a check: nothing was sent
    assert not (tmp_path / "home").exists()


def test_a_bad_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path, "--yes-please")

    assert result.returncode == 2
    assert "unrecognized arguments: --yes-please" in result.stderr
