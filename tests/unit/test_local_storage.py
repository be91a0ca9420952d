"""The local storage: listings by prefix, names that stay in their container, outputs linked, not copied,
and output blob names as Batch gives them."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot.backends.local import LocalBackend
from batchpilot.backends.local.executor import output_blob_name
from batchpilot.backends.local.storage import FileStager, LocalStorage
from batchpilot.errors import ConfigError, NotFoundError
from batchpilot.files import md5_of
from batchpilot.records import BlobInfo, Permission
from batchpilot.spec import OutputFile

HOUR = timedelta(hours=1)


async def test_listing_with_a_prefix_finds_exactly_the_blobs_whose_names_start_with_it(tmp_path: Path):
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("out")
    source = tmp_path / "x.txt"
    source.write_text("x")
    names = ["t1/a.mp3", "t1/sub/b.mp3", "t10/a.mp3", "t2/a.mp3", "logs/t1/stderr.txt", "top.txt"]
    for name in names:
        await storage.upload("out", name, source, md5_of(source))

    async def listed(prefix: str) -> list[str]:
        return [blob.name for blob in await storage.list_blobs("out", prefix)]

    assert await listed("t1/") == ["t1/a.mp3", "t1/sub/b.mp3"]
    assert await listed("t1") == ["t1/a.mp3", "t1/sub/b.mp3", "t10/a.mp3"]
    assert await listed("t1/sub/b") == ["t1/sub/b.mp3"]
    assert await listed("nothing/") == []
    assert sorted(await listed("")) == sorted(names)
    with pytest.raises(ConfigError, match="leaves its container"):
        await storage.list_blobs("out", "../")
    with pytest.raises(ConfigError, match="leaves its container"):
        await storage.upload("out", "../../escaped.txt", source, md5_of(source))


async def test_outputs_are_linked_not_copied_into_the_container_and_the_download_folder(tmp_path: Path):
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("out")
    written = tmp_path / "wd" / "a.mp3"
    written.parent.mkdir()
    written.write_bytes(b"mp3" * 1000)
    await FileStager().put(await storage.container_url("out", Permission.WRITE, HOUR), "t1/a.mp3", written)
    dest = tmp_path / "fetched" / "a.mp3"
    for _ in range(2):  # the second time onto the same file: nothing left behind
        await storage.download("out", "t1/a.mp3", dest)
    assert dest.read_bytes() == b"mp3" * 1000
    assert dest.stat().st_ino == written.stat().st_ino  # one file, three names: no data copied
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.mp3"]


async def test_where_links_are_impossible_outputs_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def no_links(source: object, dest: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("out")
    written = tmp_path / "a.mp3"
    written.write_bytes(b"mp3")
    await FileStager().put(await storage.container_url("out", Permission.WRITE, HOUR), "t1/a.mp3", written)
    dest = tmp_path / "fetched" / "a.mp3"
    await storage.download("out", "t1/a.mp3", dest)
    assert dest.read_bytes() == b"mp3"
    assert dest.stat().st_ino != written.stat().st_ino
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.mp3"]


@pytest.mark.parametrize(
    ("pattern", "path", "blob"),
    [
        ("out/a.mp3", "", "a.mp3"),  # no path: the file's own name, at the top (the tutorial's outputs)
        ("out/a.mp3", "t1/renamed.mp3", "t1/renamed.mp3"),
        ("out/*.mp3", "", "a.mp3"),
        ("out/*.mp3", "t1/", "t1/a.mp3"),
    ],
)
def test_output_blob_names_follow_batch(pattern: str, path: str, blob: str):
    output = OutputFile(pattern, "file:///container", path)
    assert output_blob_name(output, "out/a.mp3") == blob


def _written(where: Path, content: bytes) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(content)
    return where


async def _put(storage: LocalStorage, blob_name: str, content: bytes, where: Path) -> None:
    written = _written(where, content)
    await FileStager().put(await storage.container_url("out", Permission.WRITE, HOUR), blob_name, written)


async def test_download_prefix_fetches_what_the_plan_picks_and_leaves_what_is_already_there(tmp_path: Path):
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("out")
    await _put(storage, "t1/a.gz", b"a" * 10, tmp_path / "wd" / "a.gz")
    await _put(storage, "t1/sub/b.gz", b"b" * 10, tmp_path / "wd" / "b.gz")
    await _put(storage, "t1/c.gz", b"c" * 10, tmp_path / "wd" / "c.gz")
    await _put(storage, "t10/a.gz", b"other task", tmp_path / "wd" / "t10.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.gz").write_bytes(b"c" * 10)  # the same content, another file: left as it is
    seen: list[BlobInfo] = []

    def plan(blobs: Sequence[BlobInfo]) -> list[tuple[BlobInfo, Path]]:
        seen.extend(blobs)
        return [
            (blob, out / blob.name.removeprefix("t1/")) for blob in blobs if not blob.name.endswith("b.gz")
        ]

    done = await storage.download_prefix("out", "t1/", plan)
    # The listing gives names and sizes; an MD5 is read only where a file of the blob's size is there.
    assert [(blob.name, blob.size, blob.md5_hex) for blob in seen] == [
        ("t1/a.gz", 10, None),
        ("t1/c.gz", 10, None),
        ("t1/sub/b.gz", 10, None),
    ]
    assert [(item.blob.name, item.path, item.skipped, item.error) for item in done] == [
        ("t1/a.gz", out / "a.gz", False, None),
        ("t1/c.gz", out / "c.gz", True, None),
    ]
    assert (out / "a.gz").read_bytes() == b"a" * 10
    assert not (out / "sub").exists()
    # Again: the linked file is the blob's own, the other has its content: nothing written.
    again = await storage.download_prefix("out", "t1/", plan)
    assert [item.skipped for item in again] == [True, True]
    # A file of the blob's size but other content is replaced, whole.
    (out / "a.gz").unlink()
    (out / "a.gz").write_bytes(b"z" * 10)
    [first, _] = await storage.download_prefix("out", "t1/", plan)
    assert not first.skipped
    assert (out / "a.gz").read_bytes() == b"a" * 10
    assert sorted(p.name for p in out.iterdir()) == ["a.gz", "c.gz"]


async def test_download_prefix_reports_each_failure_with_its_blob_and_goes_on(tmp_path: Path):
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("out")
    await _put(storage, "t1/a.gz", b"a", tmp_path / "wd" / "a.gz")
    await _put(storage, "t1/b.gz", b"b", tmp_path / "wd" / "b.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.gz").mkdir()  # a folder where the file should go

    def plan(blobs: Sequence[BlobInfo]) -> list[tuple[BlobInfo, Path]]:
        return [(blob, out / blob.name.removeprefix("t1/")) for blob in blobs]

    failed, fetched = await storage.download_prefix("out", "t1/", plan)
    assert isinstance(failed.error, OSError)
    assert failed.path == out / "a.gz"
    assert fetched.error is None
    assert (out / "b.gz").read_bytes() == b"b"
    assert sorted(p.name for p in out.iterdir()) == ["a.gz", "b.gz"]  # no temporary file left
    with pytest.raises(NotFoundError):
        await storage.download_prefix("missing", "t1/", plan)


async def test_an_input_fetched_into_a_task_folder_is_a_copy_a_task_cannot_change_for_its_retry(
    tmp_path: Path,
):
    """The second copy of an input (container -> task's working folder) is not a hard link: a task that
    appends to its input in place must leave the container's copy, which its retry reads, as it was."""
    storage = LocalBackend(tmp_path / "state").storage
    await storage.ensure_container("in")
    source = tmp_path / "user.txt"
    source.write_text("mine\n")
    await storage.upload("in", "user.txt", source, md5_of(source), check_existing=False)
    url = await storage.blob_url("in", "user.txt", Permission.READ, HOUR)
    for attempt in range(2):
        workdir = tmp_path / f"attempt-{attempt}" / "wd"
        workdir.mkdir(parents=True)
        FileStager().fetch_sync(url, workdir / "sub" / "user.txt")
        with (workdir / "sub" / "user.txt").open("a") as edit:  # the task edits its input in place
            edit.write("changed by the task\n")
    source.write_text("edited later by the user\n")
    stored = tmp_path / "state" / "storage" / "in" / "user.txt"
    assert stored.read_text() == "mine\n"
    assert (tmp_path / "attempt-1" / "wd" / "sub" / "user.txt").read_text() == "mine\nchanged by the task\n"
    assert stored.stat().st_nlink == 1
    assert sorted(p.name for p in stored.parent.iterdir()) == ["user.txt"]  # no temporary file left
