"""The benchmark's outputs: a plain-text table, docs/benchmarks.md (table, targets, method), a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Row = tuple[str, float | None, float | None, str]
ANALYSIS = Path(__file__).with_name("analysis.md")

METHOD = """\
Both sides run one after the other, each against a fresh Batch emulator and the same Azurite; the latency is
also added per storage request in the client transport (Azurite has no fault injection). Tasks run in the
emulator's simulated mode (no processes); each uploads a small output file through its SAS, as a real task
would.

- **baseline**: the tutorial's flow (`benchmarks/baseline.py`) with the synchronous SDKs: sequential
  uploads, tasks in collections of 100 one request after another (the tutorial's single `add_collection`
  call is refused above 100 tasks), then a loop listing every task with every field once a second.
- **batchpilot**: the Orchestrator embedded with the Azure backend, default `EngineSettings`.

Stages: *upload* from the start to the last upload (batchpilot: the last `InputUploaded`, which includes
hashing the inputs and overlaps pool and job creation); *submit* to the last add-collection (batchpilot: the
last `TasksSubmitted`, which includes building tasks and signing their SAS URLs); *monitor* to the last task
seen succeeded. Detection latency: from the emulator's `endTime` of each task to the moment the side saw it
(batchpilot: its `TaskSucceeded` event, in-process; baseline: the loop's listing). Monitor bytes: what the
emulator sent for `task.list` and `job.taskcounts`. Peak memory: `VmHWM` (peak resident set) of the side's
own worker process (interpreter and SDKs included). The tasks-only scenario skips uploads on both sides
(inputs count as already in storage); batchpilot still hashes every input and signs a SAS per task, the
baseline signs one per task."""


def _ratio(baseline: float | None, pilot: float | None) -> str:
    if baseline is None or pilot is None or math.isnan(baseline) or math.isnan(pilot) or pilot == 0:
        return "-"
    return f"{baseline / pilot:.1f}x"


def _heading(scenario: dict[str, Any]) -> str:
    scale = scenario.get("time_scale", 1.0)
    timing = "real-time durations" if scale == 1 else f"durations scaled by 1/{scale:.0f}"
    return f"{scenario['title']} ({scenario['nodes']} nodes x {scenario['slots']} slots, {timing})"


def _paired(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenarios run on both sides to the end (not the scale rows, not the submission sweep)."""
    return [
        scenario
        for scenario in results["scenarios"]
        if set(scenario["sides"]) == {"baseline", "batchpilot"} and scenario.get("group", "") == ""
    ]


def _scale_rows(results: dict[str, Any]) -> tuple[list[str], list[Row]] | None:
    """batchpilot alone at 10,000 and 100,000 tasks (same time scale, 25 tasks per slot), side by side."""
    runs = [s for s in results["scenarios"] if s.get("group") == "scale"]
    if not runs:
        return None
    heads = [f"{s['inputs']:,} tasks" for s in runs]
    sides = [s["sides"]["batchpilot"] for s in runs]
    per = [s["inputs"] / 1000 for s in runs]

    def row(label: str, values: list[float | None]) -> Row:
        first, last = values[0], values[-1]
        ratio = "-" if len(values) < 2 or not first or last is None else f"{last / first:.2f}x"
        return (label, first, last if len(values) > 1 else None, ratio)

    rows = [
        row("wall time total (s)", [p["stages_s"]["total"] for p in sides]),
        row("  per 1,000 tasks (s)", [p["stages_s"]["total"] / n for p, n in zip(sides, per, strict=True)]),
        row("wall time upload (hash, s)", [p["stages_s"]["upload"] for p in sides]),
        row("wall time submit (s)", [p["stages_s"]["submit"] for p in sides]),
        row("wall time monitor (s)", [p["stages_s"]["monitor"] for p in sides]),
        row("CPU of the orchestrator (s)", [p.get("cpu_s") for p in sides]),
        row("  per 1,000 tasks (s)", [p.get("cpu_s", 0) / n for p, n in zip(sides, per, strict=True)]),
        row("CPU of the emulator (s)", [p.get("emulator_cpu_s") for p in sides]),
        row("peak memory, VmHWM (MB)", [p["max_rss_mb"] for p in sides]),
        row("  per 1,000 tasks (MB)", [p["max_rss_mb"] / n for p, n in zip(sides, per, strict=True)]),
        row("monitor requests", [p["monitor_requests"] for p in sides]),
        row("monitor bytes received (MB)", [p["monitor_bytes"] / 1e6 for p in sides]),
        row("  per task (bytes)", [p["monitor_bytes"] / n / 1000 for p, n in zip(sides, per, strict=True)]),
        row("  in completed-task records per task",
            [_records_per_task(p, n * 1000) for p, n in zip(sides, per, strict=True)]),
        row("monitor task records received per task",
            [p["tasks_listed"] / (n * 1000) for p, n in zip(sides, per, strict=True)]),
        row("detection latency median (s)", [p["latency_median_s"] for p in sides]),
        row("detection latency p95 (s)", [p["latency_p95_s"] for p in sides]),
    ]  # fmt: skip
    return heads, rows


def _records_per_task(side: dict[str, Any], tasks: float) -> float | None:
    record = side.get("completed_record_bytes") or 0
    return side["monitor_bytes"] / tasks / record if record else None


def _sweep_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for scenario in (s for s in results["scenarios"] if s.get("group") == "sweep"):
        base, pilot = scenario["sides"]["baseline"], scenario["sides"]["batchpilot"]
        b, p = base["stages_s"]["submit"], pilot["stages_s"]["submit"]
        rows.append(
            (f"{scenario['latency_ms']:.0f} ms: submit {scenario['inputs']:,} tasks (s)", b, p, _ratio(b, p))
        )
        per = scenario["inputs"] / 1000
        b, p = base["submit_cpu_s"] / per, pilot["submit_cpu_s"] / per
        rows.append(("  client CPU per 1,000 tasks (s)", b, p, _ratio(b, p)))
    return rows


def _tiny_rows(tiny: dict[str, Any]) -> list[Row]:
    b, p = tiny["xargs_median_s"], tiny["batchpilot_median_s"]
    label = f"{tiny['count']:,} x gzip -k, {tiny['cores']} cores, median of {tiny['repeats']} (s)"
    return [
        (label, b, p, f"{p / b:.2f}x of xargs"),
        ("  CPU, processes included (s)", tiny["xargs_cpu_s"], tiny["batchpilot_cpu_s"],
         f"{tiny['orchestrator_cpu_ms_per_task']:.2f} ms/task ours"),
    ]  # fmt: skip


def _startup_rows(start: dict[str, Any], tiny: dict[str, Any] | None) -> list[Row]:
    rows: list[Row] = [
        ("`import batchpilot.cli` (-X importtime, s)", None, start["import_cli_median_s"], "-"),
        ("`batchpilot --version`, wall (s)", None, start["version_median_s"], "-"),
        ("`batchpilot --version`, CPU (s)", None, start.get("version_cpu_median_s"), "-"),
    ]
    if tiny is not None:
        rows.append(("local `run`: process start to run_started (s)", None, tiny["run_start_s"], "-"))
    return rows


def _rows(scenario: dict[str, Any]) -> list[Row]:
    base, pilot = scenario["sides"]["baseline"], scenario["sides"]["batchpilot"]
    rows: list[Row] = []
    for stage in ("upload", "submit", "monitor", "total"):
        b, p = base["stages_s"][stage], pilot["stages_s"][stage]
        rows.append((f"wall time {stage} (s)", b, p, _ratio(b, p)))
    kinds = sorted(set(base["requests"]) | set(pilot["requests"]))
    for kind in kinds:
        b, p = base["requests"].get(kind, 0), pilot["requests"].get(kind, 0)
        rows.append((f"requests {kind}", b, p, _ratio(b, p)))
    b, p = base["storage_requests"], pilot["storage_requests"]
    rows.append(("requests storage (blob)", b, p, _ratio(b, p)))
    b, p = base["monitor_requests"], pilot["monitor_requests"]
    rows.append(("monitor requests", b, p, _ratio(b, p)))
    b, p = base["monitor_bytes"] / 1e6, pilot["monitor_bytes"] / 1e6
    rows.append(("monitor bytes received (MB)", b, p, _ratio(b, p)))
    if "tasks_listed" in pilot:  # not in results from before it was measured
        b, p = base["tasks_listed"], pilot["tasks_listed"]
        rows.append(("monitor task records received", b, p, _ratio(b, p)))
    for key, label in (("latency_median_s", "median"), ("latency_p95_s", "p95")):
        b, p = base[key], pilot[key]
        rows.append((f"detection latency {label} (s)", b, p, _ratio(b, p)))
    b, p = base["max_rss_mb"], pilot["max_rss_mb"]
    rows.append(("peak memory, VmHWM (MB)", b, p, _ratio(b, p)))
    return rows


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _local_rows(local: dict[str, Any]) -> list[Row]:
    b, p = local["xargs_median_s"], local["batchpilot_median_s"]
    run = local["batchpilot_run_median_s"]
    label = f"{local['count']} conversions, {local['cores']} cores, median of {local['repeats']} (s)"
    return [
        (label, b, p, f"{p / b:.2f}x of xargs"),
        ("  the run alone (RunStarted..RunFinished)", b, run, f"{run / b:.2f}x of xargs"),
    ]


def table(results: dict[str, Any]) -> str:
    lines = []
    for scenario in _paired(results):
        lines.append(f"\n== {_heading(scenario)}")
        lines.append(f"{'':44} {'baseline':>12} {'batchpilot':>12} {'base/pilot':>11}")
        for label, b, p, ratio in _rows(scenario):
            lines.append(f"{label:44} {_fmt(b):>12} {_fmt(p):>12} {ratio:>11}")
    if "local" in results:
        lines.append("\n== local backend: batchpilot run vs xargs -P (wall time)")
        lines.append(f"{'':44} {'xargs':>12} {'batchpilot':>12} {'':>11}")
        for label, b, p, ratio in _local_rows(results["local"]):
            lines.append(f"{label:44} {_fmt(b):>12} {_fmt(p):>12} {ratio:>11}")
    extra: list[tuple[str, tuple[str, str], list[Row]]] = []
    if scale := _scale_rows(results):
        heads, rows = scale
        extra.append(("scale: batchpilot alone", (heads[0], heads[-1]), rows))
    if sweep := _sweep_rows(results):
        extra.append(("submission vs per-request latency", ("baseline", "batchpilot"), sweep))
    if "local_tiny" in results:
        extra.append(("local backend: tiny tasks vs xargs -P", ("xargs", "batchpilot"),
                      _tiny_rows(results["local_tiny"])))  # fmt: skip
    if "startup" in results:
        extra.append(
            ("start-up", ("", "batchpilot"), _startup_rows(results["startup"], results.get("local_tiny")))
        )
    for title, (left, right), rows in extra:
        lines.append(f"\n== {title}")
        lines.append(f"{'':48} {left:>12} {right:>12}")
        for label, b, p, ratio in rows:
            lines.append(f"{label:48} {_fmt(b):>12} {_fmt(p):>12} {ratio:>11}")
    lines.append("")
    lines.extend(f"target: {line}" for line in targets(results))
    return "\n".join(lines)


def _side(results: dict[str, Any], name: str, side: str) -> dict[str, Any] | None:
    for scenario in results["scenarios"]:
        if scenario["name"] == name:
            found: dict[str, Any] = scenario["sides"][side]
            return found
    return None


def targets(results: dict[str, Any]) -> list[str]:
    out = []

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    names = [s["name"] for s in _paired(results)]
    files = "files-1000" if "files-1000" in names else "files-100"
    tasks = "tasks-10000" if "tasks-10000" in names else next((n for n in names if n.startswith("tasks")), "")
    base, pilot = _side(results, files, "baseline"), _side(results, files, "batchpilot")
    if base and pilot:
        speed = base["stages_s"]["upload"] / pilot["stages_s"]["upload"]
        out.append(f"uploads ({files}) >= 8x faster: {speed:.1f}x {verdict(speed >= 8)}")
    base, pilot = _side(results, tasks, "baseline"), _side(results, tasks, "batchpilot")
    if base and pilot:
        speed = base["stages_s"]["submit"] / pilot["stages_s"]["submit"]
        out.append(f"submission ({tasks}) >= 5x faster: {speed:.1f}x {verdict(speed >= 5)}")
    for name in names:
        base, pilot = _side(results, name, "baseline"), _side(results, name, "batchpilot")
        if base is None or pilot is None:
            continue
        requests = pilot["monitor_requests"] / max(1, base["monitor_requests"])
        size = pilot["monitor_bytes"] / max(1, base["monitor_bytes"])
        latency_ok = (pilot["latency_median_s"] or 0) <= (base["latency_median_s"] or 0)
        out.append(
            f"monitor ({name}) requests <= 1/10: {requests:.3f} {verdict(requests <= 0.1)}; "
            f"bytes <= 1/100: {size:.4f} {verdict(size <= 0.01)}; median latency "
            f"{pilot['latency_median_s']} s vs {base['latency_median_s']} s {verdict(latency_ok)}"
        )
    if "local" in results:
        local = results["local"]
        ratio = local["batchpilot_median_s"] / local["xargs_median_s"]
        out.append(f"local backend within 1.10x of xargs -P: {ratio:.2f}x {verdict(ratio <= 1.10)}")
    pilot = _side(results, tasks, "batchpilot") if tasks else None
    if pilot:
        out.append(f"orchestrator memory ({tasks}) < 150 MB: {pilot['max_rss_mb']} MB "
                   f"{verdict(pilot['max_rss_mb'] < 150)}")  # fmt: skip
    if "local_tiny" in results:
        tiny = results["local_tiny"]
        ratio = tiny["batchpilot_median_s"] / tiny["xargs_median_s"]
        cpu = tiny["orchestrator_cpu_ms_per_task"]
        out.append(f"local tiny tasks ({tiny['count']:,}) within 3x of xargs -P: {ratio:.2f}x "
                   f"{verdict(ratio <= 3)}; orchestrator CPU <= 2 ms per task: {cpu:.2f} ms "
                   f"{verdict(cpu <= 2)}")  # fmt: skip
    if "startup" in results:
        start = results["startup"]
        out.append(f"`batchpilot --version` < 0.3 s: {start['version_median_s']} s "
                   f"{verdict(start['version_median_s'] < 0.3)}; import loads "
                   f"[{start['lazy_modules_loaded']}] of azure, aiohttp, rich")  # fmt: skip
        if "local_tiny" in results:
            begun = results["local_tiny"]["run_start_s"]
            out.append(
                f"local run's start (process start to run_started) < 0.3 s: {begun} s {verdict(begun < 0.3)}"
            )
    scale = {s["inputs"]: s["sides"]["batchpilot"] for s in results["scenarios"] if s.get("group") == "scale"}
    if 100_000 in scale:
        big = scale[100_000]
        out.append(f"orchestrator memory (tasks-100000) < 250 MB: {big['max_rss_mb']} MB "
                   f"{verdict(big['max_rss_mb'] < 250)}")  # fmt: skip
        records = _records_per_task(big, 100_000)
        if records is not None:
            out.append(f"monitor bytes (tasks-100000) <= 1.5 completed-task records per task: {records:.2f} "
                       f"{verdict(records <= 1.5)}")  # fmt: skip
        if 10_000 in scale:
            small = scale[10_000]
            ok = (big["latency_median_s"] or 0) <= (small["latency_median_s"] or 0)
            out.append(f"median detection latency at 100,000 no worse than at 10,000: "
                       f"{big['latency_median_s']} s vs {small['latency_median_s']} s "
                       f"{verdict(ok)}")  # fmt: skip
    sweep = [s for s in results["scenarios"] if s.get("group") == "sweep"]
    far = [s for s in sweep if s["latency_ms"] >= 300]
    for scenario in far:
        base, pilot = scenario["sides"]["baseline"], scenario["sides"]["batchpilot"]
        speed = base["stages_s"]["submit"] / pilot["stages_s"]["submit"]
        out.append(f"submission at {scenario['latency_ms']:.0f} ms per request >= 5x faster than sequential "
                   f"collections: {speed:.1f}x {verdict(speed >= 5)}")  # fmt: skip
    return out


def _markdown_table(rows: list[Row], heads: tuple[str, str, str]) -> list[str]:
    lines = [f"| | {heads[0]} | {heads[1]} | {heads[2]} |", "|---|---:|---:|---:|"]
    lines.extend(f"| {label} | {_fmt(b)} | {_fmt(p)} | {ratio} |" for label, b, p, ratio in rows)
    return lines


def markdown(results: dict[str, Any]) -> str:
    low, high = results["durations_s"]
    lines = [
        "# Benchmarks: batchpilot against the tutorial's approach",
        "",
        "Made by:",
        "",
        f"    {results['command']}",
        "",
        f"on {results['cores']} cores, in {results['elapsed_s']} s. "
        f"Per request: {results['latency_ms']:.0f} ms injected. "
        f"Simulated task durations: {low:.0f}-{high:.0f} s, uniformly spread (per scenario: the time scale).",
        "",
        METHOD,
        "",
        "![chart](benchmarks.png)",
        "",
    ]
    for scenario in _paired(results):
        lines.append(f"## {_heading(scenario)}")
        lines.append("")
        lines.extend(_markdown_table(_rows(scenario), ("baseline", "batchpilot", "baseline/batchpilot")))
        lines.append("")
    if "local" in results:
        local = results["local"]
        lines.append(
            "## Local backend: `batchpilot run --sample N --nodes CORES` vs `xargs -P CORES -n1 ffmpeg`"
        )
        lines.append("")
        lines.extend(_markdown_table(_local_rows(local), ("xargs", "batchpilot", "ratio")))
        lines.append("")
        lines.append(
            f"Runs (s): batchpilot {local['batchpilot_s']}, xargs {local['xargs_s']}. The first row "
            "is the whole CLI process (interpreter start and imports included), the second the run as the "
            "CLI reports it (staging, tasks, downloads). The samples are in place before each timed run."
        )
        lines.append("")
    if scale := _scale_rows(results):
        heads, rows = scale
        runs = [sc for sc in results["scenarios"] if sc.get("group") == "scale"]
        first = runs[0]
        lines.append(
            f"## Scale: batchpilot alone, {' and '.join(heads)} (25 tasks per slot, durations scaled by "
            f"1/{first['time_scale']:.0f}, no output files)"
        )
        lines.append("")
        lines.extend(_markdown_table(rows, (heads[0], heads[-1], "ratio")))
        lines.append("")
        lines.append(
            "Run at " + ", ".join(f"{sc['name']} {sc.get('started_at', '?')} UTC" for sc in runs) + ". "
            "Completed-task record: "
            + ", ".join(f"{sc['sides']['batchpilot'].get('completed_record_bytes')} bytes" for sc in runs)
            + " (one completed task as the monitor selects it, in the emulator's answer)."
        )
        lines.append("")
    if sweep := _sweep_rows(results):
        lines.append("## Submission as a remote region sees it: 10,000 tasks, latency per request swept")
        lines.append("")
        lines.extend(_markdown_table(sweep, ("baseline", "batchpilot", "baseline/batchpilot")))
        lines.append("")
    if "local_tiny" in results:
        tiny = results["local_tiny"]
        lines.append(
            "## Local backend, tiny tasks: `batchpilot run --command 'gzip -k {input}'` vs `xargs -P`"
        )
        lines.append("")
        lines.extend(_markdown_table(_tiny_rows(tiny), ("xargs", "batchpilot", "ratio")))
        lines.append("")
        lines.append(
            f"Runs: {tiny['runs']}. CPU is the children's as the kernel counts it (user + system, the "
            "gzips included on both sides): the difference over the task count is the orchestrator's."
        )
        lines.append("")
    if "startup" in results:
        start = results["startup"]
        lines.append("## Start-up")
        lines.append("")
        lines.extend(_markdown_table(_startup_rows(start, results.get("local_tiny")), ("", "batchpilot", "")))
        lines.append("")
        lines.append(
            f"Runs (s): import {start['import_cli_s']}, --version {start['version_s']}. Loaded by the "
            f"import, of azure/aiohttp/rich/prometheus_client: [{start['lazy_modules_loaded']}]. Heaviest "
            f"modules (own import time, ms): {start['heaviest_modules_ms']}."
        )
        lines.append("")
    lines.append("## Targets")
    lines.append("")
    lines.extend(f"- {line}" for line in targets(results))
    lines.append("")
    if ANALYSIS.exists():
        lines.append(ANALYSIS.read_text())
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = _paired(results)
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    stages = ("upload", "submit", "monitor")
    width = 0.38
    for index, (metric, title, ax) in enumerate(
        (("stages", "wall time per stage (s, log)", axes[0]),
         ("monitor_requests", "monitor requests (log)", axes[1]),
         ("monitor_bytes", "monitor bytes received (MB, log)", axes[2]))
    ):  # fmt: skip
        labels: list[str] = []
        base_values: list[float] = []
        pilot_values: list[float] = []
        for scenario in scenarios:
            base, pilot = scenario["sides"]["baseline"], scenario["sides"]["batchpilot"]
            if index == 0:
                for stage in stages:
                    if base["stages_s"][stage] < 0.01:
                        continue
                    labels.append(f"{scenario['name']}\n{stage}")
                    base_values.append(base["stages_s"][stage])
                    pilot_values.append(max(pilot["stages_s"][stage], 1e-3))
            else:
                labels.append(scenario["name"])
                scale = 1e6 if metric == "monitor_bytes" else 1
                base_values.append(base[metric] / scale)
                pilot_values.append(max(pilot[metric] / scale, 1e-6))
        positions = range(len(labels))
        ax.bar([x - width / 2 for x in positions], base_values, width, label="baseline (tutorial)")
        ax.bar([x + width / 2 for x in positions], pilot_values, width, label="batchpilot")
        ax.set_xticks(list(positions), labels, fontsize=7, rotation=45 if index == 0 else 0)
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "benchmarks.md").write_text(markdown(results))
    if not chart(results, folder / "benchmarks.png"):
        print("bench: matplotlib is not installed (pip install -e '.[bench]'); no chart written")
