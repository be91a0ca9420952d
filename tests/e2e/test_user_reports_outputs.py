"""A declared output that was never produced is a failure (issue 15 item 4; azure-docs#37770,
azure-powershell#9912): on Batch a pattern that matches no file uploads nothing and the task still succeeds,
so the run itself looks at the output container. The same command on both backends (local, and the Batch
emulator with Azurite) gives the same result, from the same check."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import EmulatorFactory
from tests.e2e.support import azure_env, cli_command, cli_env, events
from tests.emulator.support import Azurite

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(params=["local", "azure"])
def run_cli(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> Iterator[RunCli]:
    """`batchpilot run --backend B ...` as a user runs it, on the local backend or the emulator + Azurite."""
    if request.param == "local":
        env = cli_env(home)
        yield _runner(env, "local")
        return
    start_emulator: EmulatorFactory = request.getfixturevalue("start_emulator")
    azurite: Azurite = request.getfixturevalue("azurite")
    with start_emulator() as emulator:
        yield _runner(azure_env(home, emulator, azurite), "azure")


def _runner(env: dict[str, str], backend: str) -> RunCli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli_command(), "run", "--backend", backend, *args], env=env, capture_output=True, text=True,
            timeout=180, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    return run


def _inputs(tmp_path: Path, name: str = "in") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "a.txt").write_text("x\n")
    return folder


def _missing(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [line for line in events(result) if line["event"] == "task_outputs_missing"]


def _deleted(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line["resource"] for line in events(result) if line["event"] == "resource_deleted"]


def test_the_repro_an_output_never_written_fails_its_task(run_cli: RunCli, tmp_path: Path) -> None:
    """`gzip -c` writes to stdout, not a.txt.gz: the run said "done", exit 0, with nothing downloaded."""
    out = tmp_path / "out"
    result = run_cli(
        str(_inputs(tmp_path)),
        "--command",
        "gzip -c {input}",
        "--outputs",
        "{input_name}.gz",
        "--out",
        str(out),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "batchpilot: FAILED: 0 of 1 tasks succeeded" in result.stderr
    assert "no file matched output pattern 'a.txt.gz'" in result.stderr
    [missing] = _missing(result)
    assert missing["patterns"] == ["a.txt.gz"]
    assert missing["level"] == "warning"
    # A failed run deletes nothing: the input container stays for the re-run.
    assert _deleted(result) == []
    assert not out.exists() or list(out.iterdir()) == []


def test_only_the_patterns_that_matched_nothing_are_named_and_the_rest_is_fetched(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """Kinds beyond the repro: a wildcard matching nothing, in an output dir, next to outputs that exist."""
    (tmp_path / "w.toml").write_text(
        "[workload]\n"
        'name = "partial-outputs"\n'
        f'inputs = "{_inputs(tmp_path)}/*.txt"\n'
        'command = "cp {input} {output_dir}/{stem}.copy"\n'
        'output_dir = "results"\n'
        'outputs = ["{stem}.copy", "*.png", "{stem}.report"]\n'
    )
    out = tmp_path / "out"
    result = run_cli("--workload", str(tmp_path / "w.toml"), "--out", str(out))
    assert result.returncode == 1, result.stderr
    [missing] = _missing(result)
    assert missing["patterns"] == ["*.png", "a.report"]
    assert "no file matched output pattern '*.png', 'a.report'" in result.stderr
    assert (out / "a.copy").read_text() == "x\n"  # what the task did write still comes back


def test_an_optional_output_may_be_missing(run_cli: RunCli, tmp_path: Path) -> None:
    """`--optional-outputs` and `{ pattern = ..., optional = true }` say that an output may not be there."""
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    result = run_cli(
        str(inputs), "--command", "gzip -k {input}", "--outputs", "{input_name}.gz",
        "--optional-outputs", "{stem}.log", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _missing(result) == []
    assert (out / "a.txt.gz").exists()

    (tmp_path / "w.toml").write_text(
        "[workload]\n"
        'name = "optional-outputs"\n'
        f'inputs = "{inputs}/*.txt"\n'
        'command = "gzip -k {input}"\n'
        'outputs = ["{input_name}.gz", { pattern = "{stem}.log", optional = true }]\n'
    )
    result = run_cli("--workload", str(tmp_path / "w.toml"), "--out", str(tmp_path / "out2"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out2" / "a.txt.gz").exists()


def test_every_output_written_is_a_success(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        str(_inputs(tmp_path)), "--command", "gzip -k {input}", "--outputs", "{input_name}.gz",
        "--outputs", "*.gz", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "batchpilot: done: 1 of 1 tasks succeeded" in result.stderr
    assert _missing(result) == []
    assert (out / "a.txt.gz").exists()
