"""Unreadable inputs are one clear error (never a group of them), and a watched folder tells them apart
before a batch runs (issue 16, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpilot.errors import ConfigError
from batchpilot.service import FolderSource
from batchpilot.spec import PoolSpec, TaskTemplate, Workload
from batchpilot.staging import stage_inputs


def _unreadable(path: Path) -> Path:
    path.symlink_to("/proc/self/mem")  # opens, but every read fails (EIO), for root too
    return path


async def test_unreadable_inputs_are_one_error_naming_the_first_and_counting_the_rest(tmp_path: Path) -> None:
    good = [tmp_path / f"good{index}.txt" for index in range(5)]
    for path in good:
        path.write_text("x")
    bad = [_unreadable(tmp_path / "bad1.txt"), _unreadable(tmp_path / "bad2.txt")]
    workload = Workload("w", (*good[:2], *bad, *good[2:]), TaskTemplate("true {input}", ()), PoolSpec("p"))
    with pytest.raises(ConfigError) as caught:  # not an ExceptionGroup
        await stage_inputs(workload, None, concurrency=4)
    message = str(caught.value)
    assert "bad1.txt" in message
    assert "(and 1 more)" in message
    assert "\n" not in message


def test_a_watched_folder_names_the_inputs_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "empty.txt").write_text("")
    _unreadable(tmp_path / "bad.txt")
    source = FolderSource(tmp_path)
    unreadable = source.unreadable(["a.txt", "bad.txt", "empty.txt", "gone.txt"])
    assert sorted(unreadable) == ["bad.txt", "gone.txt"]
    assert all(reason for reason in unreadable.values())
