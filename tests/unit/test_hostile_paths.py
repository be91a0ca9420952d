"""Nothing reaches outside its root (issue 16, item 2): output patterns, blob names, ids and container
names are names, checked where they enter (the template, the local stager, the downloader, the local
backend), never followed out of their folder."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from batchpilot.backends.local import LocalBackend
from batchpilot.errors import ConfigError
from batchpilot.events import Event, OutputDownloaded, OutputDownloadFailed, RunStarted, TaskSucceeded
from batchpilot.records import AddStatus, BlobDownload, BlobInfo, Permission, TaskResult, TaskState, TaskView
from batchpilot.spec import (
    CleanupPolicy,
    JobSpec,
    OutputFile,
    PoolSpec,
    TaskSpec,
    TaskTemplate,
    UploadCondition,
    check_batch_id,
    check_container_name,
    leaves_root,
)
from batchpilot.subscribers.download import OutputDownloader
from tests.waiting import eventually

PY = shlex.quote(sys.executable)
HOUR = timedelta(hours=1)

ESCAPING_PATTERNS = [
    "../../../../../../../ESCAPE-MARK.txt",
    "../ESCAPE-MARK.txt",
    "/tmp/ESCAPE-MARK.txt",
    "out/../../x.txt",
    "{input_name}/../../x",
    "a/../../../b",
    "..",
    ".",
    "",
    "x\0y",
]


@pytest.mark.parametrize("pattern", ESCAPING_PATTERNS)
def test_an_output_pattern_that_leaves_the_output_dir_is_one_line(pattern: str) -> None:
    with pytest.raises(ConfigError, match="inside the output dir") as caught:
        TaskTemplate("true {input}", (pattern,))
    assert "\n" not in str(caught.value)


def test_a_value_that_makes_an_output_pattern_leave_is_refused_when_rendered() -> None:
    template = TaskTemplate("true {input}", ("{input}.gz",))
    assert template.render_outputs({"input": "a/b.txt"}) == ("a/b.txt.gz",)
    with pytest.raises(ConfigError):
        template.render_outputs({"input": "../../../etc/x"})
    assert TaskTemplate("true", ("out/./a/../b.txt",)).render_outputs({}) == ("out/b.txt",)


@pytest.mark.parametrize("path", ["../x", "/x", "a/../../x", "..", "a\0"])
def test_leaves_root_is_true_for_what_leaves(path: str) -> None:
    assert leaves_root(path)


@pytest.mark.parametrize("path", ["x", "a/b", "a/../b", "./a", "a/b/../../c"])
def test_leaves_root_is_false_for_what_stays(path: str) -> None:
    assert not leaves_root(path)


@pytest.mark.parametrize("value", ["../..", "/abs/path", "job\n", "a" * 65, "", "a b", "a/b", "é"])
def test_an_id_is_a_name_never_a_path(value: str) -> None:
    with pytest.raises(ConfigError, match="not a valid Batch id"):
        check_batch_id("job", value)


@pytest.mark.parametrize(
    "value", ["/some/abs/path", "..", "../x", "ab", "a--b", "-ab", "UPPER", "a" * 64, "x\n"]
)
def test_a_container_name_is_a_name_never_a_path(value: str) -> None:
    with pytest.raises(ConfigError, match="container name"):
        check_container_name(value)


async def test_the_local_backend_refuses_ids_and_names_that_are_paths(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    async with LocalBackend(tmp_path / "state") as backend:
        for bad in (str(victim), "../../victim", "..", "a/b"):
            with pytest.raises(ConfigError):
                await backend.storage.delete_container(bad)
            with pytest.raises(ConfigError):
                await backend.storage.ensure_container(bad)
            with pytest.raises(ConfigError):
                await backend.compute.delete_job(bad)
            with pytest.raises(ConfigError):
                await backend.compute.delete_pool(bad)
            with pytest.raises(ConfigError):
                await backend.compute.ensure_pool(PoolSpec(bad))
        with pytest.raises(ConfigError):
            await backend.storage.upload("out", "../../victim/keep.txt", victim / "keep.txt", "")
        await backend.compute.ensure_pool(PoolSpec("pool"))
        with pytest.raises(ConfigError):
            await backend.compute.ensure_job(JobSpec("../../victim", "pool"))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        (result,) = await backend.compute.add_tasks("job", [TaskSpec("../../../victim", "true")])
        assert result.status is AddStatus.CLIENT_ERROR
        assert result.error_code == "InvalidPropertyValue"
    assert (victim / "keep.txt").read_text() == "mine"


async def _run_one(backend: LocalBackend, task: TaskSpec) -> TaskResult | None:
    (added,) = await backend.compute.add_tasks("job", [task])
    assert added.status is AddStatus.ADDED

    async def completed() -> TaskView | None:
        (view,) = [v for v in await backend.compute.list_tasks("job") if v.task_id == task.task_id]
        return view if view.state is TaskState.COMPLETED else None

    return (await eventually(completed, f"task {task.task_id} to complete", within=30)).result


WRITES_EVERYWHERE = (
    "import os, pathlib\n"
    "for path in ['ok.txt', '../../../../../../../ESCAPE-MARK.txt', '../inside-task-dir.txt']:\n"
    "    pathlib.Path(path).write_text('x')\n"
    "os.symlink({target!r}, 'link.txt')\n"
)


@pytest.mark.parametrize(
    ("pattern", "code"),
    [
        ("../../../../../../../ESCAPE-MARK.txt", "OutputFilePatternInvalid"),
        ("../../*", "OutputFilePatternInvalid"),
        ("/tmp/*", "OutputFilePatternInvalid"),
    ],
)
async def test_the_local_stager_never_uploads_from_outside_the_task_dir(
    tmp_path: Path, pattern: str, code: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("pool"))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.storage.ensure_container("out")
        url = await backend.storage.container_url("out", Permission.WRITE, HOUR)
        script = WRITES_EVERYWHERE.format(target=str(secret))
        task = TaskSpec(
            "t1",
            f"{PY} -c {shlex.quote(script)}",
            output_files=(OutputFile("ok.txt", url, "t1/ok.txt"), OutputFile(pattern, url, "t1")),
        )
        assert await _run_one(backend, task) is TaskResult.FAILURE
        (view,) = await backend.compute.list_tasks("job")
        assert view.failure is not None
        assert view.failure.code == code
        assert [blob.name for blob in await backend.storage.list_blobs("out")] == ["t1/ok.txt"]


async def test_a_link_to_a_file_elsewhere_is_not_uploaded_and_the_task_dir_is_reachable(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("pool"))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.storage.ensure_container("out")
        url = await backend.storage.container_url("out", Permission.WRITE, HOUR)
        script = WRITES_EVERYWHERE.format(target=str(secret))
        task = TaskSpec(
            "t1",
            f"{PY} -c {shlex.quote(script)}",
            output_files=(
                OutputFile("*.txt", url, "t1"),
                OutputFile("../inside-task-dir.txt", url, "t1/up.txt", UploadCondition.TASK_COMPLETION),
            ),
        )
        assert await _run_one(backend, task) is TaskResult.SUCCESS
        names = sorted(blob.name for blob in await backend.storage.list_blobs("out"))
    assert names == ["t1/ok.txt", "t1/up.txt"]  # link.txt (to secret.txt) was not followed


async def test_a_working_folder_the_task_made_a_link_to_a_folder_elsewhere_uploads_nothing(
    tmp_path: Path,
) -> None:
    """A file right in the working folder is taken without resolving its whole path, unless the task turned
    the folder itself into a link: then nothing outside the task dir is uploaded either."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("not yours")
    script = f"import os, shutil\nos.chdir('..')\nshutil.rmtree('wd')\nos.symlink({str(elsewhere)!r}, 'wd')\n"
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("pool"))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.storage.ensure_container("out")
        url = await backend.storage.container_url("out", Permission.WRITE, HOUR)
        task = TaskSpec(
            "t1", f"{PY} -c {shlex.quote(script)}", output_files=(OutputFile("*.txt", url, "t1"),)
        )
        assert await _run_one(backend, task) is TaskResult.SUCCESS
        assert await backend.storage.list_blobs("out") == []
    assert (elsewhere / "secret.txt").read_text() == "not yours"


class _NamesStorage:
    """Storage that lists the names a task wrote through its own token (Storage keeps `..` in a blob's
    name), and downloads each as a one-byte file."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.downloaded: list[Path] = []

    async def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        return [BlobInfo(name, 1, None) for name in self.names if name.startswith(prefix)]

    async def download(self, container: str, blob_name: str, dest: Path) -> None:
        await anyio.Path(dest.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(dest).write_text("x")
        self.downloaded.append(dest)

    async def download_prefix(
        self,
        container: str,
        prefix: str,
        plan: Callable[[Sequence[BlobInfo]], Iterable[tuple[BlobInfo, Path]]],
    ) -> list[BlobDownload]:
        done = []
        for blob, dest in plan(await self.list_blobs(container, prefix)):
            await self.download(container, blob.name, dest)
            done.append(BlobDownload(blob, dest))
        return done


class _Backend:
    def __init__(self, storage: _NamesStorage) -> None:
        self.storage = storage


HOSTILE_BLOB_NAMES = [
    "t1/../../ESCAPE-MARK.txt",
    "t1/sub/../../../ESCAPE-MARK.txt",
    "t1/..",
    "t1/../t2/stolen.txt",
    "t1//abs",
    "t1/a\0b",
]


async def test_the_downloader_refuses_a_blob_name_that_leaves_the_download_folder(tmp_path: Path) -> None:
    published: list[Event] = []

    async def publish(event: Event, **_: object) -> None:
        published.append(event)

    out = tmp_path / "deep" / "out"
    storage = _NamesStorage(["t1/ok.txt", "t1/sub/a/../b.txt", *HOSTILE_BLOB_NAMES])
    downloader = OutputDownloader(_Backend(storage), publish)  # type: ignore[arg-type]
    await downloader(
        RunStarted(
            run_id="r", workload="w", job_id="job", pool_id="pool", input_count=1, input_container="in",
            output_container="out", download_to=out, cleanup=CleanupPolicy(),
        )
    )  # fmt: skip
    await downloader(TaskSucceeded(run_id="r", job_id="job", task_id="t1", exit_code=0, duration_s=1.0))
    assert storage.downloaded == [out / "ok.txt", out / "sub" / "b.txt"]
    failures = [event for event in published if isinstance(event, OutputDownloadFailed)]
    assert sorted(event.blob_name for event in failures) == sorted(HOSTILE_BLOB_NAMES)
    assert all("leaves the download folder" in event.error for event in failures)
    assert [type(event) for event in published].count(OutputDownloaded) == 2


@pytest.mark.parametrize("where", ["file", "file/below", "/dev/null"])
def test_a_state_dir_that_cannot_be_a_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """--state-dir naming a file (or a folder below one, or /dev/null) was a NotADirectoryError traceback."""
    from batchpilot.cli import main

    (tmp_path / "file").write_text("mine")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    state = where if where.startswith("/") else str(tmp_path / where)
    argv = [
        "run",
        str(tmp_path / "in"),
        "--command",
        "true",
        "--outputs",
        "{stem}.x",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--state-dir", state]) == 2
    err = capsys.readouterr().err
    assert "--state-dir" in err
    assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "file").read_text() == "mine"


def test_a_link_loop_a_task_leaves_matches_no_output(tmp_path: Path) -> None:
    """A task that left a link loop named like its output (`ln -s a.o a.o`) crashed the whole run with a
    traceback (Path.resolve raises RuntimeError on a loop): that task fails for want of its output."""
    from batchpilot.backends.local.executor import _matches

    workdir = tmp_path / "task" / "wd"
    workdir.mkdir(parents=True)
    (workdir / "a.o").symlink_to("a.o")
    (workdir / "b.o").symlink_to("c.o")
    (workdir / "c.o").symlink_to("b.o")
    (workdir / "ok.o").write_text("ok")
    assert [name for name, _ in _matches("*.o", workdir, tmp_path / "task")] == ["ok.o"]
    assert _matches("a.o", workdir, tmp_path / "task") == []


async def test_the_emulators_task_dirs_are_private_under_a_given_workdir(tmp_path: Path) -> None:
    """With --workdir the emulator made its folders under the umask (0755): the task dirs, which hold a copy
    of every input and output, were readable by every user (the default temporary folder is 0700)."""
    import os

    from batchpilot.emulator.app import running
    from batchpilot.emulator.config import EmulatorConfig

    old = os.umask(0o022)
    try:
        async with running(EmulatorConfig(port=0, workdir=tmp_path / "emu")):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "emu").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "emu" / "nodes").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o1777, 0o755])
async def test_a_state_dir_that_exists_keeps_its_mode_and_the_state_in_it_is_private(
    tmp_path: Path, mode: int
) -> None:
    """--state-dir naming a folder that exists (/tmp, a home folder) chmod-ed it to 0700: as root,
    `--state-dir /tmp` would have locked every other user and service out of /tmp. The folder is not ours:
    its mode is kept, and the state's own folders in it (inputs, outputs, task dirs) are made private."""
    import os
    import stat as stat_mode

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("theirs")
    shared.chmod(mode)
    old = os.umask(0o022)
    try:
        async with LocalBackend(shared):
            pass
    finally:
        os.umask(old)
    assert stat_mode.S_IMODE(shared.stat().st_mode) == mode
    for folder in ("batch", "storage"):
        assert stat_mode.S_IMODE((shared / folder).stat().st_mode) == 0o700
    fresh = tmp_path / "fresh" / "state"
    async with LocalBackend(fresh):
        pass
    assert stat_mode.S_IMODE(fresh.stat().st_mode) == 0o700  # one it creates is private itself
