"""Local file helpers shared by the engine, the local backend and the downloader. Blocking: call them in a
worker thread (`anyio.to_thread.run_sync`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from .errors import StateInUseError

_HASH_CHUNK = 1 << 20


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, the digest Blob Storage keeps as Content-MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_and_size(path: Path) -> tuple[str, int]:
    """Hex MD5 of a file and its size in bytes, both of the one file opened (a file replaced between a
    look at its size and its reading cannot mix the two). OSError as opening or reading it raises."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        # A small file in one read (and one more to see its end), without a megabyte's buffer for it.
        want = min(_HASH_CHUNK, size + 1)
        while chunk := handle.read(want):
            digest.update(chunk)
    return digest.hexdigest(), size


def read_small_file(path: Path, limit: int) -> bytes:
    """The content of the regular file `path`, of at most `limit` bytes. OSError as opening it raises, and
    with EINVAL when it is no regular file (a FIFO would wait for a writer forever, a device like /dev/zero
    never ends, and both say their size is 0), with EFBIG when it holds more than `limit` bytes; it is
    opened without waiting and read no further than that."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        content = handle.read(limit + 1)
    if len(content) > limit:
        raise OSError(errno.EFBIG, f"over {limit:,} bytes", str(path))
    return content


# A file name on Linux file systems is at most 255 bytes.
_NAME_MAX = 255


def temporary_sibling(dest: Path) -> Path:
    """A hidden name beside `dest` for writing before the final rename; unique, so that two writers of the
    same file (two runs in one process) never share one. Never longer than a file name may be (255 bytes),
    however long `dest`'s name is: the name is shortened, the unique suffix kept."""
    suffix = f".partial-{os.getpid()}-{secrets.token_hex(4)}"
    room = _NAME_MAX - 1 - len(suffix)
    stem = dest.name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return dest.with_name(f".{stem}{suffix}")


_PARTIAL = re.compile(r"\..+\.partial-(\d+)-[0-9a-f]{8}", re.DOTALL)


def remove_stale_partials(folder: Path) -> int:
    """Delete the temporary files (`temporary_sibling`'s names) below `folder` whose writer process is gone:
    what a download killed with its process (kill -9) left behind, which no later run would otherwise
    remove. A live process's files are kept. Links are not followed. Returns how many were deleted."""
    removed = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            match = _PARTIAL.fullmatch(name)
            if match is None or _alive(int(match.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(parent, name))
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def copy_atomically(source: Path, dest: Path) -> None:
    """Copy via a temporary name in the destination folder, so a partial file never has the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(dest)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, dest)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def private_folder(folder: Path) -> None:
    """Create `folder` (and its parents) if needed, and make it the user's alone (0700): what is below it
    cannot be reached by other users, whatever its own modes. OSError when it cannot be created."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


class FolderLock:
    """An exclusive lock on a folder, held by this process (`flock` on the folder itself, so no file is added
    to it) until `release()` or the process's end, however it ends: a killed holder never leaves it locked.
    The descriptor is not inherited by child processes, so a task never holds its orchestrator's lock."""

    def __init__(self, folder: Path, *, what: str, create: bool = True) -> None:
        """Take the lock, creating the folder (private to the user) if `create`; StateInUseError, naming the
        holder's pid, when another process holds it; OSError when the folder cannot be opened. Blocking for
        a moment: call it in a worker thread."""
        if create:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self._fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            by = f"batchpilot process {holder}" if holder is not None else "another batchpilot process"
            raise StateInUseError(
                f"{what} {folder} is in use by {by}; wait for it to end (or stop it), then run again"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(fd: int) -> int | None:
    """The pid holding an flock on the file open as `fd`, from /proc/locks (Linux); None where unknown."""
    stat = os.fstat(fd)
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None
