"""Local damage while fetching outputs: a full disk or a file in the way fails that one download, leaves no
partial file (under its final name or a temporary one), makes the run exit non-zero, and running the same
command again fetches exactly what is missing.

The tests run as root, so permissions cannot make a folder unwritable: failures are injected instead, as a
regular file where an output's folder should be (the kernel's ENOTDIR), or as a write that stops with ENOSPC
after half the bytes.
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient

from batchpilot import Event, LocalBackend, Orchestrator, OutputDownloaded, PoolSpec, TaskTemplate, Workload
from batchpilot.backends.azure.storage import AzureStorage
from batchpilot.backends.local import storage as local_storage
from batchpilot.config import StorageSettings
from batchpilot.events import OutputDownloadFailed, RunSummary
from batchpilot.files import md5_of
from tests.e2e.support import Run
from tests.emulator.support import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

PY = shlex.quote(sys.executable)
# Each task writes <stem>/sub/result.txt: an output one folder deep, so that a regular file named after one
# input's stem stands in the way of that task's download only.
SCRIPT = (
    "import pathlib, sys; out = pathlib.Path(sys.argv[1], 'sub', 'result.txt'); "
    "out.parent.mkdir(parents=True); out.write_text(sys.argv[1] * 50000)"
)
COMMAND = f"{PY} -c {shlex.quote(SCRIPT)} {{stem}}"
OUTPUT = "{stem}/sub/result.txt"


def files_in(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones (temporary names) included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def inputs(tmp_path: Path) -> tuple[Path, ...]:
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("a", "b", "c"):
        (folder / f"{stem}.txt").write_text(stem)
    return tuple(sorted(folder.iterdir()))


def workload(tmp_path: Path, out: Path) -> Workload:
    return Workload(
        name="damage",
        inputs=inputs(tmp_path),
        template=TaskTemplate(command=COMMAND, outputs=(OUTPUT,)),
        pool=PoolSpec("damage-pool", dedicated_nodes=3),
        download_to=out,
    )


async def run(work: Workload, state: Path) -> tuple[RunSummary, list[Event]]:
    seen: list[Event] = []

    async def note(event: Event) -> None:
        seen.append(event)

    async with Orchestrator(LocalBackend(state), subscribers=[note]) as orchestrator:
        summary = await orchestrator.run(work)
    return summary, seen


def fetched(events: list[Event]) -> list[str]:
    """The stems of the inputs whose output was downloaded (not found already there)."""
    return sorted(
        e.path.parent.parent.name for e in events if isinstance(e, OutputDownloaded) and not e.skipped
    )


def failures(events: list[Event]) -> list[str]:
    return [e.error for e in events if isinstance(e, OutputDownloadFailed)]


async def test_a_file_in_the_way_fails_that_download_only_and_a_rerun_fetches_it(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("in the way of b/sub/result.txt")
    work = workload(tmp_path, out)

    summary, events = await run(work, tmp_path / "state")

    assert (summary.succeeded, summary.downloaded, summary.download_failed) == (3, 2, 1)
    assert not summary.ok
    assert fetched(events) == ["a", "c"]
    [error] = failures(events)
    assert error.startswith(f"cannot save {out / 'b' / 'sub' / 'result.txt'}: Not a directory; ")
    assert "a file stands where a folder of its path should be: move it" in error
    assert error.endswith("run the same command again to fetch it")
    assert files_in(out) == ["a/sub/result.txt", "b", "c/sub/result.txt"]

    (out / "b").unlink()
    again, events = await run(work, tmp_path / "state")

    assert again.ok, again
    assert (again.tasks_added, again.tasks_existing) == (0, 3)
    assert (again.downloaded, again.download_skipped, again.download_failed) == (1, 2, 0)
    assert fetched(events) == ["b"]
    assert (out / "b" / "sub" / "result.txt").read_text() == "b" * 50000
    assert files_in(out) == ["a/sub/result.txt", "b/sub/result.txt", "c/sub/result.txt"]


def cross_device(source: Any, dest: Any, **options: Any) -> None:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(dest))


async def test_a_disk_full_halfway_leaves_no_partial_file_and_a_rerun_fetches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "out"
    work = workload(tmp_path, out)
    full = out / "c" / "sub"
    copy = local_storage._copy_data
    written: list[int] = []

    def disk_full_in_c(reader: int, writer: int, device: int) -> None:
        dest = Path(os.readlink(f"/proc/self/fd/{writer}"))
        if dest.parent != full:
            return copy(reader, writer, device)
        data = os.read(reader, 1 << 20)
        os.write(writer, data[: len(data) // 2])
        written.append(dest.stat().st_size)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The download folder on another device: outputs cannot be hard-linked there, so they are copied, and
    # the copy is the one place the local backend writes a downloaded file's bytes.
    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(local_storage, "_copy_data", disk_full_in_c)
    summary, events = await run(work, tmp_path / "state")

    assert written == [25000]  # the failure came halfway through, after bytes were written
    assert (summary.succeeded, summary.downloaded, summary.download_failed) == (3, 2, 1)
    [error] = failures(events)
    assert error.startswith(f"cannot save {full / 'result.txt'}: No space left on device; free some disk")
    assert files_in(out) == ["a/sub/result.txt", "b/sub/result.txt"]

    monkeypatch.undo()
    again, events = await run(work, tmp_path / "state")

    assert again.ok, again
    assert fetched(events) == ["c"]
    assert (again.downloaded, again.download_skipped) == (1, 2)
    assert (full / "result.txt").read_text() == "c" * 50000


def test_the_cli_exits_1_saying_outputs_are_missing_and_a_rerun_fetches_them(batchpilot: Run, tmp_path: Path):
    inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("in the way")
    args = ("run", str(tmp_path / "in"), "--command", COMMAND, "--outputs", OUTPUT, "--out", str(out))

    first = batchpilot(*args)

    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    assert "3 of 3 tasks succeeded" in first.stderr
    assert f"outputs: 2 downloaded to {out}, 0 already there, 1 FAILED" in first.stderr
    assert "outputs missing: 1 could not be saved" in first.stderr
    assert "run the same command again to fetch them" in first.stderr
    assert "--job" not in first.stderr  # no advice to delete the job: that would run every task again
    logged = [line for line in first.stdout.splitlines() if '"output_download_failed"' in line]
    assert len(logged) == 1
    assert "Not a directory" in logged[0]
    assert files_in(out) == ["a/sub/result.txt", "b", "c/sub/result.txt"]

    (out / "b").unlink()
    again = batchpilot(*args)

    assert again.returncode == 0, again.stderr
    assert "0 added, 3 already in the job and skipped" in again.stderr
    assert "outputs: 1 downloaded" in again.stderr
    assert "2 already there" in again.stderr
    assert files_in(out) == ["a/sub/result.txt", "b/sub/result.txt", "c/sub/result.txt"]


# --- the Azure backend's download, against Azurite ----------------------------------------------------------

BLOB = "task-1/result.bin"
# Under aiohttp's 1 MiB "large body" warning on upload; downloaded in four chunks (see `storage`).
SIZE = 900 * 1024
CHUNK = 256 * 1024
Hook = Callable[[], Awaitable[None]]


class _Stream:
    """A download stream that hands out its real first chunk, then calls `after_first` when asked for more
    (by then the chunk is in the file)."""

    def __init__(self, real: Any, after_first: Hook) -> None:
        self._real = real
        self._after_first = after_first

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._real.chunks():
            yield chunk
            await self._after_first()


class _Service:
    """The real BlobServiceClient, but its blobs' download streams are `_Stream`s."""

    def __init__(self, real: BlobServiceClient, after_first: Hook) -> None:
        self._real = real
        self._after_first = after_first

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_blob_client(self, container: str, blob: str) -> Any:
        client = self._real.get_blob_client(container, blob)
        after_first = self._after_first

        class Blob:
            async def download_blob(self, **options: Any) -> _Stream:
                return _Stream(await client.download_blob(**options), after_first)

        return Blob()


StorageFactory = Callable[..., AzureStorage]


@pytest.fixture
async def storage(azurite: Azurite) -> AsyncIterator[StorageFactory]:
    """`storage()`: an AzureStorage on Azurite; `storage(after_first=hook)`: one whose downloads call `hook`
    after writing their first chunk."""
    async with BlobServiceClient.from_connection_string(
        azurite.connection_string, max_single_get_size=CHUNK, max_chunk_get_size=CHUNK
    ) as service:

        def make(after_first: Hook | None = None) -> AzureStorage:
            client: Any = service if after_first is None else _Service(service, after_first)
            return AzureStorage(client, StorageSettings(AZURITE_ACCOUNT, azurite.blob_endpoint, AZURITE_KEY))

        yield make


@pytest.fixture
async def container(storage: StorageFactory, tmp_path: Path) -> AsyncIterator[str]:
    """A container holding BLOB: SIZE random bytes, also in tmp_path/source.bin."""
    name = f"damage-{uuid.uuid4().hex[:12]}"
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(SIZE))
    await storage().ensure_container(name)
    await storage().upload(name, BLOB, source, md5_of(source))
    yield name
    await storage().delete_container(name)


async def test_azure_a_disk_full_halfway_removes_the_temporary_file_and_a_retry_fetches_it(
    storage: StorageFactory, container: str, tmp_path: Path
):
    dest = tmp_path / "out" / "result.bin"

    async def disk_full() -> None:
        [temporary] = files_in(dest.parent)
        assert (dest.parent / temporary).stat().st_size == CHUNK
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left on device"):
        await storage(after_first=disk_full).download(container, BLOB, dest)

    assert files_in(dest.parent) == []

    await storage().download(container, BLOB, dest)
    assert md5_of(dest) == md5_of(tmp_path / "source.bin")
    assert files_in(dest.parent) == ["result.bin"]


async def test_azure_a_cancelled_download_leaves_nothing(
    storage: StorageFactory, container: str, tmp_path: Path
):
    dest = tmp_path / "out" / "result.bin"
    halfway = anyio.Event()

    async def hang() -> None:
        halfway.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(storage(after_first=hang).download, container, BLOB, dest)
        await halfway.wait()
        [temporary] = files_in(dest.parent)
        assert temporary.startswith(".result.bin")
        assert (dest.parent / temporary).stat().st_size == CHUNK
        group.cancel_scope.cancel()

    assert files_in(dest.parent) == []


async def test_azure_a_file_in_the_way_is_enotdir_and_writes_nothing(
    storage: StorageFactory, container: str, tmp_path: Path
):
    (tmp_path / "out").write_text("a file where the download folder should be")

    with pytest.raises(NotADirectoryError):
        await storage().download(container, BLOB, tmp_path / "out" / "sub" / "result.bin")

    assert files_in(tmp_path) == ["out", "source.bin"]


def _dead_pid() -> int:
    """The pid of a process that has ended (reaped: nothing has it now)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_killed_download_are_removed_by_the_next_run(batchpilot: Run, tmp_path: Path):
    """kill -9 of a run in the middle of a download left `.name.partial-PID-HEX` in --out, run after run;
    the next run removes those whose process is gone (its own, and another live run's, are kept)."""
    inputs(tmp_path)
    out = tmp_path / "out"
    (out / "a" / "sub").mkdir(parents=True)
    stale = [
        out / f".result.txt.partial-{_dead_pid()}-0badc0de",
        out / "a" / "sub" / ".x.partial-999999999-00ff00ff",
    ]
    live = out / f".y.partial-{os.getpid()}-12345678"  # a live process's download in progress
    for path in (*stale, live):
        path.write_bytes(b"half")
    args = ("run", str(tmp_path / "in"), "--command", COMMAND, "--outputs", OUTPUT, "--out", str(out))
    first = batchpilot(*args)
    assert first.returncode == 0, first.stderr
    assert files_in(out) == [live.name, "a/sub/result.txt", "b/sub/result.txt", "c/sub/result.txt"]
