"""The pure parts: SharedKey signing agrees with the SDK's policy; the $filter parser; CLI flag mapping."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest

from batchpilot.emulator import DEFAULT_KEY, RequestKind
from batchpilot.emulator.auth import verify
from batchpilot.emulator.cli import add_arguments, config_from_args
from batchpilot.emulator.query import parse_filter
from batchpilot.emulator.state import ServiceError, Task
from batchpilot.emulator.wire import format_duration, parse_duration
from batchpilot.errors import ConfigError
from batchpilot.records import TaskResult, TaskState
from batchpilot.spec import TaskSpec

URL = (
    "http://127.0.0.1:9/jobs/j/tasks?api-version=2025-06-01&%24filter=state%20eq%20%27active%27&maxresults=5"
)


def signed(method: str, url: str, key: str, body: bytes | None = None) -> HttpRequest:
    request = HttpRequest(
        method, url, content=body, headers={"Content-Type": "application/json"} if body else {}
    )
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential("acct", key))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return request


def verified(request: HttpRequest, *, key: str = DEFAULT_KEY, path: str | None = None) -> bool:
    raw_path, _, raw_query = request.url.removeprefix("http://127.0.0.1:9").partition("?")
    return verify(
        request.headers["Authorization"],
        method=request.method,
        raw_path=path or raw_path,
        raw_query=raw_query,
        headers=dict(request.headers),
        account="acct",
        key=key,
    )


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("HEAD", None), ("POST", b'{"value": []}'), ("DELETE", None)]
)
def test_signature_matches_the_sdk_policy(method: str, body: bytes | None) -> None:
    request = signed(method, URL, DEFAULT_KEY, body)
    assert verified(request)
    assert not verified(request, path="/jobs/other/tasks")
    assert not verified(signed(method, URL, "b3RoZXIta2V5", body))


def make_task(task_id: str, state: TaskState, at: datetime, result: TaskResult | None = None) -> Task:
    task = Task("j", TaskSpec(task_id, "true"), {}, 0, at)
    task.state, task.state_transition_time, task.result = state, at, result
    return task


T0 = datetime(2025, 1, 1, tzinfo=UTC)
TASKS = [
    make_task("a", TaskState.ACTIVE, T0),
    make_task("b", TaskState.RUNNING, T0 + timedelta(minutes=1)),
    make_task("c", TaskState.COMPLETED, T0 + timedelta(minutes=2), TaskResult.SUCCESS),
    make_task("d", TaskState.COMPLETED, T0 + timedelta(minutes=3), TaskResult.FAILURE),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "abcd"),
        ("state eq 'completed'", "cd"),
        ("state ne 'completed'", "ab"),
        ("stateTransitionTime ge datetime'2025-01-01T00:02:00Z'", "cd"),
        ("stateTransitionTime gt datetime'2025-01-01T00:02:00'", "d"),  # no offset: UTC
        ("state eq 'completed' and executionInfo/result eq 'failure'", "d"),
        ("state eq 'active' or state eq 'running' and id eq 'x'", "a"),  # and binds tighter
        ("(state eq 'active' or state eq 'running') and id eq 'b'", "b"),
        ("executionInfo/result eq 'success'", "c"),
    ],
)
def test_filter(text: str | None, expected: str) -> None:
    predicate = parse_filter(text)
    assert "".join(task.task_id for task in TASKS if predicate(task)) == expected


@pytest.mark.parametrize(
    "text",
    ["colour eq 'red'", "state eq", "state like 'a'", "(state eq 'a'", "state eq 'a' extra", "id eq id"],
)
def test_bad_filters_are_400(text: str) -> None:
    with pytest.raises(ServiceError) as error:
        parse_filter(text)
    assert (error.value.status, error.value.code) == (400, "InvalidQueryParameterValue")


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("PT1H", timedelta(hours=1)),
        ("PT0.5S", timedelta(seconds=0.5)),
        ("P2DT3M", timedelta(days=2, minutes=3)),
    ],
)
def test_durations_round_trip(text: str, delta: timedelta) -> None:
    assert parse_duration(text, "f") == delta
    assert parse_duration(format_duration(delta), "f") == delta


def test_cli_flags_map_onto_the_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "8123", "--account", "acct", "--workdir", str(tmp_path), "--latency-ms", "5",
         "--rate-429", "0.1", "--rate-500", "0.2", "--fault-kinds", "task.list,job.taskcounts",
         "--drop-after-apply", "0.3", "--preempt", "0.4", "--counts-lag-s", "2", "--allocation-delay-s", "1",
         "--simulate", "0.5-2", "--seed", "9"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.port, config.account, config.workdir, config.allocation_delay_s) == (
        8123,
        "acct",
        tmp_path,
        1.0,
    )
    assert config.simulate_s == (0.5, 2.0)
    faults = config.faults
    assert (faults.seed, faults.latency_ms, faults.rate_429, faults.rate_500) == (9, 5.0, 0.1, 0.2)
    assert faults.kinds == {RequestKind.TASK_LIST, RequestKind.TASK_COUNTS}
    assert (faults.drop_after_apply, faults.preempt, faults.counts_lag_s) == (0.3, 0.4, 2.0)
    assert faults.drop_kinds == {RequestKind.TASK_ADD_COLLECTION}

    with pytest.raises(SystemExit):
        parser.parse_args(["--simulate", "3-1"])
    with pytest.raises(ConfigError):
        config_from_args(parser.parse_args(["--rate-429", "2"]))
