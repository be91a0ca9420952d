"""Nothing reaches outside its root, and tasks get no secret and leave nothing readable by others (issue 16,
items 2 and 7), through the real CLI on the local backend."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.support import Run, cli_command, cli_env


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_an_output_pattern_leaving_the_task_is_one_line_and_nothing_escapes(
    batchpilot: Run, tmp_path: Path
) -> None:
    """The repro: outputs = ["ok.txt", "../../../../../../../ESCAPE-MARK.txt"] with a command writing it was
    hard-linked outside the storage folder and --out, and the run said done."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    (tmp_path / "w.toml").write_text(
        "[workload]\n"
        f'inputs = "{tmp_path / "in"}/*"\n'
        "command = \"/bin/sh -c 'echo x > ok.txt; echo x > ../../../../../../../ESCAPE-MARK.txt'\"\n"
        'outputs = ["ok.txt", "../../../../../../../ESCAPE-MARK.txt"]\n'
    )
    for args in (
        ("--workload", str(tmp_path / "w.toml")),
        (
            "--command",
            "/bin/sh -c 'echo x > ok.txt'",
            "--outputs",
            "ok.txt",
            "--outputs",
            "../../ESCAPE-MARK.txt",
        ),
        ("--command", "true", "--outputs", "/tmp/ESCAPE-MARK.txt"),
    ):
        result = batchpilot("run", str(tmp_path / "in"), *args, "--out", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr
        assert "output pattern" in _one_line(result)
    assert not list(tmp_path.rglob("ESCAPE-MARK.txt"))


@pytest.mark.parametrize(
    "flags",
    [
        ("--container", "VICTIM"),
        ("--container", "../victim"),
        ("--job", "../../../victim"),
        ("--job", "VICTIM"),
        ("--pool", "../../victim"),
        ("--job", "job\n"),
        ("--container", ".."),
    ],
)
def test_cleanup_takes_names_never_paths(batchpilot: Run, tmp_path: Path, flags: tuple[str, str]) -> None:
    """The repro: `batchpilot cleanup --container /some/abs/path` (and `--job ../..`) deleted that folder."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    option, value = flags
    value = value.replace("VICTIM", str(victim))
    state = tmp_path / "state"
    result = batchpilot("cleanup", "--backend", "local", "--state-dir", str(state), option, value)
    assert result.returncode == 2, result.stderr
    assert "valid" in _one_line(result)
    assert (victim / "keep.txt").read_text() == "mine"


def test_tasks_get_no_secret_of_ours_and_the_state_is_private(tmp_path: Path, home: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    env = cli_env(
        home,
        AZURE_BATCH_ACCESS_KEY="batch-key-canary",
        AZURE_STORAGE_CONNECTION_STRING="AccountKey=storage-canary",
        AZURE_STORAGE_KEY="storage-key-canary",
        AWS_SECRET_ACCESS_KEY="aws-canary",
        LANG="C.UTF-8",
    )
    result = subprocess.run(
        cli_command(
            "run", str(tmp_path / "in"), "--command", "/bin/sh -c 'env > env.txt'", "--outputs", "env.txt",
            "--out", str(tmp_path / "out"),
        ),
        env=env, capture_output=True, text=True, timeout=120, umask=0o022,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = dict(
        line.split("=", 1) for line in (tmp_path / "out" / "env.txt").read_text().splitlines() if "=" in line
    )
    assert not [name for name in seen if name.startswith(("AZURE_", "AWS_", "BATCHPILOT_"))]
    assert "canary" not in (tmp_path / "out" / "env.txt").read_text()
    assert seen["PATH"]
    assert seen["LANG"] == "C.UTF-8"
    assert seen["AZ_BATCH_TASK_ID"]
    assert seen["AZ_BATCH_TASK_WORKING_DIR"].endswith("/wd")
    # The state (a copy of every input and output) is the user's alone, whatever the umask.
    root = home / "local"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert not os.access(root, os.R_OK) or os.getuid() == root.stat().st_uid


def test_a_workload_environment_reaches_the_task_but_not_the_orchestrators(
    tmp_path: Path, home: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    (tmp_path / "w.toml").write_text(
        "[workload]\n"
        f'inputs = "{tmp_path / "in"}/*"\n'
        "command = \"/bin/sh -c 'env > env.txt'\"\n"
        'outputs = ["env.txt"]\n'
        "[workload.environment]\n"
        'MY_SETTING = "visible"\n'
    )
    env = cli_env(home, AZURE_BATCH_ACCESS_KEY="batch-key-canary", SOME_ORCHESTRATOR_VAR="hidden")
    result = subprocess.run(
        cli_command("run", "--workload", str(tmp_path / "w.toml"), "--out", str(tmp_path / "out")),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "env.txt").read_text()
    assert "MY_SETTING=visible" in text
    assert "SOME_ORCHESTRATOR_VAR" not in text
    assert "canary" not in text


@pytest.mark.parametrize("where", ["state", "state/storage", "state/batch/jobs"])
def test_out_inside_the_local_state_is_one_line(batchpilot: Run, tmp_path: Path, where: str) -> None:
    """--out inside the local state folder wrote outputs among the stored inputs, outputs and task dirs,
    where an output could replace a stored blob or a task's file."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    state = tmp_path / "state"
    result = batchpilot(
        "run", str(tmp_path / "in"), "--command", "/bin/cp {input} {stem}.o", "--outputs", "{stem}.o",
        "--state-dir", str(state), "--out", str(tmp_path / where),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "state folder" in _one_line(result)
    assert not list(state.rglob("a.o"))


def test_serve_with_its_outputs_in_its_watched_folder_is_one_line(batchpilot: Run, tmp_path: Path) -> None:
    """serve --out DIR --watch DIR took each output as a new input, and its output too: a.txt.o.o.o... grew
    without end."""
    watch = tmp_path / "w"
    watch.mkdir()
    (watch / "a.txt").write_text("a")
    for out in (watch, tmp_path):  # the folder itself, or one its wildcard outputs' folders can reach
        result = batchpilot(
            "serve", "--watch", str(watch), "--out", str(out), "--command", "/bin/cp {input} {input_name}.o",
            "--outputs", "{input_name}.o", timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "--watch" in _one_line(result)
    assert sorted(path.name for path in watch.iterdir()) == ["a.txt"]


def test_inputs_inside_the_local_state_are_one_line(batchpilot: Run, tmp_path: Path) -> None:
    """--state-dir inside the inputs' tree, with inputs 'in/**/*.txt': each run took the state's own files
    (task dirs' stdout.txt, stored copies) as new inputs, 1 then 4 tasks, growing run after run."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    args = [
        "run", f"{folder}/**/*.txt", "--command", "/bin/cp {input} {stem}.o", "--outputs", "{stem}.o",
        "--state-dir", str(folder / "state"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    first = batchpilot(*args)
    assert first.returncode == 0, first.stderr
    second = batchpilot(*args)
    assert second.returncode == 2, second.stderr
    assert "inside the local state folder" in _one_line(second)


def test_serve_watching_a_folder_inside_the_local_state_is_one_line(batchpilot: Run, tmp_path: Path) -> None:
    """serve --watch inside the state folder took the state's own files (stored copies) as inputs."""
    state = tmp_path / "state"
    (state / "storage" / "c").mkdir(parents=True)
    result = batchpilot(
        "serve", "--watch", str(state / "storage" / "c"), "--out", str(tmp_path / "out"), "--command", "true",
        "--outputs", "x", "--state-dir", str(state), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "inside the local state folder" in _one_line(result)
