"""The emulator held to the real Batch service: the Azure SDK for Python's own recordings, replayed.

Each in-scope exchange of the SDK's test-proxy recordings (api-version 2023-05-01.17.0, read from
`../shared/recordings/`, see tests/emulator/recordings.py) is sent to a fresh emulator, signed with SharedKey
as the Batch docs define it, after the prerequisites the recorded test had (pools and jobs its preparers
made) are created. The answer must have the service's status, error code and every key the service returned
(recursively), and the values that say what the service did (a task just added reads back `active`, a
stopped resize leaves a `ResizeStopped` error); ids, URLs, eTags and times are the recording's own and are
not compared. Exchanges out of scope are skipped with their reason in `SCOPE`, never silently.

Mapping from the recording to the emulator: the host is the emulator's; node ids are paired by position in
the first node list; a `$skiptoken` is the one the emulator's previous page gave; Windows file paths
(`workitems\\job\\...`) use `/`; `cmd /c` command lines run as `/bin/sh -c`; a job on an auto pool of Cloud
Services (out of scope) is put on a prerequisite pool instead, its `poolInfo.autoPoolSpecification` and its
job preparation/release tasks (not emulated) left out of both request and comparison.

The emulator is set up as the recorded account was in September 2023: its supported images also list the
Ubuntu 18.04 and Windows Server 2016 images the recorded pools used (refused by today's list), and a task
waits a second before a node takes it (the service took about three). The figure is printed, and asserted
against TARGET.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import anyio
import pytest
from yarl import URL

from batchpilot.emulator import RunningEmulator
from batchpilot.emulator.images import DEFAULT_IMAGES, SupportedImage
from tests.conftest import EmulatorFactory

from .recordings import (
    Exchange,
    Rules,
    authorization,
    compare,
    kind_of,
    load,
    recordings_dir,
    short_name,
    string_to_sign,
)

FILES = (
    "test_batch.pyTestBatchtest_batch_jobs[async].json",
    "test_batch.pyTestBatchtest_batch_files[async].json",
    "test_batch.pyTestBatchtest_batch_compute_nodes[sync].json",
    "test_batch.pyTestBatchtest_batch_scale_pools[sync].json",
    "test_batch.pyTestBatchtest_batch_update_pools[async].json",
    "test_batch.pyTestBatchtest_batch_create_pools[async].json",
)
TARGET = 0.95
# How long the replay polls for the state a recorded test was waiting for (nodes idle, a task completed).
POLL_WITHIN_S = 15.0


class Decision(enum.Enum):
    IN = "in scope"
    SETUP = "replayed as a prerequisite, not counted"
    OUT = "out of scope"


@dataclass(frozen=True)
class Scope:
    file: str  # short name (`jobs`), or "*"
    method: str  # or "*"
    path: str  # regex on the decoded path
    decision: Decision
    reason: str
    index: int | None = None


# First match wins; every exchange must match a row (the last one takes what batchpilot's emulator serves).
SCOPE = (
    Scope(
        "update_pools", "*", ".*", Decision.OUT,
        "a Cloud Services (cloudServiceConfiguration) pool: retired by Azure, not emulated",
    ),
    Scope(
        "scale_pools", "POST", r"/(enable|disable|evaluate)autoscale$", Decision.OUT,
        "autoscale formulas are not emulated",
    ),
    Scope(
        "scale_pools", "GET", r"^/pools/[^/]+$", Decision.OUT,
        "the pool as an autoscale formula left it (autoScaleFormula): not emulated", index=2,
    ),
    Scope("*", "GET", r"^/poolusagemetrics$", Decision.OUT, "pool usage metrics are not emulated"),
    Scope(
        "create_pools", "POST", r"^/pools$", Decision.SETUP,
        "a Windows VM pool: out of scope, created so later pool lists hold the same pools", index=1,
    ),
    Scope(
        "create_pools", "GET", r"^/nodecounts$", Decision.OUT,
        "account-wide node counts are not emulated; batchpilot lists a pool's nodes",
    ),
    Scope(
        "create_pools", "POST", r"^/pools$", Decision.OUT,
        "a subnet in another subscription: the emulator has no subscriptions or networks", index=3,
    ),
    Scope(
        "create_pools", "POST", r"^/pools$", Decision.OUT,
        "a custom image (virtualMachineImageId): only Marketplace images are emulated", index=4,
    ),
    Scope(
        "compute_nodes", "POST",
        r"/nodes/[^/]+/(uploadbatchservicelogs|disablescheduling|enablescheduling|reboot|reimage)$",
        Decision.OUT,
        "node maintenance (logs, scheduling, reboot, reimage) is not emulated; batchpilot only reads nodes",
    ),
    Scope(
        "compute_nodes", "POST", r"/removenodes$", Decision.OUT,
        "removing chosen nodes is not emulated; pools shrink by resize",
    ),
    Scope(
        "files", "*", r"^/pools/[^/]+/nodes/[^/]+/files", Decision.OUT,
        "a node's own files (outside task directories) are not emulated; task files are",
    ),
    Scope(
        "jobs", "POST", r"^/jobs/[^/]+/(disable|enable)$", Decision.OUT,
        "disabling a job is not emulated; batchpilot never disables one",
    ),
    Scope(
        "jobs", "GET", r"/jobpreparationandreleasetaskstatus$", Decision.OUT,
        "job preparation and release tasks are not emulated",
    ),
    Scope(
        "*", "*", r"^/(pools|jobs|supportedimages)", Decision.IN,
        "Linux VM pools, jobs, tasks, task counts, nodes, task files, resize, supported images",
    ),
)  # fmt: skip

_UBUNTU_1804 = {
    "imageReference": {"publisher": "Canonical", "offer": "UbuntuServer", "sku": "18.04-LTS"},
    "nodeAgentSKUId": "batch.node.ubuntu 18.04",
}
# The recorded account (September 2023) took pools of these images, which today's default list refuses.
RECORDED_ACCOUNT_IMAGES = (
    *DEFAULT_IMAGES,
    SupportedImage("batch.node.ubuntu 18.04", "Canonical", "UbuntuServer", "18.04-LTS"),
    SupportedImage(
        "batch.node.windows amd64",
        "MicrosoftWindowsServer",
        "WindowsServer",
        "2016-Datacenter-smalldisk",
        os_type="windows",
    ),
)
JOBS_POOL = "replay-jobs-pool"
# What the recorded tests' preparers made before recording (read off the service's own answers).
PREREQUISITES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "jobs": [
        ("/pools", {"id": JOBS_POOL, "vmSize": "standard_d2_v2",
                    "virtualMachineConfiguration": _UBUNTU_1804}),
    ],
    "files": [
        (
            "/pools",
            {
                "id": "2b751f41",
                "vmSize": "standard_d2_v2",
                "virtualMachineConfiguration": _UBUNTU_1804,
                "targetDedicatedNodes": 1,
            },
        ),
        ("/jobs", {"id": "batch2b751f41", "poolInfo": {"poolId": "2b751f41"}}),
    ],
    "compute_nodes": [
        (
            "/pools",
            {
                "id": "3d0a22a3",
                "vmSize": "standard_d2_v2",
                "virtualMachineConfiguration": _UBUNTU_1804,
                "targetDedicatedNodes": 2,
            },
        ),
    ],
    "scale_pools": [
        (
            "/pools",
            {
                "id": "f50021c2",
                "displayName": "test_pool",
                "vmSize": "standard_d2_v2",
                "virtualMachineConfiguration": _UBUNTU_1804,
                "userAccounts": [
                    {"name": "task-user", "password": "not-a-secret-1!", "elevationLevel": "admin"}
                ],
                "targetDedicatedNodes": 0,
            },
        ),
    ],
}  # fmt: skip
# Response keys left out of the comparison because their part of the request was mapped away (see above).
EXCLUDED: dict[str, frozenset[str]] = {
    "jobs": frozenset({"poolInfo.autoPoolSpecification", "jobPreparationTask", "jobReleaseTask"}),
}


def scope_of(exchange: Exchange) -> Scope:
    name, path = short_name(exchange.file), unquote(exchange.path)
    for row in SCOPE:
        if row.file not in ("*", name) or row.method not in ("*", exchange.method):
            continue
        if row.index is not None and row.index != exchange.index:
            continue
        if re.search(row.path, path):
            return row
    raise AssertionError(f"{exchange.label} matches no row of SCOPE: say whether it is in scope and why")


@dataclass
class Outcome:
    exchange: Exchange
    scope: Scope
    problems: list[str]


class Replay:
    """One recording replayed against one emulator, in order, with the recording's ids mapped."""

    def __init__(self, emulator: RunningEmulator, session: aiohttp.ClientSession, file: str) -> None:
        self.emulator = emulator
        self.session = session
        self.file = file
        self.name = short_name(file)
        self.node_ids: dict[str, str] = {}
        self.next_link: str | None = None

    async def send(
        self, method: str, path: str, query: list[tuple[str, str]], body: Any = None
    ) -> tuple[int, Mapping[str, str], Any]:
        headers = {"ocp-date": formatdate(usegmt=True)}
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
        if body is not None or method in ("POST", "PUT", "PATCH"):
            # As the SDK sends it (an HTTP library would otherwise add one of its own, unsigned).
            headers["Content-Type"] = "application/json; odata=minimalmetadata"
        if data or method in ("POST", "PUT", "PATCH", "DELETE"):
            headers["Content-Length"] = str(len(data))
        account = self.emulator.account
        headers["Authorization"] = authorization(
            self.emulator.key, account, string_to_sign(method, path, query, headers, account)
        )
        text = "&".join(f"{quote(name, safe='$')}={quote(value, safe='')}" for name, value in query)
        url = URL(f"{self.emulator.endpoint}{path}?{text}", encoded=True)
        async with self.session.request(method, url, headers=headers, data=data or None) as response:
            raw = await response.read()
            kind = response.headers.get("Content-Type", "")
            parsed: Any = json.loads(raw) if raw and "json" in kind else None
            return response.status, response.headers, parsed

    async def prerequisites(self) -> None:
        for path, body in PREREQUISITES.get(self.name, []):
            status, _, answer = await self.send("POST", path, [("api-version", "2023-05-01.17.0")], body)
            assert status == 201, f"prerequisite {path} {body['id']}: {status} {answer}"

    def request_of(self, exchange: Exchange) -> tuple[str, list[tuple[str, str]], Any]:
        path = unquote(exchange.path).replace("\\", "/")
        for recorded, ours in self.node_ids.items():
            path = path.replace(recorded, ours)
        path = quote(path, safe="/-_.~")
        query = list(exchange.query)
        if exchange.param("$skiptoken") is not None and self.next_link:
            link = urlsplit(self.next_link)
            path, query = link.path, _query_pairs(link.query)
        body = exchange.request_body
        if isinstance(body, dict):
            body = _mapped_body(self.name, body)
        return path, query, body

    async def exchange(self, exchange: Exchange, awaited: bool, snapshot: bool) -> list[str]:
        path, query, body = self.request_of(exchange)
        rules = Rules(kind_of(exchange.path), EXCLUDED.get(self.name, frozenset()), awaited, snapshot)
        deadline = anyio.current_time() + POLL_WITHIN_S
        while True:
            status, headers, answer = await self.send(exchange.method, path, query, body)
            problems = compare(exchange, status, headers, answer, rules)
            if not problems or not awaited or anyio.current_time() > deadline:
                break
            await anyio.sleep(0.1)
        self.learn(exchange, answer)
        return problems

    def learn(self, exchange: Exchange, answer: Any) -> None:
        if not isinstance(answer, dict):
            return
        self.next_link = answer.get("odata.nextLink")
        recorded = exchange.response_body
        if kind_of(exchange.path) == "node" and isinstance(recorded, dict) and "value" in recorded:
            ours = [node.get("id") for node in answer.get("value") or () if isinstance(node, dict)]
            for position, node in enumerate(recorded["value"]):
                if position < len(ours) and node["id"] not in self.node_ids:
                    self.node_ids[node["id"]] = str(ours[position])


def _query_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split("&"):
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _mapped_body(name: str, body: dict[str, Any]) -> dict[str, Any]:
    mapped = dict(body)
    command = mapped.get("commandLine")
    if isinstance(command, str) and command.lower().startswith("cmd /c "):
        mapped["commandLine"] = "/bin/sh -c " + command[len("cmd /c ") :]
    if name == "jobs":
        if "autoPoolSpecification" in (mapped.get("poolInfo") or {}):
            mapped["poolInfo"] = {"poolId": JOBS_POOL}
        mapped.pop("jobPreparationTask", None)
        mapped.pop("jobReleaseTask", None)
    return mapped


def _poll_role(exchanges: list[Exchange], position: int) -> tuple[bool, bool]:
    """(awaited, snapshot): the last read of a poll (a GET repeated just before it, not after) is the one
    the recorded test waited for; a read with the same GET after it is a moment of the poll."""

    def same(a: Exchange, b: Exchange) -> bool:
        return (a.method, a.path, a.query) == (b.method, b.path, b.query)

    this = exchanges[position]
    if this.method != "GET":
        return False, False
    before = position > 0 and same(exchanges[position - 1], this)
    after = position + 1 < len(exchanges) and same(exchanges[position + 1], this)
    return before and not after, after


async def replay(emulator: RunningEmulator, file: str) -> list[Outcome]:
    exchanges = load(file)
    outcomes = []
    async with aiohttp.ClientSession() as session:
        run = Replay(emulator, session, file)
        await run.prerequisites()
        for position, exchange in enumerate(exchanges):
            scope = scope_of(exchange)
            if scope.decision is Decision.OUT:
                outcomes.append(Outcome(exchange, scope, []))
                continue
            problems = await run.exchange(exchange, *_poll_role(exchanges, position))
            outcomes.append(Outcome(exchange, scope, problems))
    return outcomes


def report(outcomes: list[Outcome]) -> tuple[int, int, str]:
    counted = [outcome for outcome in outcomes if outcome.scope.decision is Decision.IN]
    conforming = sum(1 for outcome in counted if not outcome.problems)
    lines = []
    for outcome in outcomes:
        if outcome.scope.decision is Decision.OUT:
            lines.append(f"  skip  {outcome.exchange.label}: {outcome.scope.reason}")
        elif outcome.scope.decision is Decision.SETUP:
            state = "; ".join(outcome.problems) or "done"
            lines.append(f"  setup {outcome.exchange.label} ({outcome.scope.reason}): {state}")
        elif outcome.problems:
            lines.append(f"  DIFF  {outcome.exchange.label}: {'; '.join(outcome.problems)}")
        else:
            lines.append(f"  ok    {outcome.exchange.label}")
    summary = f"{conforming} of {len(counted)} in-scope exchanges conform"
    return conforming, len(counted), "\n".join([summary, *lines])


@pytest.fixture(scope="module")
def recordings_present() -> None:
    folder = recordings_dir()
    missing = [file for file in FILES if not (folder / file).is_file()]
    assert not missing, (
        f"the service's recordings are missing from {folder} (set BATCHPILOT_RECORDINGS): {missing}"
    )


async def test_every_recorded_exchange_has_a_stated_scope(recordings_present: None) -> None:
    decisions = [scope_of(exchange).decision for file in FILES for exchange in load(file)]
    assert decisions.count(Decision.IN) >= 40  # the recordings still hold what this test was written for


@pytest.mark.timeout(600)
async def test_the_emulator_answers_as_the_recorded_service(
    recordings_present: None, start_emulator: EmulatorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[Outcome] = []
    for file in FILES:
        # Each recorded test ran against an account of its own.
        # The service took about 3 s from a task's add to its start (files recording): a second here.
        with start_emulator(supported_images=RECORDED_ACCOUNT_IMAGES, scheduling_delay_s=1.0) as emulator:
            outcomes += await replay(emulator, file)
    conforming, in_scope, text = report(outcomes)
    with capsys.disabled():
        print("\n" + text)
    assert conforming >= TARGET * in_scope, text


def _recorded(path: str, status: int, body: Any) -> Exchange:
    return Exchange(
        "test_batch.pyTestBatchtest_batch_x[sync].json", 0, "GET", path, (), {}, None, status, {}, body
    )


def test_the_comparison_asks_for_every_key_the_service_returned_and_allows_more() -> None:
    service = {"odata.metadata": "m", "id": "j", "priority": 0, "constraints": {"maxTaskRetryCount": 0}}
    recorded = _recorded("/jobs/j", 200, service)
    rules = Rules("job")
    assert (
        compare(recorded, 200, {}, {**service, "odata.metadata": "x", "id": "other", "extra": 1}, rules) == []
    )
    assert compare(recorded, 200, {}, {"id": "j", "constraints": {}}, rules) == [
        "missing odata.metadata",
        "missing priority",
        "missing constraints.maxTaskRetryCount",
    ]
    assert compare(recorded, 200, {}, {**service, "priority": 5}, rules) == [
        "priority is 5, the service says 0"
    ]
    assert compare(recorded, 404, {}, service, rules) == ["status 404, the service answered 200"]


def test_the_comparison_holds_errors_to_their_code_and_lists_to_their_items() -> None:
    error = _recorded("/pools", 409, {"code": "PoolExists", "message": {"value": "..."}})
    assert compare(error, 409, {}, {"code": "PoolBeingDeleted"}, Rules("pool")) == [
        "error code 'PoolBeingDeleted', the service answered 'PoolExists'"
    ]
    images = _recorded(
        "/supportedimages",
        200,
        {"value": [{"nodeAgentSKUId": "a", "osType": "linux"}, {"nodeAgentSKUId": "b", "capabilities": []}]},
    )
    # Keys every entry has must be in every one of ours; a key some entries have, in some of ours.
    assert compare(images, 200, {}, {"value": [{"nodeAgentSKUId": "c"}]}, Rules("image")) == [
        "no item has osType",
        "no item has capabilities",
    ]
    tasks = _recorded("/jobs/j/tasks", 200, {"value": [{"id": "t1", "state": "active"}]})
    assert compare(tasks, 200, {}, {"value": [{"id": "t2", "state": "active"}]}, Rules("task")) == [
        "value[t1] missing"
    ]
