"""What users reach for after a failure (issue 15 item 8): `batchpilot status` and `batchpilot logs`, as new
processes after the run's own has ended, reading from the service alone. On both backends: local, and the
Batch emulator with Azurite."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from batchpilot.emulator import RunningEmulator
from tests.conftest import EmulatorFactory
from tests.e2e.support import azure_env, cli_command, cli_env, events, kill_when_logged, wait_for
from tests.emulator.support import Azurite, batch_client

Cli = Callable[..., subprocess.CompletedProcess[str]]
# Fails for inputs whose name starts with "bad": 30 lines on stdout, an escape sequence and 3 lines on stderr.
COMMAND = (
    'sh -c \'seq 1 30; case "$0" in *bad*) printf "one\\ntwo \\033[2J\\nlast line\\n" >&2; exit 3;; esac;'
    ' cp "$0" "$0.out"\' {input}'
)


class Backend:
    def __init__(self, name: str, env: dict[str, str], emulator: RunningEmulator | None, home: Path) -> None:
        self.name, self.env, self.emulator, self.home = name, env, emulator, home

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(*args), env=self.env, capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def forget_node_files(self, job_id: str, task_id: str) -> None:
        """The task's node files are gone (its node was removed): only the _logs/ copy is left."""
        if self.emulator is None:
            (self.home / "local" / "batch" / "jobs" / job_id / "tasks" / task_id / "stderr.txt").unlink()
            return
        emulator = self.emulator

        async def delete() -> None:
            async with batch_client(emulator) as client:
                await client.delete_task(job_id, task_id)

        anyio.run(delete)


@pytest.fixture(params=["local", "azure"])
def backend(request: pytest.FixtureRequest, home: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield Backend("local", cli_env(home), None, home)
        return
    start_emulator: EmulatorFactory = request.getfixturevalue("start_emulator")
    azurite: Azurite = request.getfixturevalue("azurite")
    with start_emulator() as emulator:
        yield Backend("azure", azure_env(home, emulator, azurite), emulator, home)


def _failed_run(backend: Backend, tmp_path: Path) -> tuple[list[str], str, str]:
    """A run of two inputs, one failing; returns the `run` arguments, the job id and the failed task's id."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.txt").write_text("good\n")
    (inputs / "bad.txt").write_text("bad\n")
    args = [str(inputs), "--command", COMMAND, "--outputs", "{input_name}.out", "--backend", backend.name]
    result = backend.cli("run", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    [failed] = [line for line in events(result) if line["event"] == "task_failed"]
    return args, failed["job_id"], failed["task_id"]


def test_status_reads_the_job_after_the_run_has_ended(backend: Backend, tmp_path: Path) -> None:
    run_args, job_id, task_id = _failed_run(backend, tmp_path)

    # Without --job: the job `run` with the same arguments uses.
    derived = backend.cli("status", *run_args)
    named = backend.cli("status", "--job", job_id, "--backend", backend.name)
    assert derived.returncode == named.returncode == 0, derived.stderr + named.stderr
    assert derived.stdout == named.stdout
    lines = named.stdout.splitlines()
    assert lines[0] == f"job {job_id} ({backend.name}): 2 tasks: 0 active, 0 running, 1 succeeded, 1 failed"
    assert lines[1].startswith(f"  failed:  {task_id} (exit code 3): FailureExitCode: ")
    assert lines[2:5] == ["           | one", "           | two \\x1b[2J", "           | last line"]
    assert "\x1b" not in named.stdout

    document = json.loads(backend.cli("status", "--job", job_id, "--backend", backend.name,
                                      "--log-format", "json").stdout)  # fmt: skip
    assert (document["tasks"], document["succeeded"], document["failed"]) == (2, 1, 1)
    [failed] = document["failed_tasks"]
    assert failed == {
        "task_id": task_id, "job_id": job_id, "exit_code": 3, "failure_code": "FailureExitCode",
        "failure_message": failed["failure_message"], "stderr_tail": "one\ntwo \\x1b[2J\nlast line",
    }  # fmt: skip
    assert document["failed_not_shown"] == 0


def test_logs_reads_a_byte_range_from_the_node_then_from_the_logs_copy(
    backend: Backend, tmp_path: Path
) -> None:
    _, job_id, task_id = _failed_run(backend, tmp_path)
    where = ("--backend", backend.name)

    stderr = backend.cli("logs", job_id, task_id, *where)
    assert stderr.returncode == 0, stderr.stderr
    assert stderr.stdout == "one\ntwo \\x1b[2J\nlast line\n"

    stdout = backend.cli("logs", job_id, task_id, "--stdout", "--tail", "6", *where)
    header = f"[... the last 6 bytes of stdout.txt of task {task_id}, from the node]"
    assert stdout.stdout.splitlines() == [header, "29", "30"]

    backend.forget_node_files(job_id, task_id)
    copy = backend.cli("logs", job_id, task_id, "--tail", "10", "--log-format", "json", *where)
    assert copy.returncode == 0, copy.stderr

    assert json.loads(copy.stdout) == {
        "job_id": job_id, "task_id": task_id, "file": "stderr.txt", "source": "output container",
        "truncated": True, "text": "last line\n",
    }  # fmt: skip


def test_an_unknown_job_or_task_is_one_line(backend: Backend, tmp_path: Path) -> None:
    _, job_id, _ = _failed_run(backend, tmp_path)
    where = ("--backend", backend.name)
    cases = [
        (("status", "--job", "no-such-job"), "job no-such-job: no such job"),
        (("logs", "no-such-job", "t1"), "job no-such-job: no such job"),
        (("logs", job_id, "no-such-task"), f"job {job_id} has no task no-such-task"),
        (("logs", "../etc", "t1"), "job id '../etc' is not a valid Batch id"),
        (("logs", job_id, "t1", "--tail", "0"), "must be 1 to 1,000,000 bytes"),
        (("status",), "give --job JOB, or the arguments `run` was given"),
    ]
    for args, message in cases:
        result = backend.cli(*args, *where)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.splitlines()
        assert message in line
        assert "Traceback" not in result.stderr


def test_the_commands_printed_after_a_failure_work_as_printed_with_a_state_dir(
    home: Path, tmp_path: Path
) -> None:
    """A local run given --state-dir: the follow-up commands the summary, `status` and `logs` print carry
    it, so that each, run as printed, finds the job (they named only --backend: 'no such job')."""
    backend = Backend("local", cli_env(home), None, home)
    state = tmp_path / "state dir"  # a space: the printed flag is quoted for a shell
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bad.txt").write_text("bad\n")
    where = ["--backend", "local", "--state-dir", str(state)]
    run = backend.cli("run", str(inputs), "--command", COMMAND, "--outputs", "{input_name}.out",
                      "--out", str(tmp_path / "out"), "--log-format", "json", *where)  # fmt: skip
    assert run.returncode == 1, run.stderr
    [job_id] = {line["job_id"] for line in events(run) if line["event"] == "task_failed"}

    def printed(text: str, start: str) -> list[str]:
        [line] = [line for line in text.splitlines() if start in line]
        return shlex.split(re.split("[`)]", line[line.index(start) :])[0])[1:]  # the first word: batchpilot

    status = backend.cli("status", "--job", job_id, *where)
    assert status.returncode == 0, status.stderr
    logs = backend.cli(*printed(status.stdout, "batchpilot logs"))
    assert (logs.returncode, logs.stdout) == (0, "one\ntwo \\x1b[2J\nlast line\n"), logs.stderr
    unknown = backend.cli("logs", job_id, "no-such-task", *where)
    again = backend.cli(*printed(unknown.stderr, "batchpilot status"))
    assert again.stdout == status.stdout, again.stderr
    [kept] = [line for line in (run.stderr + run.stdout).splitlines() if "the job is kept" in line]
    cleanup = backend.cli(*printed(kept, "batchpilot cleanup"))
    assert cleanup.returncode == 0, cleanup.stderr
    gone = backend.cli("status", "--job", job_id, *where)
    assert gone.returncode == 2
    assert "no such job" in gone.stderr


def test_logs_of_a_task_whose_node_is_gone_reads_no_stale_node_file(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """The orchestrator is killed while a task runs, then the pool is deleted: the task is requeued (active,
    no node). `status` says so, and `logs` reads no file from the node that is gone (the emulator served the
    removed node's stderr as 'from the node'): one line, exit 2."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "slow.txt").write_text("x\n")
    with start_emulator() as emulator:
        backend = Backend("azure", azure_env(home, emulator, azurite), emulator, home)
        log = tmp_path / "run.log"
        command = "sh -c 'echo old >&2; sleep 60' {input}"
        args = cli_command("run", str(inputs), "--command", command, "--backend", "azure",
                           "--out", str(tmp_path / "out"), "--log-format", "json")  # fmt: skip
        kill_when_logged(args, backend.env, log, '"state": "running"')
        [running] = [
            json.loads(line) for line in log.read_text().splitlines() if '"state": "running"' in line
        ]
        job_id, task_id = running["job_id"], running["task_id"]
        wait_for(lambda: backend.cli("logs", job_id, task_id, "--backend", "azure").stdout == "old\n",
                 "the task to write its stderr")  # fmt: skip
        deleted = backend.cli("cleanup", "--backend", "azure", "--pool", "batchpilot-azure-pool")  # the run's
        assert deleted.returncode == 0, deleted.stderr
        status = ("status", "--job", job_id, "--backend", "azure")
        wait_for(lambda: "1 active, 0 running" in backend.cli(*status).stdout, "the task to be requeued")
        logs = backend.cli("logs", job_id, task_id, "--backend", "azure")
        assert logs.returncode == 2, logs.stdout
        [line] = logs.stderr.splitlines()
        assert f"task {task_id} of job {job_id} has no stderr.txt to show" in line


def test_status_reads_the_later_generations_a_re_run_went_on_in(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """A one-shot run's job ends with its last task; the re-run that retries its failed task goes on in
    `<job>-g2`. `status` (by --job or by the run's arguments) read the first generation only and reported
    the failure the re-run had fixed; it reads each task where the latest generation has it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a\n")
    flag = tmp_path / "flag"
    run_args = [str(inputs), "--command", f"sh -c 'test -e {flag}' {{input}}", "--backend", "azure"]
    with start_emulator() as emulator:
        backend = Backend("azure", azure_env(home, emulator, azurite), emulator, home)
        first = backend.cli("run", *run_args, "--out", str(tmp_path / "out"), "--log-format", "json")
        assert first.returncode == 1, first.stderr
        [job_id] = {line["job_id"] for line in events(first) if line["event"] == "task_failed"}
        flag.touch()
        again = backend.cli("run", *run_args, "--out", str(tmp_path / "out"))
        assert again.returncode == 0, again.stderr
        assert f"(job {job_id}-g2)" in again.stderr
        named = backend.cli("status", "--job", job_id, "--backend", "azure")
        derived = backend.cli("status", *run_args)
        document = json.loads(backend.cli("status", *run_args, "--log-format", "json").stdout)
    assert named.stdout == derived.stdout, derived.stderr
    assert named.stdout.splitlines() == [
        f"job {job_id} and its later generations to {job_id}-g2 (azure): 1 tasks: 0 active, 0 running,"
        " 1 succeeded, 0 failed"
    ]
    assert (document["generations"], document["succeeded"], document["failed"]) == (
        [job_id, f"{job_id}-g2"], 1, 0,
    )  # fmt: skip


def test_status_by_the_run_s_arguments_counts_that_run_s_tasks_only(backend: Backend, tmp_path: Path) -> None:
    """A failing command, then a fixed one ("done: 1 of 1"): `status` with the fixed run's arguments still
    said "1 failed", counting the earlier command's task; it counts the run's own tasks, the rest apart."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a\n")
    where, out = ["--backend", backend.name], ["--out", str(tmp_path / "out")]
    failing = backend.cli("run", str(inputs), "--command", "sh -c 'exit 1' {input}", "--name", "fix",
                          *where, *out)  # fmt: skip
    assert failing.returncode == 1, failing.stderr
    fixed_args = [str(inputs), "--command", "sh -c 'exit 0' {input}", "--name", "fix", *where]
    fixed = backend.cli("run", *fixed_args, *out)
    assert fixed.returncode == 0, fixed.stderr
    derived = backend.cli("status", *fixed_args)
    assert derived.returncode == 0, derived.stderr
    lines = derived.stdout.splitlines()
    assert lines[0].startswith("job batchpilot-fix")  # on the emulator, with -g2: the first job had ended
    assert lines[0].endswith(f"({backend.name}): 1 tasks: 0 active, 0 running, 1 succeeded, 0 failed")
    assert lines[1].startswith("  other:   1 tasks of the job are of other inputs or earlier commands")
    document = json.loads(backend.cli("status", *fixed_args, "--log-format", "json").stdout)
    assert (document["tasks"], document["failed"], document["other_tasks"]) == (1, 0, 1)
    named = backend.cli("status", "--job", "batchpilot-fix", *where)
    assert "2 tasks: 0 active, 0 running, 1 succeeded, 1 failed" in named.stdout.splitlines()[0]


def test_logs_reads_the_attempt_of_the_latest_generation(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
) -> None:
    """A failed task retried by a re-run in `<job>-g2` (the job had ended) fails again, differently: `logs
    JOB TASK` showed the first attempt's stderr, from the first generation; it shows the latest."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a\n")
    flag = tmp_path / "flag"
    command = f"sh -c 'if [ -e {flag} ]; then echo second >&2; else echo first >&2; fi; exit 1' {{input}}"
    run_args = [str(inputs), "--command", command, "--backend", "azure", "--out", str(tmp_path / "out")]
    with start_emulator() as emulator:
        backend = Backend("azure", azure_env(home, emulator, azurite), emulator, home)
        first = backend.cli("run", *run_args, "--log-format", "json")
        assert first.returncode == 1, first.stderr
        [failed] = [line for line in events(first) if line["event"] == "task_failed"]
        job_id, task_id = failed["job_id"], failed["task_id"]
        flag.touch()
        again = backend.cli("run", *run_args)
        assert again.returncode == 1, again.stderr
        assert f"(job {job_id}-g2)" in again.stderr
        logs = backend.cli("logs", job_id, task_id, "--backend", "azure", "--log-format", "json")
    assert logs.returncode == 0, logs.stderr
    document = json.loads(logs.stdout)
    assert (document["text"], document["job_id"]) == ("second\n", f"{job_id}-g2")
