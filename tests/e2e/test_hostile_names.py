"""A name from outside never becomes code (issue 16, item 1), through the real CLI on the local backend."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import anyio
from azure.storage.blob import BlobServiceClient

from tests.conftest import EmulatorFactory
from tests.e2e.support import Run, azure_env, cli_command
from tests.emulator.support import Azurite, batch_client

REPRO = "a'$(id>PWNED)'b.log"
# Each tries to run something (creating a PWNED* file in the task's working dir), or to be taken for an
# option, or to confuse a reader of the command line.
HOSTILE = [
    REPRO,
    'q"$(touch PWNED2)"q.log',
    "b`touch PWNED3`b.log",
    "c;touch PWNED4;c.log",
    "d\ntouch PWNED5\n.log",
    "e|touch PWNED6.log",
    "--version",
    "-x",
    "ünï cödé.log",
    "f $(touch PWNED7) f.log",
]


def _pwned(root: Path) -> list[Path]:
    return [path for path in root.rglob("PWNED*")]


def test_the_repro_runs_no_code_and_keeps_the_name_for_the_output(
    batchpilot: Run, tmp_path: Path, home: Path
) -> None:
    """The repro: the file name ran `id` through `/bin/sh -c "gzip -c {input} > {input_name}.gz"`."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / REPRO).write_text("x\n")
    result = batchpilot(
        "run", str(folder), "--command", '/bin/sh -c "gzip -c {input} > {input_name}.gz"',
        "--outputs", "{input_name}.gz", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _pwned(tmp_path) == []
    assert gzip.decompress((tmp_path / "out" / f"{REPRO}.gz").read_bytes()) == b"x\n"


def test_hostile_names_run_no_code_read_as_no_option_and_come_back_under_their_names(
    batchpilot: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(HOSTILE):
        (folder / name).write_text(f"{index}\n")
    templates = [
        ('/bin/sh -c "gzip -c {input} > {input_name}.gz"', "{input_name}.gz"),
        ("/bin/sh -c 'cat {input} > {stem}.out'", "{stem}.out"),
        ('/bin/bash -c "eval cat {input} > {input_name}.cat"', "{input_name}.cat"),
        ("/bin/cp {input} {input_name}.cp", "{input_name}.cp"),  # `cp --version` would print its version
    ]
    for number, (command, output) in enumerate(templates):
        out = tmp_path / f"out{number}"
        result = batchpilot(
            "run", str(folder), "--command", command, "--outputs", output, "--out", str(out),
            "--name", f"hostile{number}",
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr)
        for index, name in enumerate(HOSTILE):
            fetched = out / output.format(input_name=name, stem=os.path.splitext(name)[0])
            data = fetched.read_bytes()
            assert (gzip.decompress(data) if fetched.suffix == ".gz" else data) == f"{index}\n".encode()
    assert _pwned(tmp_path) == []


def test_through_the_emulator_and_azurite_no_name_from_outside_reaches_the_command_line(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """On the wire, as Batch receives it: each task's command line and resource file path hold safe names
    only; the original names come back as the outputs' names."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = [REPRO, "--version", "b`touch PWNED3`b.log", "ünï cödé.log"]
    for index, name in enumerate(names):
        (folder / name).write_text(f"{index}\n")
    out = tmp_path / "out"
    command = '/bin/sh -c "gzip -c {input} > {input_name}.gz"'
    with start_emulator(allocation_delay_s=0) as emulator:
        result = subprocess.run(
            cli_command(
                "run", str(folder), "--backend", "azure", "--command", command,
                "--outputs", "{input_name}.gz", "--out", str(out), "--name", "hostile-names", "--nodes", "2",
            ),
            env=azure_env(home, emulator, azurite), capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        job_id = next(
            json.loads(line)["job_id"] for line in result.stdout.splitlines() if '"run_started"' in line
        )

        async def listed() -> list:
            async with batch_client(emulator) as client:
                return [task async for task in client.list_tasks(job_id)]

        tasks = anyio.run(listed)
    try:
        assert len(tasks) == len(names)
        for task in tasks:
            for name in names:
                assert name not in task.command_line
            for fragment in ("$(", "`", "'", "--version", "ü"):
                assert fragment not in task.command_line
            (resource,) = task.resource_files
            assert not resource.file_path.startswith(("-", "."))
        for index, name in enumerate(names):
            assert gzip.decompress((out / f"{name}.gz").read_bytes()) == f"{index}\n".encode()
        assert _pwned(tmp_path) == []
    finally:
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            for container in service.list_containers(name_starts_with="batchpilot-hostile-names"):
                service.delete_container(container.name)


def test_a_wildcard_output_made_from_a_placeholder_is_found_for_a_name_that_is_not_plain(
    batchpilot: Run, tmp_path: Path
) -> None:
    """The files a wildcard matches keep the names the command gave them (from the safe name), and the run
    looks for them there: the task is not failed for outputs it did write."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a b.txt", "c;d.txt", "plain.txt"):
        (folder / name).write_text(name)
    result = batchpilot(
        "run", str(folder), "--command", "/bin/sh -c 'cp {input} {stem}_1.out'", "--outputs", "{stem}_*.out",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fetched = sorted((tmp_path / "out").glob("*_1.out"))
    assert sorted(path.read_text() for path in fetched) == ["a b.txt", "c;d.txt", "plain.txt"]
    assert tmp_path / "out" / "plain_1.out" in fetched
