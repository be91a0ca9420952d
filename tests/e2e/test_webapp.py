"""examples/webapp.py end to end on the local backend: POST a job, read its events as server-sent events,
fetch its result and an output; cancel another while it runs. It runs commands, so it answers only with its
token, never to another site, and refuses a malformed body with a 400 (issue 16, item 8)."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path

import anyio
from aiohttp.test_utils import TestClient, TestServer

import examples.webapp
from examples.webapp import make_app, open_jobs

PY = shlex.quote(sys.executable)
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPPER = "import sys; open(sys.argv[1] + '.up', 'w').write(open(sys.argv[1]).read().upper())"


def sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_a_job_is_posted_streamed_and_its_result_fetched(tmp_path: Path) -> None:
    async with (
        open_jobs(tmp_path) as jobs,
        TestClient(TestServer(make_app(jobs, TOKEN)), headers=AUTH) as client,
    ):
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
    async with (
        open_jobs(tmp_path) as jobs,
        TestClient(TestServer(make_app(jobs, TOKEN)), headers=AUTH) as client,
    ):
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


async def test_a_request_without_the_token_or_from_another_site_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "RAN"
    body = {"command": f"touch {marker}", "outputs": [], "files": {"a.txt": ""}}
    async with open_jobs(tmp_path) as jobs, TestClient(TestServer(make_app(jobs, TOKEN))) as client:
        assert (await client.post("/jobs", json=body)).status == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/jobs", json=body, headers=wrong)).status == 401
        assert (await client.post("/jobs", json=body, headers={"Authorization": TOKEN})).status == 401
        # A cross-site form or fetch: a simple request, text/plain, from another origin.
        form = {**AUTH, "Content-Type": "text/plain", "Origin": "https://evil.example"}
        assert (await client.post("/jobs", data=json.dumps(body), headers=form)).status == 403
        fetch = {**AUTH, "Sec-Fetch-Site": "cross-site"}
        assert (await client.post("/jobs", json=body, headers=fetch)).status == 403
        assert (await client.post("/jobs", json=body, headers={**AUTH, "Origin": "null"})).status == 403
        plain = {**AUTH, "Content-Type": "text/plain"}
        assert (await client.post("/jobs", data=json.dumps(body), headers=plain)).status == 415
        assert (await client.get("/jobs/x")).status == 401
        same_site = {**AUTH, "Sec-Fetch-Site": "same-origin"}
        assert (await client.get("/jobs/x", headers=same_site)).status == 404
    assert not marker.exists()
    assert not jobs.by_id


BAD_BODIES = [
    [],
    {"command": 7, "outputs": [], "files": {"a": ""}},
    {"command": "", "outputs": [], "files": {"a": ""}},
    {"command": ["true"], "outputs": [], "files": {"a": ""}},
    {"command": "true", "outputs": "{input_name}.gz", "files": {"a": ""}},
    {"command": "true", "outputs": [3], "files": {"a": ""}},
    {"command": "true", "outputs": [], "files": ["a"]},
    {"command": "true", "outputs": [], "files": {}},
    {"command": "true", "outputs": [], "files": {"": "x"}},
    {"command": "true", "outputs": [], "files": {"a\0b": "x"}},
    {"command": "true", "outputs": [], "files": {"../a": "x"}},
    {"command": "true", "outputs": [], "files": {"/etc/passwd": "x"}},
    {"command": "true", "outputs": [], "files": {"a/b": "x"}},
    {"command": "true", "outputs": [], "files": {"..": "x"}},
    {"command": "true", "outputs": [], "files": {"a\nb": "x"}},
    {"command": "true", "outputs": [], "files": {"x" * 300: "x"}},
    {"command": "true", "outputs": [], "files": {"a": 5}},
    {"command": "true", "outputs": ["../../../../../../ESCAPE-MARK.txt"], "files": {"a": "x"}},
    {"command": "true", "outputs": ["/tmp/ESCAPE-MARK.txt"], "files": {"a": "x"}},
    # Lone surrogates are valid JSON escapes but no text: each was a 500 (UnicodeEncodeError) after the job's
    # folder was made. A bidi override shows a name other than the one it is.
    {"command": "true", "outputs": [], "files": {"\ud800.txt": "x"}},
    {"command": "true", "outputs": [], "files": {"a.txt": "x\udfff"}},
    {"command": "true \ud800", "outputs": [], "files": {"a.txt": "x"}},
    {"command": "true", "outputs": ["\ud800"], "files": {"a.txt": "x"}},
    {"command": "true", "outputs": [], "files": {"a\u202eexe.txt": "x"}},
]


async def test_a_malformed_body_gets_a_400_naming_its_fault(tmp_path: Path) -> None:
    async with (
        open_jobs(tmp_path) as jobs,
        TestClient(TestServer(make_app(jobs, TOKEN)), headers=AUTH) as client,
    ):
        for body in BAD_BODIES:
            response = await client.post("/jobs", json=body)
            assert response.status == 400, body
            text = await response.text()
            assert text.count("\n") == 1, text
            assert "Traceback" not in text
        not_json = await client.post("/jobs", data=b"{", headers={"Content-Type": "application/json"})
        assert not_json.status == 400
        deep = b"[" * 300_000 + b"]" * 300_000  # under the size limit, too deep for any parser's stack
        nested = await client.post(
            "/jobs", data=io.BytesIO(deep), headers={"Content-Type": "application/json"}
        )
        assert nested.status == 400
        json_type = {"Content-Type": "application/json"}
        huge = await client.post("/jobs", data=io.BytesIO(b" " * (2 << 20)), headers=json_type)
        assert huge.status == 413
        assert (await client.get("/jobs/x/outputs/a%00b")).status == 404
    assert not jobs.by_id
    assert not [path async for path in anyio.Path(tmp_path).rglob("ESCAPE-MARK.txt")]


def test_it_says_first_that_it_runs_commands_and_listens_on_loopback_by_default() -> None:
    first_paragraph = (examples.webapp.__doc__ or "").split("\n\n")[0]
    assert "runs commands" in first_paragraph
    assert examples.webapp._address(["webapp.py"]) == (8080, "127.0.0.1")
    assert examples.webapp._address(["webapp.py", "9000"]) == (9000, "127.0.0.1")


async def test_jobs_at_once_and_jobs_remembered_have_a_limit(tmp_path: Path, monkeypatch) -> None:
    """Every POST started a job and every job stayed in memory: a token holder could grow the app without
    end. Past MAX_RUNNING_JOBS a POST is 429 (Retry-After) and runs nothing; past MAX_KEPT_JOBS the oldest
    finished job is forgotten (404)."""
    monkeypatch.setattr(examples.webapp, "MAX_RUNNING_JOBS", 1)
    monkeypatch.setattr(examples.webapp, "MAX_KEPT_JOBS", 2)
    gate = tmp_path / "gate"
    script = f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)"
    waits = {"command": f"{PY} -c {shlex.quote(script)} {{input}}", "outputs": [], "files": {"s.txt": ""}}
    quick = {"command": "true", "outputs": [], "files": {"q.txt": ""}}
    async with (
        open_jobs(tmp_path) as jobs,
        TestClient(TestServer(make_app(jobs, TOKEN)), headers=AUTH) as client,
    ):
        slow = await (await client.post("/jobs", json=waits)).json()
        refused = await client.post("/jobs", json=quick)
        assert refused.status == 429
        assert refused.headers["Retry-After"]
        assert len(jobs.by_id) == 1
        gate.write_text("")
        with anyio.fail_after(60):
            await (await client.get(f"/jobs/{slow['id']}/events")).text()
            ids = [slow["id"]]
            for _ in range(2):
                posted = await client.post("/jobs", json=quick)
                assert posted.status == 202
                ids.append((await posted.json())["id"])
                await (await client.get(f"/jobs/{ids[-1]}/events")).text()
        assert (await client.get(f"/jobs/{ids[0]}")).status == 404  # the oldest finished, forgotten
        assert [(await client.get(f"/jobs/{job}")).status for job in ids[1:]] == [200, 200]
