"""The image check end to end: the CLI asks the emulator's List Supported Images (shaped as the real service's
answer, 20.04 past its end of support) before creating anything, with the real SDKs over real HTTP, and
Azurite for storage."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from batchpilot.emulator.images import DEFAULT_IMAGES, SupportedImage
from tests.conftest import REPO, EmulatorFactory
from tests.e2e.support import (
    JOB,
    Run,
    azure_env,
    cli_env,
    containers,
    delete_run_containers,
    emulator_stats,
    run_azure,
)
from tests.emulator.support import CANARY_BATCH_KEY, Azurite

TUTORIAL_POOL = REPO / "examples" / "tutorial-pool.toml"
REFUSAL = (
    "batchpilot: error: pool tutorial-pool: image Canonical/0001-com-ubuntu-server-focal/20_04-lts with node"
    " agent 'batch.node.ubuntu 20.04' reached the end of Batch support on 2025-04-23: Batch refuses new pools"
    " with it; use canonical/ubuntu-24_04-lts/server-gen1 with node agent 'batch.node.ubuntu 24.04'"
)
CREATES = ("pool.add", "job.add", "task.addcollection", "task.add")


def created(stats: dict) -> dict[str, int]:
    return {kind: count for kind, count in stats["requests"].items() if kind in CREATES and count}


def test_check_refuses_the_tutorials_retired_pool_in_one_line(
    batchpilot: Run, start_emulator: EmulatorFactory, azurite: Azurite, home: Path
) -> None:
    with start_emulator() as emulator:
        env = azure_env(home, emulator, azurite)
        refused = batchpilot("check", "--backend", "azure", "--workload", str(TUTORIAL_POOL), env=env)
        default = batchpilot("check", "--backend", "azure", env=env)
        stats = emulator_stats(emulator)

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == REFUSAL
    assert "Traceback" not in refused.stderr
    # The example file quotes the line it gets: it stays true.
    quoted = " ".join(line.lstrip("# ").strip() for line in TUTORIAL_POOL.read_text().splitlines())
    assert REFUSAL.removeprefix("batchpilot: ").split(": ", 1)[1][:60] in quoted
    assert default.returncode == 0, default.stderr
    assert default.stderr.splitlines()[-1] == (
        "Image: canonical/ubuntu-24_04-lts/server with 'batch.node.ubuntu 24.04' on Standard_D2s_v5: listed"
        " by the service, no end of Batch support within 90 days"
    )
    assert stats["requests"]["image.list"] == 2
    assert created(stats) == {}


def test_a_run_with_the_retired_image_creates_nothing(
    batchpilot: Run, start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not really a video")
    workload = tmp_path / "tutorial-pool.toml"
    workload.write_text(TUTORIAL_POOL.read_text())
    before = containers(azurite)
    with start_emulator() as emulator:
        env = azure_env(home, emulator, azurite)
        out = str(tmp_path / "o")
        result = batchpilot(
            "run", "--backend", "azure", str(videos), "--workload", str(workload), "--out", out, env=env
        )
        plan = batchpilot("plan", "--backend", "azure", str(videos), "--workload", str(workload), env=env)
        stats = emulator_stats(emulator)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [REFUSAL]
    assert plan.returncode == 2, plan.stderr
    assert plan.stderr.strip() == REFUSAL
    assert created(stats) == {}
    assert stats["requests"].get("pool.get", 0) <= 2  # the check looks for an existing pool; nothing else
    assert containers(azurite) == before  # no input or output container either
    assert not (tmp_path / "o").exists()  # nor an empty --out folder


def test_a_run_with_the_default_image_works(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    delete_run_containers(azurite)
    with start_emulator(allocation_delay_s=0) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")
        stats = emulator_stats(emulator)

    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.mp3"))) == 5
    assert stats["requests"]["image.list"] == 1
    assert stats["requests"]["pool.add"] == 1
    assert "warning:" not in result.stderr
    assert f"{JOB}-output" in containers(azurite)


def test_an_image_whose_support_ends_within_90_days_runs_with_a_warning(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    ends = (datetime.now(UTC) + timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    images = tuple(
        SupportedImage(image.node_agent_sku_id, image.publisher, image.offer, image.sku,
                       capabilities=image.capabilities, end_of_life=ends)
        if image.node_agent_sku_id == "batch.node.ubuntu 24.04" and image.offer == "ubuntu-24_04-lts"
        else image
        for image in DEFAULT_IMAGES
    )  # fmt: skip
    delete_run_containers(azurite)
    with start_emulator(allocation_delay_s=0, supported_images=images) as emulator:
        result = run_azure(azure_env(home, emulator, azurite), tmp_path / "out")

    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("  warning: ")]
    assert f"Batch support ends on {ends.date().isoformat()}" in warning
    assert "image canonical/ubuntu-24_04-lts/server with node agent 'batch.node.ubuntu 24.04'" in warning
    # No other image of that agent family outlives it here: the replacement is the next best the list has.
    assert "move to " in warning
    assert '"event": "pool_image"' in result.stdout  # and in the log


def test_an_unreachable_service_stops_the_run_before_anything_is_created(
    batchpilot: Run, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    with socket.socket() as placeholder:  # a loopback port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    env = {
        **azure_env_for(home, azurite),
        "AZURE_BATCH_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    before = containers(azurite)

    result = batchpilot("run", "--backend", "azure", "--sample", "1", "--out", str(tmp_path / "out"), env=env)

    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("batchpilot: ImageCheckError: could not check pool batchpilot-azure-pool's image")
    assert "nothing was created" in line
    assert containers(azurite) == before


def azure_env_for(home: Path, azurite: Azurite) -> dict[str, str]:
    """Settings for Azurite and a Batch endpoint to be filled in."""
    return cli_env(
        home,
        AZURE_BATCH_ACCOUNT="emulator",
        AZURE_BATCH_ACCESS_KEY=CANARY_BATCH_KEY,
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
    )


def test_serve_with_the_retired_image_stops_at_once_creating_nothing(
    batchpilot: Run, start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    (watched / "a.mp4").write_bytes(b"waiting")
    before = containers(azurite)
    with start_emulator() as emulator:
        env = azure_env(home, emulator, azurite)
        args = ("--watch", str(watched), "--out", str(tmp_path / "out"), "--workload", str(TUTORIAL_POOL))
        result = batchpilot("serve", "--backend", "azure", *args, env=env)
        stats = emulator_stats(emulator)

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [REFUSAL]
    assert created(stats) == {}
    assert containers(azurite) == before
