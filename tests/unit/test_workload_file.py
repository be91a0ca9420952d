"""Workload files: TOML into the same dataclasses as the API, and one line per mistake naming key and line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot.backends.local import executor
from batchpilot.backends.local.compute import LocalCompute
from batchpilot.backends.local.storage import FileStager
from batchpilot.errors import ConfigError
from batchpilot.spec import (
    BlobInputs,
    ContainerSettings,
    PoolPolicy,
    PoolSpec,
    TaskConstraints,
    TaskTemplate,
)
from batchpilot.workload_file import Defaults, load_workload, one_off_workload
from batchpilot.workloads import ffmpeg

DEFAULTS = Defaults("fallback", PoolSpec("default-pool", dedicated_nodes=3))
REPO = Path(__file__).resolve().parents[2]

GZIP = """\
[workload]
name = "gzip-logs"
inputs = "logs/*.log"
command = "gzip -k {input}"
outputs = ["{input_name}.gz"]
timeout = "2h"
environment = { LEVEL = "9" }

[workload.constraints]
max_wall_clock = 90
max_retries = 2
retention = "1d"
"""


def write(tmp_path: Path, text: str, *, logs: int = 2) -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)
    for n in range(logs):
        (tmp_path / "logs" / f"b{n}.log").write_text("x")
    path = tmp_path / "w.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_workload(write(tmp_path, text), DEFAULTS)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_workload_file_maps_to_the_api_dataclasses(tmp_path: Path):
    workload = load_workload(write(tmp_path, GZIP), DEFAULTS)

    assert workload.name == "gzip-logs"
    assert workload.job_id == "batchpilot-gzip-logs"
    assert workload.inputs == (tmp_path / "logs" / "b0.log", tmp_path / "logs" / "b1.log")
    assert workload.template == TaskTemplate(
        command="gzip -k {input}",
        outputs=("{input_name}.gz",),
        constraints=TaskConstraints(timedelta(seconds=90), 2, timedelta(days=1)),
    )
    assert workload.pool == DEFAULTS.pool
    assert workload.timeout == timedelta(hours=2)
    assert workload.environment == (("LEVEL", "9"),)


def test_pool_and_container_settings(tmp_path: Path):
    text = (
        GZIP
        + "[workload.pool]\nspot_nodes = 4\ntask_slots_per_node = 2\n"
        + '[workload.container]\nimage = "alpine:3"\n'
    )
    workload = load_workload(write(tmp_path, text), DEFAULTS)

    # One node count given: the other is zero, not the default's.
    assert (workload.pool.dedicated_nodes, workload.pool.spot_nodes, workload.pool.task_slots_per_node) == (
        0,
        4,
        2,
    )
    assert workload.template.container == ContainerSettings("alpine:3")
    assert workload.pool.container_images == ("alpine:3",)


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            ('"gzip -k {input}"', '"gzip -k {inptu}"'),
            "w.toml:4: workload.command: unknown placeholder {inptu}",
        ),
        (('["{input_name}.gz"]', '["{out}.gz"]'), "w.toml:5: workload.outputs: unknown placeholder {out}"),
        (('"gzip -k {input}"', '"gzip -k {input"'), "w.toml:4: workload.command: malformed template"),
        (
            ("max_retries = 2", "max_retries = -2"),
            "w.toml:11: workload.constraints.max_retries: must be -1 (retry without limit) or a whole number"
            " from 0 to 100, not -2",
        ),
        (
            ("max_retries = 2", "max_retries = 101"),
            "w.toml:11: workload.constraints.max_retries: must be -1 (retry without limit) or a whole number"
            " from 0 to 100, not 101",
        ),
        (("max_retries = 2", "max_retries = 2.5"), "w.toml:11: workload.constraints.max_retries: must be -1"),
        (("max_retries = 2", 'max_retries = "3"'), "w.toml:11: workload.constraints.max_retries: must be -1"),
        (
            ("max_retries = 2", "max_retries = true"),
            "w.toml:11: workload.constraints.max_retries: must be -1",
        ),
        (("max_retries = 2", "max_retrys = 2"), "w.toml:11: workload.constraints.max_retrys: unknown key"),
        (('timeout = "2h"', 'timeout = "soon"'), "w.toml:6: workload.timeout: must be a duration"),
        (('inputs = "logs/*.log"', 'inputs = "nothing/*"'), "w.toml:3: workload.inputs: no files match"),
        (('command = "gzip -k {input}"\n', ""), "w.toml: workload.command: missing; it is required"),
        (('retention = "1d"', 'retention = "1d'), "w.toml: not valid TOML"),
        (
            ('environment = { LEVEL = "9" }', "environment = { LEVEL = 9 }"),
            "w.toml:7: workload.environment.LEVEL",
        ),
        (
            ('inputs = "logs/*.log"', 'inputs = { container = "Raw_Logs" }'),
            "w.toml:3: workload.inputs.container: must be a container name",
        ),
        (
            ('inputs = "logs/*.log"', 'inputs = { container = "raw", prefx = "a/" }'),
            "w.toml:3: workload.inputs.prefx: unknown key",
        ),
        (
            ('inputs = "logs/*.log"', 'inputs = { prefix = "a/" }'),
            "w.toml:3: workload.inputs.container: missing",
        ),
    ],
)
def test_mistakes_are_one_line_naming_key_and_line(tmp_path: Path, replace, expected):
    message = error(tmp_path, GZIP.replace(*replace))
    assert expected.split("w.toml", 1)[1] in message
    if "not valid TOML" in expected:
        assert "line 12" in message  # tomllib's own position


@pytest.mark.parametrize("count", [-1, 0, 1, 100])
def test_max_retries_takes_batchs_values_minus_one_meaning_without_limit(tmp_path: Path, count: int):
    text = GZIP.replace("max_retries = 2", f"max_retries = {count}")
    text += f'\n[workload.pool.start_task]\ncommand_line = "true"\nmax_retries = {count}\n'
    workload = load_workload(write(tmp_path, text), DEFAULTS)
    assert workload.template.constraints.max_task_retry_count == count
    assert workload.pool.start_task is not None
    assert workload.pool.start_task.max_task_retry_count == count


def test_the_start_tasks_max_retries_is_checked_the_same_way(tmp_path: Path):
    text = GZIP + '\n[workload.pool.start_task]\ncommand_line = "true"\nmax_retries = 1000\n'
    message = error(tmp_path, text)
    assert "workload.pool.start_task.max_retries: must be -1 (retry without limit)" in message
    assert message.endswith("not 1000")


def test_unknown_placeholders_are_refused_before_anything_is_read():
    with pytest.raises(ConfigError, match=r"--command/--outputs: workload\.command: unknown placeholder"):
        one_off_workload("tool {file}", (), Path("/nonexistent"), DEFAULTS)


def test_the_shipped_example_is_the_documented_one():
    assert (REPO / "examples" / "ffmpeg.toml").read_text() == ffmpeg.WORKLOAD_FILE.read_text()
    workload = load_workload(ffmpeg.WORKLOAD_FILE, DEFAULTS, inputs=(Path("a.mp4"),))
    assert workload.template.render_command({"input": "a.mp4", "stem": "a"}).startswith("ffmpeg ")
    assert workload.pool.start_task is not None


def test_output_dir_is_created_and_outputs_are_matched_inside_it():
    template = TaskTemplate("tool {input} {output_dir}/{stem}.txt", ("{stem}.txt",), output_dir="res/")
    command = template.render_command({"input": "a b.csv", "stem": "a b"})
    assert command == "/bin/sh -c 'mkdir -p \"$0\" && exec \"$@\"' res tool 'a b.csv' res/'a b'.txt"
    assert template.in_working_dir("x.txt") == "res/x.txt"
    assert TaskTemplate("tool", ()).render_command({}) == "tool"
    with pytest.raises(ConfigError, match="inside the task's working dir"):
        TaskTemplate("tool", (), output_dir="../up")


def test_container_command_line_mounts_the_working_dir_and_passes_env_by_name(tmp_path: Path):
    argv = executor.container_argv(
        "/usr/bin/podman",
        ContainerSettings("alpine:3", "--network none"),
        ["gzip", "-k", "a.log"],
        tmp_path,
        ["SECRET", "AZ_BATCH_TASK_ID"],
    )
    wd = str(tmp_path)
    assert argv == [
        "/usr/bin/podman", "run", "--rm", "--init", "--volume", f"{wd}:{wd}", "--workdir", wd,
        "-e", "AZ_BATCH_TASK_ID", "-e", "SECRET", "--network", "none", "alpine:3", "gzip", "-k", "a.log",
    ]  # fmt: skip


async def test_local_pool_with_containers_is_refused_without_docker_or_podman(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(executor.shutil, "which", lambda name: None)
    compute = LocalCompute(tmp_path, stager=FileStager())
    with pytest.raises(ConfigError, match="neither docker nor podman is on PATH"):
        await compute.ensure_pool(PoolSpec("p", container_images=("alpine:3",)))
    assert not (tmp_path / "pools").exists()  # nothing was created


def test_inputs_can_be_blobs_already_in_a_container(tmp_path: Path):
    text = GZIP.replace('inputs = "logs/*.log"', 'inputs = { container = "raw-logs", prefix = "2024/" }')
    workload = load_workload(write(tmp_path, text), DEFAULTS)
    assert workload.inputs == BlobInputs("raw-logs", "2024/")
    assert workload.input_container == "raw-logs"
    assert workload.cleanup.delete_input_container is False  # the user's container, never the run's


def test_the_pool_policy_is_a_named_choice(tmp_path: Path):
    workload = load_workload(write(tmp_path, GZIP + '[workload.cleanup]\npool = "scale-to-zero"\n'), DEFAULTS)
    assert workload.cleanup.pool is PoolPolicy.SCALE_TO_ZERO
    assert load_workload(write(tmp_path, GZIP), DEFAULTS).cleanup.pool is PoolPolicy.KEEP
    message = error(tmp_path, GZIP + "[workload.cleanup]\npool = true\n")
    assert 'workload.cleanup.pool: must be one of "keep", "scale-to-zero", "delete", not true' in message
