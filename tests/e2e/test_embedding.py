"""batchpilot embedded in an async application: `async with`, `async for` events, a workload as data."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import anyio

from batchpilot import (
    CleanupPolicy,
    Event,
    LocalBackend,
    Orchestrator,
    OutputDownloaded,
    PoolPolicy,
    PoolSpec,
    RunFinished,
    TaskSucceeded,
    TaskTemplate,
    Workload,
)

PY = shlex.quote(sys.executable)


async def test_outputs_are_fetched_as_each_task_succeeds_not_at_the_end(tmp_path: Path):
    # Task "b" finishes only once task "a"'s output is already downloaded. Were downloads left to the end of
    # the run, "b" would give up after 20 s and fail.
    inputs = tmp_path / "in"
    inputs.mkdir()
    gate = tmp_path / "out" / "a.out"
    (inputs / "a.txt").write_text("")
    (inputs / "b.txt").write_text(str(gate))
    script = (
        "import pathlib, sys, time\n"
        "gate = pathlib.Path(sys.argv[1]).read_text(); deadline = time.time() + 20\n"
        "while gate and not pathlib.Path(gate).exists():\n"
        "    time.sleep(0.02); assert time.time() < deadline, 'no early download'\n"
        "pathlib.Path(sys.argv[2] + '.out').write_text('done')"
    )
    workload = Workload(
        name="embedded",
        inputs=(inputs / "a.txt", inputs / "b.txt"),
        template=TaskTemplate(
            command=f"{PY} -c {shlex.quote(script)} {{input}} {{stem}}", outputs=("{stem}.out",)
        ),
        pool=PoolSpec("embedded-pool", dedicated_nodes=2),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_job=True, pool=PoolPolicy.DELETE),
    )
    seen: list[Event] = []
    async with Orchestrator(LocalBackend(tmp_path / "state")) as orchestrator:
        events = orchestrator.events()

        async def watch() -> None:
            async for event in events:
                seen.append(event)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            summary = await orchestrator.run(workload)
            group.cancel_scope.cancel()
    assert summary.ok, summary
    assert (summary.tasks, summary.succeeded, summary.downloaded) == (2, 2, 2)
    order = [(type(e).__name__, getattr(e, "task_id", "")[:1]) for e in seen]
    assert order.index(("OutputDownloaded", "a")) < order.index(("TaskSucceeded", "b"))
    assert isinstance(seen[-1], RunFinished) or any(isinstance(e, RunFinished) for e in seen)
    assert (tmp_path / "out" / "b.out").read_text() == "done"
    kinds = {e.kind for e in seen}
    assert {
        "run_started",
        "pool_ready",
        "job_ready",
        "tasks_submitted",
        "task_succeeded",
        "output_downloaded",
    } <= kinds
    assert sum(isinstance(e, TaskSucceeded) for e in seen) == 2
    assert sum(isinstance(e, OutputDownloaded) for e in seen) == 2
    deleted = {(e.resource, e.resource_id) for e in seen if e.kind == "resource_deleted"}
    assert deleted == {
        ("container", workload.input_container),
        ("job", workload.job_id),
        ("pool", "embedded-pool"),
    }


async def test_a_custom_subscriber_receives_the_run_and_two_workloads_run_concurrently(tmp_path: Path):
    received: list[str] = []

    async def mine(event: Event) -> None:
        received.append(event.kind)

    def workload(name: str) -> Workload:
        folder = tmp_path / name
        folder.mkdir()
        for n in range(3):
            (folder / f"{name}{n}.txt").write_text(name)
        return Workload(
            name=name,
            inputs=tuple(sorted(folder.iterdir())),
            template=TaskTemplate(command="/bin/cp {input} {stem}.copy", outputs=("{stem}.copy",)),
            pool=PoolSpec("shared-pool", dedicated_nodes=2),
            download_to=tmp_path / "out" / name,
        )

    results = {}
    async with Orchestrator(LocalBackend(tmp_path / "state"), subscribers=[mine]) as orchestrator:

        async def run(w: Workload) -> None:
            results[w.name] = await orchestrator.run(w)

        async with anyio.create_task_group() as group:
            for name in ("first", "second"):
                group.start_soon(run, workload(name))
    assert all(summary.ok for summary in results.values())
    assert received.count("run_finished") == 2
    assert received.count("task_succeeded") == 6
    assert sorted(p.name for p in (tmp_path / "out" / "second").iterdir()) == [
        f"second{n}.copy" for n in range(3)
    ]


class RecordingStorage:
    """The local storage, recording whether each upload looked for an existing blob first."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.checks: list[bool] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def upload(self, container, blob_name, source, md5_hex, *, check_existing=True):  # type: ignore[no-untyped-def]
        self.checks.append(check_existing)
        return await self._inner.upload(container, blob_name, source, md5_hex, check_existing=check_existing)


async def test_uploads_look_for_existing_blobs_only_in_a_container_that_was_there_before(tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(3):
        (folder / f"f{n}.txt").write_text(str(n))
    workload = Workload(
        name="fresh",
        inputs=tuple(sorted(folder.iterdir())),
        template=TaskTemplate(command="/bin/cp {input} {stem}.copy", outputs=("{stem}.copy",)),
        pool=PoolSpec("fresh-pool", dedicated_nodes=2),
        download_to=tmp_path / "out",
        cleanup=CleanupPolicy(delete_input_container=False),
    )
    backend = LocalBackend(tmp_path / "state")
    recording = RecordingStorage(backend.storage)
    backend.storage = recording  # type: ignore[assignment]
    async with Orchestrator(backend) as orchestrator:
        first = await orchestrator.run(workload)
        (folder / "f0.txt").write_text("changed")  # a new task for f0: its input must be uploaded again
        second = await orchestrator.run(workload)
    assert (first.uploaded, second.uploaded) == (3, 1)
    assert recording.checks == [False, False, False, True]  # the second run's container already existed
