"""A small async web application that embeds batchpilot's orchestrator (aiohttp.web, local backend).

    POST   /jobs                 {"command": "gzip -k {input}", "outputs": ["{input_name}.gz"],
                                  "files": {"a.log": "text..."}}            -> 202 {"id": "..."}
    GET    /jobs/{id}/events     the job's events as server-sent events, from its start until it finishes
    GET    /jobs/{id}            {"state": "running" | "succeeded" | "failed" | "cancelled", "summary": {...}}
    GET    /jobs/{id}/outputs/N  one output file
    DELETE /jobs/{id}            cancel the job

Run it with `python examples/webapp.py [PORT]` (default 8080; state and files under ./webapp-data). One
orchestrator serves every job, several at once; each job runs in the application's task group, in a cancel
scope of its own, and everything closes with the `async with` blocks in `main()`.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
from aiohttp import web
from anyio.abc import TaskGroup

from batchpilot import (
    BatchpilotError,
    CleanupPolicy,
    Event,
    LocalBackend,
    Orchestrator,
    PoolSpec,
    RunFinished,
    RunStarted,
    RunSummary,
    TaskTemplate,
    Workload,
)
from batchpilot.subscribers.log import event_fields


@dataclass(eq=False)
class Job:
    id: str
    workload: Workload
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    events: list[Event] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    summary: RunSummary | None = None
    error: str | None = None
    over: bool = False

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()

    def finish(self) -> None:
        self.over = True
        self.changed.set()

    @property
    def state(self) -> str:
        if not self.over:
            return "running"
        if self.summary is None:
            return "cancelled" if self.scope.cancel_called else "failed"
        return "succeeded" if self.summary.ok else "failed"


class Jobs:
    """The application's jobs, run on one orchestrator in one task group; also the orchestrator's subscriber
    that routes each event to its job (a job is known by its Batch job id until its run id is)."""

    def __init__(self, root: Path, orchestrator: Orchestrator, group: TaskGroup) -> None:
        self.root = root
        self.orchestrator = orchestrator
        self.group = group
        self.by_id: dict[str, Job] = {}
        self._by_batch_job: dict[str, Job] = {}
        self._by_run: dict[str, Job] = {}

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted) and (job := self._by_batch_job.get(event.job_id)) is not None:
            self._by_run[event.run_id] = job
        if (job := self._by_run.get(event.run_id)) is not None:
            job.add(event)
            if isinstance(event, RunFinished):
                del self._by_run[event.run_id]

    async def submit(self, command: str, outputs: tuple[str, ...], files: dict[str, str]) -> Job:
        job_id = uuid.uuid4().hex[:12]
        inputs = self.root / job_id / "in"
        await anyio.Path(inputs).mkdir(parents=True)
        paths = []
        for name, text in files.items():
            if Path(name).name != name or name.startswith("."):
                raise web.HTTPBadRequest(text=f"file name {name!r}: give a plain name, like a.txt\n")
            paths.append(inputs / name)
            await anyio.Path(inputs / name).write_text(text)
        workload = Workload(
            name=f"web-{job_id}",
            inputs=tuple(paths),
            template=TaskTemplate(command=command, outputs=outputs),
            pool=PoolSpec("webapp-pool", dedicated_nodes=2),
            download_to=self.root / job_id / "out",
            cleanup=CleanupPolicy(delete_job=True),
        )
        job = Job(job_id, workload)
        self.by_id[job_id] = job
        self._by_batch_job[workload.job_id] = job
        self.group.start_soon(self._run, job)
        return job

    async def _run(self, job: Job) -> None:
        try:
            with job.scope:
                job.summary = await self.orchestrator.run(job.workload)
        except BatchpilotError as exc:
            job.error = str(exc)
        finally:
            del self._by_batch_job[job.workload.job_id]
            job.finish()


JOBS = web.AppKey("jobs", Jobs)


def make_app(jobs: Jobs) -> web.Application:
    app = web.Application()
    app[JOBS] = jobs
    app.router.add_post("/jobs", post_job)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_delete("/jobs/{id}", cancel_job)
    app.router.add_get("/jobs/{id}/events", job_events)
    app.router.add_get("/jobs/{id}/outputs/{name}", job_output)
    return app


async def post_job(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        command, outputs, files = body["command"], tuple(body["outputs"]), dict(body["files"])
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(
            text='give JSON: {"command": ..., "outputs": [...], "files": {...}}\n'
        ) from None
    if not files:
        raise web.HTTPBadRequest(text="give at least one file\n")
    try:
        job = await request.app[JOBS].submit(command, outputs, files)
    except BatchpilotError as exc:  # a bad template, say
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    return web.json_response({"id": job.id}, status=202)


def _job(request: web.Request) -> Job:
    job = request.app[JOBS].by_id.get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text="no such job\n")
    return job


async def get_job(request: web.Request) -> web.Response:
    job = _job(request)
    summary = asdict(job.summary) if job.summary is not None else None
    return web.json_response({"id": job.id, "state": job.state, "summary": summary, "error": job.error})


async def cancel_job(request: web.Request) -> web.Response:
    job = _job(request)
    job.scope.cancel()
    return web.json_response({"id": job.id, "state": "cancelling" if not job.over else job.state})


async def _follow(job: Job) -> AsyncIterator[Event]:
    sent = 0
    while True:
        changed = job.changed
        while sent < len(job.events):
            sent += 1
            yield job.events[sent - 1]
        if job.over:
            return
        await changed.wait()


async def job_events(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    async for event in _follow(job):
        data = json.dumps({"kind": event.kind, **event_fields(event)}, default=str)
        await response.write(f"event: {event.kind}\ndata: {data}\n\n".encode())
    await response.write(f"event: end\ndata: {json.dumps({'state': job.state})}\n\n".encode())
    await response.write_eof()
    return response


async def job_output(request: web.Request) -> web.FileResponse:
    job = _job(request)
    out = job.workload.download_to
    name = request.match_info["name"]
    if out is None or Path(name).name != name or not (out / name).is_file():
        raise web.HTTPNotFound(text="no such output\n")
    return web.FileResponse(out / name)


async def main(port: int, root: Path) -> None:
    async with open_jobs(root) as jobs:
        runner = web.AppRunner(make_app(jobs))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            print(f"listening on http://127.0.0.1:{port}", file=sys.stderr)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()


@asynccontextmanager
async def open_jobs(root: Path) -> AsyncIterator[Jobs]:
    """One orchestrator and the task group its jobs run in; leaving cancels running jobs and closes both."""
    async with Orchestrator(LocalBackend(root / "state")) as orchestrator, anyio.create_task_group() as group:
        jobs = Jobs(root, orchestrator, group)
        orchestrator.subscribe(jobs, name="webapp")
        try:
            yield jobs
        finally:
            group.cancel_scope.cancel()


def _port(argv: list[str]) -> int:
    return int(argv[1]) if len(argv) > 1 else 8080


if __name__ == "__main__":
    anyio.run(main, _port(sys.argv), Path("webapp-data"))
