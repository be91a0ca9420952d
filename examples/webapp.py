"""A small async web application that runs commands sent to it, through batchpilot's orchestrator
(aiohttp.web, local backend): whoever can send it a request runs any program as the user who started it.

It therefore
listens on loopback only by default, answers only requests that carry the token it prints at start
(`Authorization: Bearer <token>`), and refuses what a browser sends from another site (a cross-origin simple
request: a form post, a `text/plain` fetch). Put it behind authentication of your own before exposing it.

    POST   /jobs                 {"command": "gzip -k {input}", "outputs": ["{input_name}.gz"],
                                  "files": {"a.log": "text..."}}            -> 202 {"id": "..."}
    GET    /jobs/{id}/events     the job's events as server-sent events, from its start until it finishes
    GET    /jobs/{id}            {"state": "running" | "succeeded" | "failed" | "cancelled", "summary": {...}}
    GET    /jobs/{id}/outputs/N  one output file
    DELETE /jobs/{id}            cancel the job

Run it with `python examples/webapp.py [PORT [HOST]]` (default 8080 on 127.0.0.1; state and files under
./webapp-data; the token is printed on stderr, or read from BATCHPILOT_WEBAPP_TOKEN). A body is JSON
(`Content-Type: application/json`, at most 1 MiB); a malformed one gets a 400 naming the problem. At most
8 jobs run at once (a POST past that is a 429 with Retry-After); the latest 1000 are remembered. One
orchestrator serves every job, several at once; each job runs in the application's task group, in a cancel
scope of its own, and everything closes with the `async with` blocks in `main()`.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import os
import secrets
import sys
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeGuard

import anyio
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
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
        template = TaskTemplate(command=command, outputs=outputs)  # a bad template raises before any file
        inputs = self.root / job_id / "in"
        await anyio.Path(inputs).mkdir(parents=True)
        paths = []
        for name, text in files.items():
            paths.append(inputs / name)
            await anyio.Path(inputs / name).write_text(text)
        workload = Workload(
            name=f"web-{job_id}",
            inputs=tuple(paths),
            template=template,
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
            # The oldest finished jobs are forgotten past MAX_KEPT_JOBS (their files stay under root).
            finished = [old for old in self.by_id.values() if old.over]
            for old in finished[: max(0, len(self.by_id) - MAX_KEPT_JOBS)]:
                del self.by_id[old.id]

    def running(self) -> int:
        return sum(not job.over for job in self.by_id.values())


JOBS = web.AppKey("jobs", Jobs)
# Limits on what one request may carry: the body, the files in it, the output patterns.
MAX_BODY_BYTES = 1 << 20
MAX_FILES = 1000
MAX_OUTPUTS = 100
MAX_NAME_BYTES = 255  # a file name on Linux file systems
# Limits on what all requests together may start and leave: jobs running at once (a POST past it is a 429
# with Retry-After), and jobs remembered (the oldest finished ones are forgotten past it).
MAX_RUNNING_JOBS = 8
MAX_KEPT_JOBS = 1000


def make_app(jobs: Jobs, token: str) -> web.Application:
    """The application. Every request must carry `Authorization: Bearer <token>` and come from no other
    site (403), a POST must be JSON (415), and a malformed body gets a 400 naming its fault."""
    app = web.Application(middlewares=[_guard(token)], client_max_size=MAX_BODY_BYTES)
    app[JOBS] = jobs
    app.router.add_post("/jobs", post_job)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_delete("/jobs/{id}", cancel_job)
    app.router.add_get("/jobs/{id}/events", job_events)
    app.router.add_get("/jobs/{id}/outputs/{name}", job_output)
    return app


def _guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A browser says where a request comes from: anything but this origin (or a typed URL) is another
        # site's page driving ours, which a token in a header already stops; refused first, all the same.
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and origin != f"{request.scheme}://{request.host}"
        ):
            raise web.HTTPForbidden(text="cross-origin requests are refused\n")
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise web.HTTPUnauthorized(
                text="give the token printed at start: Authorization: Bearer <token>\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method == "POST" and request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send JSON, with Content-Type: application/json\n")
        return await handler(request)

    return guard


def _bad(text: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=text + "\n")


def is_text(value: object) -> TypeGuard[str]:
    """True for a string that is text: JSON lets a body escape lone surrogates (`\\ud800`), which no file
    name, file or command line can hold."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_name(name: object) -> str | None:
    """`name` if it is a plain file name (no folder, not hidden, no control or format characters such as a
    bidi override, which shows a name other than the one it is; at most 255 bytes)."""
    if (
        not isinstance(name, str)
        or not is_text(name)
        or not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or any(unicodedata.category(char) in ("Cc", "Cf") for char in name)
        or len(name.encode("utf-8")) > MAX_NAME_BYTES
    ):
        return None
    return name


def parse_job(body: object) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """The command, output patterns and files of a POST /jobs body; HTTPBadRequest naming the first fault."""
    if not isinstance(body, dict):
        raise _bad('give a JSON object: {"command": ..., "outputs": [...], "files": {...}}')
    command, outputs, files = body.get("command"), body.get("outputs"), body.get("files")
    if not is_text(command) or not command.strip():
        raise _bad('"command" must be a non-empty string, like "gzip -k {input}"')
    if not isinstance(outputs, list) or not all(is_text(pattern) and pattern for pattern in outputs):
        raise _bad('"outputs" must be a list of file patterns, like ["{input_name}.gz"] (or [])')
    if len(outputs) > MAX_OUTPUTS:
        raise _bad(f'"outputs" holds {len(outputs)} patterns; at most {MAX_OUTPUTS}')
    if not isinstance(files, dict) or not files:
        raise _bad('"files" must be an object of at least one file, like {"a.txt": "text"}')
    if len(files) > MAX_FILES:
        raise _bad(f'"files" holds {len(files)} files; at most {MAX_FILES}')
    for name, text in files.items():
        if plain_name(name) is None:
            raise _bad(f"file name {name!r}: give a plain name, like a.txt (no folder, no dot first)")
        if not is_text(text):
            raise _bad(f"file {name!r}: its content must be a string of text")
    return command, tuple(outputs), dict(files)


async def post_job(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
        raise _bad("the body is not JSON") from None
    command, outputs, files = parse_job(body)
    if request.app[JOBS].running() >= MAX_RUNNING_JOBS:
        raise web.HTTPTooManyRequests(
            text=f"{MAX_RUNNING_JOBS} jobs are running; try again when one has finished\n",
            headers={"Retry-After": "5"},
        )
    try:
        job = await request.app[JOBS].submit(command, outputs, files)
    except BatchpilotError as exc:  # a bad template or output pattern, say
        raise _bad(str(exc)) from None
    return web.json_response({"id": job.id}, status=202)


def _job(request: web.Request) -> Job:
    job = request.app[JOBS].by_id.get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text="no such job\n")
    return job


async def get_job(request: web.Request) -> web.Response:
    job = _job(request)
    summary = asdict(job.summary) if job.summary is not None else None
    body = {"id": job.id, "state": job.state, "summary": summary, "error": job.error}
    return web.json_response(body, dumps=functools.partial(json.dumps, default=str))  # times as text


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
    name = plain_name(request.match_info["name"])
    if out is None or name is None or not (out / name).is_file():
        raise web.HTTPNotFound(text="no such output\n")
    return web.FileResponse(out / name)


async def main(port: int, host: str, root: Path) -> None:
    token = os.environ.get("BATCHPILOT_WEBAPP_TOKEN") or secrets.token_urlsafe(32)
    async with open_jobs(root) as jobs:
        runner = web.AppRunner(make_app(jobs, token))
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            print(f"listening on http://{host}:{port}", file=sys.stderr)
            if not ipaddress.ip_address(host).is_loopback:
                print(
                    "warning: reachable from other machines; anyone with the token runs commands",
                    file=sys.stderr,
                )
            print(f"token: {token}  (send Authorization: Bearer <token>)", file=sys.stderr)
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


def _address(argv: list[str]) -> tuple[int, str]:
    """PORT [HOST] from the command line: 8080 on 127.0.0.1 (loopback) unless given."""
    return (int(argv[1]) if len(argv) > 1 else 8080), (argv[2] if len(argv) > 2 else "127.0.0.1")


if __name__ == "__main__":
    anyio.run(main, *_address(sys.argv), Path("webapp-data"))
