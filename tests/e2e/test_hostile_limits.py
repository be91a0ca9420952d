"""Input values cannot exhaust the machine or crash the run (issue 16, item 3), through the real CLI."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EmulatorFactory
from tests.e2e.support import Run, azure_env, cli_command
from tests.emulator.support import Azurite

PY = shlex.quote(sys.executable)
COPY = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"


@pytest.mark.parametrize("name", ["a" * 250 + ".log", "é" * 125 + ".txt", "b" * 255])
def test_an_input_with_a_name_as_long_as_the_file_system_allows_runs(
    batchpilot: Run, tmp_path: Path, name: str
) -> None:
    """The repro: a 254-character input file name was a traceback (`File name too long` on the temporary
    download name) and the whole run aborted."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / name).write_text("long\n")
    (folder / "short.txt").write_text("short\n")
    result = batchpilot(
        "run", str(folder), "--command", f"{PY} -c {shlex.quote(COPY)} {{input}} {{task_id}}.out",
        "--outputs", "{task_id}.out", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert sorted(path.read_text() for path in (tmp_path / "out").rglob("*.out")) == ["long\n", "short\n"]


@pytest.mark.parametrize(
    "environment",
    [
        f"BIG = '{'x' * 200_000}'",
        "\n".join(f"V{index} = '{'x' * 2000}'" for index in range(40)),
        "\n".join(f"V{index} = ''" for index in range(300)),
    ],
)
def test_an_environment_too_large_for_a_task_is_one_line_before_anything_runs(
    batchpilot: Run, tmp_path: Path, environment: str
) -> None:
    """The repro: one 200 KB value in [workload.environment] crashed the orchestrator (`Argument list too
    long`)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    workload = tmp_path / "w.toml"
    workload.write_text(
        f"[workload]\ninputs = '{tmp_path / 'in'}/*'\ncommand = 'true {{input}}'\noutputs = []\n"
        f"[workload.environment]\n{environment}\n"
    )
    result = batchpilot("run", "--workload", str(workload), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "environment" in lines[0]
    assert len(lines[0]) < 400


@pytest.mark.parametrize(
    "flags",
    [("--nodes", "1000000"), ("--task-slots", "100000"), ("--nodes", "2000", "--task-slots", "2")],
)
def test_counts_beyond_the_limits_are_one_line(
    batchpilot: Run, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    result = batchpilot(
        "run", str(tmp_path / "in"), "--command", "true", "--out", str(tmp_path / "out"), *flags
    )
    assert result.returncode == 2, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_an_output_named_as_long_as_the_file_system_allows_is_fetched_from_storage(
    tmp_path: Path, home: Path, start_emulator: EmulatorFactory, azurite: Azurite
) -> None:
    """The Azure backend downloaded into `.<name>.<8 hex>.part`: for an output whose own name is 242 bytes
    or more that name is too long for the file system, so the output was never fetched, run after run
    (the local backend's temporary names were already cut to fit)."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = "L" * 248 + ".txt"  # its output, {input_name}.o, is 254 characters
    (folder / name).write_text("long\n")
    out = tmp_path / "out"
    with start_emulator(allocation_delay_s=0) as emulator:
        result = subprocess.run(
            cli_command(
                "run", str(folder), "--backend", "azure", "--command", "cp {input} {input_name}.o",
                "--outputs", "{input_name}.o", "--out", str(out), "--name", "long-output", "--nodes", "1",
            ),
            env=azure_env(home, emulator, azurite), capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / f"{name}.o").read_text() == "long\n"
    assert [path.name for path in out.iterdir()] == [f"{name}.o"]
