"""Run every scenario on both sides against the same kind of emulator and Azurite, then report.

    python -m benchmarks.harness [--quick] [--azurite-port PORT] [--out docs]

Each (scenario, side) gets a fresh emulator (25 ms injected per request, simulated task durations) on a
thread of this process, and a worker subprocess for the orchestrator itself. Afterwards the harness reads the
emulator's statistics and each task's endTime (the service's completion time) to compute detection latency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from batchpilot.emulator import EmulatorConfig, FaultConfig, emulator_in_thread

from .common import SideConfig, SideResult

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LATENCY_MS = 25.0
# Task durations, 5-60 s: real time in the full run (pools big enough to finish in minutes), compressed in
# --quick so that it fits in its budget.
DURATIONS_S = (5.0, 60.0)
QUICK_TIME_SCALE = 20.0
SIDES = ("baseline", "batchpilot")
MONITOR_KINDS = ("job.taskcounts", "task.list")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    inputs: int
    size: int  # bytes per input
    upload: bool
    nodes: int
    slots: int
    time_scale: float = 1.0
    sides: tuple[str, ...] = SIDES
    outputs: bool = True  # False: tasks name no output file (Azurite, one thread, cannot take 100,000)
    latency_ms: float = LATENCY_MS
    submit_only: bool = False  # stop once every task is submitted
    group: str = ""  # `--only GROUP` selects every scenario of a group

    @property
    def title(self) -> str:
        if self.submit_only:
            return f"submitting {self.inputs:,} tasks, {self.latency_ms:.0f} ms per request"
        if self.upload:
            return f"{self.inputs:,} inputs x {self.size // 1_000_000} MB"
        outputs = "" if self.outputs else ", no output files"
        return f"{self.inputs:,} tasks, inputs pre-staged{outputs}"


@dataclass(slots=True)
class Measured:
    """One side of one scenario, after the run: the worker's result plus what the emulator saw."""

    result: SideResult
    requests: dict[str, int]
    bytes_sent_by_kind: dict[str, int]
    latencies: list[float] = field(default_factory=list)
    completed_record_bytes: int = 0  # one completed task as the monitor selects it, in the emulator's answer
    emulator_cpu_s: float = 0.0  # this process's CPU while the side ran: the emulator's (a thread of it)

    @property
    def stages(self) -> dict[str, float]:
        r = self.result
        return {
            "upload": r.uploaded - r.started,
            "submit": r.submitted - r.uploaded,
            "monitor": r.finished - r.submitted,
            "total": r.finished - r.started,
        }

    @property
    def monitor_requests(self) -> int:
        return sum(self.requests.get(kind, 0) for kind in MONITOR_KINDS)

    @property
    def monitor_bytes(self) -> int:
        return sum(self.bytes_sent_by_kind.get(kind, 0) for kind in MONITOR_KINDS)

    def latency(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.result.side,
            "ok": self.result.ok,
            "note": self.result.note,
            "stages_s": {k: round(v, 3) for k, v in self.stages.items()},
            "requests": self.requests,
            "storage_requests": self.result.storage_requests,
            "monitor_requests": self.monitor_requests,
            "monitor_bytes": self.monitor_bytes,
            "monitor_loops": self.result.monitor_loops,
            "tasks_listed": self.result.tasks_listed,
            "latency_median_s": round(statistics.median(self.latencies), 3) if self.latencies else None,
            "latency_p95_s": round(self.latency(0.95), 3),
            "max_rss_mb": round(self.result.max_rss_mb, 1),
            "cpu_s": round(self.result.cpu_s, 2),
            "submit_cpu_s": round(self.result.submit_cpu_s, 3),
            "tasks": len(self.result.seen),
            "completed_record_bytes": self.completed_record_bytes,
            "emulator_cpu_s": round(self.emulator_cpu_s, 2),
        }


# The scale rows: batchpilot's side alone (the baseline lists every task with every field each second,
# 100,000 of them), durations scaled by 1/10, 25 tasks per slot at both sizes, no output files.
SCALE_TIME_SCALE = 10.0
SWEEP_LATENCIES_MS = (25.0, 100.0, 300.0)


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("files-100", 100, 1_000_000, True, 25, 4, QUICK_TIME_SCALE),
            Scenario("tasks-2000", 2_000, 16, False, 100, 4, QUICK_TIME_SCALE),
        ]
    scale = {"time_scale": SCALE_TIME_SCALE, "sides": ("batchpilot",), "outputs": False, "group": "scale"}
    return [
        Scenario("files-100", 100, 1_000_000, True, 25, 4),
        Scenario("files-1000", 1_000, 1_000_000, True, 250, 4),
        Scenario("tasks-10000", 10_000, 16, False, 625, 4),
        Scenario("scale-10000", 10_000, 16, False, 100, 4, **scale),  # type: ignore[arg-type]
        Scenario("tasks-100000", 100_000, 16, False, 1000, 4, **scale),  # type: ignore[arg-type]
        *(
            # One node, one slot: the emulator barely runs tasks while they are submitted.
            Scenario(f"submit-{ms:.0f}ms", 10_000, 16, False, 1, 1, latency_ms=ms, submit_only=True,
                     outputs=False, group="sweep")
            for ms in SWEEP_LATENCIES_MS
        ),
    ]  # fmt: skip


def make_inputs(scenario: Scenario) -> list[str]:
    folder = CACHE / f"inputs-{scenario.inputs}x{scenario.size}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index in range(scenario.inputs):
            # Distinct content per file (its MD5 differs), incompressible where it is large.
            (folder / f"input-{index:05d}.mp4").write_bytes(
                index.to_bytes(8, "big") + os.urandom(max(0, scenario.size - 8))
            )
        marker.touch()
    return sorted(str(path) for path in folder.glob("*.mp4"))


def fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: dict[str, Any] = json.load(response)
        return body


def completion_times(endpoint: str, account: str, key: str, job_id: str) -> tuple[dict[str, float], int]:
    """Each completed task's endTime, and the size of one completed task's record as the monitor selects it
    (the task's JSON in the answer to a one-task listing, without the page's envelope and next link)."""
    from batchpilot.backends.azure.models import TASK_VIEW_FIELDS

    sizes: list[int] = []

    def record_size(body: bytes) -> int:
        value = json.loads(body).get("value") or [None]
        return len(json.dumps(value[0], separators=(",", ":"))) if value[0] is not None else 0

    with BatchClient(endpoint, AzureNamedKeyCredential(account, key)) as client:
        ended = {
            task.id: task.execution_info.end_time.timestamp()
            for task in client.list_tasks(job_id, select=["id", "executionInfo"])
            if task.execution_info is not None and task.execution_info.end_time is not None
        }
        one = client.list_tasks(
            job_id, select=list(TASK_VIEW_FIELDS), filter="state eq 'completed'", max_results=1,
            raw_response_hook=lambda response: sizes.append(record_size(response.http_response.body())),
        )  # fmt: skip
        next(iter(one.by_page()), None)
    return ended, (sizes[0] if sizes else 0)


def run_side(scenario: Scenario, side: str, azurite_port: int, inputs: list[str], work: Path) -> Measured:
    low, high = DURATIONS_S
    config = EmulatorConfig(
        simulate_s=(low / scenario.time_scale, high / scenario.time_scale),
        allocation_delay_s=0.5,
        faults=FaultConfig(latency_ms=scenario.latency_ms),
    )
    name = f"bench-{scenario.name}-{side}-{int(time.time())}"
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{azurite_port}/devstoreaccount1;"
    )
    with emulator_in_thread(config) as emulator:
        side_config = SideConfig(
            name=name,
            endpoint=emulator.endpoint,
            account=emulator.account,
            key=emulator.key,
            storage_connection_string=connection,
            storage_port=azurite_port,
            storage_latency_ms=LATENCY_MS,
            inputs=inputs,
            upload=scenario.upload,
            nodes=scenario.nodes,
            slots=scenario.slots,
            outputs=scenario.outputs,
            submit_only=scenario.submit_only,
        )
        config_path, result_path = work / f"{name}.json", work / f"{name}.result.json"
        side_config.dump(config_path)
        own = resource.getrusage(resource.RUSAGE_SELF)
        subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", side, str(config_path), str(result_path)],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=(work / f"{name}.log").open("w"),
        )  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_SELF)
        emulator_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
        stats = fetch_json(emulator.stats_url)
        result = SideResult.load(result_path)
        job_id = f"{name}-job" if side == "baseline" else _pilot_job_id(name)
        ended, record = completion_times(emulator.endpoint, emulator.account, emulator.key, job_id)
    latencies = [seen - ended[task_id] for task_id, seen in result.seen.items() if task_id in ended]
    return Measured(result, stats["requests"], stats["bytes_sent_by_kind"], latencies, record, emulator_cpu)


def _pilot_job_id(name: str) -> str:
    from batchpilot.spec import batch_id

    return batch_id("batchpilot", name)


def local_comparison(count: int, repeats: int, work: Path) -> dict[str, Any]:
    """`batchpilot run --sample N --nodes CORES` against `xargs -P CORES ffmpeg` on the same sample files."""
    import anyio

    from batchpilot.workloads import ffmpeg

    cores = os.cpu_count() or 1
    samples = CACHE / "samples"
    anyio.run(ffmpeg.make_samples, count, samples)
    files = sorted(samples.glob("sample-*.mp4"))[:count]
    binary = str(ffmpeg.find_ffmpeg())
    timings: dict[str, list[float]] = {"batchpilot": [], "batchpilot_run": [], "xargs": []}
    for attempt in range(repeats):
        home = work / f"local-home-{attempt}"
        state = home / "state"
        # Where `--sample N` looks for its samples: already there, so none is generated in the timed run.
        (state / "samples").mkdir(parents=True)
        for path in files:
            shutil.copy(path, state / "samples" / path.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
        env["BATCHPILOT_HOME"] = str(home)
        out = work / f"local-out-{attempt}"
        started = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "batchpilot"), "run", "--sample", str(count),
             "--out", str(out), "--nodes", str(cores), "--state-dir", str(state)],
            env=env, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        timings["batchpilot"].append(time.perf_counter() - started)
        finished = [json.loads(line) for line in done.stdout.splitlines() if '"run_finished"' in line]
        timings["batchpilot_run"].append(float(finished[-1]["elapsed_s"]))
        assert len(list(out.glob("*.mp3"))) == count, "batchpilot did not convert every sample"
        plain = work / f"xargs-out-{attempt}"
        plain.mkdir()
        script = (
            f'"{binary}" -hide_banner -nostdin -loglevel error -y -i "$1" -vn -codec:a libmp3lame '
            f'"{plain}/$(basename "$1" .mp4).mp3"'
        )
        started = time.perf_counter()
        subprocess.run(
            ["xargs", "-0", "-P", str(cores), "-n1", "sh", "-c", script, "_"],
            input=b"\0".join(str(path).encode() for path in files), check=True,
        )  # fmt: skip
        timings["xargs"].append(time.perf_counter() - started)
        assert len(list(plain.glob("*.mp3"))) == count, "xargs did not convert every sample"
    return {
        "count": count,
        "cores": cores,
        "repeats": repeats,
        "batchpilot_s": [round(t, 3) for t in timings["batchpilot"]],
        "xargs_s": [round(t, 3) for t in timings["xargs"]],
        "batchpilot_median_s": round(statistics.median(timings["batchpilot"]), 3),
        "batchpilot_run_median_s": round(statistics.median(timings["batchpilot_run"]), 3),
        "xargs_median_s": round(statistics.median(timings["xargs"]), 3),
    }


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def local_tiny(count: int, repeats: int, work: Path) -> dict[str, Any]:
    """`batchpilot run --command 'gzip -k {input}' --nodes CORES` against `xargs -P CORES -n1 gzip -k` on
    `count` tiny files: what the orchestrator costs per task. CPU is the children's (user + system) as the
    kernel counts it; both sides run the same gzips, so the difference is the orchestrator's own."""
    cores = os.cpu_count() or 1
    folder = CACHE / f"tiny-{count}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index in range(count):
            (folder / f"tiny-{index:05d}.txt").write_text(f"tiny input {index}\n" * 8)
        (folder / ".complete").touch()
    files = sorted(folder.glob("tiny-*.txt"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "BATCHPILOT_"))}
    runs: dict[str, list[float]] = {"batchpilot": [], "batchpilot_cpu": [], "xargs": [], "xargs_cpu": []}
    runs["start"] = []
    for attempt in range(repeats):
        home = work / f"tiny-home-{attempt}"
        out = work / f"tiny-out-{attempt}"
        env["BATCHPILOT_HOME"] = str(home)
        cpu, started_epoch, started = _cpu_of_children(), time.time(), time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "batchpilot"), "run", "--command", "gzip -k {input}",
             "--outputs", "*.gz", "--out", str(out), "--nodes", str(cores), "--log-format", "json",
             str(folder)],
            env=env, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        runs["batchpilot"].append(time.perf_counter() - started)
        runs["batchpilot_cpu"].append(_cpu_of_children() - cpu)
        assert len(list(out.glob("*.gz"))) == count, "batchpilot did not compress every file"
        first = next(json.loads(line) for line in done.stdout.splitlines() if '"run_started"' in line)
        at = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).timestamp()
        runs["start"].append(at - started_epoch)
        plain = work / f"tiny-xargs-{attempt}"
        shutil.copytree(folder, plain)
        cpu, started = _cpu_of_children(), time.perf_counter()
        subprocess.run(
            ["xargs", "-0", "-P", str(cores), "-n1", "gzip", "-k"],
            input=b"\0".join(str(plain / path.name).encode() for path in files), check=True,
        )  # fmt: skip
        runs["xargs"].append(time.perf_counter() - started)
        runs["xargs_cpu"].append(_cpu_of_children() - cpu)
        assert len(list(plain.glob("*.gz"))) == count, "xargs did not compress every file"
    median = {key: statistics.median(values) for key, values in runs.items()}
    return {
        "count": count,
        "cores": cores,
        "repeats": repeats,
        "runs": {key: [round(v, 3) for v in values] for key, values in runs.items()},
        "batchpilot_median_s": round(median["batchpilot"], 3),
        "xargs_median_s": round(median["xargs"], 3),
        "batchpilot_cpu_s": round(median["batchpilot_cpu"], 3),
        "xargs_cpu_s": round(median["xargs_cpu"], 3),
        "orchestrator_cpu_ms_per_task": round(
            1000 * (median["batchpilot_cpu"] - median["xargs_cpu"]) / count, 2
        ),
        "run_start_s": round(median["start"], 3),
    }


LAZY_MODULES = ("azure", "aiohttp", "rich", "prometheus_client")


def startup(repeats: int) -> dict[str, Any]:
    """`python -X importtime -c 'import batchpilot.cli'` (its total and heaviest modules), what the import
    loads of the modules only some commands use, and `batchpilot --version` end to end."""
    totals, version, version_cpu = [], [], []
    heaviest: list[tuple[int, str]] = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import batchpilot.cli"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = []
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            own, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            rows.append((int(own), int(cumulative), name))
        totals.append(rows[-1][1] / 1e6)
        heaviest = sorted(((own, name) for own, _, name in rows), reverse=True)[:8]
        cpu, started = _cpu_of_children(), time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "batchpilot"), "--version"], capture_output=True, check=True
        )
        version.append(time.perf_counter() - started)
        version_cpu.append(_cpu_of_children() - cpu)
    probe = (
        "import sys, batchpilot.cli; "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({LAZY_MODULES!r}))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {
        "repeats": repeats,
        "import_cli_s": [round(t, 3) for t in totals],
        "import_cli_median_s": round(statistics.median(totals), 3),
        "version_s": [round(t, 3) for t in version],
        "version_median_s": round(statistics.median(version), 3),
        # CPU (user + system) of the process: what the machine's other load does not inflate as much
        "version_cpu_median_s": round(statistics.median(version_cpu), 3),
        "heaviest_modules_ms": [[name, round(own / 1000, 1)] for own, name in heaviest],
        "lazy_modules_loaded": loaded.stdout.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; under 5 minutes on 2 cores")
    parser.add_argument("--azurite-port", type=int, default=int(os.environ.get("AZURITE_PORT", "0")))
    parser.add_argument("--out", type=Path, default=None, help="write benchmarks.md/.png/.json here")
    parser.add_argument("--only", default="", help="comma-separated scenario names (and/or 'local')")
    parser.add_argument("--command", default="", help="the command line to record in the report")
    args = parser.parse_args(argv)
    if not args.azurite_port:
        parser.error("give --azurite-port or set AZURITE_PORT (scripts/bench starts Azurite)")
    only = {name for name in args.only.split(",") if name}
    from . import report

    started = time.time()
    results: dict[str, Any] = {
        "quick": args.quick,
        "latency_ms": LATENCY_MS,
        "durations_s": list(DURATIONS_S),
        "cores": os.cpu_count(),
        "command": args.command or " ".join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])]),
        "scenarios": [],
    }
    with tempfile.TemporaryDirectory(prefix="batchpilot-bench-") as temp:
        work = Path(temp)
        for scenario in scenarios(args.quick):
            if only and scenario.name not in only and scenario.group not in only:
                continue
            inputs = make_inputs(scenario)
            scenario_started = time.strftime("%H:%M:%S", time.gmtime())
            sides = {}
            for side in scenario.sides:
                print(f"bench: {scenario.name} {side} ...", file=sys.stderr, flush=True)
                sides[side] = run_side(scenario, side, args.azurite_port, inputs, work).to_json()
            results["scenarios"].append(
                {"name": scenario.name, "title": scenario.title, "nodes": scenario.nodes,
                 "slots": scenario.slots, "time_scale": scenario.time_scale, "sides": sides,
                 "group": scenario.group, "inputs": scenario.inputs, "latency_ms": scenario.latency_ms,
                 "started_at": scenario_started}
            )  # fmt: skip
        if not only or "local" in only:
            print("bench: local backend vs xargs ...", file=sys.stderr, flush=True)
            count, repeats = (10, 2) if args.quick else (40, 3)
            results["local"] = local_comparison(count, repeats, work)
        if not only or "local-tiny" in only:
            print("bench: local backend, tiny tasks, vs xargs ...", file=sys.stderr, flush=True)
            count, repeats = (200, 2) if args.quick else (1_000, 3)
            results["local_tiny"] = local_tiny(count, repeats, work)
        if not only or "startup" in only:
            print("bench: start-up ...", file=sys.stderr, flush=True)
            results["startup"] = startup(3 if args.quick else 7)
    results["elapsed_s"] = round(time.time() - started, 1)
    print(report.table(results))
    if args.out is not None:
        report.write(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
