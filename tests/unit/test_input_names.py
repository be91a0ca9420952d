"""No two inputs or outputs land on the same name (issue 15 item 3, BatchExplorer#2956): inputs keep their
folder below the input root, in blob names and in the download folder, and names that would still meet are
refused before anything is uploaded. A flat folder of inputs keeps the names it always had."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from batchpilot import Orchestrator, PoolSpec, TaskTemplate, Workload
from batchpilot.errors import ConfigError, InputError, UnreadableInputError
from batchpilot.spec import BlobInputs, StagedInput
from batchpilot.staging import input_folders, stage_inputs
from batchpilot.tasks import build_task, check_distinct, output_path
from batchpilot.testing import FakeClock, InMemoryBackend, ScriptedTask, Succeed
from batchpilot.workload_file import Defaults, load_workload


def files(root: Path, *names: str) -> tuple[Path, ...]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        paths.append(path)
    return tuple(paths)


def workload(
    inputs: tuple[Path, ...], outputs: tuple[str, ...] = ("{input_name}.gz",), **kw: object
) -> Workload:
    return Workload(
        name="names",
        inputs=inputs,
        template=TaskTemplate("gzip -k {input}", outputs),
        pool=PoolSpec("names-pool"),
        **kw,  # type: ignore[arg-type]
    )


# --- folders --------------------------------------------------------------------------------------------


def test_inputs_keep_their_folder_below_the_root(tmp_path: Path) -> None:
    paths = files(tmp_path / "logs", "d1/app.log", "d2/app.log", "top.log")
    folders = input_folders(workload(paths, input_root=tmp_path / "logs"))
    assert list(folders.values()) == ["d1", "d2", ""]
    # Without a root: the inputs' common folder.
    assert list(input_folders(workload(paths)).values()) == ["d1", "d2", ""]
    # A root the inputs are not all inside is not used.
    assert list(input_folders(workload(paths, input_root=tmp_path / "logs" / "d1")).values()) == [
        "d1",
        "d2",
        "",
    ]


def test_a_flat_folder_keeps_the_names_it_had(tmp_path: Path) -> None:
    """Task ids and blob names of inputs at the root are those of an input without a folder, so a job of a
    flat folder resumes as it did."""
    [path] = files(tmp_path / "in", "a.txt")
    at_root = StagedInput.for_path(path, "0" * 32, 1)
    assert (at_root.blob_name, at_root.folder) == ("a.txt", "")
    [staged] = anyio.run(stage_inputs, workload((path,), input_root=tmp_path / "in"), None)
    assert (staged.blob_name, staged.input_key) == (
        "a.txt",
        StagedInput.for_path(path, staged.fingerprint, 1).input_key,
    )
    in_folder = StagedInput.for_path(path, "0" * 32, 1, folder="d1")
    assert (in_folder.blob_name, in_folder.name, in_folder.node_path) == ("d1/a.txt", "a.txt", "a.txt")
    assert in_folder.input_key != at_root.input_key


def test_a_glob_s_fixed_part_is_the_root(tmp_path: Path) -> None:
    files(tmp_path / "logs", "d1/app.log", "d2/app.log")
    (tmp_path / "w.toml").write_text(
        '[workload]\nname = "dup"\ninputs = "logs/**/*.log"\ncommand = "gzip -k {input}"\n'
        'outputs = ["{input_name}.gz"]\n'
    )
    loaded = load_workload(tmp_path / "w.toml", Defaults(name="dup", pool=PoolSpec("p")))
    assert loaded.input_root == tmp_path / "logs"
    staged = anyio.run(stage_inputs, loaded, None)
    assert [item.blob_name for item in staged] == ["d1/app.log", "d2/app.log"]
    # A folder on the command line is the root.
    from_folder = load_workload(
        tmp_path / "w.toml", Defaults(name="dup", pool=PoolSpec("p")), inputs_from=tmp_path / "logs" / "d1"
    )
    assert from_folder.input_root == tmp_path / "logs" / "d1"


def test_a_blob_s_folder_is_below_its_prefix() -> None:
    assert StagedInput.for_blob("2024/a/x.mp4", None, 1, prefix="2024/").folder == "a"
    assert StagedInput.for_blob("2024/x.mp4", None, 1, prefix="2024/").folder == ""
    assert StagedInput.for_blob("videos/2024/x.mp4", None, 1).folder == "videos/2024"
    # A blob name is text: `..` never becomes a folder of the download folder.
    assert StagedInput.for_blob("../../etc/x.mp4", None, 1).folder == "etc"


def test_outputs_land_under_the_input_s_folder() -> None:
    item = StagedInput.for_path(Path("/logs/d1/app.log"), "0" * 32, 1, folder="d1")
    task = build_task(TaskTemplate("gzip -k {input}", ("{input_name}.gz", "*.png")), item, input_url="IN",
                      output_url="OUT")  # fmt: skip
    single, wildcard, _logs = task.output_files
    assert (single.file_pattern, single.path) == ("app.log.gz", f"{item.task_id}/d1/app.log.gz")
    assert wildcard.path == f"{item.task_id}/d1"
    assert task.resource_files[0].file_path == "app.log"  # on the node, in the task's own working dir
    assert output_path("t", "a.gz") == "t/a.gz"
    assert output_path("t", "*.gz", "d1") == "t/d1"


# --- names that would meet --------------------------------------------------------------------------------


def staged(*names: str) -> list[StagedInput]:
    items = []
    for name in names:
        folder = name.rpartition("/")[0]
        items.append(StagedInput.for_path(Path("/in") / name, "0" * 32, 1, folder=folder))
    return items


@pytest.mark.parametrize(
    ("names", "outputs", "named"),
    [
        (("a.log", "b.log"), ("result.gz",), ("/in/a.log", "/in/b.log")),  # one output name for two inputs
        (("App.log", "app.log"), ("{input_name}.gz",), ("/in/App.log", "/in/app.log")),  # case only
        # é as one code point and as e + U+0301: one name to macOS's disks
        (("caf\u00e9.log", "cafe\u0301.log"), ("{input_name}.gz",), ("/in/caf", "normalisation")),
        (("d\u00e9/a.log", "de\u0301/A.log"), ("{stem}",), ("/in/d",)),  # in a folder's name, with case
        (("d1/A.log", "d1/a.log"), ("{stem}",), ("/in/d1/A.log", "/in/d1/a.log")),
        (("a.log",), ("{stem}.gz", "a.gz"), ("/in/a.log", "'{stem}.gz' and 'a.gz'")),  # two patterns
        (("a.tar.gz", "a.tar.bz2"), ("{stem}.txt",), ("/in/a.tar.gz", "/in/a.tar.bz2")),  # stems meet
        (("d1.log", "d1/x.log"), ("{stem}",), ("/in/d1.log", "/in/d1/x.log")),  # a file and a folder: d1
        (("d1", "d1/x.log"), ("{input_name}.gz",), ("/in/d1", "/in/d1/x.log", "input container")),
    ],
)
def test_names_that_would_meet_are_one_line_naming_both(
    names: tuple[str, ...], outputs: tuple[str, ...], named: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as refused:
        check_distinct(TaskTemplate("gzip -k {input}", outputs), staged(*names))
    message = str(refused.value)
    assert "\n" not in message
    assert all(part in message for part in named), message


def test_names_in_different_folders_or_wildcards_do_not_meet() -> None:
    check_distinct(TaskTemplate("gzip -k {input}", ("{input_name}.gz",)), staged("d1/app.log", "d2/app.log"))
    check_distinct(TaskTemplate("x {input}", ("*.png",)), staged("a.log", "b.log"))
    check_distinct(TaskTemplate("x {input}", ("{stem}.gz", "{stem}.txt")), staged("a.log", "b.log"))


@pytest.mark.parametrize(
    ("name", "outputs"),
    [
        ("a" * 250 + ".txt", ("{input_name}.gz",)),  # 257 bytes: no disk can hold it in --out
        ("\u00e9" * 127 + ".log", ("{stem}.gz",)),  # 257 bytes in 130 characters: bytes count
        ("d" * 256 + "/x.log", ("{stem}.gz",)),  # a folder's name kept in --out
    ],
)
def test_an_output_whose_file_name_no_disk_can_hold_is_one_line_naming_its_input(
    name: str, outputs: tuple[str, ...]
) -> None:
    """A 254-character input name failed its task at upload (File name too long) run after run; it is
    refused where it enters, naming the input, so serve leaves out that one input (an InputError)."""
    [item] = staged(name)
    with pytest.raises(InputError) as refused:
        check_distinct(TaskTemplate("gzip -k {input}", outputs), [item])
    assert "\n" not in str(refused.value)
    assert "over the 255" in str(refused.value)
    assert refused.value.paths == (str(item.path),)


def test_a_long_input_name_is_fine_when_its_outputs_are_named_otherwise() -> None:
    check_distinct(TaskTemplate("gzip -k {input}", ("{task_id}.gz",)), staged("a" * 250 + ".txt"))
    check_distinct(TaskTemplate("gzip -k {input}", ("{stem}.gz",)), staged("\u00e9" * 126 + ".log"))  # 255


def test_blob_inputs_that_would_meet_are_refused(tmp_path: Path) -> None:
    backend = InMemoryBackend()

    async def main() -> None:
        async with backend:
            for name in ("raw/a/x.mp4", "raw/b/x.mp4"):
                backend.storage.put("user", name, b"1")
            flat = workload((), outputs=("{stem}.mp3",))
            both = Workload(
                name="blobs",
                inputs=BlobInputs("user", "raw/"),
                template=TaskTemplate("ffmpeg -i {input} {stem}.mp3", ("{stem}.mp3",)),
                pool=flat.pool,
            )
            staged_blobs = await stage_inputs(both, backend.storage)
            assert [item.folder for item in staged_blobs] == ["a", "b"]  # apart: a/x.mp3 and b/x.mp3
            constant = Workload(
                name="blobs",
                inputs=BlobInputs("user", "raw/"),
                template=TaskTemplate("ffmpeg -i {input} out.mp3", ("out.mp3",)),
                pool=flat.pool,
            )
            backend.storage.put("user", "raw/a/y.mp4", b"2")
            with pytest.raises(ConfigError, match=r"raw/a/x\.mp4 and raw/a/y\.mp4"):
                await stage_inputs(constant, backend.storage)

    anyio.run(main)


async def test_a_run_refuses_before_anything_is_uploaded(tmp_path: Path) -> None:
    backend = InMemoryBackend(clock=FakeClock())
    paths = files(tmp_path / "in", "a.log", "b.log")
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        with pytest.raises(ConfigError, match=r"a\.log and .*b\.log"):
            await orchestrator.run(workload(paths, outputs=("result.gz",)))
    assert backend.compute.calls == []


async def test_a_run_keeps_both_outputs(tmp_path: Path) -> None:
    def script(task: ScriptedTask) -> Succeed:
        [(name, content)] = task.inputs.items()
        return Succeed(files={f"{name}.gz": content})

    backend = InMemoryBackend(script=script, clock=FakeClock())
    paths = files(tmp_path / "logs", "d1/app.log", "d2/app.log")
    job = workload(paths, download_to=tmp_path / "out", input_root=tmp_path / "logs")
    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        summary = await orchestrator.run(job)
    assert summary.ok
    assert (tmp_path / "out" / "d1" / "app.log.gz").read_text() == "d1/app.log"
    assert (tmp_path / "out" / "d2" / "app.log.gz").read_text() == "d2/app.log"


@pytest.mark.parametrize("name", ["a.txt.", "v1./x.log", "x..."])
def test_a_local_input_whose_name_ends_with_a_dot_is_one_line(name: str) -> None:
    """Azurite took `a.txt.`; Azure Storage drops a segment's trailing dot (its docs: no path segment should
    end with a dot), so the upload and the task's SAS would not meet."""
    with pytest.raises(ConfigError) as refused:
        check_distinct(TaskTemplate("gzip -k {input}", ("{input_name}.gz",)), staged(name))
    message = str(refused.value)
    assert "\n" not in message
    assert f"/in/{name}" in message
    assert "ends with a dot" in message
    assert isinstance(refused.value, UnreadableInputError)  # serve leaves it out, runs the rest of its batch
    # A blob already in the user's container is theirs: it is read as listed.
    check_distinct(TaskTemplate("x {input}", ()), [StagedInput.for_blob("2024/a.txt.", None, 1)])
