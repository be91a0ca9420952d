"""Nothing read from a task or the service is unbounded (issue 15 item 5; BatchExplorer#457): a task that
writes 50 MB to stderr gave a 50 MB summary and a 50 MB log, and 4 such tasks took the orchestrator to
678 MB on the emulator. Tails are read by byte range, every log and summary line is capped, and what a task
writes reaches no terminal unescaped. On both backends: local, and the Batch emulator with Azurite."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EmulatorFactory
from tests.e2e.support import azure_env, cli_command, cli_env
from tests.emulator.support import Azurite

BIG_STDERR = "sh -c 'head -c 50000000 /dev/zero | tr \"\\0\" e >&2; exit 1' {input}"
ONE_LINE_STDERR = "sh -c 'echo one line >&2; exit 1' {input}"
MB = 1_000_000


@dataclass(frozen=True)
class Finished:
    returncode: int
    log: Path  # stdout: JSON log lines
    summary: Path  # stderr: the summary
    maxrss_kb: int  # the CLI process's peak resident memory (its own, from wait4), in KB


Run = Callable[..., Finished]


@pytest.fixture(params=["local", "azure"])
def run_cli(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> Iterator[Run]:
    if request.param == "local":
        yield _runner(cli_env(home), "local", tmp_path)
        return
    start_emulator: EmulatorFactory = request.getfixturevalue("start_emulator")
    azurite: Azurite = request.getfixturevalue("azurite")
    with start_emulator() as emulator:
        yield _runner(azure_env(home, emulator, azurite), "azure", tmp_path)


# Starts the CLI and writes its exit code and peak memory. Linux counts a process's peak from before its exec
# (the process it was forked from), so the CLI is started from this small one, not from pytest's 80 MB.
_MEASURE = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def _runner(env: dict[str, str], backend: str, tmp_path: Path) -> Run:
    def run(name: str, *args: str) -> Finished:
        log, summary = tmp_path / f"{name}.json", tmp_path / f"{name}.txt"
        measured = tmp_path / f"{name}.rusage"
        with log.open("wb") as stdout, summary.open("wb") as stderr:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", _MEASURE, str(measured),
                 *cli_command("run", "--backend", backend, *args, "--log-format", "json")],
                env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, timeout=300, check=True,
            )  # fmt: skip
        code, maxrss = measured.read_text().split()
        return Finished(int(code), log, summary, int(maxrss))

    return run


def _inputs(tmp_path: Path, name: str, count: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for n in range(count):
        (folder / f"{n}.txt").write_text(f"{n}\n")
    return folder


def test_the_repro_50_mb_of_stderr_gives_a_small_summary_log_and_memory(run_cli: Run, tmp_path: Path) -> None:
    small = run_cli(
        "small", str(_inputs(tmp_path, "small", 2)), "--command", ONE_LINE_STDERR,
        "--outputs", "{input_name}.out", "--out", str(tmp_path / "o1"),
    )  # fmt: skip
    big = run_cli(
        "big", str(_inputs(tmp_path, "big", 2)), "--command", BIG_STDERR, "--outputs", "{input_name}.out",
        "--out", str(tmp_path / "o2"),
    )  # fmt: skip
    assert small.returncode == big.returncode == 1, big.summary.read_text()[:2000]
    summary = big.summary.read_text()
    assert "batchpilot: FAILED: 0 of 2 tasks succeeded" in summary
    assert "| eeeeeeee" in summary  # the end of the stderr is there, capped
    assert big.summary.stat().st_size < MB
    assert big.log.stat().st_size < MB
    assert all(len(line) < 20_000 for line in summary.splitlines())
    failed = [json.loads(line) for line in big.log.read_text().splitlines()]
    tails = [line["stderr_tail"] for line in failed if line["event"] == "task_failed"]
    assert len(tails) == 2
    assert all(tail.startswith("eeee") and len(tail) < 1000 for tail in tails)
    # Peak memory: about what a one-line stderr costs (a generous factor; reading 50 MB whole costs 10x).
    print(f"peak memory: {big.maxrss_kb} KB with 50 MB of stderr, {small.maxrss_kb} KB with one line")
    assert big.maxrss_kb < 1.5 * small.maxrss_kb, (big.maxrss_kb, small.maxrss_kb)


def test_what_a_task_writes_reaches_no_terminal_unescaped(run_cli: Run, tmp_path: Path) -> None:
    """Escape sequences (clear the screen, set the clipboard, a title), a carriage return hiding what came
    before, a bidirectional override: shown written out, never sent as they are."""
    script = tmp_path / "hostile.sh"
    script.write_text(
        "printf 'safe\\033[2J\\033]52;c;ZXZpbA==\\007 \\033]0;title\\007 ' >&2\n"
        "printf 'hidden\\rshown \\342\\200\\256txt\\n' >&2\n"
        "exit 3\n"
    )
    result = run_cli(
        "hostile", str(_inputs(tmp_path, "in", 1)), "--command", f"sh {script} {{input}}",
        "--outputs", "{input_name}.out", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 1
    for path in (result.summary, result.log):
        text = path.read_text()
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\r" not in text
        assert "\u202e" not in text
        assert "\\x1b[2J" in text.replace("\\\\", "\\")
    assert "| safe\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07" in result.summary.read_text()
    assert "hidden\\rshown \\u202etxt" in result.summary.read_text()


def test_an_error_line_naming_a_hostile_path_is_escaped(
    batchpilot: Callable[..., Any], tmp_path: Path
) -> None:
    """Every line the CLI says goes through the same escaping: here a path from the command line."""
    result = batchpilot("run", str(tmp_path / "in\x1b]0;owned\x07\x1b[2J"), "--command", "true", "--out", "o")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "\x1b" not in line
    assert "in\\x1b]0;owned\\x07\\x1b[2J" in line
