"""A workload that is not ffmpeg, end to end through the CLI: a workload file, retries, wall clock, plan, and
the same file on the Azure path (emulator + Azurite)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from tests.conftest import EmulatorFactory
from tests.e2e.support import Run, azure_env, cli_command, cli_env
from tests.emulator.support import Azurite

PY = shlex.quote(sys.executable)
# Upper-cases its input into {output_dir}/{stem}.upper: a stand-in for "your own tool".
UPPER = f"{PY} -c 'import sys; open(sys.argv[2], \"w\").write(open(sys.argv[1]).read().upper())'"


def workload_file(folder: Path, command: str, extra: str = "", inputs: int = 3) -> Path:
    (folder / "texts").mkdir(parents=True)
    for n in range(inputs):
        (folder / "texts" / f"note-{n}.txt").write_text(f"hello {n}\n")
    path = folder / "upper.toml"
    path.write_text(
        f'[workload]\nname = "upper-{folder.name}"\ninputs = "texts/*.txt"\n'
        f'command = {json.dumps(command)}\noutputs = ["{{stem}}.upper"]\noutput_dir = "results"\n{extra}'
    )
    return path


def events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_workload_file_runs_with_one_command(batchpilot: Run, tmp_path: Path):
    path = workload_file(tmp_path, UPPER + " {input} {output_dir}/{stem}.upper")
    result = batchpilot("run", "--workload", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "done: 3 of 3 tasks succeeded" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"note-{n}.upper" for n in range(3)]
    assert (tmp_path / "out" / "note-1.upper").read_text() == "HELLO 1\n"


def test_a_one_off_command(batchpilot: Run, tmp_path: Path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("abc")
    command = f"{PY} -c 'import sys, shutil; shutil.copy(sys.argv[1], sys.argv[1] + \".copy\")' {{input}}"
    result = batchpilot(
        "run",
        str(tmp_path / "in"),
        "--command",
        command,
        "--outputs",
        "*.copy",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a.txt.copy").read_text() == "abc"


def test_a_flaky_task_is_retried_and_requeued(batchpilot: Run, tmp_path: Path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # Fails the first attempt of each input (leaving a mark outside the task dir), succeeds on the retry.
    script = (
        "import pathlib, sys; mark = pathlib.Path(sys.argv[3]) / sys.argv[1]\n"
        "if not mark.exists(): mark.touch(); sys.exit(3)\n"
        "open(sys.argv[2], 'w').write('ok')"
    )
    command = f"{PY} -c {shlex.quote(script)} {{input}} {{output_dir}}/{{stem}}.upper {marks}"
    path = workload_file(tmp_path, command, "[workload.constraints]\nmax_retries = 1\n", inputs=2)
    result = batchpilot("run", "--workload", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    requeued = [line for line in events(result) if line["event"] == "task_requeued"]
    assert len(requeued) == 2
    assert {line["retry_count"] for line in requeued} == {1}
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_a_task_over_its_wall_clock_limit_fails_with_that_reason(batchpilot: Run, tmp_path: Path):
    command = f"{PY} -c 'import time; time.sleep(60)'"
    path = workload_file(tmp_path, command, "[workload.constraints]\nmax_wall_clock = 1\n", inputs=1)
    result = batchpilot("run", "--workload", str(path), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    assert "MaxWallClockTimeExpiry" in result.stderr
    [failed] = [line for line in events(result) if line["event"] == "task_failed"]
    assert "maximum wall clock time" in json.dumps(failed)


def test_plan_prints_what_would_run_and_creates_nothing(batchpilot: Run, tmp_path: Path, home: Path):
    path = workload_file(tmp_path, UPPER + " {input} {output_dir}/{stem}.upper", inputs=5)
    result = batchpilot("plan", "--workload", str(path), "--nodes", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"plan for workload 'upper-{tmp_path.name}' on the local backend" in text
    assert "2 dedicated + 0 spot nodes" in text
    assert "upload:  5 inputs" in text
    assert "tasks:   5, one per input" in text
    assert "... and 2 more" in text
    commands = [line for line in text.splitlines() if line.startswith("    note-")]
    assert len(commands) == 3
    assert "mkdir -p" in commands[0]
    assert "note-0.txt results/note-0.upper" in commands[0]
    assert not home.exists()  # no pool, job or container anywhere


def test_a_container_workload_without_docker_or_podman_is_refused(batchpilot: Run, tmp_path: Path):
    path = workload_file(tmp_path, "cat {input}", '[workload.container]\nimage = "alpine:3"\n')
    env = cli_env(tmp_path / "home", PATH="/nonexistent")  # no docker, no podman
    result = batchpilot("run", "--workload", str(path), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "neither docker nor podman is on PATH" in line


def test_the_same_workload_file_on_the_azure_path(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    path = workload_file(tmp_path, UPPER + " {input} {output_dir}/{stem}.upper")
    with start_emulator() as emulator:
        result = subprocess.run(
            [*cli_command(), "run", "--backend", "azure", "--workload", str(path),
             "--out", str(tmp_path / "out")],
            env=azure_env(home, emulator, azurite), capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "note-2.upper").read_text() == "HELLO 2\n"


BLOB_INPUTS = 'inputs = "texts/*.txt"'


def blob_workload(folder: Path) -> Path:
    """The upper-casing workload reading blobs already in the container "raw-notes" under "2024/"."""
    path = workload_file(folder, UPPER + " {input} {output_dir}/{stem}.upper", inputs=0)
    path.write_text(
        path.read_text().replace(BLOB_INPUTS, 'inputs = { container = "raw-notes", prefix = "2024/" }')
    )
    return path


def test_inputs_already_in_a_local_container(batchpilot: Run, tmp_path: Path, home: Path):
    # On the local backend a container is a folder of the backend's storage.
    container = home / "local" / "storage" / "raw-notes"
    (container / "2024").mkdir(parents=True)
    (container / "2023").mkdir()
    for n in range(3):
        (container / "2024" / f"note-{n}.txt").write_text(f"blob {n}\n")
    (container / "2023" / "old.txt").write_text("not under the prefix\n")
    out = tmp_path / "out"
    result = batchpilot("run", "--workload", str(blob_workload(tmp_path)), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["note-0.upper", "note-1.upper", "note-2.upper"]
    assert (out / "note-1.upper").read_text() == "BLOB 1\n"
    assert "0 uploaded, 3 unchanged and skipped" in result.stderr
    assert (container / "2024" / "note-0.txt").exists()  # the user's container outlives a successful run
    deleted = [line for line in events(result) if line["event"] == "resource_deleted"]
    assert deleted == []


def test_a_missing_input_container_is_one_clear_line(batchpilot: Run, tmp_path: Path):
    result = batchpilot("run", "--workload", str(blob_workload(tmp_path)), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "batchpilot: error: container 'raw-notes' under '2024/' does not exist;"
        " check workload.inputs.container"
    )


def test_inputs_already_in_an_azure_container(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("raw-notes")
        if not container.exists():
            container.create_container()
        for n in range(3):
            container.upload_blob(f"2024/note-{n}.txt", f"azure blob {n}\n", overwrite=True)
        container.upload_blob("2023/old.txt", "not under the prefix\n", overwrite=True)
    out = tmp_path / "out"
    with start_emulator() as emulator:
        result = subprocess.run(
            [*cli_command(), "run", "--backend", "azure",
             "--workload", str(blob_workload(tmp_path)), "--out", str(out)],
            env=azure_env(home, emulator, azurite), capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["note-0.upper", "note-1.upper", "note-2.upper"]
    assert (out / "note-2.upper").read_text() == "AZURE BLOB 2\n"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        assert service.get_container_client("raw-notes").exists()
