"""Open an HTML report in headless Chromium (Debian's package) and say what a person would have seen.

A tiny client of the Chrome DevTools Protocol over a websocket (aiohttp, already a dependency): it records
every console error, uncaught exception and network request of the page, waits until the report says its
charts are drawn (`<body data-rendered="yes">`), reads what it drew, and takes a screenshot. Chromium runs
as root here, so it needs --no-sandbox; every background service that could reach the network is off.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.waiting import wait_for

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--remote-debugging-port=0",
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
Clip = tuple[float, float, float, float, float] | None


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed: scripts/test installs it (apt-get install -y chromium)"
    return found


@dataclass
class PageResult:
    dataset: dict[str, str]
    console_errors: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)
    load_s: float = 0.0  # from navigation to data-rendered, as measured by the page (performance.now())


def open_report(
    path: Path, *, screenshot: Path | None = None, wait_s: float = 60, width: int = 1280, clip: Clip = None
) -> PageResult:
    """Open `path` in a fresh headless Chromium; wait up to `wait_s` for it to render. The screenshot is of
    the whole page, or of `clip` (x, y, width, height in CSS pixels, and a scale)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helper processes with it, so all of them end together
        )
        try:
            port = _debugging_port(Path(profile), process, wait_s)
            result, shot = asyncio.run(
                _session(port, path.resolve().as_uri(), wait_s, width, screenshot is not None, clip)
            )
        finally:
            _end(process)
    if screenshot is not None and shot is not None:
        screenshot.write_bytes(shot)
    return result


def _end(process: subprocess.Popen[bytes]) -> None:
    """End Chromium and every helper process it started (its own process group), then reap it."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.05)
        if not _group_alive(process.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _debugging_port(profile: Path, process: subprocess.Popen[bytes], wait_s: float) -> int:
    marker = profile / "DevToolsActivePort"

    def written() -> str:
        assert process.poll() is None, f"chromium exited with {process.returncode}"
        return marker.read_text().strip() if marker.exists() else ""

    return int(wait_for(written, "chromium to open its debugging port", within=wait_s).splitlines()[0])


async def _session(
    port: int, uri: str, wait_s: float, width: int, shoot: bool, clip: Clip
) -> tuple[PageResult, bytes | None]:
    async with aiohttp.ClientSession() as session:
        targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(target for target in targets if target["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            return await _visit(socket, uri, wait_s, width, shoot, clip)


async def _visit(
    socket: aiohttp.ClientWebSocketResponse, uri: str, wait_s: float, width: int, shoot: bool, clip: Clip
) -> tuple[PageResult, bytes | None]:
    ids = itertools.count(1)
    result = PageResult(dataset={})
    shot: bytes | None = None
    answers: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def reader() -> None:
        async for message in socket:
            data = json.loads(message.data)
            if "id" in data:
                future = answers.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(LOCAL_SCHEMES):
                    result.network_requests.append(url)
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.console_errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                result.console_errors.append(str(params["exceptionDetails"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                result.console_errors.append(
                    f"{params['entry'].get('source')}: {params['entry'].get('text')}"
                )

    async def call(method: str, **params: Any) -> dict[str, Any]:
        number = next(ids)
        answers[number] = asyncio.get_running_loop().create_future()
        await socket.send_str(json.dumps({"id": number, "method": method, "params": params}))
        answer = await asyncio.wait_for(answers[number], wait_s)
        assert "error" not in answer, f"{method}: {answer['error']}"
        return dict(answer.get("result", {}))

    listening = asyncio.create_task(reader())
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            await call(f"{domain}.enable")
        await call(
            "Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False
        )
        await call("Page.navigate", url=uri)
        deadline = time.monotonic() + wait_s
        while True:
            answer = await call(
                "Runtime.evaluate",
                expression="document.body ? JSON.stringify(Object.assign({}, document.body.dataset)) : '{}'",
                returnByValue=True,
            )
            result.dataset = json.loads(answer["result"]["value"])
            if result.dataset.get("rendered") == "yes" or "renderError" in result.dataset:
                break
            assert time.monotonic() < deadline, f"the report did not render: {result.console_errors}"
            await asyncio.sleep(0.05)
        result.load_s = int(result.dataset.get("renderMs", "0")) / 1000
        if shoot:
            region = {}
            if clip is not None:
                region = {"clip": dict(zip(("x", "y", "width", "height", "scale"), clip, strict=True))}
            answer = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True, **region)
            shot = base64.b64decode(answer["data"])
        await asyncio.sleep(0.2)  # late console messages and requests
    finally:
        listening.cancel()
    return result, shot
