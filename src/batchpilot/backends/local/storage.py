"""Blob containers as folders: `<root>/<container>/<blob name>`.

URLs are `file://` URLs of those folders; permissions and expiry mean nothing on one machine and are ignored.
The sizes and MD5s that Blob Storage keeps as blob properties are recomputed from the files.

Inputs are copied (into the container, then into each task's folder), so that neither a task nor a later
edit of the user's file changes what another task reads. Outputs are hard-linked instead (task folder ->
container -> download folder) where the file system allows: the task that wrote them has ended, and a link
costs nothing however large the file.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import anyio

from ...errors import ConfigError, NotFoundError
from ...files import copy_atomically, md5_of, temporary_sibling
from ...records import BlobInfo, Permission, UploadOutcome
from ...spec import check_container_name, leaves_root


def file_url(path: Path) -> str:
    return "file://" + quote(os.path.abspath(path))


def path_from_url(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ConfigError(f"the local backend handles file:// URLs only, not {parsed.scheme}://")
    return Path(unquote(parsed.path))


_LOCAL_CONTAINER = re.compile(r"(?!.*--)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _container(self, container: str) -> Path:
        # A container name is a name, never a path (`/abs`, `..`). Storage's characters; its 3-character
        # minimum is not enforced here, where short names (`in`, `out`) name folders just as well.
        if not _LOCAL_CONTAINER.fullmatch(container):
            check_container_name(container)  # raises, naming Storage's rule
        return self.root / container

    def _blob(self, container: str, blob_name: str) -> Path:
        return self._container(container) / blob_path(blob_name)

    async def ensure_container(self, container: str) -> bool:
        path = self._container(container)
        existed = await anyio.Path(path).is_dir()
        await anyio.Path(path).mkdir(parents=True, exist_ok=True)
        return not existed

    async def upload(
        self, container: str, blob_name: str, source: Path, md5_hex: str, *, check_existing: bool = True
    ) -> UploadOutcome:
        dest = self._blob(container, blob_name)

        def sync() -> UploadOutcome:
            if (
                check_existing
                and dest.is_file()
                and dest.stat().st_size == source.stat().st_size
                and md5_of(dest) == md5_hex
            ):
                return UploadOutcome.SKIPPED
            copy_atomically(source, dest)
            return UploadOutcome.UPLOADED

        return await anyio.to_thread.run_sync(sync)

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        root = self._container(container)

        def sync() -> list[BlobInfo]:
            if not root.is_dir():
                raise NotFoundError(f"container {container!r} does not exist", code="ContainerNotFound")
            # Only the folder the prefix reaches into can hold matches: the downloader lists one task's
            # outputs per succeeded task, and walking (and hashing) the whole container each time made a
            # run quadratic in its tasks.
            folder = prefix.rpartition("/")[0]
            start = self._blob(container, folder) if folder else root
            found = []
            for path in sorted(start.rglob("*")):
                name = path.relative_to(root).as_posix()
                if path.is_file() and name.startswith(prefix) and ".partial-" not in path.name:
                    found.append(BlobInfo(name, path.stat().st_size, md5_of(path)))
            return found

        return await anyio.to_thread.run_sync(sync)

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        source = self._blob(container, blob_name)
        if not await anyio.Path(source).is_file():
            raise NotFoundError(f"blob {blob_name!r} not found in {container!r}", code="BlobNotFound")
        await anyio.to_thread.run_sync(_link_atomically, source, dest)

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        return file_url(self._container(container))

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        return file_url(self._blob(container, blob_name))

    async def delete_container(self, container: str) -> None:
        await anyio.to_thread.run_sync(shutil.rmtree, self._container(container), True)


def blob_path(blob_name: str) -> str:
    """`blob_name` as a path relative to its container's folder; ConfigError when it would leave it.

    Checked on the name, not by resolving the path: resolving costs a system call per path component,
    several times per task, and only names with `..` (or absolute ones) can leave: the containers' folders
    hold no links (outputs are checked against their task's dir before they are linked in)."""
    if not blob_name or leaves_root(blob_name):
        raise ConfigError(f"blob name {blob_name!r} leaves its container")
    return posixpath.normpath(blob_name)


class FileStager:
    """Moves task files between file:// URLs and a task's directory (the executor's Stager, and its
    SyncStager: the executor then makes one worker-thread trip for a task's files, not one per file)."""

    async def fetch(self, url: str, dest: Path) -> None:
        await anyio.to_thread.run_sync(self.fetch_sync, url, dest)

    async def put(self, container_url: str, blob_name: str, source: Path) -> None:
        await anyio.to_thread.run_sync(self.put_sync, container_url, blob_name, source)

    def fetch_sync(self, url: str, dest: Path) -> None:
        copy_atomically(path_from_url(url), dest)

    def put_sync(self, container_url: str, blob_name: str, source: Path) -> None:
        _link_atomically(source, path_from_url(container_url) / blob_path(blob_name))


def _link_atomically(source: Path, dest: Path) -> None:
    """`dest` becomes another name of `source`, or a copy of it where the file system cannot link (another
    device, no hard links). Either way via a temporary name, so `dest` is never partial."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(dest)
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        copy_atomically(source, dest)
        return
    os.replace(temporary, dest)
    # A rename onto another name of the same file does nothing (POSIX): the temporary name would stay.
    temporary.unlink(missing_ok=True)
