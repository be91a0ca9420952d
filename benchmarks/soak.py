"""The soak of `batchpilot serve` (issue 10): many inputs, simulated execution, faults injected, then checks.

    python -m benchmarks.soak --azurite-port PORT [--inputs N]      (scripts/soak starts Azurite first)

`serve --backend azure` watches a folder; the harness drops the inputs into it in batches. The Batch emulator
(on a thread of this process) runs each task in simulated mode: a seeded duration, then a small synthetic
output uploaded to Azurite through the task's SAS. Faults: 429s and 500s on every kind of Batch request,
task collections applied and then their connection cut, running tasks preempted (requeued). Once every
output is in the out folder the harness sends SIGTERM and checks that serve exited 0, that every input has
exactly one output naming that input, fetched once, that the job holds exactly one task per input, each
completed once (a preempted attempt is counted, not a duplicate), and that serve's peak RSS (VmHWM) stayed
under the bound. tests/e2e/test_soak.py runs the same `soak()` at a small N against the test fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from batchpilot.emulator import EmulatorConfig, FaultConfig, RunningEmulator, emulator_in_thread

AZURITE_CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
)
# Task durations of 5-50 s on a real pool, compressed tenfold so that 10,000 tasks fit in minutes.
SIMULATE_S = (0.5, 5.0)
FAULTS = FaultConfig(
    seed=10,
    rate_429=0.03,
    retry_after_s=1,
    rate_500=0.03,
    drop_after_apply=0.05,
    preempt=0.03,
    preempt_after_s=0.3,
)
# What serve may hold at its peak, whatever N: the inputs stream through, they do not accumulate.
MEMORY_BOUND_MB = 250.0
COMMAND = "cp {input} {stem}.out"


@dataclass(frozen=True, slots=True)
class SoakSettings:
    inputs: int = 10_000
    batch: int = 1000  # files per drop into the watched folder
    # A steady producer: the next batch is dropped once fewer than this many inputs await their output.
    max_pending: int = 2500
    nodes: int = 10
    spot_nodes: int = 40  # preemption strikes only spot nodes, as in Batch
    slots: int = 8
    stall_s: float = 180.0  # give up when no output has arrived for this long
    memory_bound_mb: float = MEMORY_BOUND_MB


@dataclass(slots=True)
class SoakResult:
    inputs: int
    exit_code: int | None = None
    summary_line: str = ""
    tasks_in_job: int = 0
    tasks_not_succeeded: int = 0
    completions: int = 0  # the emulator's count of tasks completed
    attempts: int = 0
    requeues: int = 0  # summed over the job's tasks
    faults: dict[str, int] = field(default_factory=dict)
    task_listings: int = 0
    task_listing_mb: float = 0.0
    added: int = 0  # tasks serve's add requests created
    # Tasks serve found already in the job (a batch run again); a collection applied, its answer lost, then
    # sent again counts its tasks as added, since this serve added them.
    found_existing: int = 0
    extra_tasks: int = 0  # tasks in the job that belong to no input
    missing_tasks: int = 0
    fetched_twice: int = 0
    lost_outputs: int = 0
    wrong_outputs: int = 0  # an output whose content names another input
    stray_outputs: int = 0
    errors_logged: int = 0
    batches_retried: int = 0  # batches run again because the service could not take their tasks
    peak_rss_mb: float = 0.0
    memory_bound_mb: float = MEMORY_BOUND_MB
    wall_s: float = 0.0
    stderr_tail: str = ""

    @property
    def duplicates(self) -> int:
        return self.extra_tasks + max(0, self.completions - self.tasks_in_job) + self.fetched_twice

    def problems(self) -> list[str]:
        """Every invariant the run broke, one line each; empty when the soak passed."""
        checks = [
            (self.exit_code == 0, f"serve exited {self.exit_code}: {self.stderr_tail}"),
            (self.tasks_in_job == self.inputs and not self.missing_tasks,
             f"{self.tasks_in_job} tasks in the job for {self.inputs} inputs ({self.missing_tasks} missing)"),
            (self.duplicates == 0, f"{self.duplicates} duplicates (extra tasks, completions or downloads)"),
            (self.added + self.found_existing == self.inputs,
             f"serve submitted {self.added} + {self.found_existing} existing tasks for {self.inputs} inputs"),
            (self.completions == self.inputs, f"{self.completions} completions for {self.inputs} tasks"),
            (self.tasks_not_succeeded == 0, f"{self.tasks_not_succeeded} tasks did not succeed"),
            (self.attempts == self.inputs + self.requeues,
             f"{self.attempts} attempts for {self.inputs} tasks and {self.requeues} requeues"),
            (self.requeues == self.faults.get("preempted", 0),
             f"{self.requeues} requeues but {self.faults.get('preempted', 0)} preemptions"),
            (self.lost_outputs == 0, f"{self.lost_outputs} outputs lost"),
            (self.wrong_outputs == 0, f"{self.wrong_outputs} outputs with another input's content"),
            (self.stray_outputs == 0, f"{self.stray_outputs} files in the out folder belong to no input"),
            (self.errors_logged == 0, f"serve logged {self.errors_logged} errors"),
            (self.peak_rss_mb < self.memory_bound_mb,
             f"peak RSS {self.peak_rss_mb:.0f} MB is over the bound of {self.memory_bound_mb:.0f} MB"),
        ]  # fmt: skip
        return [message for ok, message in checks if not ok]

    def table(self) -> str:
        faults = ", ".join(f"{kind} {count:,}" for kind, count in sorted(self.faults.items())) or "none"
        rows = [
            ("inputs", f"{self.inputs:,}"),
            ("tasks in the job", f"{self.tasks_in_job:,}"),
            ("added (found already in the job)", f"{self.added:,} ({self.found_existing:,})"),
            ("batches run again (tasks not taken)", f"{self.batches_retried:,}"),
            ("attempts (requeued)", f"{self.attempts:,} ({self.requeues:,})"),
            ("faults injected", faults),
            ("task listings served", f"{self.task_listings:,} ({self.task_listing_mb:,.0f} MB)"),
            ("duplicates", f"{self.duplicates:,}"),
            ("lost outputs", f"{self.lost_outputs:,}"),
            ("peak memory of serve", f"{self.peak_rss_mb:.0f} MB (bound {self.memory_bound_mb:.0f} MB)"),
            ("wall time", f"{self.wall_s:.0f} s"),
            ("serve exit code", str(self.exit_code)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'':<{width}} | soak |", f"|{'-' * (width + 2)}|------|"]
        lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
        return "\n".join(lines)


def emulator_config(workdir: Path) -> EmulatorConfig:
    return EmulatorConfig(workdir=workdir, simulate_s=SIMULATE_S, faults=FAULTS)


def soak(
    settings: SoakSettings, emulator: RunningEmulator, storage_connection_string: str, workdir: Path
) -> SoakResult:
    """Drop `settings.inputs` files into a folder watched by `serve`, wait for every output, stop, check."""
    watch, out, home = workdir / "in", workdir / "out", workdir / "home"
    watch.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
    env.update(
        BATCHPILOT_HOME=str(home),
        AZURE_BATCH_ENDPOINT=emulator.endpoint,
        AZURE_BATCH_ACCOUNT=emulator.account,
        AZURE_BATCH_ACCESS_KEY=emulator.key,
        AZURE_STORAGE_CONNECTION_STRING=storage_connection_string,
    )
    command = [
        sys.executable, "-m", "batchpilot.cli", "serve", "--backend", "azure",
        "--watch", str(watch), "--out", str(out), "--command", COMMAND, "--outputs", "{stem}.out",
        "--nodes", str(settings.nodes), "--spot-nodes", str(settings.spot_nodes),
        "--task-slots", str(settings.slots), "--log-format", "json",
    ]  # fmt: skip
    names = [f"input-{index:05d}.txt" for index in range(settings.inputs)]
    result = SoakResult(settings.inputs, memory_bound_mb=settings.memory_bound_mb)
    log_path, err_path = workdir / "serve.jsonl", workdir / "serve.stderr"
    started = time.monotonic()
    with log_path.open("wb") as log, err_path.open("wb") as err:
        # The log goes to a file, not a pipe: nobody reads a pipe while serve runs, and a full one blocks it.
        serve = subprocess.Popen(command, env=env, stdout=log, stderr=err, stdin=subprocess.DEVNULL)
        memory = _PeakMemory(serve.pid)
        try:
            _feed(watch, out, names, settings, serve, memory)
        finally:
            serve.send_signal(signal.SIGTERM)
            result.exit_code = _wait_for_exit(serve, memory)
    result.wall_s = time.monotonic() - started
    result.peak_rss_mb = memory.peak_mb
    stderr = err_path.read_text(errors="replace").strip().splitlines()
    result.stderr_tail = " | ".join(stderr[-3:])
    result.summary_line = next((line for line in reversed(stderr) if "serve stopped" in line), "")
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    _check_log(result, events)
    _check_outputs(result, out, names)
    job_id = next(event["job_id"] for event in events if event.get("event") == "run_started")
    _check_job(result, emulator, job_id, names)
    return result


class _PeakMemory:
    """Serve's peak resident set (VmHWM: the kernel keeps the high-water mark, so sampling cannot miss it)."""

    def __init__(self, pid: int) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self.peak_mb = 0.0

    def sample(self) -> None:
        try:
            text = self._status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            return  # exited: the last sample stands
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)


def _feed(
    watch: Path,
    out: Path,
    names: list[str],
    settings: SoakSettings,
    serve: subprocess.Popen[bytes],
    memory: _PeakMemory,
) -> None:
    """Drop the inputs batch by batch, and return once every output is there."""
    dropped, done, progress_at = 0, 0, time.monotonic()
    while done < len(names):
        if dropped < len(names) and dropped - done + settings.batch <= settings.max_pending:
            for name in names[dropped : dropped + settings.batch]:
                # Written under a hidden name and renamed, as a careful producer does: serve ignores those.
                partial = watch / f".{name}"
                partial.write_text(f"{name}\n")
                partial.rename(watch / name)
            dropped = min(len(names), dropped + settings.batch)
        if serve.poll() is not None:
            raise SoakError(f"serve exited with {serve.returncode} after {done} of {len(names)} outputs")
        if time.monotonic() - progress_at > settings.stall_s:
            raise SoakError(f"no new output for {settings.stall_s:.0f} s; {done} of {len(names)} arrived")
        memory.sample()
        time.sleep(0.5)
        count = sum(1 for _ in out.glob("*.out")) if out.is_dir() else 0
        if count != done:
            done, progress_at = count, time.monotonic()


def _wait_for_exit(serve: subprocess.Popen[bytes], memory: _PeakMemory) -> int | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        memory.sample()
        try:
            return serve.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
    serve.kill()
    serve.wait()
    return None


class SoakError(Exception):
    """The soak could not run to its checks (serve died, or stalled)."""


def _check_log(result: SoakResult, events: list[dict[str, Any]]) -> None:
    # From the runs' summaries: a batch whose tasks could not be added is run again, and that run finds in
    # the job whichever of them a cut-off request did add.
    finished = [event for event in events if event.get("event") == "run_finished"]
    result.added = sum(event["tasks_added"] for event in finished)
    result.found_existing = sum(event["tasks_existing"] for event in finished)
    result.batches_retried = sum(event.get("event") == "service_batch_retried" for event in events)
    fetched = Counter(
        event["task_id"]
        for event in events
        if event.get("event") == "output_downloaded" and not event.get("skipped")
    )
    result.fetched_twice = sum(count - 1 for count in fetched.values())
    # A run that could not add its tasks ends as an error, and its batch is retried: not a failure of serve.
    result.errors_logged = sum(
        event.get("level") == "error"
        and not (event.get("event") == "run_finished" and event.get("unsubmitted"))
        for event in events
    )


def _check_outputs(result: SoakResult, out: Path, names: list[str]) -> None:
    wanted = {Path(name).stem + ".out": name for name in names}
    present = {path.name: path for path in out.iterdir()} if out.is_dir() else {}
    result.lost_outputs = sum(output not in present for output in wanted)
    result.stray_outputs = sum(name not in wanted for name in present)
    result.wrong_outputs = sum(
        not present[output].read_text().rstrip().endswith(f" from {name}")
        for output, name in wanted.items()
        if output in present
    )


def _check_job(result: SoakResult, emulator: RunningEmulator, job_id: str, names: list[str]) -> None:
    credential = AzureNamedKeyCredential(emulator.account, emulator.key)
    with BatchClient(emulator.endpoint, credential) as client:
        tasks = list(client.list_tasks(job_id, select=["id", "displayName", "state", "executionInfo"]))
    # A task's display name is its input's name: one task per input, whatever ids serve chose.
    per_input = Counter(task.display_name for task in tasks)
    result.tasks_in_job = len(tasks)
    result.extra_tasks = len(tasks) - len(set(per_input) & set(names))
    result.missing_tasks = len(set(names) - set(per_input))
    result.tasks_not_succeeded = sum(
        task.state != "completed" or task.execution_info is None or task.execution_info.result != "success"
        for task in tasks
    )
    result.requeues = sum(task.execution_info.requeue_count or 0 for task in tasks if task.execution_info)
    with urllib.request.urlopen(emulator.stats_url, timeout=30) as response:
        stats = json.load(response)
    result.completions = stats["tasks_completed"]
    result.attempts = stats["attempts_started"]
    result.faults = stats["faults"]
    result.task_listings = stats["requests"].get("task.list", 0)
    result.task_listing_mb = stats["bytes_sent_by_kind"].get("task.list", 0) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--azurite-port", type=int, required=True, help="a running Azurite's blob port")
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs (default: %(default)s)")
    args = parser.parse_args()
    if args.inputs < 1:
        parser.error(f"--inputs {args.inputs}: give at least 1")
    settings = SoakSettings(inputs=args.inputs)
    with tempfile.TemporaryDirectory(prefix="batchpilot-soak-") as scratch:
        workdir = Path(scratch)
        with emulator_in_thread(emulator_config(workdir / "emulator")) as emulator:
            try:
                result = soak(settings, emulator, AZURITE_CONNECTION.format(port=args.azurite_port), workdir)
            except SoakError as exc:
                sys.exit(f"soak: {exc}")
    print(result.table())
    if result.summary_line:
        print(result.summary_line)
    if problems := result.problems():
        sys.exit("soak failed:\n  " + "\n  ".join(problems))
    print("soak passed: every input's output present once, every task added and completed once")


if __name__ == "__main__":
    main()
