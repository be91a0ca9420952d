"""The run report as a person sees it: rendered by headless Chromium (Debian's package), offline.

Each report is opened in Chromium through the DevTools protocol (tests/e2e/report_browser.py): the page must
load with no console error and no network request, draw one timeline bar per task attempt, and a screenshot
is saved in the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import anyio

from batchpilot.workloads import ffmpeg
from tests.conftest import EmulatorFactory
from tests.e2e.report_browser import PageResult, open_report
from tests.e2e.support import (
    JOB,
    Run,
    Served,
    azure_env,
    cli_command,
    cli_env,
    delete_run_containers,
    leaked_secrets,
    run_azure,
    wait_for,
)
from tests.emulator.support import Azurite


def _inputs_with_a_corrupt_one(tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    anyio.run(ffmpeg.make_samples, 3, inputs)
    (inputs / "corrupt.mp4").write_bytes(os.urandom(4096))
    return inputs


def _attempts_in_state(home: Path, job: str) -> int:
    """What the local backend's task records say ran: one attempt per task, plus its retries and requeues.
    The records are the job's journal's lines, a task's last line winning."""
    (journal,) = (home / "local").rglob(f"jobs/{job}/tasks.jsonl")
    records = {record["task_id"]: record for record in map(json.loads, journal.read_text().splitlines())}
    assert records, "no task records"
    return sum(1 + record["retry_count"] + record["requeue_count"] for record in records.values())


def _seen(report: Path, screenshot: Path) -> PageResult:
    page = open_report(report, screenshot=screenshot)
    assert page.console_errors == []
    assert page.network_requests == []
    assert page.dataset.get("rendered") == "yes", page.dataset
    assert screenshot.stat().st_size > 10_000  # a PNG of a drawn page, not an empty one
    return page


def test_the_report_of_a_real_run_renders_offline_with_a_bar_per_attempt(batchpilot: Run, tmp_path: Path):
    inputs = _inputs_with_a_corrupt_one(tmp_path)
    report = tmp_path / "report.html"
    result = batchpilot("run", str(inputs), "--out", str(tmp_path / "out"), "--report", str(report))
    assert result.returncode == 1, result.stderr  # the corrupt input failed; the report is written anyway
    assert f"  report:  {report}" in result.stderr
    assert len(list((tmp_path / "out").glob("*.mp3"))) == 3

    page = _seen(report, tmp_path / "report.png")
    job = next(line for line in result.stderr.splitlines() if "(job " in line).split("(job ")[1].rstrip(")")
    attempts = _attempts_in_state(tmp_path / "home", job)
    assert int(page.dataset["timelineBars"]) == int(page.dataset["attempts"]) == attempts == 4
    text = report.read_text()
    assert "corrupt-" in text.split("<h2>Failures</h2>")[1]  # the failed task, its exit code and stderr tail
    assert "no task failed" not in text


def test_report_job_rebuilds_it_from_the_service_alone(batchpilot: Run, tmp_path: Path):
    inputs = _inputs_with_a_corrupt_one(tmp_path)
    result = batchpilot("run", str(inputs), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    job = next(line for line in result.stderr.splitlines() if "(job " in line).split("(job ")[1].rstrip(")")
    report = tmp_path / "job.html"

    again = batchpilot("report", "--job", job, "--out", str(report))

    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith(f"batchpilot: report of job {job}: {report}")
    page = _seen(report, tmp_path / "job.png")
    assert int(page.dataset["timelineBars"]) == 4  # each task's latest attempt: none was retried
    assert "corrupt-" in report.read_text().split("<h2>Failures</h2>")[1]


def test_the_report_of_an_emulator_run_from_the_service_alone(
    start_emulator: EmulatorFactory, azurite: Azurite, home: Path, tmp_path: Path
):
    delete_run_containers(azurite)
    with start_emulator(allocation_delay_s=0) as emulator:
        env = azure_env(home, emulator, azurite)
        result = run_azure(env, tmp_path / "out", "--report", str(tmp_path / "run.html"))
        assert result.returncode == 0, result.stderr
        job = subprocess.run(
            cli_command("report", "--backend", "azure", "--job", JOB, "--out", str(tmp_path / "job.html")),
            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert job.returncode == 0, job.stderr
    from_job = _seen(tmp_path / "job.html", tmp_path / "job.png")
    assert int(from_job.dataset["timelineBars"]) == 5
    live = _seen(tmp_path / "run.html", tmp_path / "run.png")
    assert int(live.dataset["timelineBars"]) == int(live.dataset["attempts"]) >= 5
    text = (tmp_path / "job.html").read_text()
    assert "tvmps_" in text  # the emulator's nodes, named as Batch names them
    for page in ("job.html", "run.html"):
        assert leaked_secrets((tmp_path / page).read_text()) == []


def test_an_unwritable_report_path_is_one_line_and_exit_2_before_anything(batchpilot: Run, tmp_path: Path):
    out = tmp_path / "out"
    result = batchpilot(
        "run", "--sample", "1", "--out", str(out), "--report", str(tmp_path / "no" / "r.html")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"batchpilot: error: --report {tmp_path / 'no' / 'r.html'}: the folder {tmp_path / 'no'} does not"
        " exist; create it or choose another"
    ]
    assert not out.exists()
    assert not (tmp_path / "home" / "local").exists()  # no pool, job or container created


def test_a_report_that_cannot_be_written_changes_neither_exit_code_nor_outputs(tmp_path: Path):
    # "Disk full" for files over 600 KB (the report is about 0.9 MB; the MP3s and records are far smaller):
    # the write fails with EFBIG at the end, as ENOSPC would.
    report = tmp_path / "report.html"
    command = shlex.join(
        cli_command("run", "--sample", "2", "--out", str(tmp_path / "out"), "--report", str(report))
    )
    result = subprocess.run(
        ["bash", "-c", f"ulimit -f 600 && exec {command}"], env=cli_env(tmp_path / "home"),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.mp3"))) == 2
    problem = [line for line in result.stderr.splitlines() if "report.html" in line]
    assert problem == [
        f"batchpilot: could not write the report {report}: File too large; the run and its outputs are not"
        " affected"
    ]
    assert not report.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".batchpilot-report")] == []


def test_serve_keeps_a_rolling_report(tmp_path: Path):
    home, watch, out, report = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "serve.html"
    watch.mkdir()
    samples = anyio.run(ffmpeg.make_samples, 2, tmp_path / "samples")
    served = Served(
        cli_env(home),
        "--watch",
        str(watch),
        "--out",
        str(out),
        "--report",
        str(report),
        "--report-every",
        "1",
    )
    try:
        for sample in samples:
            (watch / sample.name).write_bytes(sample.read_bytes())
        wait_for(lambda: len(list(out.glob("*.mp3"))) == 2, "two MP3s")
        wait_for(lambda: report.exists() and report.read_text().count('"o":"succeeded"') == 2, "the report")
    finally:
        code, _, err = served.stop()
    assert code == 0, err
    page = _seen(report, tmp_path / "serve.png")
    assert int(page.dataset["timelineBars"]) == 2


def _slow_ffmpeg(tmp_path: Path) -> Path:
    """ffmpeg that hangs on the MP3 encoding: tasks that stay running."""
    slow = tmp_path / "slow-ffmpeg"
    slow.write_text(
        f'#!/bin/sh\ncase "$*" in *libmp3lame*) sleep 300 ;; esac\nexec {ffmpeg.find_ffmpeg()} "$@"\n'
    )
    slow.chmod(0o755)
    return slow


def test_a_timed_out_run_reports_its_attempts_still_running(tmp_path: Path):
    report = tmp_path / "report.html"
    result = subprocess.run(
        cli_command("run", "--sample", "2", "--out", str(tmp_path / "out"), "--timeout", "3s",
                    "--report", str(report)),
        env=cli_env(tmp_path / "home", BATCHPILOT_FFMPEG=str(_slow_ffmpeg(tmp_path))),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1
    assert "TIMED OUT" in result.stderr
    page = _seen(report, tmp_path / "report.png")
    assert int(page.dataset["timelineBars"]) == 2
    assert report.read_text().count('"o":"running"') == 2


def test_an_interrupted_run_still_writes_its_report(tmp_path: Path):
    report, log = tmp_path / "report.html", tmp_path / "stdout.log"
    args = cli_command("run", "--sample", "2", "--out", str(tmp_path / "out"), "--report", str(report))
    env = cli_env(tmp_path / "home", BATCHPILOT_FFMPEG=str(_slow_ffmpeg(tmp_path)))
    with (
        log.open("w") as stdout,
        subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE) as run,
    ):
        wait_for(lambda: log.read_text().count('"state": "running"') >= 2, "both tasks running")
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert f"  report:  {report}" in err.decode()
    page = _seen(report, tmp_path / "report.png")
    assert int(page.dataset["timelineBars"]) == 2


def test_report_mistakes_are_one_line_and_exit_2(batchpilot: Run, tmp_path: Path):
    cases = [
        (["report", "--job", "no-such-job"], "--job no-such-job: no such job on the local backend"),
        (["report", "--job", "../../etc"], "job id '../../etc' is not a valid Batch id"),
        (["report", "--job", "j", "--out", str(tmp_path)], "is a folder; give a file name"),
        (["serve", "--watch", str(tmp_path), "--out", str(tmp_path / "o"),
          "--report", str(tmp_path / "x" / "r.html")], "the folder"),
    ]  # fmt: skip
    for args, message in cases:
        result = batchpilot(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert message in lines[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # serve created nothing before saying so
    assert [p.name for p in tmp_path.glob("*.html")] == []
