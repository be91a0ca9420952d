"""A name from outside never becomes code (issue 16, item 1): whatever the template does with it, the command
line a task gets holds only safe names; the original name stays data (outputs, display name)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest

from batchpilot.spec import StagedInput, TaskTemplate
from batchpilot.tasks import build_task, required_downloads

HOSTILE_NAMES = [
    "a'$(id>PWNED)'b.log",
    'a"$(id>PWNED)"b.log',
    "a`id>PWNED`b.log",
    "a;id>PWNED;b.log",
    "a|id>PWNED.log",
    "a&&id>PWNED.log",
    "a\nid>PWNED\n.log",
    "a $(id) b.log",
    "-x",
    "--version",
    "-rf.log",
    "ünï cödé.log",
    "a\\'b.log",
    "${IFS}id.log",
    "a*b?.log",
    "a{b,c}.log",
    "~root.log",
    "a\u202eb.log",  # right-to-left override
    "a\u00a0b.log",  # no-break space
    ".hidden.log",
    "x.$(id)",
]
TEMPLATES = [
    '/bin/sh -c "gzip -c {input} > {input_name}.gz"',
    "/bin/sh -c 'gzip -c {input} > {input_name}.gz'",
    "gzip -k {input}",
    '/bin/bash -c "/bin/sh -c \\"cat {input} > {stem}.out\\""',
    "/bin/sh -c 'eval cat {input} {input_name} {stem}'",
    "tool --in={input} --name={input_name} {task_id}",
]
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


def _staged(name: str) -> StagedInput:
    return StagedInput.for_path(Path("/in") / name, "0" * 32, 1)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("command", TEMPLATES)
def test_no_name_from_outside_reaches_the_command_line(name: str, command: str) -> None:
    """The repro's template among others: the command line holds the template's own text and safe names."""
    staged = _staged(name)
    template = TaskTemplate(command, ("{input_name}.gz",))
    task = build_task(template, staged, input_url="IN", output_url="OUT")
    values = staged.node_values()
    assert all(SAFE.fullmatch(value) for value in values.values()), values
    assert task.command_line == command.format_map(values)  # nothing but the template and safe values
    assert name not in task.command_line
    assert PurePosixPath(name).stem not in task.command_line or SAFE.fullmatch(PurePosixPath(name).stem)
    # Staged on the node under the safe name; that name reads as no option.
    (resource,) = task.resource_files
    assert resource.file_path == values["input"]
    assert not resource.file_path.startswith(("-", "."))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_original_name_is_kept_where_it_is_data(name: str) -> None:
    staged = _staged(name)
    template = TaskTemplate(
        '/bin/sh -c "gzip -c {input} > {input_name}.gz"', ("{input_name}.gz", "{stem}*.png")
    )
    task = build_task(template, staged, input_url="IN", output_url="OUT")
    single, wildcard, _logs = task.output_files
    # Matched on the node by the safe name, uploaded (and so downloaded) under the original one.
    assert single.file_pattern == f"{staged.safe_path}.gz"
    assert single.path == f"{staged.task_id}/{name}.gz"
    assert wildcard.file_pattern == f"{PurePosixPath(staged.safe_path).stem}*.png"
    assert wildcard.path == staged.task_id
    assert task.display_name == name


@pytest.mark.parametrize("name", ["a.log", "clip_01.mp4", "x+y-z.tar.gz", "_a", "A1"])
def test_a_safe_name_is_used_as_it_is(name: str) -> None:
    staged = _staged(name)
    assert staged.safe_path == name
    task = build_task(
        TaskTemplate("gzip -k {input}", ("{input_name}.gz",)), staged, input_url="I", output_url="O"
    )
    assert task.command_line == f"gzip -k {name}"
    assert task.output_files[0].file_pattern == f"{name}.gz"


def test_a_name_too_long_to_build_names_from_gets_a_short_one() -> None:
    """A safe name of up to 128 characters is used as it is; a longer one (up to the 255 a file system
    takes) would leave no room for the names a command makes from it (`{input_name}.gz`)."""
    assert _staged("a" * 124 + ".log").safe_path == "a" * 124 + ".log"
    long = _staged("a" * 250 + ".log")
    assert long.safe_path == f"{long.task_id}.log"
    assert len(long.safe_path) < 80


def test_a_blob_input_in_folders_is_staged_under_its_file_name_as_a_local_input() -> None:
    # In the task's own working dir, where the output patterns look (`gzip -k {input}` writes beside it).
    assert StagedInput.for_blob("videos/2024/a.mp4", None, 1).safe_path == "a.mp4"
    for hostile in ("videos/$(id)/a.mp4", "videos/2024/-a.mp4", "../a.mp4", "videos/a b.mp4"):
        staged = StagedInput.for_blob(hostile, None, 1)
        assert SAFE.fullmatch(staged.safe_path), staged.safe_path
        assert staged.safe_path.endswith(".mp4")


def test_the_command_splits_into_the_templates_words_whatever_the_name() -> None:
    for name in HOSTILE_NAMES:
        task = build_task(
            TaskTemplate("tool {input} {stem}.out", ()), _staged(name), input_url="I", output_url="O"
        )
        words = shlex.split(task.command_line)
        assert len(words) == 3
        assert words[0] == "tool"
        assert not words[1].startswith("-")


@pytest.mark.parametrize("name", ["a b.txt", "a'$(id)'b.txt", "-x.txt", "plain.txt"])
def test_the_outputs_a_task_must_leave_are_looked_for_where_they_are_uploaded(name: str) -> None:
    """A wildcard output made from a placeholder matches the files the command named from the safe name;
    a single-file output is looked for under the input's own name (where build_task uploads it)."""
    staged = _staged(name)
    template = TaskTemplate("/bin/sh -c 'cp {input} {stem}_1.out'", ("{stem}_*.out", "{input_name}.gz"))
    task = build_task(template, staged, input_url="I", output_url="O")
    wildcard, single, _logs = task.output_files
    required = required_downloads(template, staged)
    assert required == (wildcard.file_pattern, single.path.removeprefix(f"{staged.task_id}/"))


@pytest.mark.parametrize(
    "text",
    [
        # A SAS URL carried URL-encoded inside another URL (a copy source, a redirect, an error naming it).
        "url=https%3A%2F%2Fa.blob.core.windows.net%2Fc%2Fb%3Fsv%3D1%26sig%3DLEAK%252Bx%26se%3D2",
        "next=https%3a%2f%2fa%2fb%3fsv%3d1%26SIG%3dLEAK%252B",
    ],
)
def test_a_sas_signature_url_encoded_inside_another_url_is_masked(text: str) -> None:
    from batchpilot.redact import MASK, redact

    masked = redact(text)
    assert "LEAK" not in masked
    assert MASK in masked
    assert masked.endswith(("%26se%3D2", "%3d" + MASK))
