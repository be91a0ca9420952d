"""The local storage: listings by prefix, names that stay in their container, outputs linked, not copied,
and output blob names as Batch gives them."""

from __future__ import annotations

import errno
import os
from datetime import timedelta
from pathlib import Path

import pytest

from batchpilot.backends.local import LocalBackend
from batchpilot.backends.local.executor import output_blob_name
from batchpilot.backends.local.storage import FileStager
from batchpilot.errors import ConfigError
from batchpilot.files import md5_of
from batchpilot.records import Permission
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
