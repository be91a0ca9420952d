"""Users' reports of issue 15, items 1, 2, 3 and 7, as a user meets them: the CLI as a subprocess, on both
backends (local, and the Batch emulator with Azurite), the same command giving the same result.

1. A task's identity covers everything that decides its result (aztk#270): a changed command is a new task.
2. Running the same command again retries the tasks that failed (Batch's Reactivate Task, or the job's next
   generation once a one-shot job has ended); `--no-retry-failed` turns it off.
3. No two inputs or outputs land on the same name (BatchExplorer#2956): inputs keep their folder.
7. `--nodes 0 --spot-nodes 2` is a pool; warnings reach the summary.
"""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.backends.azure import AzureBackend
from batchpilot.config import AzureSettings, BatchSettings, StorageSettings
from batchpilot.emulator import RunningEmulator
from batchpilot.emulator.faults import FaultConfig
from batchpilot.spec import JobLifetime
from tests.conftest import EmulatorFactory
from tests.e2e.support import azure_env, cli_command, cli_env, emulator_stats, events
from tests.emulator.support import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

Cli = Callable[..., subprocess.CompletedProcess[str]]

UPPER = 'sh -c \'tr a-z A-Z < "$0" > "$0.out"\' {input}'
REVERSE = 'sh -c \'rev < "$0" > "$0.out"\' {input}'


@pytest.fixture(params=["local", "azure"])
def cli(request: pytest.FixtureRequest, home: Path, tmp_path: Path) -> Iterator[Cli]:
    """`batchpilot COMMAND --backend B ...` in `tmp_path`, on the local backend or the emulator + Azurite."""
    if request.param == "local":
        yield _runner(cli_env(home), "local", tmp_path)
        return
    start_emulator: EmulatorFactory = request.getfixturevalue("start_emulator")
    azurite: Azurite = request.getfixturevalue("azurite")
    with start_emulator() as emulator:
        yield _runner(azure_env(home, emulator, azurite), "azure", tmp_path)


def _runner(env: dict[str, str], backend: str, cwd: Path) -> Cli:
    def run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli_command(), command, "--backend", backend, *args], env=env, capture_output=True, text=True,
            timeout=180, stdin=subprocess.DEVNULL, cwd=cwd,
        )  # fmt: skip

    return run


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def _finished(result: subprocess.CompletedProcess[str]) -> dict:
    [finished] = [line for line in events(result) if line["event"] == "run_finished"]
    return finished


# --- 1. identity ------------------------------------------------------------------------------------------


def test_the_repro_a_changed_command_is_a_new_task(cli: Cli, tmp_path: Path) -> None:
    """The repro: the second command reversed nothing and printed HELLO, "0 added, 1 already in the job"."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    first = cli("run", "in", "--command", UPPER, "--outputs", "{input_name}.out", "--out", "out1")
    assert first.returncode == 0, _summary(first)
    assert (tmp_path / "out1" / "a.txt.out").read_text() == "HELLO\n"
    second = cli("run", "in", "--command", REVERSE, "--outputs", "{input_name}.out", "--out", "out2")
    assert second.returncode == 0, _summary(second)
    assert (tmp_path / "out2" / "a.txt.out").read_text() == "olleh\n"
    assert "tasks:   1 added (1 because its definition changed), 0 already in the job" in second.stderr
    assert (_finished(second)["tasks_added"], _finished(second)["tasks_changed"]) == (1, 1)
    # Both definitions are kept: the first command again finds its task done and runs nothing.
    third = cli("run", "in", "--command", UPPER, "--outputs", "{input_name}.out", "--out", "out3")
    assert third.returncode == 0, _summary(third)
    assert "tasks:   0 added, 1 already in the job and skipped" in third.stderr
    assert (tmp_path / "out3" / "a.txt.out").read_text() == "HELLO\n"


@pytest.mark.parametrize(
    "change",
    [
        ("--outputs", "{stem}.out"),  # another output pattern: the same command writes it too
        ("--name", "same"),  # not a change of definition: another job (the control)
    ],
)
def test_what_decides_a_task_decides_its_id(cli: Cli, tmp_path: Path, change: tuple[str, str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    command = 'sh -c \'rev < "$0" > "$0.out"; cp "$0.out" a.out\' {input}'
    first = cli("run", "in", "--command", command, "--outputs", "{input_name}.out", "--out", "o1")
    assert first.returncode == 0, _summary(first)
    flag, value = change
    args = ["--outputs", "{input_name}.out", "--out", "o2"]
    args = [flag, value, "--out", "o2"] if flag == "--outputs" else [*args, flag, value]
    second = cli("run", "in", "--command", command, *args)
    assert second.returncode == 0, _summary(second)
    finished = _finished(second)
    if flag == "--outputs":
        assert (finished["tasks_added"], finished["tasks_changed"]) == (1, 1)
        assert (tmp_path / "o2" / "a.out").read_text() == "olleh\n"
    else:
        assert (finished["tasks_added"], finished["tasks_changed"]) == (1, 0)


def test_a_changed_environment_or_input_is_a_new_task(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    workload = tmp_path / "w.toml"

    def write(greeting: str) -> None:
        workload.write_text(
            '[workload]\nname = "env"\ninputs = "in/*.txt"\n'
            'command = "sh -c \'echo $GREETING > \\"$0.out\\"\' {input}"\n'
            'outputs = ["{input_name}.out"]\n'
            f'[workload.environment]\nGREETING = "{greeting}"\n'
        )

    write("hi")
    first = cli("run", "--workload", "w.toml", "--out", "o1")
    assert first.returncode == 0, _summary(first)
    assert (tmp_path / "o1" / "a.txt.out").read_text() == "hi\n"
    write("bye")
    second = cli("run", "--workload", "w.toml", "--out", "o2")
    assert second.returncode == 0, _summary(second)
    assert (tmp_path / "o2" / "a.txt.out").read_text() == "bye\n"
    assert _finished(second)["tasks_changed"] == 1
    # A changed input is a new task too (its content is part of its id), but not a changed definition.
    (tmp_path / "in" / "a.txt").write_text("changed\n")
    third = cli("run", "--workload", "w.toml", "--out", "o3")
    assert third.returncode == 0, _summary(third)
    assert (_finished(third)["tasks_added"], _finished(third)["tasks_changed"]) == (1, 0)


# --- 2. retrying what failed ----------------------------------------------------------------------------


def _flaky(tmp_path: Path) -> tuple[str, Path]:
    """A command that fails until `flag` exists: a passing fault, like a node hiccup."""
    flag = tmp_path / "fixed"
    command = f'sh -c \'test -e {flag} || exit 3; rev < "$0" > "$0.out"\' {{input}}'
    return command, flag


def test_running_the_same_command_again_retries_the_failed_tasks(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    (tmp_path / "in" / "b.txt").write_text("world\n")
    command, flag = _flaky(tmp_path)
    (tmp_path / "in" / "b.txt").write_text("world\n")
    args = ["in", "--command", command, "--outputs", "{input_name}.out", "--out", "out"]
    first = cli("run", *args)
    assert first.returncode == 1, _summary(first)
    assert "run the same command again to retry the failed tasks" in first.stderr
    # Off: the failure is reported again, nothing runs.
    kept = cli("run", *args, "--no-retry-failed")
    assert kept.returncode == 1, _summary(kept)
    assert _finished(kept)["tasks_retried"] == 0
    assert "retried" not in kept.stderr.split("failed:")[0]
    flag.touch()
    again = cli("run", *args)
    assert again.returncode == 0, _summary(again)
    assert "0 added, 0 already in the job and skipped, 2 failed tasks retried" in again.stderr
    assert (tmp_path / "out" / "a.txt.out").read_text() == "olleh\n"
    assert (tmp_path / "out" / "b.txt.out").read_text() == "dlrow\n"
    # Nothing failed any more: a third run retries nothing and runs nothing.
    third = cli("run", *args)
    assert third.returncode == 0, _summary(third)
    assert "0 added, 2 already in the job and skipped" in third.stderr
    assert "retried" not in third.stderr


def test_only_the_failed_tasks_are_retried(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.txt").write_text("abc\n")
    (tmp_path / "in" / "bad.txt").write_text("xyz\n")
    flag = tmp_path / "fixed"
    # good.txt always works; bad.txt until the flag exists fails.
    command = f'sh -c \'case "$0" in bad*) test -e {flag} || exit 4;; esac; rev < "$0" > "$0.out"\' {{input}}'
    args = ["in", "--command", command, "--outputs", "{input_name}.out", "--out", "out"]
    first = cli("run", *args)
    assert first.returncode == 1, _summary(first)
    assert _finished(first)["succeeded"] == 1
    flag.touch()
    again = cli("run", *args)
    assert again.returncode == 0, _summary(again)
    assert "0 added, 1 already in the job and skipped, 1 failed task retried" in again.stderr
    assert (tmp_path / "out" / "bad.txt.out").read_text() == "zyx\n"


def test_retry_failed_is_a_workload_key(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    command, flag = _flaky(tmp_path)
    quoted = command.replace("\\", "\\\\").replace('"', '\\"')
    (tmp_path / "w.toml").write_text(
        f'[workload]\nname = "noretry"\ninputs = "in/*.txt"\ncommand = "{quoted}"\n'
        'outputs = ["{input_name}.out"]\nretry_failed = false\n'
    )
    first = cli("run", "--workload", "w.toml", "--out", "out")
    assert first.returncode == 1, _summary(first)
    flag.touch()
    again = cli("run", "--workload", "w.toml", "--out", "out")
    assert again.returncode == 1, _summary(again)
    assert _finished(again)["tasks_retried"] == 0


@pytest.mark.parametrize("backend", ["local", "azure"])
def test_blob_inputs_in_nested_folders_are_staged_where_the_outputs_are_looked_for(
    backend: str, request: pytest.FixtureRequest, home: Path, tmp_path: Path
) -> None:
    """README's gzip workload with its inputs already in a container (`prefix = "2024/"`): every task
    failed "no file matched output pattern 'a/x.txt.gz'": the blob was staged under its whole name, and
    `gzip -k {input}` wrote beside it, not where `{input_name}.gz` is looked for."""
    blobs = {"2024/x.txt": "top", "2024/a/x.txt": "one", "2024/b/c/x.txt": "two", "2023/x.txt": "old"}
    if backend == "local":
        env = cli_env(home)
        for name, text in blobs.items():
            path = home / "local" / "storage" / "raw-logs" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        cli = _runner(env, "local", tmp_path)
        result = _blob_gzip_run(cli, tmp_path)
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        start_emulator: EmulatorFactory = request.getfixturevalue("start_emulator")
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            container = service.get_container_client("raw-logs")
            if not container.exists():
                container.create_container()
            for name, text in blobs.items():
                container.upload_blob(name, text, overwrite=True)
        with start_emulator() as emulator:
            result = _blob_gzip_run(_runner(azure_env(home, emulator, azurite), "azure", tmp_path), tmp_path)
    assert result.returncode == 0, _summary(result)
    out = tmp_path / "out"
    found = {str(p.relative_to(out)): gzip.decompress(p.read_bytes()).decode() for p in out.rglob("*.gz")}
    assert found == {"x.txt.gz": "top", "a/x.txt.gz": "one", "b/c/x.txt.gz": "two"}


def _blob_gzip_run(cli: Cli, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "w.toml").write_text(
        '[workload]\nname = "blobs"\ninputs = { container = "raw-logs", prefix = "2024/" }\n'
        'command = "gzip -k {input}"\noutputs = ["{input_name}.gz"]\n'
    )
    return cli("run", "--workload", "w.toml", "--out", "out")


# --- 3. names that must not meet ------------------------------------------------------------------------

DUP = """[workload]
name = "dup"
inputs = "logs/**/*.log"
command = "gzip -k {input}"
outputs = ["{input_name}.gz"]
"""


def test_the_repro_inputs_keep_their_folders(cli: Cli, tmp_path: Path) -> None:
    """The repro: "done: 2 of 2" and out/ held one file ("two"): "one" was lost."""
    for folder, text in (("d1", "one"), ("d2", "two")):
        (tmp_path / "logs" / folder).mkdir(parents=True)
        (tmp_path / "logs" / folder / "app.log").write_text(f"{text}\n")
    (tmp_path / "w.toml").write_text(DUP)
    result = cli("run", "--workload", "w.toml", "--out", "out")
    assert result.returncode == 0, _summary(result)
    assert "done: 2 of 2 tasks succeeded" in result.stderr
    out = tmp_path / "out"
    assert sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()) == [
        "d1/app.log.gz",
        "d2/app.log.gz",
    ]
    assert gzip.decompress((out / "d1" / "app.log.gz").read_bytes()) == b"one\n"
    assert gzip.decompress((out / "d2" / "app.log.gz").read_bytes()) == b"two\n"
    uploaded = sorted(line["blob_name"] for line in events(result) if line["event"] == "input_uploaded")
    assert uploaded == ["d1/app.log", "d2/app.log"]
    # And it resumes: the same command again adds nothing.
    again = cli("run", "--workload", "w.toml", "--out", "out")
    assert again.returncode == 0, _summary(again)
    assert "0 added, 2 already in the job" in again.stderr


@pytest.mark.parametrize(
    ("files", "outputs", "named"),
    [
        # Two inputs of one folder, one output name for both.
        ({"logs/a.log": "1", "logs/b.log": "2"}, ['"result.gz"'], ("a.log", "b.log")),
        # Names that differ only in case meet on Batch (ids) and on the disks of Windows and macOS.
        ({"logs/App.log": "1", "logs/app.log": "2"}, ['"{input_name}.gz"'], ("App.log", "app.log")),
        # Two output patterns of one input render to the same name.
        ({"logs/a.log": "1"}, ['"{stem}.gz"', '"a.gz"'], ("a.log",)),
        # In subfolders too: two inputs of d1, one output name.
        ({"logs/d1/x.log": "1", "logs/d1/y.log": "2", "logs/d2/x.log": "3"}, ['"{stem}"'], ()),
    ],
)
def test_names_that_would_meet_are_refused_before_anything_is_uploaded(
    cli: Cli, tmp_path: Path, files: dict[str, str], outputs: list[str], named: tuple[str, ...]
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "w.toml").write_text(
        '[workload]\nname = "meet"\ninputs = "logs/**/*.log"\ncommand = "gzip -k {input}"\n'
        f"outputs = [{', '.join(outputs)}]\n"
    )
    if not named:  # the control: x.log of d1 and of d2 keep their folders, so no name meets
        result = cli("plan", "--workload", "w.toml")
        assert result.returncode == 0, _summary(result)
        return
    for command in ("plan", "run"):
        extra = ("--out", "out") if command == "run" else ()
        result = cli(command, "--workload", "w.toml", *extra)
        assert result.returncode == 2, _summary(result)
        [line] = [line for line in result.stderr.splitlines() if line.startswith("batchpilot:")]
        assert all(name in line for name in named), line
        assert "input_uploaded" not in result.stdout
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- 7. smaller ones ------------------------------------------------------------------------------------


def test_a_pool_of_spot_nodes_only(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    result = cli(
        "run", "in", "--command", REVERSE, "--outputs", "{input_name}.out", "--out", "out",
        "--nodes", "0", "--spot-nodes", "2",
    )  # fmt: skip
    assert result.returncode == 0, _summary(result)
    assert (tmp_path / "out" / "a.txt.out").read_text() == "olleh\n"
    # No node of either kind is still one line, exit 2.
    none = cli("run", "in", "--command", REVERSE, "--outputs", "{input_name}.out", "--nodes", "0")
    assert none.returncode == 2, _summary(none)
    assert "the pool needs at least one node" in none.stderr


async def test_a_job_that_has_not_ended_reactivates_its_failed_tasks_on_the_emulator(
    emulator: RunningEmulator, azurite: Azurite, tmp_path: Path
) -> None:
    """The emulator's Reactivate Task through the Azure adapter: a service's job never ends, so its failed
    task runs again under the same id, in the same job."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    command, flag = _flaky(tmp_path)
    workload = Workload(
        name=f"reactivate-{tmp_path.name[-12:]}",
        inputs=(tmp_path / "in" / "a.txt",),
        template=TaskTemplate(command, ("{input_name}.out",)),
        pool=PoolSpec("reactivate-pool"),
        download_to=tmp_path / "out",
        job_lifetime=JobLifetime.SERVICE,
        cleanup=CleanupPolicy(delete_input_container=False),
    )
    settings = AzureSettings(
        batch=BatchSettings(endpoint=emulator.endpoint, account=emulator.account, access_key=emulator.key),
        storage=StorageSettings(AZURITE_ACCOUNT, azurite.blob_endpoint, AZURITE_KEY),
    )
    async with Orchestrator(AzureBackend(settings, retry_total=0)) as orchestrator:
        first = await orchestrator.run(workload)
        flag.touch()
        again = await orchestrator.run(workload)
    assert (first.ok, len(first.failed)) == (False, 1)
    assert (again.ok, again.tasks_retried, again.tasks_added, again.job_id) == (True, 1, 0, workload.job_id)
    assert again.tasks_existing == 0  # the failed task was retried in place, not found done nor added
    assert (tmp_path / "out" / "a.txt.out").read_text() == "olleh\n"


def test_a_reused_pool_that_differs_is_a_warning_of_the_summary(cli: Cli, tmp_path: Path) -> None:
    """The warning was only in the log: the summary, the part a user reads, said nothing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello\n")
    args = ["in", "--command", REVERSE, "--outputs", "{input_name}.out", "--out", "out"]
    first = cli("run", *args, "--task-slots", "1")
    assert first.returncode == 0, _summary(first)
    assert "warning:" not in first.stderr
    (tmp_path / "in" / "b.txt").write_text("world\n")
    second = cli("run", *args, "--task-slots", "2")
    assert second.returncode == 0, _summary(second)
    [warning] = [line for line in second.stderr.splitlines() if line.startswith("  warning:")]
    assert "pool batchpilot-" in warning
    assert warning.count("pool batchpilot-") == 1  # the pool named once (it read "pool P: pool P had ...")
    assert _finished(second)["warnings"]


def test_a_collection_resent_after_its_answer_was_lost_counts_its_tasks_as_added(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """The first run said "0 added, 3 already in the job": the lost request had added them."""
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "in" / f"{name}.txt").write_text(f"{name}\n")
    with start_emulator(faults=FaultConfig(drop_after_apply=1.0, budget=1)) as emulator:
        result = _runner(azure_env(home, emulator, azurite), "azure", tmp_path)(
            "run", "in", "--command", REVERSE, "--outputs", "{input_name}.out", "--out", "out"
        )
        stats = emulator_stats(emulator)
    assert result.returncode == 0, _summary(result)
    assert stats["faults"].get("dropped_after_apply") == 1
    assert "tasks:   3 added, 0 already in the job and skipped" in result.stderr


def test_wildcard_outputs_of_two_tasks_that_meet_are_not_overwritten(cli: Cli, tmp_path: Path) -> None:
    """A wildcard's matches are known only once tasks ran: the second of two tasks that both wrote
    `result.out` does not overwrite the first in --out; the run says so and is not ok."""
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        (tmp_path / "in" / f"{name}.txt").write_text(f"{name}\n")
    command = "sh -c 'cp \"$0\" result.out' {input}"
    result = cli("run", "in", "--command", command, "--outputs", "*.out", "--out", "out")
    assert result.returncode == 1, _summary(result)
    assert (tmp_path / "out" / "result.out").read_text() in ("a\n", "b\n")
    [failed] = [line for line in events(result) if line["event"] == "output_download_failed"]
    assert "is an output of task" in failed["error"]
    assert "1 FAILED" in result.stderr
