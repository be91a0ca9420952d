"""A declared output that was never produced is a failure (issue 15 item 4): the pure check, the template's
optional outputs, the workload file's syntax, and the engine on the in-memory backend (the same downloader
code that holds the local backend and the emulator to it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from batchpilot.engine import Orchestrator
from batchpilot.errors import ConfigError
from batchpilot.events import Event, TaskOutputsMissing
from batchpilot.plan import plan_lines
from batchpilot.spec import PoolSpec, TaskTemplate, Workload
from batchpilot.subscribers.download import outputs_missing_reason, unmatched_outputs
from batchpilot.testing import FakeClock, InMemoryBackend, ScriptedTask, Succeed
from batchpilot.workload_file import Defaults, load_workload, one_off_workload

DEFAULTS = Defaults("outputs", PoolSpec("outputs-pool", dedicated_nodes=1))


@pytest.mark.parametrize(
    ("patterns", "blobs", "missing"),
    [
        (["a.txt.gz"], [], ["a.txt.gz"]),
        (["a.txt.gz"], ["t1/a.txt.gz"], []),
        (["a.txt.gz"], ["t2/a.txt.gz", "_logs/t1/stderr.txt", "t1x/a.txt.gz"], ["a.txt.gz"]),
        (["out/a.png"], ["t1/out/a.png"], []),
        (["*.png"], ["t1/a.png"], []),
        (["*.png"], ["t1/a.jpg"], ["*.png"]),
        (["frames/*.png"], ["t1/0001.png"], []),  # the local backend keeps a match's file name
        (["frames/*.png"], ["t1/frames/0001.png"], []),  # Batch may keep its path under the folder
        (["**/*.csv"], ["t1/deep/er/x.csv"], []),
        (["a", "b", "c?"], ["t1/b", "t1/c1"], ["a"]),
        (["A.txt"], ["t1/a.txt"], ["A.txt"]),  # blob names are case-sensitive
    ],
)
def test_unmatched_outputs(patterns: list[str], blobs: list[str], missing: list[str]) -> None:
    assert unmatched_outputs("t1", patterns, blobs) == tuple(missing)


def test_the_reason_names_the_patterns_in_one_bounded_line() -> None:
    reason = outputs_missing_reason([f"p{n}.out" for n in range(40)])
    assert reason.startswith("no file matched output pattern 'p0.out', 'p1.out'")
    assert "and 35 more" in reason
    assert "\n" not in reason
    assert len(reason) < 300


def test_optional_outputs_are_not_required() -> None:
    template = TaskTemplate("cmd {input}", ("{stem}.gz", "{stem}.log"), optional_outputs=("{stem}.log",))
    values = {"input": "a.txt", "input_name": "a.txt", "stem": "a", "task_id": "t1"}
    assert template.render_outputs(values) == ("a.gz", "a.log")
    assert template.required_outputs(values) == ("a.gz",)
    with pytest.raises(ConfigError, match=r"optional output 'x\.log' is not one of the outputs"):
        TaskTemplate("cmd", ("a",), optional_outputs=("x.log",))


def test_a_workload_file_marks_an_output_optional(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    path = tmp_path / "w.toml"
    path.write_text(
        '[workload]\ninputs = "*.txt"\ncommand = "gzip -k {input}"\n'
        'outputs = ["{input_name}.gz", { pattern = "{stem}.log", optional = true }, '
        '{ pattern = "{stem}.sum" }]\n'
    )
    template = load_workload(path, DEFAULTS).template
    assert template.outputs == ("{input_name}.gz", "{stem}.log", "{stem}.sum")
    assert template.optional_outputs == ("{stem}.log",)
    for bad in ('{ pattern = "x", optional = "yes" }', '{ pattern = "x", other = 1 }', "{ optional = true }"):
        path.write_text(f'[workload]\ninputs = "*.txt"\ncommand = "c"\noutputs = [{bad}]\n')
        with pytest.raises(ConfigError, match=r"w.toml:4: workload.outputs: must be a list of file patterns"):
            load_workload(path, DEFAULTS)


def test_a_one_off_command_takes_optional_outputs(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    workload = one_off_workload("c {input}", ("*.gz",), tmp_path, DEFAULTS, optional_outputs=("*.log",))
    assert workload.template.outputs == ("*.gz", "*.log")
    assert workload.template.optional_outputs == ("*.log",)


def _workload(tmp_path: Path, template: TaskTemplate) -> Workload:
    (tmp_path / "in").mkdir(exist_ok=True)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_text(name)
    return Workload(
        name="outputs",
        inputs=(tmp_path / "in" / "a.txt", tmp_path / "in" / "b.txt"),
        template=template,
        pool=DEFAULTS.pool,
        download_to=tmp_path / "out",
    )


def _writes_only_a(task: ScriptedTask) -> Succeed:
    """Every task succeeds; only the task of a.txt writes its output."""
    name = next(iter(task.inputs))
    return Succeed(files={f"{name}.gz": b"gz"} if name.startswith("a") else {})


@pytest.mark.parametrize("download", [True, False])
async def test_the_engine_fails_a_succeeded_task_without_its_outputs(tmp_path: Path, download: bool) -> None:
    backend = InMemoryBackend(script=_writes_only_a, clock=FakeClock())
    seen: list[Event] = []

    async def collect(event: Event) -> None:
        seen.append(event)

    workload = _workload(tmp_path, TaskTemplate("gzip -k {input}", ("{input_name}.gz",)))
    if not download:
        workload = replace(workload, download_to=None)
    async with Orchestrator(backend, subscribers=[collect], clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(workload)
    assert not summary.ok
    assert summary.succeeded == 1
    [failed] = summary.failed
    assert failed.reason.startswith("no file matched output pattern 'b.txt.gz'")
    assert failed.exit_code == 0
    [missing] = [event for event in seen if isinstance(event, TaskOutputsMissing)]
    assert missing.patterns == ("b.txt.gz",)
    assert (tmp_path / "out" / "a.txt.gz").exists() is download
    # A failed run keeps its input container, for the re-run.
    assert await backend.storage.list_blobs(workload.input_container) != []


async def test_an_optional_output_may_be_missing_and_no_outputs_costs_no_listing(tmp_path: Path) -> None:
    backend = InMemoryBackend(script=_writes_only_a, clock=FakeClock())
    template = TaskTemplate("gzip -k {input}", ("{input_name}.gz",), optional_outputs=("{input_name}.gz",))
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(_workload(tmp_path, template))
    assert summary.ok, summary.failed
    assert summary.downloaded == 1


def test_plan_says_which_outputs_are_optional(tmp_path: Path) -> None:
    template = TaskTemplate(
        "gzip -k {input}", ("{input_name}.gz", "{stem}.log"), optional_outputs=("{stem}.log",)
    )
    workload = _workload(tmp_path, template)
    lines = plan_lines(workload, [], backend="local")
    assert lines[-1].startswith("  outputs: {input_name}.gz, {stem}.log (optional) -> container ")
