from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpilot.errors import ConfigError
from batchpilot.spec import (
    BATCH_ID_MAX_LENGTH,
    BlobInputs,
    CleanupPolicy,
    PoolSpec,
    StagedInput,
    TaskTemplate,
    UploadCondition,
    Workload,
    batch_id,
    container_name,
)

VALID_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VALID_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


@given(st.text(min_size=0, max_size=300))
def test_ids_follow_batch_rules_for_any_name(name):
    assert VALID_ID.match(batch_id(name, unique_by=name))
    assert VALID_ID.match(batch_id("prefix", name))


@given(st.text(max_size=200), st.text(max_size=200))
def test_names_that_differ_get_different_ids(first, second):
    if first != second:
        assert batch_id(first, unique_by=first) != batch_id(second, unique_by=second)


def test_names_differing_only_in_dropped_characters_or_case_stay_unique():
    names = ["a b.mp4", "a+b.mp4", "a-b.mp4", "A-B.mp4", "a\u00e9b.mp4"]
    ids = {batch_id(Path(n).stem, unique_by=n).lower() for n in names}  # Batch ids are case-insensitive
    assert len(ids) == len(names)


def test_long_names_are_cut_to_64_with_the_hash_kept():
    task_id = batch_id("x" * 500, unique_by="x" * 500)
    assert len(task_id) == BATCH_ID_MAX_LENGTH
    assert re.fullmatch(r"x+-[0-9a-f]{8}", task_id)


def test_ids_without_hash_are_readable():
    assert batch_id("batchpilot", "ffmpeg sample 5") == "batchpilot-ffmpeg-sample-5"


@given(st.text(max_size=200))
def test_container_names_follow_blob_rules(name):
    assert VALID_CONTAINER.match(container_name(name, "input")), container_name(name, "input")


def test_staged_input_task_id_depends_on_content_and_name():
    first = StagedInput.for_path(Path("/in/a.mp4"), "0" * 32, 10)
    assert first.task_id.startswith("a-")
    assert StagedInput.for_path(Path("/in/a.mp4"), "1" * 32, 10).task_id != first.task_id
    assert StagedInput.for_path(Path("/other/a.mp4"), "0" * 32, 10).task_id == first.task_id


def test_blob_inputs_are_named_by_their_blob_and_fingerprinted_by_md5_or_size():
    blob = StagedInput.for_blob("videos/2024/clip one.mp4", "ab" * 16, 100)
    assert (blob.name, blob.blob_name, blob.path) == ("clip one.mp4", "videos/2024/clip one.mp4", None)
    assert blob.task_id.startswith("clip-one-")
    assert blob.template_values() == {
        "input": "clip one.mp4", "input_name": "clip one.mp4", "stem": "clip one",
        "task_id": blob.task_id,
    }  # fmt: skip
    same_name_elsewhere = StagedInput.for_blob("videos/2025/clip one.mp4", "ab" * 16, 100)
    assert same_name_elsewhere.task_id != blob.task_id
    no_md5 = StagedInput.for_blob("x.bin", None, 7)
    assert no_md5.fingerprint == "size-7"
    assert StagedInput.for_blob("x.bin", None, 8).task_id != no_md5.task_id


def test_blob_inputs_use_the_users_container_and_never_delete_it():
    workload = Workload(
        name="w", inputs=BlobInputs("raw-videos", "2024/"), template=TaskTemplate("true", ()),
        pool=PoolSpec("p"), cleanup=CleanupPolicy(delete_input_container=True),
    )  # fmt: skip
    assert workload.input_container == "raw-videos"
    assert workload.cleanup.delete_input_container is False


def test_template_rejects_unknown_placeholders_before_anything_runs():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{output\}"):
        TaskTemplate(command="tool {input} {output}", outputs=())
    with pytest.raises(ConfigError, match="output pattern"):
        TaskTemplate(command="tool {input}", outputs=("{nope}.txt",))
    with pytest.raises(ConfigError, match="malformed template"):
        TaskTemplate(command="tool {input", outputs=())


def test_template_quotes_values_for_the_command_but_not_for_patterns():
    template = TaskTemplate(command="ffmpeg -i {input} {stem}.mp3", outputs=("{stem}.mp3",))
    values = {"input": "my file;rm -rf x.mp4", "stem": "my file;rm -rf x", "input_name": "", "task_id": "t"}
    command = template.render_command(values)
    assert shlex.split(command) == ["ffmpeg", "-i", "my file;rm -rf x.mp4", "my file;rm -rf x.mp3"]
    assert template.render_outputs(values) == ("my file;rm -rf x.mp3",)


@pytest.mark.parametrize(
    ("condition", "succeeded", "applies"),
    [
        (UploadCondition.TASK_SUCCESS, True, True),
        (UploadCondition.TASK_SUCCESS, False, False),
        (UploadCondition.TASK_FAILURE, False, True),
        (UploadCondition.TASK_FAILURE, True, False),
        (UploadCondition.TASK_COMPLETION, True, True),
        (UploadCondition.TASK_COMPLETION, False, True),
    ],
)
def test_upload_conditions(condition, succeeded, applies):
    assert condition.applies(succeeded=succeeded) is applies


def test_pool_needs_nodes_and_slots():
    assert PoolSpec("p", dedicated_nodes=2, spot_nodes=1, task_slots_per_node=4).total_slots == 12
    with pytest.raises(ConfigError, match="at least one node"):
        PoolSpec("p", dedicated_nodes=0, spot_nodes=0)
    with pytest.raises(ConfigError):
        PoolSpec("p", task_slots_per_node=0)


def test_workload_derives_job_and_container_names():
    workload = Workload(
        name="My Run!", inputs=(), template=TaskTemplate("true", ()), pool=PoolSpec("p", dedicated_nodes=1)
    )
    assert workload.job_id == "batchpilot-My-Run"
    assert workload.input_container == "batchpilot-my-run-input"
    assert workload.output_container == "batchpilot-my-run-output"
