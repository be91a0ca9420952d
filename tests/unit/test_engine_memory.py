"""What a run keeps while its tasks run (issue 17.3): 100,000 tasks must not hold their staged inputs until
the end (about 45 MB)."""

from __future__ import annotations

import gc
from pathlib import Path

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.events import Event, RunFinished, TasksSubmitted
from batchpilot.spec import StagedInput
from batchpilot.testing import FakeClock, InMemoryBackend, Outcome, ScriptedTask, Succeed


def upper(task: ScriptedTask) -> Outcome:
    [(name, content)] = task.inputs.items()
    return Succeed(files={f"{Path(name).stem}.up": content.upper()})


def live(kind: type) -> int:
    return sum(isinstance(o, kind) for o in gc.get_objects())


async def test_staged_inputs_and_definitions_are_not_kept_once_submitted(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(150):
        (folder / f"f{i}.txt").write_bytes(b"x")
    workload = Workload(
        name="memory",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="cat {input}", outputs=("{stem}.up",)),
        pool=PoolSpec("memory-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
    )
    counts: dict[str, int] = {}

    async def count(event: Event) -> None:
        if isinstance(event, TasksSubmitted) and "submitting" not in counts:
            counts["submitting"] = live(StagedInput)
        if isinstance(event, RunFinished):  # the run has not returned yet
            counts["finished"] = live(StagedInput)

    backend = InMemoryBackend(script=upper, clock=FakeClock())
    async with Orchestrator(backend, subscribers=[count], clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(workload)
    assert summary.ok
    assert counts["submitting"] >= 150  # the count sees them while they are needed
    assert counts["finished"] == 0  # the task definitions' own test is test_submit's
