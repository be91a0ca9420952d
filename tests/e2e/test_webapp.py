"""examples/webapp.py end to end on the local backend: POST a job, read its events as server-sent events,
fetch its result and an output; cancel another while it runs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import anyio
from aiohttp.test_utils import TestClient, TestServer

from examples.webapp import make_app, open_jobs

PY = shlex.quote(sys.executable)
UPPER = "import sys; open(sys.argv[1] + '.up', 'w').write(open(sys.argv[1]).read().upper())"


def sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_job_is_posted_streamed_and_its_result_fetched(tmp_path: Path) -> None:
    async with open_jobs(tmp_path) as jobs, TestClient(TestServer(make_app(jobs))) as client:
        response = await client.post(
            "/jobs",
            json={
                "command": f"{PY} -c {shlex.quote(UPPER)} {{input}}",
                "outputs": ["{input_name}.up"],
                "files": {"a.txt": "hello", "b.txt": "world"},
            },
        )
        assert response.status == 202
        job_id = (await response.json())["id"]
        with anyio.fail_after(60):
            stream = await client.get(f"/jobs/{job_id}/events")
            assert stream.headers["Content-Type"] == "text/event-stream"
            events = sse(await stream.text())
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "run_started"
        assert kinds.count("task_succeeded") == 2
        assert kinds[-2:] == ["run_finished", "end"]
        assert events[-1][1] == {"state": "succeeded"}
        result = await (await client.get(f"/jobs/{job_id}")).json()
        assert result["state"] == "succeeded"
        assert (result["summary"]["tasks"], result["summary"]["downloaded"]) == (2, 2)
        output = await client.get(f"/jobs/{job_id}/outputs/a.txt.up")
        assert await output.text() == "HELLO"
        assert (await client.get(f"/jobs/{job_id}/outputs/..%2Fin%2Fa.txt")).status == 404
        assert (await client.post("/jobs", json={"command": "x"})).status == 400
        assert (
            await client.post("/jobs", json={"command": "{nope}", "outputs": [], "files": {"a": ""}})
        ).status == 400


async def test_one_job_is_cancelled_while_another_finishes(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)"
    waits = f"{PY} -c {shlex.quote(script)} {{input}}"
    async with open_jobs(tmp_path) as jobs, TestClient(TestServer(make_app(jobs))) as client:
        slow = await (
            await client.post("/jobs", json={"command": waits, "outputs": [], "files": {"s.txt": ""}})
        ).json()
        quick = await (
            await client.post("/jobs", json={"command": "true", "outputs": [], "files": {"q.txt": ""}})
        ).json()
        with anyio.fail_after(60):
            await (await client.get(f"/jobs/{quick['id']}/events")).text()
            assert (await (await client.get(f"/jobs/{quick['id']}")).json())["state"] == "succeeded"
            assert (await (await client.get(f"/jobs/{slow['id']}")).json())["state"] == "running"
            await client.delete(f"/jobs/{slow['id']}")
            events = sse(await (await client.get(f"/jobs/{slow['id']}/events")).text())
        assert events[-1] == ("end", {"state": "cancelled"})
        gate.write_text("")
