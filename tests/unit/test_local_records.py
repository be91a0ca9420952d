"""The local backend's task records: one journal per job (`tasks.jsonl`), what a crash leaves of it, the
layout of earlier versions, and its bound."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from batchpilot.backends.local import LocalBackend, compute
from batchpilot.errors import BackendError
from batchpilot.records import TaskResult, TaskState
from batchpilot.spec import JobSpec, PoolSpec, TaskConstraints, TaskSpec
from tests.unit.test_local_backend import wait_completed
from tests.waiting import eventually

PY = shlex.quote(sys.executable)


def _journal(root: Path, job: str = "job") -> Path:
    return root / "batch" / "jobs" / job / "tasks.jsonl"


def _lines(journal: Path) -> list[dict]:
    """The journal's complete lines (what follows the last newline is a write cut short)."""
    return [json.loads(line) for line in journal.read_bytes().split(b"\n")[:-1]]


def _appender(log: Path, name: str) -> str:
    """A command that appends `name` to `log`: how many times a task ran."""
    return f"{PY} -c \"open({str(log)!r}, 'a').write({name!r} + chr(10))\""


def _gated(started: Path, gate: Path) -> str:
    """A command that marks that it started, then waits for `gate` to exist."""
    script = (
        "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch()\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.02)"
    )
    return f"{PY} -c {shlex.quote(script)} {shlex.quote(str(started))} {shlex.quote(str(gate))}"


async def test_a_tasks_states_are_lines_of_one_journal_not_files_per_task(tmp_path: Path) -> None:
    root = tmp_path / "state"
    async with LocalBackend(root) as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.compute.add_tasks("job", [TaskSpec(f"t{i}", "true") for i in range(5)])
        await wait_completed(backend, "job", 5)
    lines = _lines(_journal(root))
    for i in range(5):
        mine = [line for line in lines if line["task_id"] == f"t{i}"]
        assert 1 <= len(mine) <= 3  # queued, running, completed: at most one line each
        assert sum("spec" in line for line in mine) == 1  # the spec, which never changes, once
        assert mine[-1]["state"] == "completed"
        # The task's own folder holds what its command made and wrote, no record.
        assert sorted(p.name for p in (root / "batch" / "jobs" / "job" / "tasks" / f"t{i}").iterdir()) == [
            "stderr.txt",
            "stdout.txt",
            "wd",
        ]
    assert list(root.rglob("task.json")) == []


async def test_what_a_crash_leaves_resumes_the_task_cut_short_keeps_the_done_one_and_ignores_a_torn_line(
    tmp_path: Path,
) -> None:
    root, copy = tmp_path / "state", tmp_path / "crashed"
    ran, started, gate = tmp_path / "ran.log", tmp_path / "started", tmp_path / "gate"
    tasks = [TaskSpec("done", _appender(ran, "done")), TaskSpec("long", _gated(started, gate))]
    async with LocalBackend(root) as first:
        await first.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await first.compute.ensure_job(JobSpec("job", "pool"))
        await first.compute.add_tasks("job", tasks)
        await wait_completed(first, "job", 1)

        def running_on_disk() -> bool:
            return any(
                line["task_id"] == "long" and line["state"] == "running" for line in _lines(_journal(root))
            )

        await eventually(running_on_disk, "the running record of the long task", within=30)
        # The files as a kill -9 of the orchestrator would leave them now, and a last write cut short.
        shutil.copytree(root, copy)
        with _journal(copy).open("ab") as journal:
            journal.write(b'{"task_id":"done","state":"act')

    async with LocalBackend(copy) as second:
        # Read only, as `batchpilot report --job` reads a job it does not run: the torn line is no record.
        views = {view.task_id: view for view in await second.compute.list_tasks("job")}
        assert views["done"].result is TaskResult.SUCCESS
        assert views["long"].state is TaskState.RUNNING
        await second.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await second.compute.ensure_job(JobSpec("job", "pool"))
        assert _journal(copy).read_bytes().endswith(b"\n")  # compacted on resume: the torn line is gone
        views = {view.task_id: view for view in await second.compute.list_tasks("job")}
        assert views["long"].requeue_count == 1
        gate.touch()
        views = await wait_completed(second, "job", 2)
        assert (views["long"].result, views["long"].requeue_count) == (TaskResult.SUCCESS, 1)
        assert views["done"].result is TaskResult.SUCCESS
    assert ran.read_text() == "done\n"  # the completed task did not run again


def _old_record(spec: TaskSpec, state: str, **fields: object) -> dict:
    """A task.json as versions before the journal wrote it, one per task."""
    return {
        "spec": compute._spec_to_json(spec),
        "state": state,
        "transition_time": "2026-11-29T10:00:00+00:00",
        "node_id": None,
        "exit_code": None,
        "result": None,
        "failure": None,
        "retry_count": 0,
        "requeue_count": 0,
        "start_time": None,
        "end_time": None,
        **fields,
    }


async def test_a_state_folder_of_the_earlier_layout_resumes_and_moves_into_the_journal(
    tmp_path: Path,
) -> None:
    root, ran = tmp_path / "state", tmp_path / "ran.log"
    job_dir = root / "batch" / "jobs" / "job"
    records = {
        "a": _old_record(TaskSpec("a", _appender(ran, "a")), "completed", exit_code=0, result="success"),
        "b": _old_record(TaskSpec("b", _appender(ran, "b")), "running", node_id="pool-slot-0"),
        "c": _old_record(TaskSpec("c", _appender(ran, "c")), "active"),
    }
    for task_id, record in records.items():
        (job_dir / "tasks" / task_id).mkdir(parents=True)
        (job_dir / "tasks" / task_id / "task.json").write_text(json.dumps(record))
    (job_dir / "tasks" / "c" / ".task.json.0123.tmp").write_text("{")  # a write the old version left
    (job_dir / "job.json").write_text(json.dumps({"job_id": "job", "pool_id": "pool"}))

    async with LocalBackend(root) as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        assert not (await backend.compute.ensure_job(JobSpec("job", "pool"))).created
        assert list(job_dir.rglob("*task.json*")) == []  # moved into the journal
        views = await wait_completed(backend, "job", 3)
        assert views["b"].requeue_count == 1  # cut short by the old version's end
        assert all(view.result is TaskResult.SUCCESS for view in views.values())
    assert sorted(ran.read_text().split()) == ["b", "c"]

    async with LocalBackend(root) as again:  # and from the journal alone, nothing runs again
        await again.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await again.compute.ensure_job(JobSpec("job", "pool"))
        views = {view.task_id: view for view in await again.compute.list_tasks("job")}
        assert {task_id: view.state for task_id, view in views.items()} == dict.fromkeys(
            "abc", TaskState.COMPLETED
        )
    assert sorted(ran.read_text().split()) == ["b", "c"]


async def test_the_journal_is_compacted_when_it_outgrows_the_live_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compute, "_COMPACT_SLACK", 0)
    root = tmp_path / "state"
    retries = 12  # two lines each (running, queued again): the journal would hold 26 lines for one task
    task = TaskSpec("failing", "false", constraints=TaskConstraints(max_task_retry_count=retries))
    async with LocalBackend(root) as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.compute.add_tasks("job", [task])
        await wait_completed(backend, "job", 1)
    assert len(_lines(_journal(root))) <= compute._COMPACT_LINES_PER_TASK + 1
    async with LocalBackend(root) as again:
        await again.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        await again.compute.ensure_job(JobSpec("job", "pool"))
        (view,) = await again.compute.list_tasks("job")
        assert (view.result, view.retry_count, view.exit_code) == (TaskResult.FAILURE, retries, 1)


async def test_a_damaged_line_inside_the_journal_is_one_error_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "state"
    async with LocalBackend(root) as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=1))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.compute.add_tasks("job", [TaskSpec("t", "true")])
        await wait_completed(backend, "job", 1)
    journal = _journal(root)
    journal.write_bytes(b"not json\n" + journal.read_bytes())
    async with LocalBackend(root) as again:
        with pytest.raises(BackendError, match=r"line 1 of .*tasks\.jsonl.*cleanup --job"):
            await again.compute.list_tasks("job")


async def test_records_appended_while_the_journal_is_compacted_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compacted at almost every record, while two slots append theirs: none may be lost or overtaken.
    monkeypatch.setattr(compute, "_COMPACT_SLACK", 0)
    monkeypatch.setattr(compute, "_COMPACT_LINES_PER_TASK", 1)
    root, ran = tmp_path / "state", tmp_path / "ran.log"
    tasks = [TaskSpec(f"t{i}", _appender(ran, f"t{i}")) for i in range(30)]
    async with LocalBackend(root) as backend:
        await backend.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await backend.compute.ensure_job(JobSpec("job", "pool"))
        await backend.compute.add_tasks("job", tasks)
        await wait_completed(backend, "job", 30)
    latest = {line["task_id"]: line for line in _lines(_journal(root))}
    assert {task_id: line["state"] for task_id, line in latest.items()} == {
        f"t{i}": "completed" for i in range(30)
    }
    async with LocalBackend(root) as again:  # and nothing runs again
        await again.compute.ensure_pool(PoolSpec("pool", dedicated_nodes=2))
        await again.compute.ensure_job(JobSpec("job", "pool"))
        views = await again.compute.list_tasks("job")
        assert len(views) == 30
        assert all(view.result is TaskResult.SUCCESS for view in views)
    assert sorted(ran.read_text().split()) == sorted(f"t{i}" for i in range(30))
