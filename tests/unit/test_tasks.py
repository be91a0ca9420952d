"""Building a task is one pure function: the task the engine submits is the one `batchpilot plan` shows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio

from batchpilot.engine import Orchestrator
from batchpilot.plan import plan_lines, planned_task
from batchpilot.records import Permission
from batchpilot.spec import (
    ContainerSettings,
    OutputFile,
    PoolSpec,
    ResourceFile,
    StagedInput,
    TaskConstraints,
    TaskSpec,
    TaskTemplate,
    UploadCondition,
    Workload,
)
from batchpilot.tasks import LOGS_PREFIX, build_task, output_path


def workload(tmp_path: Path) -> Workload:
    return Workload(
        name="tasks",
        inputs=(tmp_path / "a clip.mp4", tmp_path / "b.mp4"),
        template=TaskTemplate(
            command="ffmpeg -i {input} {output_dir}/{stem}.mp3",
            outputs=("{stem}.mp3", "*.log"),
            output_dir="out",
            constraints=TaskConstraints(max_wall_clock=timedelta(minutes=5), max_task_retry_count=2),
            container=ContainerSettings("ffmpeg:7", "--rm"),
        ),
        pool=PoolSpec("tasks-pool"),
        environment=(("MODE", "fast"),),
    )


def staged(name: str = "a clip.mp4") -> StagedInput:
    return StagedInput.for_path(Path("/in") / name, "0" * 32, 10)


class PlaceholderStorage:
    """Answers the SAS URL requests with the placeholders `plan` uses, and writes down what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None, Permission]] = []

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        self.asked.append((container, None, permissions))
        return container

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        self.asked.append((container, blob_name, permissions))
        return f"{container}/{blob_name}"


def test_a_task_has_its_input_its_outputs_on_success_and_its_logs_on_failure():
    item = staged()
    template = workload(Path("/tmp")).template
    task = build_task(template, item, input_url="IN", output_url="OUT", environment=(("K", "V"),))
    assert task.task_id == item.task_id
    # A name with a space is staged and named on the node by a safe name (issue 16 item 1); the output it
    # leaves is uploaded under the input's own name.
    assert task.command_line == template.render_command(item.node_values())
    assert task.resource_files == (ResourceFile("IN", f"{item.task_id}.mp4"),)
    assert task.output_files == (
        OutputFile(
            f"out/{item.task_id}.mp3", "OUT", f"{item.task_id}/a clip.mp3", UploadCondition.TASK_SUCCESS
        ),
        OutputFile("out/*.log", "OUT", item.task_id, UploadCondition.TASK_SUCCESS),
        OutputFile("../std*.txt", "OUT", f"{LOGS_PREFIX}/{item.task_id}", UploadCondition.TASK_FAILURE),
    )
    assert (task.constraints, task.container) == (template.constraints, template.container)
    assert task.environment == (("K", "V"),)
    assert task.display_name == "a clip.mp4"


def test_the_display_name_is_cut_to_batchs_limit():
    task = build_task(
        workload(Path("/tmp")).template, staged("x" * 2000 + ".mp4"), input_url="IN", output_url="OUT"
    )
    assert len(task.display_name) == 1024


def test_a_wildcard_output_goes_to_a_virtual_folder_and_a_file_to_a_blob():
    assert output_path("t1", "*.mp3") == "t1"
    assert output_path("t1", "out/[ab].txt") == "t1"
    assert output_path("t1", "song.mp3") == "t1/song.mp3"


def test_the_task_the_engine_submits_is_the_one_plan_shows(tmp_path: Path):
    job = workload(tmp_path)
    items = [staged(), staged("b.mp4")]
    storage = PlaceholderStorage()
    backend: Any = SimpleNamespace(storage=storage, name="fake")

    async def build() -> list[TaskSpec]:
        return [task async for task in await Orchestrator(backend)._build_tasks(job, items)]

    built = anyio.run(build)
    assert built == [planned_task(job, item) for item in items]
    # The engine asked for tokens that let a task read its input and write its outputs, nothing more.
    assert storage.asked == [
        (job.output_container, None, Permission.CREATE | Permission.WRITE),
        (job.input_container, "a clip.mp4", Permission.READ),
        (job.input_container, "b.mp4", Permission.READ),
    ]


def test_plan_shows_every_output_file_of_a_task_including_its_failure_logs(tmp_path: Path):
    job = workload(tmp_path)
    item = staged()
    lines = plan_lines(job, [item], backend="local")
    at = lines.index(f"    {item.task_id}: {planned_task(job, item).command_line}")
    assert lines[at + 1 : at + 4] == [
        f"      on success: out/{item.task_id}.mp3 -> container {job.output_container}: "
        f"{item.task_id}/a clip.mp3",
        f"      on success: out/*.log -> container {job.output_container}: {item.task_id}",
        f"      on failure: ../std*.txt -> container {job.output_container}: _logs/{item.task_id}",
    ]


def test_tasks_whose_required_outputs_are_the_same_share_one_tuple_of_them():
    """The downloader keeps each task's required patterns for the run (100,000 tasks): a wildcard's are the
    same for every task, and held once."""
    from batchpilot.tasks import required_downloads

    template = TaskTemplate("x {input}", ("out/*.png", "{stem}.txt"), optional_outputs=())
    a, b = staged("a.mp4"), staged("b.mp4")
    wildcard = TaskTemplate("x {input}", ("out/*.png",))
    assert required_downloads(wildcard, a) == required_downloads(wildcard, b) == ("out/*.png",)
    assert required_downloads(wildcard, a) is required_downloads(wildcard, b)
    assert required_downloads(template, a) == ("out/*.png", "a.txt")
    assert required_downloads(template, b) == ("out/*.png", "b.txt")
