"""`batchpilot serve` end to end: a subprocess watching a folder, stopped with SIGTERM and started again, on
the local backend and on the Batch emulator with Azurite."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
from azure.storage.blob import BlobServiceClient

from batchpilot.emulator import RunningEmulator
from batchpilot.emulator.faults import FaultConfig, RequestKind
from batchpilot.workloads import ffmpeg
from tests.conftest import EmulatorFactory
from tests.e2e.support import (
    Served,
    assert_playable_mp3,
    azure_env,
    cli_command,
    cli_env,
    leaked_secrets,
    wait_for,
)
from tests.emulator.support import Azurite


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> str:
    """A page the service serves (/healthz, /metrics); none may hold a secret."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = str(response.read().decode())
    assert leaked_secrets(text) == []
    return text


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_dropped_mp4s_become_mp3s_and_metrics_say_so(tmp_path: Path) -> None:
    home, watch, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    samples = anyio.run(ffmpeg.make_samples, 3, tmp_path / "samples")
    port = free_port()
    served = Served(cli_env(home), "--watch", str(watch), "--out", str(out), "--metrics-port", str(port))
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), "/healthz")
        for sample in samples[:2]:
            (watch / sample.name).write_bytes(sample.read_bytes())
        wait_for(lambda: len(list(out.glob("*.mp3"))) == 2, "two MP3s")
        (watch / samples[2].name).write_bytes(samples[2].read_bytes())  # a later arrival
        (watch / "notes.txt").write_text("not an mp4: not taken")
        wait_for(lambda: len(list(out.glob("*.mp3"))) == 3, "the third MP3")
        wait_for(
            lambda: metric(get(f"http://127.0.0.1:{port}/metrics"), "batchpilot_succeeded_total") == 3, ""
        )
        text = get(f"http://127.0.0.1:{port}/metrics")
    finally:
        code, events, err = served.stop()
    assert code == 0, err
    for sample in samples:
        assert_playable_mp3(out / f"{sample.stem}.mp3")
    assert metric(text, "batchpilot_inputs_seen_total") == 3
    assert metric(text, "batchpilot_submitted_total") == 3
    assert metric(text, "batchpilot_outputs_downloaded_total") == 3
    assert 'batchpilot_tasks{state="completed"} 3' in text
    assert 'batchpilot_subscriber_queue_depth{subscriber="download"} 0' in text
    assert "serve stopped: 3 inputs seen, 3 tasks submitted, 3 succeeded, 0 failed" in err
    assert not [e for e in events if e["level"] == "error"]


def _answers(url: str) -> bool:
    try:
        return get(url) == "ok\n"
    except OSError:
        return False


SLOW_COPY = "import shutil, sys, time; time.sleep(0.4); shutil.copy(sys.argv[1], sys.argv[2] + '.out')"


def _stop_mid_stream_then_restart(
    tmp_path: Path, env: dict[str, str], *backend: str, while_running: Callable[[], None] = lambda: None
) -> None:
    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    names = [f"clip-{index}" for index in range(6)]
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(SLOW_COPY)} {{input}} {{stem}}"
    args = ("--watch", str(watch), "--out", str(out), "--command", command, "--outputs", "{stem}.out",
            "--nodes", "1", *backend)  # fmt: skip
    first = Served(env, *args)
    for name in names:
        (watch / f"{name}.txt").write_text(name)
    wait_for(lambda: len(list(out.glob("*.out"))) >= 1, "a first output")
    while_running()
    code, first_events, first_err = first.stop()
    assert code == 0, first_err
    assert "serve stopped: 6 inputs seen" in first_err, first_err
    assert len(list(out.glob("*.out"))) < len(names), "stopped too late to test anything"

    second = Served(env, *args)
    try:
        wait_for(lambda: len(list(out.glob("*.out"))) == len(names), "every output after the restart")
    finally:
        code, second_events, second_err = second.stop()
    assert code == 0, second_err
    assert {path.read_text() for path in out.glob("*.out")} == set(names)
    everything = first_events + second_events
    # Nothing re-added: each task was added exactly once over both lives of the service.
    assert sum(e["added"] for e in everything if e["event"] == "tasks_submitted") == len(names)
    # Nothing fetched twice, nothing lost.
    fetched = Counter(
        e["task_id"] for e in everything if e["event"] == "output_downloaded" and not e["skipped"]
    )
    assert len(fetched) == len(names)
    assert set(fetched.values()) == {1}


def test_sigterm_mid_stream_then_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    _stop_mid_stream_then_restart(tmp_path, cli_env(tmp_path / "home"))


def test_the_same_on_the_emulator_and_azurite_with_requests_and_throttles_in_metrics(
    tmp_path: Path, start_emulator: EmulatorFactory, azurite: Azurite
) -> None:
    throttle_twice = FaultConfig(rate_429=1.0, kinds=frozenset({RequestKind.TASK_COUNTS}), budget=2)
    port = free_port()
    scraped: list[str] = []
    with start_emulator(faults=throttle_twice) as emulator:
        _stop_mid_stream_then_restart(
            tmp_path,
            azure_env(tmp_path / "home", emulator, azurite),
            *("--backend", "azure", "--metrics-port", str(port)),
            while_running=lambda: scraped.append(get(f"http://127.0.0.1:{port}/metrics")),
        )
    [text] = scraped
    assert metric(text, 'batchpilot_requests_total{kind="batch GET /jobs/*/taskcounts"}') > 0
    assert metric(text, 'batchpilot_requests_total{kind="blob PUT blob"}') >= 1  # uploads
    # The first two probes were throttled; the SDK retried them.
    assert metric(text, 'batchpilot_throttled_total{kind="batch GET /jobs/*/taskcounts"}') == 2


def test_new_blobs_in_a_watched_container_become_mp3s(
    tmp_path: Path, emulator: RunningEmulator, azurite: Azurite
) -> None:
    container, out = f"incoming-{uuid.uuid4().hex[:8]}", tmp_path / "out"
    samples = anyio.run(ffmpeg.make_samples, 2, tmp_path / "samples")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blobs = service.create_container(container)
        blobs.upload_blob(f"videos/{samples[0].name}", samples[0].read_bytes())
        blobs.upload_blob("elsewhere/skipped.mp4", samples[0].read_bytes())
        args = (
            "--watch-container",
            container,
            "--prefix",
            "videos/",
            "--out",
            str(out),
            "--backend",
            "azure",
        )
        served = Served(azure_env(tmp_path / "home", emulator, azurite), *args)
        try:
            wait_for(lambda: (out / samples[0].with_suffix(".mp3").name).exists(), "the first MP3")
            blobs.upload_blob(f"videos/{samples[1].name}", samples[1].read_bytes())  # a later arrival
            wait_for(lambda: (out / samples[1].with_suffix(".mp3").name).exists(), "the second MP3")
        finally:
            code, events, err = served.stop()
        service.delete_container(container)
    assert code == 0, err
    assert "serve stopped: 2 inputs seen, 2 tasks submitted, 2 succeeded, 0 failed" in err
    assert sorted(path.name for path in out.iterdir()) == ["sample-001.mp3", "sample-002.mp3"]
    assert_playable_mp3(out / "sample-002.mp3")
    # Each batch ran only its new blob, not the whole prefix again.
    assert [e["input_count"] for e in events if e["event"] == "run_started"] == [1, 1]


def test_serve_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    for args, expected in (
        (("--watch", str(tmp_path / "missing"), "--out", str(tmp_path / "out")), "is not a folder"),
        (("--watch-container", "nope", "--out", str(tmp_path / "out")), "no such container"),
        (("--out", str(tmp_path / "out")), "one of the arguments --watch --watch-container is required"),
    ):
        result = subprocess.run(
            cli_command("serve", *args), env=env, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
