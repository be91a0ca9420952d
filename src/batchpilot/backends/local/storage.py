"""Blob containers as folders: `<root>/<container>/<blob name>`.

URLs are `file://` URLs of those folders; permissions and expiry mean nothing on one machine and are ignored.
The sizes and MD5s that Blob Storage keeps as blob properties are recomputed from the files.

Inputs are copied (into the container, then into each task's folder), so that neither a task nor a later
edit of the user's file changes what another task reads. A copy is a copy-on-write clone where the file
system makes them (Btrfs, XFS: no data is copied, and a write to either file leaves the other as it was),
else copied by the kernel (`copy_file_range`). Not hard links: a task that edits its input in place (`>>`,
`truncate`) would change what its retry and the container hold, and a read-only mode would not stop it (a
task may chmod its own files, and root ignores modes). Outputs are hard-linked instead (task folder ->
container -> download folder) where the file system allows: the task that wrote them has ended, and a link
costs nothing however large the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import anyio

from ...errors import BatchpilotError, ConfigError, NotFoundError
from ...files import md5_of, temporary_sibling
from ...records import BlobDownload, BlobInfo, Permission, UploadOutcome
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
            _copy_atomically(source, dest)
            return UploadOutcome.UPLOADED

        return await anyio.to_thread.run_sync(sync)

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        return await anyio.to_thread.run_sync(self._listing, container, prefix, True)

    def _listing(self, container: str, prefix: str, md5: bool) -> list[BlobInfo]:
        """The blobs under `prefix`, by name, with their MD5s if `md5` (each file read). Blocking."""
        root = self._container(container)
        if not root.is_dir():
            raise NotFoundError(f"container {container!r} does not exist", code="ContainerNotFound")
        # Only the folder the prefix reaches into can hold matches: the downloader lists one task's outputs
        # per succeeded task, and walking (and hashing) the whole container each time made a run quadratic
        # in its tasks.
        head = prefix.rpartition("/")[0]
        folder = blob_path(head) if head else ""
        found = []
        for name, path, size in sorted(_files_below(root / folder, f"{folder}/" if folder else "")):
            if name.startswith(prefix) and ".partial-" not in path.name:
                found.append(BlobInfo(name, size, md5_of(path) if md5 else None))
        return found

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        source = self._blob(container, blob_name)

        def sync() -> None:
            if not source.is_file():
                raise NotFoundError(f"blob {blob_name!r} not found in {container!r}", code="BlobNotFound")
            _fetch(container, blob_name, source, dest, None)

        await anyio.to_thread.run_sync(sync)

    async def download_prefix(
        self,
        container: str,
        prefix: str,
        plan: Callable[[Sequence[BlobInfo]], Iterable[tuple[BlobInfo, Path]]],
    ) -> list[BlobDownload]:
        """`Storage.download_prefix` in one worker-thread trip: the listing (sizes only: an MD5 is read only
        where a destination holds a file of the blob's size), `plan`, and each pick linked into place."""

        def sync() -> list[BlobDownload]:
            done = []
            for blob, dest in plan(self._listing(container, prefix, False)):
                try:
                    skipped = _fetch(container, blob.name, self._blob(container, blob.name), dest, blob.size)
                except (BatchpilotError, OSError) as exc:
                    done.append(BlobDownload(blob, dest, error=exc))
                else:
                    done.append(BlobDownload(blob, dest, skipped=skipped))
            return done

        return await anyio.to_thread.run_sync(sync)

    async def container_url(self, container: str, permissions: Permission, expiry: timedelta) -> str:
        return file_url(self._container(container))

    async def blob_url(
        self, container: str, blob_name: str, permissions: Permission, expiry: timedelta
    ) -> str:
        return file_url(self._blob(container, blob_name))

    async def delete_container(self, container: str) -> None:
        await anyio.to_thread.run_sync(shutil.rmtree, self._container(container), True)


def _files_below(folder: Path, prefix: str) -> Iterator[tuple[str, Path, int]]:
    """Each file below `folder`, as (`prefix` + its path from `folder` with `/`, its path, its size); the
    folders below it walked, not followed where they are links (none should be). A `folder` that is absent
    holds nothing. Blocking."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = f"{prefix}{entry.name}"
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_below(Path(entry.path), f"{name}/")
            elif entry.is_file():
                yield name, Path(entry.path), entry.stat().st_size
        except FileNotFoundError:  # removed meanwhile
            continue


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
        """Copy the file at `url` to `dest`. The executor fetches into a fresh working folder that nothing
        reads before the task starts (and that the next attempt replaces): the copy is written in place,
        not through a temporary name; a file already at `dest` is replaced whole."""
        source = path_from_url(url)
        try:
            _copy_new(source, dest)
        except FileNotFoundError:
            if not dest.parent.is_dir() and source.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy_new(source, dest)
            else:
                raise
        except FileExistsError:
            _copy_atomically(source, dest)

    def put_sync(self, container_url: str, blob_name: str, source: Path) -> None:
        _link_atomically(source, path_from_url(container_url) / blob_path(blob_name))


def _fetch(container: str, blob_name: str, source: Path, dest: Path, size: int | None) -> bool:
    """Link (or copy) the blob's file `source` to `dest`, unless `size` is given and `dest` already holds a
    file of that size and content: then True, nothing written. NotFoundError when `source` is no file;
    OSError when `dest` cannot be written. Blocking."""
    if size is not None and _holds(dest, source, size):
        return True
    try:
        _link_atomically(source, dest)
    except FileNotFoundError:
        if not source.is_file():
            missing = f"blob {blob_name!r} not found in {container!r}"
            raise NotFoundError(missing, code="BlobNotFound") from None
        raise
    return False


def _holds(dest: Path, source: Path, size: int) -> bool:
    """Whether `dest` is a file with the content of `source` (of `size` bytes): the same file (an earlier
    download linked it), or one of that size and MD5. Only a file of the right size is read."""
    try:
        there = dest.stat()
    except OSError:  # absent, or a folder of its path is a file: the download will say which
        return False
    if not stat.S_ISREG(there.st_mode) or there.st_size != size:
        return False
    return os.path.samestat(there, source.stat()) or md5_of(dest) == md5_of(source)


def _link_atomically(source: Path, dest: Path) -> None:
    """`dest` becomes another name of `source`, or a copy of it where the file system cannot link (another
    device, no hard links). Never partial: a link appears whole, and a copy, or a link replacing a file
    already there, goes through a temporary name."""
    try:
        os.link(source, dest)  # the common case, a new name: one system call
        return
    except FileNotFoundError:
        if source.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.link(source, dest)
                return
    except OSError:
        pass  # there already (replaced below), or no link here (copied below)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(dest)
    try:
        os.link(source, temporary)
    except OSError:
        _copy_atomically(source, dest)
        return
    try:
        os.replace(temporary, dest)
    finally:
        # A rename onto another name of the same file does nothing (POSIX): the temporary name would stay;
        # and a rename that fails (a folder where the file should go) leaves it too.
        temporary.unlink(missing_ok=True)


def _copy_atomically(source: Path, dest: Path) -> None:
    """Copy `source` to `dest` through a temporary name in `dest`'s folder (made if absent), so a partial
    file never has the final name."""
    temporary = temporary_sibling(dest)
    try:
        try:
            _copy_new(source, temporary)
        except FileNotFoundError:
            if dest.parent.is_dir() or not source.exists():
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy_new(source, temporary)
        os.replace(temporary, dest)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _copy_new(source: Path, dest: Path) -> None:
    """`source`'s content in a new file `dest` (FileExistsError when there is one; FileNotFoundError when
    its folder is absent), created 0666 less the umask as `shutil.copyfile` creates it. A partial `dest` is
    removed on failure. OSError (EINVAL) when `source` is no regular file."""
    reader = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(reader)
        if not stat.S_ISREG(size.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        writer = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            _copy_data(reader, writer, size.st_dev)
        except BaseException:
            os.close(writer)
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        os.close(writer)
    finally:
        os.close(reader)


# Linux's FICLONE ioctl (linux/fs.h: _IOW(0x94, 9, int)): `dest` shares `source`'s blocks, copy-on-write.
_FICLONE = 0x40049409
# The devices where a clone failed (ext4 has none): not tried again there.
_NO_CLONES: set[int] = set()
_CHUNK = 1 << 20


def _copy_data(reader: int, writer: int, device: int) -> None:
    """All of `reader`'s data (from its start) into the empty `writer`: a clone where the file system makes
    one, else `copy_file_range` (the kernel copies, or clones on some file systems), else reads and writes."""
    if device not in _NO_CLONES:
        try:
            fcntl.ioctl(writer, _FICLONE, reader)
            return
        except OSError:
            _NO_CLONES.add(device)
    try:
        while os.copy_file_range(reader, writer, 1 << 30):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            raise
    # Where the kernel cannot copy between these two files: both offsets are where it stopped.
    while chunk := os.read(reader, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(writer, view) :]
