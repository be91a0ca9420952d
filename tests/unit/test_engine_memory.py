"""A run's submission (issue 17.3): what it keeps while its tasks run (100,000 tasks must not hold their
staged inputs until the end, about 45 MB), and what it raises while task definitions are built as sent."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot import CleanupPolicy, Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.errors import ConfigError
from batchpilot.events import Event, RunFinished, TasksSubmitted
from batchpilot.records import Permission
from batchpilot.spec import StagedInput
from batchpilot.testing import FakeClock, InMemoryBackend, Outcome, ScriptedTask, Succeed


def upper(task: ScriptedTask) -> Outcome:
    [(name, content)] = task.inputs.items()
    return Succeed(files={f"{Path(name).stem}.up": content.upper()})


def live(kind: type) -> int:
    return sum(isinstance(o, kind) for o in gc.get_objects())


def workload_of(tmp_path: Path, count: int) -> Workload:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i}.txt").write_bytes(b"x")
    return Workload(
        name="memory",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="cat {input}", outputs=("{stem}.up",)),
        pool=PoolSpec("memory-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
    )


async def test_staged_inputs_and_definitions_are_not_kept_once_submitted(tmp_path: Path) -> None:
    workload = workload_of(tmp_path, 150)
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


async def test_a_refusal_to_sign_the_tasks_urls_is_raised_as_it_is_before_any_task_is_added(
    tmp_path: Path,
) -> None:
    backend = InMemoryBackend(script=upper, clock=FakeClock())

    async def refuse(container: str, permissions: Permission, expiry: timedelta) -> str:
        raise ConfigError("with Entra ID, the tokens given to tasks last at most 7 days")

    backend.storage.container_url = refuse  # type: ignore[method-assign]
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        with pytest.raises(ConfigError, match="7 days"):
            await orchestrator.run(workload_of(tmp_path, 3))
    assert not [call for call in backend.compute.calls if call[0] == "add_tasks"]
