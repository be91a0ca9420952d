"""Each injected fault, seen through the unmodified SDK; and the dice are deterministic under a seed."""

from __future__ import annotations

import time

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.core.pipeline import PipelineResponse

from batchpilot.emulator import FaultConfig, RequestKind
from batchpilot.emulator.faults import Fault, FaultInjector
from tests.conftest import EmulatorFactory

from .support import (
    add_tasks,
    batch_client,
    completed,
    eventually,
    job_options,
    pool_options,
    shell_task,
    stats,
)


async def test_429_carries_retry_after_and_the_sdk_retries_it(start_emulator: EmulatorFactory) -> None:
    faults = FaultConfig(rate_429=1.0, kinds=frozenset({RequestKind.TASK_COUNTS}), budget=1, retry_after_s=1)
    seen: list[tuple[int, str | None]] = []

    def record(response: PipelineResponse) -> None:  # type: ignore[type-arg]
        seen.append((response.http_response.status_code, response.http_response.headers.get("Retry-After")))

    with start_emulator(faults=faults) as emulator:
        async with batch_client(emulator) as client:
            await client.create_job(job_options("j", "p"))
            started = time.monotonic()
            counts = await client.get_job_task_counts("j", raw_response_hook=record)
            waited = time.monotonic() - started
            served = await stats(emulator)

    assert counts.task_counts.active == 0
    assert seen == [(429, "1"), (200, None)]
    assert waited >= 1.0  # the SDK honoured Retry-After
    assert served["faults"] == {"throttled": 1}
    assert served["requests"] == {"job.add": 1, "job.taskcounts": 2}


async def test_500_is_retried_on_get_and_surfaces_when_persistent(start_emulator: EmulatorFactory) -> None:
    once = FaultConfig(rate_500=1.0, kinds=frozenset({RequestKind.JOB_GET}), budget=1)
    with start_emulator(faults=once) as emulator:
        async with batch_client(emulator) as client:
            await client.create_job(job_options("j", "p"))
            assert (await client.get_job("j")).id == "j"
        assert (await stats(emulator))["statuses"] == {"201": 1, "500": 1, "200": 1}

    always = FaultConfig(rate_500=1.0, kinds=frozenset({RequestKind.TASK_ADD_COLLECTION}))
    with start_emulator(faults=always) as emulator:
        async with batch_client(emulator, retry_total=0) as client:
            await client.create_job(job_options("j", "p"))
            with pytest.raises(HttpResponseError) as failed:
                await add_tasks(client, "j", [shell_task("t", "true")])
            assert failed.value.status_code == 500
            assert failed.value.error is not None
            assert failed.value.error.code == "InternalServerError"
            # A 500 is answered before the request is applied.
            assert [task async for task in client.list_tasks("j")] == []


async def test_connection_dropped_after_apply_then_retry_sees_task_exists(
    start_emulator: EmulatorFactory,
) -> None:
    with start_emulator(faults=FaultConfig(drop_after_apply=1.0, budget=1)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_job(job_options("j", "p"))
            tasks = [shell_task(f"t{i}", "true") for i in range(3)]
            # azure-core reports the cut connection ("Server disconnected") and does not retry a POST:
            # the caller cannot tell whether the tasks were added.
            with pytest.raises(ServiceRequestError, match="Server disconnected"):
                await add_tasks(client, "j", tasks)
            assert await add_tasks(client, "j", tasks) == ["TaskExists"] * 3
            assert [task.id async for task in client.list_tasks("j")] == ["t0", "t1", "t2"]
            assert (await stats(emulator))["faults"] == {"dropped_after_apply": 1}


async def test_preempted_task_is_requeued_and_runs_again(start_emulator: EmulatorFactory) -> None:
    with start_emulator(faults=FaultConfig(preempt=1.0, preempt_after_s=0.2)) as emulator:
        async with batch_client(emulator) as client:
            spot_pool = pool_options("p", nodes=0)
            spot_pool.target_low_priority_nodes = 1  # only spot nodes are preempted
            await client.create_pool(spot_pool)
            await client.create_job(job_options("j", "p"))
            await add_tasks(client, "j", [shell_task("t", "sleep 0.6")])
            await completed(client, "j", 1)
            task = await client.get_task("j", "t")
            served = await stats(emulator)

    info = task.execution_info
    assert info is not None
    assert (task.state, info.result, info.requeue_count, info.retry_count) == ("completed", "success", 1, 0)
    assert info.last_requeue_time is not None
    assert served["faults"] == {"preempted": 1}
    assert served["attempts_started"] == 2


async def test_task_counts_lag_behind_task_states(start_emulator: EmulatorFactory) -> None:
    with start_emulator(faults=FaultConfig(counts_lag_s=1.5)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_job(job_options("j", "p"))
            await add_tasks(client, "j", [shell_task("t", "true")])
            assert (await client.get_job_task_counts("j")).task_counts.active == 1
            await client.create_pool(pool_options("p"))  # only now can the task run

            async def done() -> bool | None:
                return True if (await client.get_task("j", "t")).state == "completed" else None

            await eventually(done)
            stale = (await client.get_job_task_counts("j")).task_counts
            assert (stale.active, stale.completed) == (1, 0)  # the task list knows better than the counts
            await completed(client, "j", 1, within=5)


async def test_latency_is_added_to_each_request(start_emulator: EmulatorFactory) -> None:
    with start_emulator(faults=FaultConfig(latency_ms=300)) as emulator:
        async with batch_client(emulator) as client:
            started = time.monotonic()
            await client.create_job(job_options("j", "p"))
            await client.get_job("j")
            assert time.monotonic() - started >= 0.6


def test_fault_decisions_are_deterministic_under_a_seed() -> None:
    config = FaultConfig(seed=7, rate_429=0.3, rate_500=0.2, drop_after_apply=0.5, preempt=0.5)

    def decisions(injector: FaultInjector) -> list[object]:
        kinds = [RequestKind.TASK_LIST, RequestKind.TASK_ADD_COLLECTION] * 50
        return [(injector.request_fault(kind), injector.drop_after_apply(kind)) for kind in kinds]

    first, second = FaultInjector(config), FaultInjector(config)
    assert decisions(first) == decisions(second)
    assert first.fired == second.fired
    assert set(first.fired) == {Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROP_AFTER_APPLY}
    assert decisions(FaultInjector(FaultConfig(seed=8, rate_429=0.3, rate_500=0.2))) != decisions(first)

    # Preemption depends on the task, not on the order in which tasks are asked about.
    ids = [f"t{i}" for i in range(40)]
    forward = {task: first.preempts("j", task, 0) for task in ids}
    backward = {task: second.preempts("j", task, 0) for task in reversed(ids)}
    assert forward == backward
    assert 0 < sum(forward.values()) < len(ids)
    assert not any(first.preempts("j", task, 1) for task in ids)  # only a first attempt is preempted


def test_budget_caps_each_fault() -> None:
    injector = FaultInjector(FaultConfig(rate_429=1.0, budget=2))
    answers = [injector.request_fault(RequestKind.POOL_GET) for _ in range(5)]
    assert answers == [Fault.THROTTLE, Fault.THROTTLE, None, None, None]
