"""One local state, one writer; no task outlives its orchestrator (issue 16, items 4 and 5).

Real processes: two `batchpilot run` of one job on one state folder, two `serve` on one watched folder, a
`cleanup` of a job a run holds, and a `run` killed with SIGKILL while its task (and the task's own child)
runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.support import cli_command, cli_env, wait_for

PY = shlex.quote(sys.executable)
# A task: logs its name and pid, starts a child of its own (a shell's command, say) that logs its pid too,
# then waits for the gate; with the gate open it ends, and so does its child.
TASK = """
import os, subprocess, sys, time
log, gate, name = sys.argv[1:4]
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)"])
with open(log, "a") as handle:
    handle.write(f"{name} {os.getpid()} {child.pid}\\n")
while not os.path.exists(gate):
    time.sleep(0.02)
child.kill()
"""


def _setup(tmp_path: Path, inputs: int = 2) -> tuple[Path, Path, Path, list[str]]:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(inputs):
        (folder / f"in{index}.txt").write_text(f"{index}\n")
    script = tmp_path / "task.py"
    script.write_text(TASK)
    ran, gate = tmp_path / "ran.log", tmp_path / "gate"
    command = f"{PY} {shlex.quote(str(script))} {shlex.quote(str(ran))} {shlex.quote(str(gate))} {{input}}"
    args = ["run", str(folder), "--command", command, "--out", str(tmp_path / "out"), "--nodes", "4"]
    return ran, gate, folder, args


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _task_pids(home: Path) -> list[int]:
    """Processes whose environment marks them as a task of this test's local backend."""
    found = []
    wanted = f"AZ_BATCH_TASK_DIR={home}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(item.startswith(wanted) for item in environ) and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    # Output to files (the child keeps its own copies of the descriptors): nothing to close after a kill.
    with log.open("w") as stdout, log.with_suffix(".err").open("w") as stderr:
        return subprocess.Popen(
            cli_command(*args), env=env, stdout=stdout, stderr=stderr, text=True, stdin=subprocess.DEVNULL
        )


def _finish(process: subprocess.Popen[str], log: Path) -> str:
    """Wait for `process` (started with `_start(..., log)`) to end; its stderr."""
    process.wait(timeout=120)
    return log.with_suffix(".err").read_text()


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_two_runs_of_one_job_on_one_state_folder_run_each_task_once(tmp_path: Path, home: Path) -> None:
    ran, gate, _, args = _setup(tmp_path)
    env = cli_env(home)
    first_log = tmp_path / "first.log"
    first = _start(args, env, first_log)
    try:
        wait_for(lambda: len(_lines(ran)) == 2, "both tasks running", alive=first)
        second = subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        line = _one_error_line(second)
        assert "in use" in line
        assert f"process {first.pid}" in line
        assert len(_lines(ran)) == 2
        gate.write_text("")
        stderr = _finish(first, first_log)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    # Once the first has ended, the folder is free: the same command finds every task done and runs none.
    again = subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert sorted(line.split()[0] for line in _lines(ran)) == ["in0.txt", "in1.txt"]


def test_cleanup_of_a_job_that_a_run_holds_deletes_nothing(tmp_path: Path, home: Path) -> None:
    ran, gate, _, args = _setup(tmp_path, inputs=1)
    env = cli_env(home)
    log = tmp_path / "run.log"
    first = _start(args, env, log)
    try:
        wait_for(lambda: len(_lines(ran)) == 1, "the task running", alive=first)
        started = next(json.loads(line) for line in _lines(log) if '"run_started"' in line)
        job_id = started["job_id"]
        cleanup = subprocess.run(
            cli_command("cleanup", "--job", job_id), env=env, capture_output=True, text=True, timeout=120
        )
        assert cleanup.returncode == 2, cleanup.stderr
        assert "in use" in _one_error_line(cleanup)
        assert (home / "local" / "batch" / "jobs" / job_id / "job.json").is_file()
        gate.write_text("")
        stderr = _finish(first, log)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr


def test_two_services_on_one_watched_folder_the_second_says_who_holds_it(tmp_path: Path, home: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    env = cli_env(home)
    log = tmp_path / "serve.log"
    command = ["serve", "--watch", str(watch), "--out", str(tmp_path / "out"), "--command", "true"]
    first = _start(command, env, log)
    try:
        wait_for(lambda: "service_watching" in log.read_text(), "the first service watching", alive=first)
        second = subprocess.run(
            cli_command("serve", "--watch", str(watch), "--out", str(tmp_path / "out2"), "--command", "true"),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        line = _one_error_line(second)
        assert "watched folder" in line
        assert f"process {first.pid}" in line
        first.send_signal(signal.SIGTERM)
        _finish(first, log)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0


def test_a_task_dies_with_its_orchestrator_killed_outright(tmp_path: Path, home: Path) -> None:
    """The repro: kill -9 of `batchpilot run` while a task runs left the task running (parent 1), and the
    re-run started it again in the same directory while the orphan still wrote there."""
    ran, gate, _, args = _setup(tmp_path, inputs=1)
    env = cli_env(home)
    first = _start(args, env, tmp_path / "first.log")
    try:
        wait_for(lambda: len(_lines(ran)) == 1, "the task running", alive=first)
        _, leader, child = _lines(ran)[0].split()
        assert _alive(int(leader))
        assert _alive(int(child))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    # Without waiting for any re-run: the task and its own child are gone with their orchestrator.
    wait_for(lambda: not _alive(int(leader)) and not _alive(int(child)), "the task's processes ended")
    assert _task_pids(home) == []
    # The lock died with the process: the same command takes the job, and runs the task again, once.
    gate.write_text("")
    again = subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(_lines(ran)) == 2
    assert _task_pids(home) == []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_rerun_ends_a_task_left_running_before_it_runs_it_again(tmp_path: Path, home: Path) -> None:
    """The orchestrator and its watchdog both killed outright (the OOM killer, a kill of everything): the
    orphaned task still runs, and the next run of the job ends it before running the task again."""
    ran, gate, _, args = _setup(tmp_path, inputs=1)
    env = cli_env(home)
    first = _start(args, env, tmp_path / "first.log")
    try:
        wait_for(lambda: len(_lines(ran)) == 1, "the task running", alive=first)
        _, leader, child = _lines(ran)[0].split()
        watchdogs = [
            pid for pid in _children(first.pid) if b"killpg" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(watchdogs) == 1
        os.kill(watchdogs[0], signal.SIGKILL)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert _alive(int(leader))  # orphaned: nothing was left to end it
    again_log = tmp_path / "again.log"
    again = _start(args, env, again_log)
    try:
        wait_for(lambda: len(_lines(ran)) == 2, "the task running again", alive=again)
        assert not _alive(int(leader))
        assert not _alive(int(child))
        gate.write_text("")
        stderr = _finish(again, again_log)
    finally:
        if again.poll() is None:
            again.kill()
    assert again.returncode == 0, stderr
    assert _task_pids(home) == []


def test_a_service_whose_job_another_process_runs_stops_with_one_line(tmp_path: Path, home: Path) -> None:
    """Two services on two folders but one job (the same --name): the second meets the held job at its
    first batch and stops, one line naming the holder, exit 2; it does not fail batch after batch."""
    env = cli_env(home)
    first_watch, second_watch = tmp_path / "w1", tmp_path / "w2"
    first_watch.mkdir()
    second_watch.mkdir()
    log = tmp_path / "first.log"
    common = ["--command", "true {input}", "--name", "shared", "--nodes", "1"]
    first = _start(["serve", "--watch", str(first_watch), "--out", str(tmp_path / "o1"), *common], env, log)
    try:
        wait_for(lambda: "service_watching" in log.read_text(), "the first service watching", alive=first)
        (first_watch / "a.txt").write_text("a")
        wait_for(lambda: "task_succeeded" in log.read_text(), "the first service's task", alive=first)
        (second_watch / "b.txt").write_text("b")
        second = subprocess.run(
            cli_command("serve", "--watch", str(second_watch), "--out", str(tmp_path / "o2"), *common),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        line = _one_error_line(second)
        assert "in use" in line
        assert f"process {first.pid}" in line
        first.send_signal(signal.SIGTERM)
        _finish(first, log)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0


@pytest.mark.parametrize("what", ["--pool", "--container"])
def test_cleanup_of_a_pool_or_container_a_run_uses_deletes_nothing(
    tmp_path: Path, home: Path, what: str
) -> None:
    """`cleanup --container <the job's input container>` (or `--pool`) while a run used it deleted it under
    the run: its waiting task failed with ResourceFileDownload (FileNotFoundError). The local state's
    pools and containers serve its running jobs: cleanup says which job holds them, and deletes nothing."""
    ran, gate, _, args = _setup(tmp_path, inputs=1)
    env = cli_env(home)
    log = tmp_path / "run.log"
    first = _start(args, env, log)
    try:
        wait_for(lambda: len(_lines(ran)) == 1, "the task running", alive=first)
        started = next(json.loads(line) for line in _lines(log) if '"run_started"' in line)
        name = f"{started['job_id']}-input" if what == "--container" else "batchpilot-local-pool"
        cleanup = subprocess.run(
            cli_command("cleanup", what, name), env=env, capture_output=True, text=True, timeout=120
        )
        assert cleanup.returncode == 2, cleanup.stderr
        assert "in use" in _one_error_line(cleanup)
        gate.write_text("")
        stderr = _finish(first, log)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
