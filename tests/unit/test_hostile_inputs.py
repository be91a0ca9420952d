"""Unreadable inputs are one clear error (never a group of them), and a watched folder tells them apart
before a batch runs (issue 16, item 6)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from batchpilot import CleanupPolicy, Orchestrator
from batchpilot.errors import ConfigError, UnreadableInputError
from batchpilot.events import Event, OutputDownloaded
from batchpilot.metrics import Metrics
from batchpilot.service import FolderSource, Service, WatchSettings, scan
from batchpilot.spec import JobLifetime, PoolSpec, TaskTemplate, Workload
from batchpilot.staging import stage_inputs
from batchpilot.testing import InMemoryBackend, ScriptedTask, Succeed


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


class _LooksFine(FolderSource):
    """A watched folder whose inputs all look readable when the batch is made: an input that turns
    unreadable after that look (or fails after its first byte) is met only when it is hashed."""

    def unreadable(self, names: Sequence[str]) -> dict[str, str]:
        return {}


async def test_an_input_unreadable_only_when_hashed_is_left_out_and_the_others_run(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(5):
        (folder / f"good{index}.txt").write_text(str(index))
    _unreadable(folder / "bad.txt")

    def copies(task: ScriptedTask) -> Succeed:
        [(name, content)] = task.inputs.items()
        return Succeed(files={f"{Path(name).stem}.copy": content})

    workload = Workload(
        name="bad-input",
        inputs=(),
        template=TaskTemplate("/bin/cp {input} {stem}.copy", outputs=("{stem}.copy",)),
        pool=PoolSpec("bad-input-pool"),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
        job_lifetime=JobLifetime.SERVICE,
    )
    metrics = Metrics()
    fetched: list[str] = []
    done = anyio.Event()

    async def on_fetched(event: Event) -> None:
        if isinstance(event, OutputDownloaded):
            fetched.append(event.path.name)
            if len(fetched) == 5:
                done.set()

    settings = WatchSettings(settle_s=0.0, min_interval_s=0.01, max_interval_s=0.05)
    backend = InMemoryBackend(script=copies)
    async with Orchestrator(backend, subscribers=[metrics, on_fetched]) as orchestrator:
        stop = anyio.Event()
        service = Service(orchestrator, workload, _LooksFine(folder), metrics, settings)
        async with anyio.create_task_group() as group:
            group.start_soon(service.run, stop)
            with anyio.fail_after(30):
                await done.wait()
            stop.set()
    assert sorted(fetched) == [f"good{index}.copy" for index in range(5)]


def test_a_link_loop_in_a_watched_folder_hides_no_other_input(tmp_path: Path) -> None:
    """A link loop made every look fail (ELOOP): the service saw none of the folder's inputs."""
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "a.txt").write_text("a")
    assert list(scan(tmp_path, "*")) == ["a.txt"]


def test_a_link_out_of_the_watched_folder_is_not_read(tmp_path: Path) -> None:
    """A link dropped into a watched folder would upload whatever it points at (a key in ~/.ssh, say): a
    link is taken only when it leads to a file inside the folder; others are reported and skipped."""
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (watched / "a.txt").write_text("a")
    (watched / "out.txt").symlink_to(outside / "secret.txt")
    (watched / "up.txt").symlink_to("../outside/secret.txt")
    (watched / "in.txt").symlink_to("a.txt")
    unreadable = FolderSource(watched).unreadable(["a.txt", "in.txt", "out.txt", "up.txt"])
    assert sorted(unreadable) == ["out.txt", "up.txt"]
    assert "outside the watched folder" in unreadable["out.txt"]


def test_a_fifo_swapped_in_for_a_watched_input_does_not_block_its_reader(tmp_path: Path) -> None:
    """A FIFO never counts as an input; one put in place of a listed file must not hang the check."""
    os.mkfifo(tmp_path / "a.txt")
    assert scan(tmp_path, "*") == {}
    unreadable = FolderSource(tmp_path).unreadable(["a.txt"])
    assert list(unreadable) == ["a.txt"]


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_an_input_whose_name_is_not_utf8_is_one_error_naming_it(tmp_path: Path) -> None:
    """A file named with bytes that are no UTF-8 (b'\\xff\\xfe bad.txt') crashed the run with a traceback
    (UnicodeEncodeError making its blob URL): a blob name is text. It is named in one line, as an input that
    cannot be read is, so that `serve` leaves it out and runs the others."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.txt").write_text("x")
    bad = Path(os.fsdecode(bytes(folder) + b"/\xff\xfe bad.txt"))
    _write(bad, "y")
    workload = Workload("w", (folder / "ok.txt", bad), TaskTemplate("true {input}", ()), PoolSpec("p"))
    with pytest.raises(UnreadableInputError) as caught:
        await stage_inputs(workload, None, concurrency=2)
    message = str(caught.value)
    assert "not UTF-8" in message
    assert "\\xff\\xfe bad.txt" in message
    message.encode("utf-8")  # the line itself is text
    assert caught.value.paths == (str(bad),)
