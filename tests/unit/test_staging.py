"""Staging hashes local inputs in worker-thread trips of many inputs each, several trips at once: the result
keeps the inputs' order, and unreadable inputs are still one error naming the first in that order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batchpilot import staging
from batchpilot.errors import UnreadableInputError
from batchpilot.spec import PoolSpec, StagedInput, TaskTemplate, Workload
from batchpilot.staging import stage_inputs
from batchpilot.tasks import identify


def _inputs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"in-{index:04d}.txt"
        path.write_bytes(f"content {index}".encode() * (index % 7))
        paths.append(path)
    return paths


def _workload(paths: list[Path]) -> Workload:
    return Workload("w", tuple(paths), TaskTemplate("gzip -k {input}", ("{input_name}.gz",)), PoolSpec("p"))


@pytest.mark.parametrize("trip_seconds", [0.0, 60.0])  # a trip per input; one trip takes them all
async def test_inputs_are_staged_in_their_order_with_their_digests_and_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trip_seconds: float
) -> None:
    monkeypatch.setattr(staging, "_TRIP_SECONDS", trip_seconds)
    # Not in name order: the result follows the workload's order, not the order trips end in.
    paths = list(reversed(_inputs(tmp_path / "in", 300)))
    workload = _workload(paths)
    staged = await stage_inputs(workload, None, concurrency=4)
    assert [item.path for item in staged] == paths
    for item, path in zip(staged, paths, strict=True):
        content = path.read_bytes()
        assert item.fingerprint == hashlib.md5(content).hexdigest()
        assert item.size == len(content)
    # The ids are those of each input identified on its own.
    alone = [
        StagedInput.for_path(path, item.fingerprint, item.size)
        for item, path in zip(staged, paths, strict=True)
    ]
    expected = identify(workload, alone)
    assert [item.task_id for item in staged] == [item.task_id for item in expected]
    assert all(item.task_id != item.input_key and item.task_id.startswith(item.input_key) for item in staged)


@pytest.mark.parametrize("trip_seconds", [0.0, 60.0])
async def test_unreadable_inputs_among_many_are_one_error_naming_the_first_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trip_seconds: float
) -> None:
    monkeypatch.setattr(staging, "_TRIP_SECONDS", trip_seconds)
    paths = _inputs(tmp_path / "in", 200)
    bad = [paths[150], paths[40], paths[199]]  # unreadable, wherever they fall in the trips
    for path in bad:
        path.unlink()
        path.symlink_to("/proc/self/mem")  # opens, but every read fails (EIO), for root too
    with pytest.raises(UnreadableInputError) as caught:  # one error, not a group of them
        await stage_inputs(_workload(paths), None, concurrency=3)
    message = str(caught.value)
    assert str(paths[40]) in message
    assert "(and 2 more)" in message
    assert "\n" not in message
    assert caught.value.paths == tuple(str(path) for path in (paths[40], paths[150], paths[199]))


async def test_a_missing_input_is_named(tmp_path: Path) -> None:
    paths = _inputs(tmp_path / "in", 3)
    paths[1].unlink()
    with pytest.raises(UnreadableInputError) as caught:
        await stage_inputs(_workload(paths), None, concurrency=16)
    assert str(paths[1]) in str(caught.value)
    assert "more" not in str(caught.value)
