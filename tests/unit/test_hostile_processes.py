"""A re-run ends what a killed orchestrator left running, and only that (issue 16, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchpilot.backends.local.executor import TASK_DIR_VARIABLE, _Watchdog, base_environment, end_strays

SLEEPER = [sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"]


def _start(task_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        SLEEPER, env={**os.environ, TASK_DIR_VARIABLE: str(task_dir)}, start_new_session=True
    )


def test_end_strays_kills_the_processes_marked_with_the_given_task_dirs_only(tmp_path: Path) -> None:
    mine = [_start(tmp_path / "job" / "tasks" / name) for name in ("a", "b")]
    other = _start(tmp_path / "job" / "tasks" / "c")
    prefix_only = _start(tmp_path / "job" / "tasks" / "a-longer")  # a marker that only starts the same
    try:
        ended = end_strays([tmp_path / "job" / "tasks" / "a", tmp_path / "job" / "tasks" / "b"])
        assert ended == 2
        for process in mine:
            assert process.wait(timeout=10) == -9
        assert other.poll() is None
        assert prefix_only.poll() is None
        assert end_strays([tmp_path / "job" / "tasks" / "a"]) == 0
    finally:
        for process in (*mine, other, prefix_only):
            process.kill()
            process.wait()


def test_a_task_inherits_a_safe_base_and_no_credential() -> None:
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "TMPDIR": "/tmp",
        "AZURE_BATCH_ACCESS_KEY": "k",
        "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=k",
        "AZURE_CLIENT_SECRET": "s",
        "AWS_SECRET_ACCESS_KEY": "s",
        "GITHUB_TOKEN": "t",
        "BATCHPILOT_HOME": "/x",
        "LD_PRELOAD": "/evil.so",
    }
    env = base_environment(inherited, [Path("/tools")])
    assert env == {
        "PATH": "/tools:/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "TMPDIR": "/tmp",
    }
    assert base_environment({})["PATH"] == os.defpath


def test_the_watchdog_ends_the_groups_it_holds_when_its_pipe_closes_and_a_dead_one_is_replaced() -> None:
    """The watchdog reads its pipe in batches; at the pipe's end it kills the groups still registered (a
    group unregistered is left alone). One killed meanwhile is replaced at the next line written."""
    watchdog = _Watchdog()
    held, released = _start(Path("/nonexistent/held")), _start(Path("/nonexistent/released"))
    try:
        watchdog.send(f"+{held.pid}\n")
        first = watchdog._process
        assert first is not None
        first.kill()
        first.wait(timeout=10)
        watchdog.send(f"+{released.pid}\n")  # the dead watchdog's pipe is broken: a new one takes the line
        watchdog.send(f"+{held.pid}\n")
        watchdog.send(f"-{released.pid}\n")
        second = watchdog._process
        assert second is not first
        assert second is not None
        assert second.poll() is None
        _Watchdog._close(second)  # as at our exit: the pipe closes
        assert held.wait(timeout=10) == -9
        assert released.poll() is None
    finally:
        for process in (held, released):
            process.kill()
            process.wait()
