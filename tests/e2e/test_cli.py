"""The CLI end to end on the local backend, with the bundled ffmpeg, checking the MP3s themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from batchpilot.workloads.ffmpeg import find_ffmpeg, make_samples
from tests.e2e.support import Run, assert_playable_mp3, cli_command, cli_env, leftovers, wait_for


def summary(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr


def log_lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_sample_job_writes_playable_mp3s_and_logs_json_lines(batchpilot: Run, tmp_path: Path):
    out = tmp_path / "out"
    result = batchpilot("run", "--sample", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    mp3s = sorted(out.glob("*.mp3"))
    assert [p.name for p in mp3s] == [f"sample-00{i}.mp3" for i in range(1, 6)]
    for mp3 in mp3s:
        assert_playable_mp3(mp3)
    assert "done: 5 of 5 tasks succeeded" in summary(result)
    lines = log_lines(result)  # not a terminal: every stdout line is JSON
    succeeded = [line for line in lines if line["event"] == "task_succeeded"]
    assert len(succeeded) == 5
    assert all({"run_id", "job_id", "task_id", "timestamp", "level"} <= set(line) for line in succeeded)
    downloads = [line for line in lines if line["event"] == "output_downloaded"]
    assert sorted(Path(line["path"]).name for line in downloads) == [p.name for p in mp3s]
    assert [line["resource"] for line in lines if line["event"] == "resource_deleted"] == ["container"]


def test_running_the_same_command_again_skips_everything_done(batchpilot: Run, tmp_path: Path):
    out = tmp_path / "out"
    assert batchpilot("run", "--sample", "3", "--out", str(out)).returncode == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp3")}
    again = batchpilot("run", "--sample", "3", "--out", str(out))
    assert again.returncode == 0, again.stderr
    text = summary(again)
    assert "0 uploaded, 3 unchanged and skipped" in text
    assert "0 added, 3 already in the job and skipped" in text
    assert "0 downloaded" in text
    assert "3 already there" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp3")} == stamps
    assert not [
        line
        for line in log_lines(again)
        if line["event"] == "task_state_changed" and line["state"] == "running"
    ]


def test_a_deleted_output_is_fetched_again_and_nothing_else(batchpilot: Run, tmp_path: Path):
    out = tmp_path / "out"
    assert batchpilot("run", "--sample", "2", "--out", str(out)).returncode == 0
    (out / "sample-001.mp3").unlink()
    again = batchpilot("run", "--sample", "2", "--out", str(out))
    assert again.returncode == 0
    assert "1 downloaded" in summary(again)
    assert "1 already there" in summary(again)
    assert_playable_mp3(out / "sample-001.mp3")


def test_corrupt_and_empty_inputs_fail_only_their_own_tasks(batchpilot: Run, tmp_path: Path):
    inputs = tmp_path / "in"
    anyio.run(make_samples, 2, inputs)
    (inputs / "corrupt.mp4").write_bytes(os.urandom(4096))
    (inputs / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    result = batchpilot("run", str(inputs), "--out", str(out))
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["sample-001.mp3", "sample-002.mp3"]
    text = summary(result)
    assert "FAILED: 2 of 4 tasks succeeded" in text
    failed_lines = [line for line in text.splitlines() if line.strip().startswith("failed:")]
    assert len(failed_lines) == 2
    assert any(line.strip().startswith("failed:  corrupt-") for line in failed_lines)
    assert any(line.strip().startswith("failed:  empty-") for line in failed_lines)
    assert all("FailureExitCode" in line for line in failed_lines)
    assert "Invalid data found when processing input" in text  # ffmpeg's own reason, from stderr
    failures = [line for line in log_lines(result) if line["event"] == "task_failed"]
    assert {line["exit_code"] for line in failures} != {0}
    assert all("Invalid data" in line["stderr_tail"] for line in failures)
    assert "batchpilot cleanup" in text or "run the same command again" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "{tmp}/nowhere", "--out", "{tmp}/out"], "does not exist"),
        (["run", "{tmp}/empty", "--out", "{tmp}/out"], "no files matching *.mp4 in"),
        (["run", "--sample", "1", "--out", "{tmp}/afile/out"], "cannot write to --out"),
        (
            ["run", "--sample", "1", "--out", "{tmp}/out", "--frobnicate"],
            "unrecognized arguments: --frobnicate",
        ),
        (["run", "--out", "{tmp}/out"], "nothing to run: give INPUT_DIR, --sample N"),
        (["run", "--sample", "0", "--out", "{tmp}/out"], "must be 1 or more"),
        (["run", "--sample", "1", "--out", "{tmp}/out", "--timeout", "soon"], "not a duration"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["cleanup"], "nothing to clean up"),
    ],
)
def test_user_mistakes_are_one_clear_line_and_exit_2(batchpilot: Run, tmp_path: Path, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    result = batchpilot(*[arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batchpilot: error:")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_help_explains_the_commands(batchpilot: Run):
    result = batchpilot("run", "--help")
    assert result.returncode == 0
    for flag in (
        "--sample",
        "--out",
        "--log-format",
        "--concurrency",
        "--timeout",
        "--pool-after",
        "resumes",
    ):
        assert flag in result.stdout


def _task_processes(home: Path) -> list[int]:
    """Processes started as tasks by a batchpilot using `home`: their task dir, in their environment, is
    under it (tasks no longer inherit BATCHPILOT_HOME: only a safe part of the orchestrator's environment)."""
    wanted = f"AZ_BATCH_TASK_DIR={home}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(item.startswith(wanted) for item in environ):
                found.append(int(entry.name))
    return found


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, home: Path):
    # An ffmpeg that hangs on conversions, so that the run is mid-flight when interrupted.
    slow = tmp_path / "slow-ffmpeg"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *libmp3lame*) sleep 300 ;; esac\nexec {find_ffmpeg()} "$@"\n')
    slow.chmod(0o755)
    out = tmp_path / "out"
    args = cli_command("run", "--sample", "3", "--out", str(out), "--nodes", "2")
    log = tmp_path / "interrupted.log"
    with log.open("w") as stdout, subprocess.Popen(
        args, env=cli_env(home, BATCHPILOT_FFMPEG=str(slow)), stdout=stdout, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        # Two conversions hanging in their slots (each a wrapper and its sleep) means the run is mid-flight.
        try:

            def mid_flight() -> bool:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return len(_task_processes(home)) >= 4

            wait_for(mid_flight, "two conversions to hang in their slots")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert _task_processes(home) == []  # no orphan task processes
    assert not out.exists() or leftovers(out) == []
    resumed = subprocess.run(
        cli_command("run", "--sample", "3", "--out", str(out)),
        env=cli_env(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "3 already in the job and skipped" in resumed.stderr
    assert "0 uploaded" in resumed.stderr
    changes = [json.loads(line) for line in resumed.stdout.splitlines() if '"task_state_changed"' in line]
    assert any(change["state"] == "completed" for change in changes)
    for mp3 in sorted(out.glob("*.mp3")):
        assert_playable_mp3(mp3)
    assert len(list(out.glob("*.mp3"))) == 3
    assert leftovers(out) == []


def test_a_run_past_its_timeout_stops_says_so_and_leaves_no_task_running(tmp_path: Path, home: Path):
    slow = tmp_path / "slow-ffmpeg"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *libmp3lame*) sleep 300 ;; esac\nexec {find_ffmpeg()} "$@"\n')
    slow.chmod(0o755)
    result = subprocess.run(
        cli_command("run", "--sample", "2", "--out", str(tmp_path / "out"), "--timeout", "2s"),
        env=cli_env(home, BATCHPILOT_FFMPEG=str(slow)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "TIMED OUT: 0 of 2 tasks succeeded" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert _task_processes(home) == []
