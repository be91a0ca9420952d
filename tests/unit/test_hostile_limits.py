"""Every size and count that comes from a user has a limit, checked where it enters (issue 16, item 3)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import anyio
import pytest

from batchpilot.backends.local import LocalBackend
from batchpilot.errors import ConfigError
from batchpilot.files import copy_atomically, temporary_sibling
from batchpilot.records import AddStatus, TaskResult, TaskState
from batchpilot.spec import (
    MAX_COMMAND_BYTES,
    MAX_ENVIRONMENT_BYTES,
    MAX_ENVIRONMENT_VARIABLES,
    JobSpec,
    PoolSpec,
    TaskSpec,
    TaskTemplate,
    Workload,
)
from batchpilot.workload_file import Defaults, load_workload

PY = shlex.quote(sys.executable)
DEFAULTS = Defaults("fallback", PoolSpec("default-pool"))


def _workload(**changes: object) -> Workload:
    fields: dict[str, object] = {
        "name": "w",
        "inputs": (Path("a.txt"),),
        "template": TaskTemplate("true {input}", ()),
        "pool": PoolSpec("p"),
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "environment",
    [
        (("BIG", "x" * 200_000),),
        (("BIG", "x" * MAX_ENVIRONMENT_BYTES),),
        tuple((f"V{index}", "x" * 1000) for index in range(100)),
        tuple((f"V{index}", "") for index in range(MAX_ENVIRONMENT_VARIABLES + 1)),
        (("A=B", "x"),),
        (("", "x"),),
        (("A", "x\0y"),),
        (("é" * 40_000, "x"),),
    ],
)
def test_an_environment_that_no_task_could_be_given_is_one_line(environment: tuple) -> None:
    with pytest.raises(ConfigError) as caught:
        _workload(environment=environment)
    message = str(caught.value)
    assert "\n" not in message
    assert len(message) < 400


def test_an_environment_within_the_limits_is_kept() -> None:
    environment = (("A", "x" * 10_000), ("B", "é"), ("LC_ALL", "C"))
    assert _workload(environment=environment).environment == environment


@pytest.mark.parametrize(
    "template",
    [
        lambda: TaskTemplate("x" * (MAX_COMMAND_BYTES + 1), ()),
        lambda: TaskTemplate("é" * (MAX_COMMAND_BYTES // 2 + 1), ()),
        lambda: TaskTemplate("true", tuple(f"o{index}.txt" for index in range(101))),
        lambda: TaskTemplate("true", ("x" * 1025,)),
    ],
)
def test_a_template_too_large_is_one_line(template) -> None:
    with pytest.raises(ConfigError) as caught:
        template()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("slots", [257, 10_000, 2**40])
def test_task_slots_per_node_follow_batchs_limit(slots: int) -> None:
    with pytest.raises(ConfigError, match="256"):
        PoolSpec("p", task_slots_per_node=slots)


@pytest.mark.parametrize(("dedicated", "spot"), [(2**31, 0), (0, 2**40), (10**30, 1)])
def test_node_counts_fit_batchs_int32(dedicated: int, spot: int) -> None:
    with pytest.raises(ConfigError, match="node count"):
        PoolSpec("p", dedicated_nodes=dedicated, spot_nodes=spot)


@pytest.mark.parametrize("length", [200, 240, 250, 254, 255])
def test_a_long_file_name_gets_a_temporary_name_the_file_system_takes(tmp_path: Path, length: int) -> None:
    """The repro: a 254-character input name, `File name too long` on the temporary download name."""
    source = tmp_path / "source"
    source.write_text("x")
    for name in ("a" * length, "é" * (length // 2)):
        dest = tmp_path / "out" / name
        temporary = temporary_sibling(dest)
        assert len(temporary.name.encode()) <= 255
        assert temporary.name.startswith(".")
        assert ".partial-" in temporary.name
        copy_atomically(source, dest)
        assert dest.read_text() == "x"
    assert [path.name for path in (tmp_path / "out").iterdir() if ".partial-" in path.name] == []


def test_a_workload_file_nested_too_deeply_or_too_large_is_one_line(tmp_path: Path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text("[workload]\ncommand = 'true'\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")
    huge = tmp_path / "huge.toml"
    huge.write_text("[workload]\ncommand = 'true'\n" + "# padding\n" * 200_000)
    for path in (nested, huge):
        with pytest.raises(ConfigError) as caught:
            load_workload(path, DEFAULTS)
        assert "\n" not in str(caught.value)


def test_a_large_environment_value_in_a_workload_file_is_one_line(tmp_path: Path) -> None:
    """The repro: one 200 KB value in [workload.environment] crashed the orchestrator (Argument list too
    long) instead of being refused."""
    (tmp_path / "a.txt").write_text("a")
    path = tmp_path / "w.toml"
    path.write_text(
        "[workload]\ninputs = '*.txt'\ncommand = 'true {input}'\noutputs = []\n"
        f"[workload.environment]\nBIG = '{'x' * 200_000}'\n"
    )
    with pytest.raises(ConfigError, match="BIG") as caught:
        load_workload(path, DEFAULTS)
    assert "\n" not in str(caught.value)


async def test_the_local_backend_runs_a_bounded_number_of_slots(tmp_path: Path) -> None:
    async with LocalBackend(tmp_path / "state") as backend:
        with pytest.raises(ConfigError, match="at most 1,024"):
            await backend.compute.ensure_pool(PoolSpec("p", dedicated_nodes=100_000))


async def test_a_command_the_os_cannot_start_fails_that_task_with_a_reason(tmp_path: Path) -> None:
    """A command line (or environment) longer than Linux takes: that task fails, the orchestrator goes on."""
    async with LocalBackend(tmp_path / "state") as backend:
        await backend.compute.ensure_pool(PoolSpec("p", dedicated_nodes=2))
        await backend.compute.ensure_job(JobSpec("job", "p"))
        huge = TaskSpec("huge", f"{PY} -c pass {'x' * 200_000}")
        env = TaskSpec("env", f"{PY} -c pass", environment=(("BIG", "y" * 200_000),))
        fine = TaskSpec("fine", f"{PY} -c pass")
        results = await backend.compute.add_tasks("job", [huge, env, fine])
        assert [result.status for result in results] == [AddStatus.ADDED] * 3
        with anyio.fail_after(30):
            while True:
                views = {view.task_id: view for view in await backend.compute.list_tasks("job")}
                if all(view.state is TaskState.COMPLETED for view in views.values()):
                    break
                await anyio.sleep(0.02)
    assert views["fine"].result is TaskResult.SUCCESS
    for task_id in ("huge", "env"):
        assert views[task_id].result is TaskResult.FAILURE
        assert views[task_id].failure is not None
        assert views[task_id].failure.code == "CommandLineTooLong"


@pytest.mark.parametrize(
    "flags",
    [
        ("--concurrency", "1000000000"),  # started a billion upload workers for three inputs: a hang
        ("--sample", "100000000"),  # began generating a hundred million clips
    ],
)
def test_counts_from_the_command_line_have_a_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, str]
) -> None:
    from batchpilot.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    args = ["plan"] if flags[0] == "--sample" else ["run", "--command", "true", "--outputs", "x"]
    if flags[0] != "--sample":
        args += ["--out", str(tmp_path / "out"), str(tmp_path / "in")]
    try:
        code = main([*args, "--state-dir", str(tmp_path / "state"), *flags])
    except SystemExit as exited:  # argparse's own refusal
        code = exited.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "at most" in lines[0]
    assert not (tmp_path / "state" / "samples").exists()


async def test_a_fan_out_starts_no_more_workers_than_items() -> None:
    from batchpilot.concurrency import for_each

    seen: list[int] = []

    async def call(item: int) -> None:
        seen.append(item)

    await for_each(range(3), call, concurrency=10**9)  # returns at once: three workers, not a billion
    assert seen == [0, 1, 2]


def test_a_metrics_port_past_65535_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--metrics-port 99999 was a traceback (OverflowError from bind, in an exception group)."""
    from batchpilot.cli import main

    (tmp_path / "w").mkdir()
    argv = ["serve", "--watch", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--command", "true"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--outputs", "x", "--state-dir", str(tmp_path / "state"), "--metrics-port", "99999"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "65,535" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("option", ["--workload", "--config"])
def test_a_settings_file_that_is_no_regular_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, option: str
) -> None:
    """--workload or --config naming a FIFO (read waited for a writer forever) or /dev/zero (read without
    end: its size says 0) hung the CLI."""
    import os

    from batchpilot.cli import main

    path = tmp_path / "settings.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    argv = ["plan", str(tmp_path / "in"), "--command", "true", "--outputs", "x", option, str(path)]
    if option == "--workload":
        argv = ["plan", option, str(path)]
    else:
        argv += [
            "--backend",
            "azure",
            "--batch-endpoint",
            "https://a.b.batch.azure.com",
            "--batch-account",
            "a",
        ]
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert "regular file" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_log_file_that_is_a_fifo_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--log-file naming a FIFO with no reader hung the CLI before it ran anything."""
    import os

    from batchpilot.cli import main

    os.mkfifo(tmp_path / "log")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    argv = [
        "plan",
        str(tmp_path / "in"),
        "--command",
        "true",
        "--outputs",
        "x",
        "--log-file",
        str(tmp_path / "log"),
    ]
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 2
    assert "regular file" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["port in use", "port past 65535", "key file a fifo"])
def test_the_emulator_refuses_what_it_cannot_serve_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """A port in use was a traceback (OSError from bind), 99999 an OverflowError, and a --key-file naming a
    FIFO hung the emulator before it listened (its size says 0)."""
    import os
    import socket

    from batchpilot.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["emulator", "--workdir", str(tmp_path / "emu")]
        if case == "port in use":
            argv += ["--port", str(taken.getsockname()[1])]
        elif case == "port past 65535":
            argv += ["--port", "99999"]
        else:
            os.mkfifo(tmp_path / "key")
            argv += ["--port", "0", "--key-file", str(tmp_path / "key")]
        try:
            code = main(argv)
        except SystemExit as exited:  # argparse's own refusal
            code = exited.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
