"""Local file helpers shared by the engine, the local backend and the downloader. Blocking: call them in a
worker thread (`anyio.to_thread.run_sync`)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

_HASH_CHUNK = 1 << 20


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, the digest Blob Storage keeps as Content-MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_sibling(dest: Path) -> Path:
    """A hidden name beside `dest` for writing before the final rename; unique, so that two writers of the
    same file (two runs in one process) never share one."""
    return dest.with_name(f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


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
