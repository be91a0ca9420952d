"""`batchpilot serve --idle-shutdown MIN`: with no work for MIN minutes the pool goes to zero nodes (slots on
the local backend), and a new input brings it back before its task is submitted; on the local backend and
on the Batch emulator with Azurite."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from tests.conftest import EmulatorFactory
from tests.e2e.support import Served, azure_env, cli_env, wait_for
from tests.emulator.support import Azurite

COPY = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2] + '.out')"
IDLE_MINUTES = "0.02"  # 1.2 s


def logged(log_file: Path, event: str, **fields: object) -> Callable[[], bool]:
    def found() -> bool:
        if not log_file.exists():
            return False
        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
        return any(e["event"] == event and fields.items() <= e.items() for e in lines)

    return found


def _serve_through_an_idle_stretch(
    tmp_path: Path, env: dict[str, str], *backend: str, while_idle: Callable[[], None] = lambda: None
) -> list[dict]:
    """One input, an idle stretch (the pool goes to zero), a second input; returns the service's events."""
    watch, out, log_file = tmp_path / "in", tmp_path / "out", tmp_path / "serve.log"
    watch.mkdir()
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(COPY)} {{input}} {{stem}}"
    served = Served(
        env, "--watch", str(watch), "--out", str(out), "--command", command, "--outputs", "{stem}.out",
        "--nodes", "1", "--idle-shutdown", IDLE_MINUTES, "--log-file", str(log_file), *backend,
    )  # fmt: skip
    try:
        (watch / "first.txt").write_text("first")
        wait_for(lambda: (out / "first.out").exists(), "the first output")
        wait_for(logged(log_file, "pool_scaled", size="zero"), "the pool taken to zero")
        while_idle()
        (watch / "second.txt").write_text("second")
        wait_for(lambda: (out / "second.out").exists(), "the second output, after the pool came back")
    finally:
        code, events, err = served.stop()
    assert code == 0, err
    assert (out / "second.out").read_text() == "second"
    assert not [e for e in events if e["level"] == "error"]
    scaled = [e for e in events if e["event"] == "pool_scaled"]
    assert [e["size"] for e in scaled][:2] == ["zero", "full"]
    assert (scaled[1]["dedicated_nodes"], scaled[1]["spot_nodes"]) == (1, 0)
    # Back to full size before the second input's run began.
    runs = [i for i, e in enumerate(events) if e["event"] == "run_started"]
    assert events.index(scaled[1]) < runs[1]
    return events


def test_the_local_pool_goes_to_zero_slots_when_idle_and_back_for_new_input(tmp_path: Path) -> None:
    events = _serve_through_an_idle_stretch(tmp_path, cli_env(tmp_path / "home"))
    slots = [e["slots"] for e in events if e["event"] == "local_pool_resized"]
    assert slots[:2] == [0, 1]


def test_the_emulated_pool_goes_to_zero_nodes_when_idle_and_back_for_new_input(
    tmp_path: Path, start_emulator: EmulatorFactory, azurite: Azurite
) -> None:
    with start_emulator() as emulator:
        credential = AzureNamedKeyCredential(emulator.account, emulator.key)
        with BatchClient(emulator.endpoint, credential) as client:

            def sizes() -> list[tuple[int | None, int | None]]:
                """(target, current) dedicated nodes of each pool."""
                return [
                    (pool.target_dedicated_nodes, pool.current_dedicated_nodes)
                    for pool in client.list_pools()
                ]

            _serve_through_an_idle_stretch(
                tmp_path,
                azure_env(tmp_path / "home", emulator, azurite),
                *("--backend", "azure"),
                # With no node the second task could not run: its output shows the pool came back.
                while_idle=lambda: wait_for(lambda: sizes() == [(0, 0)], "the pool at zero nodes"),
            )
