"""The faults users of Batch orchestrators hit, as the emulator injects them, seen through the unmodified
SDKs: the account's quotas, an outage of the calls a monitor makes, expired SAS tokens, pools in deletion and
spot preemption. Each behaves as Azure Batch (and Azure Storage) does, and is counted in /_emulator/stats."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported by the SDK
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from batchpilot.emulator import FaultConfig, RequestKind
from batchpilot.emulator.cli import add_arguments, config_from_args
from batchpilot.emulator.faults import OutageMode, sas_refusal
from batchpilot.errors import ConfigError
from tests.conftest import EmulatorFactory

from .support import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    add_tasks,
    batch_client,
    completed,
    eventually,
    job_options,
    pool_options,
    shell_task,
    stats,
)


def service_error(raised: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str, str]:
    error = raised.value.error
    assert error is not None
    return raised.value.status_code, str(error.code), str(error.message)


def sized_pool(pool_id: str, vm_size: str, *, dedicated: int = 0, spot: int = 0) -> m.BatchPoolCreateOptions:
    options = pool_options(pool_id, nodes=dedicated)
    options.vm_size = vm_size
    options.target_low_priority_nodes = spot
    return options


async def steady(client: BatchClient, pool_id: str) -> m.BatchPool:
    async def probe() -> m.BatchPool | None:
        pool = await client.get_pool(pool_id)
        return pool if pool.allocation_state == "steady" else None

    return await eventually(probe)


# --- quotas -----------------------------------------------------------------------------------------------


async def test_pool_quota_refuses_one_pool_too_many_until_one_is_gone(
    start_emulator: EmulatorFactory,
) -> None:
    with start_emulator(faults=FaultConfig(pool_quota=1), deletion_delay_s=0.3) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("first"))
            with pytest.raises(ResourceExistsError) as refused:
                await client.create_pool(pool_options("second"))
            assert service_error(refused) == (
                409,
                "PoolQuotaReached",
                "Pool quota for the account has been reached.",
            )
            with pytest.raises(ResourceExistsError) as exists:
                await client.create_pool(pool_options("first"))
            assert service_error(exists)[1] == "PoolExists"  # a taken id is reported before the quota

            await client.begin_delete_pool("first")
            with pytest.raises(ResourceExistsError) as still_counted:
                await client.create_pool(pool_options("second"))  # a pool being deleted still counts
            assert service_error(still_counted)[1] == "PoolQuotaReached"

            async def created() -> bool | None:
                try:
                    await client.create_pool(pool_options("second"))
                except ResourceExistsError:
                    return None
                return True

            await eventually(created)
            served = await stats(emulator)
    assert served["faults"]["pool_quota_reached"] >= 2


async def test_job_quota_counts_jobs_not_yet_completed(start_emulator: EmulatorFactory) -> None:
    with start_emulator(faults=FaultConfig(job_quota=1)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_job(job_options("first", "p"))
            with pytest.raises(ResourceExistsError) as refused:
                await client.create_job(job_options("second", "p"))
            assert service_error(refused) == (
                409,
                "ActiveJobAndScheduleQuotaReached",
                "Active job and schedule quota for the account has been reached.",
            )
            # Only the request: the emulator completes the job before answering.
            await client.begin_terminate_job(
                "first", options=BatchJobTerminateOptions(termination_reason="done")
            )
            await client.create_job(job_options("second", "p"))  # a completed job no longer counts
            served = await stats(emulator)
    assert served["faults"] == {"job_quota_reached": 1}


async def test_core_quotas_grant_the_nodes_that_fit_and_report_the_rest(
    start_emulator: EmulatorFactory,
) -> None:
    # Standard_D2s_v3 has 2 cores: 5 dedicated cores fit 2 nodes, 1 spot core fits none of that size.
    faults = FaultConfig(core_quota=5, spot_core_quota=1)
    with start_emulator(faults=faults) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(sized_pool("big", "Standard_D2s_v3", dedicated=3, spot=2))
            big = await steady(client, "big")
            nodes = [node async for node in client.list_nodes("big")]
            # One more core is left: a one-core node still fits, a second does not.
            await client.create_pool(sized_pool("small", "STANDARD_A1_v2", dedicated=2))
            small = await steady(client, "small")
            served = await stats(emulator)

    assert (big.target_dedicated_nodes, big.current_dedicated_nodes) == (3, 2)
    assert (big.target_low_priority_nodes, big.current_low_priority_nodes) == (2, 0)
    assert [(error.code, error.message) for error in big.resize_errors or ()] == [
        ("AccountCoreQuotaReached", "The specified account has reached core quota"),
        ("AccountLowPriorityCoreQuotaReached", "The specified account has reached low priority core quota"),
    ]
    assert sorted(node.is_dedicated for node in nodes) == [True, True]
    assert (small.target_dedicated_nodes, small.current_dedicated_nodes) == (2, 1)
    assert [error.code for error in small.resize_errors or ()] == ["AccountCoreQuotaReached"]
    assert served["faults"] == {"core_quota_reached": 2, "spot_core_quota_reached": 1}


# --- pools in deletion ------------------------------------------------------------------------------------


async def test_a_pool_being_deleted_refuses_its_id_until_it_is_gone(start_emulator: EmulatorFactory) -> None:
    with start_emulator(deletion_delay_s=0.5) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("p"))
            await client.begin_delete_pool("p")
            with pytest.raises(ResourceExistsError) as recreate:
                await client.create_pool(pool_options("p"))
            with pytest.raises(ResourceExistsError) as delete_again:
                await client.begin_delete_pool("p")
            assert (await client.get_pool("p")).state == "deleting"

            async def recreated() -> bool | None:
                try:
                    await client.create_pool(pool_options("p"))
                except ResourceExistsError:
                    return None
                return True

            await eventually(recreated)
            assert (await client.get_pool("p")).state == "active"

    being_deleted = (
        409,
        "PoolBeingDeleted",
        "The specified pool has been marked for deletion and is being reclaimed.",
    )
    assert service_error(recreate) == being_deleted
    assert service_error(delete_again) == being_deleted


# --- an outage of the monitor's calls ---------------------------------------------------------------------


async def test_outage_starts_after_the_first_task_add_and_fails_only_its_kinds(
    start_emulator: EmulatorFactory,
) -> None:
    # An outage far longer than any client would wait: the test sees it start, never end.
    faults = FaultConfig(outage_after_s=0.0, outage_s=3600)
    with start_emulator(faults=faults) as emulator:
        async with batch_client(emulator, retry_total=0) as client:
            await client.create_job(job_options("j", "p"))
            assert (await client.get_job_task_counts("j")).task_counts.active == 0  # no task added yet
            await add_tasks(client, "j", [shell_task("t", "true")])
            failures = []
            for call in (
                client.get_job_task_counts("j"),
                client.get_task("j", "t"),
                anext(aiter(client.list_tasks("j"))),
            ):
                with pytest.raises(HttpResponseError) as failed:
                    await call
                failures.append(service_error(failed)[:2])
            assert (await client.get_job("j")).id == "j"  # other kinds are answered
            served = await stats(emulator)

    assert failures == [(500, "InternalServerError")] * 3
    assert served["faults"] == {"outage": 3}


async def test_outage_window_ends_and_drop_mode_cuts_connections(start_emulator: EmulatorFactory) -> None:
    faults = FaultConfig(
        outage_after_s=0.2,
        outage_s=0.5,
        outage_mode=OutageMode.DROP,
        outage_kinds=frozenset({RequestKind.TASK_COUNTS}),
    )
    with start_emulator(faults=faults) as emulator:
        async with batch_client(emulator, retry_total=0) as client:
            await client.create_job(job_options("j", "p"))
            await add_tasks(client, "j", [shell_task("t", "true")])

            async def counts_fail() -> str | None:
                try:
                    await client.get_job_task_counts("j")
                except ServiceRequestError as exc:
                    return str(exc)
                return None

            async def counts_answer() -> bool | None:
                try:
                    await client.get_job_task_counts("j")
                except ServiceRequestError:
                    return None
                return True

            assert "Server disconnected" in await eventually(counts_fail)  # no answer, not an error body
            await eventually(counts_answer)
            served = await stats(emulator)

    assert served["faults"]["outage"] >= 1


# --- SAS expiry -------------------------------------------------------------------------------------------


def upload_to(container_url: str) -> m.OutputFile:
    return m.OutputFile(
        file_pattern="out.txt",
        destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(container_url=container_url, path="out.txt")
        ),
        upload_options=m.OutputFileUploadConfiguration(upload_condition="tasksuccess"),
    )


@pytest.fixture
async def containers(blobs: BlobServiceClient) -> tuple[str, str]:
    """An input container holding `in.txt` and an empty output container; SAS URLs valid for one hour."""
    suffix = uuid.uuid4().hex[:8]
    inputs = blobs.get_container_client(f"sas-in-{suffix}")
    outputs = blobs.get_container_client(f"sas-out-{suffix}")
    await inputs.create_container()
    await outputs.create_container()
    await inputs.upload_blob("in.txt", b"input\n")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    read = generate_blob_sas(
        AZURITE_ACCOUNT, inputs.container_name, "in.txt", account_key=AZURITE_KEY,
        permission=BlobSasPermissions(read=True), expiry=expiry,
    )  # fmt: skip
    write = generate_container_sas(
        AZURITE_ACCOUNT, outputs.container_name, account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(write=True, create=True), expiry=expiry,
    )  # fmt: skip
    return f"{inputs.url}/in.txt?{read}", f"{outputs.url}?{write}"


async def run_one(
    start_emulator: EmulatorFactory, ahead_s: float, task: m.BatchTaskCreateOptions
) -> tuple[m.BatchTaskExecutionInfo, dict[str, Any]]:
    """Run `task` on a node whose clock is `ahead_s` seconds ahead; its execution info and the stats."""
    with start_emulator(faults=FaultConfig(sas_clock_ahead_s=ahead_s)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(pool_options("p"))
            await client.create_job(job_options("j", "p"))
            await add_tasks(client, "j", [task])
            await completed(client, "j", 1)
            info = (await client.get_task("j", task.id)).execution_info
            served = await stats(emulator)
    assert info is not None
    return info, served


async def test_an_output_sas_expired_by_upload_time_fails_the_task_as_batch_reports_it(
    start_emulator: EmulatorFactory, blobs: BlobServiceClient, containers: tuple[str, str]
) -> None:
    _input_url, output_url = containers
    # The token lasts an hour; a node whose clock is two hours ahead uploads after it expired. Retries
    # cannot help an expired token, so none is made.
    task = shell_task(
        "t",
        "echo done > out.txt",
        output_files=[upload_to(output_url)],
        constraints=m.BatchTaskConstraints(max_task_retry_count=2),
    )
    info, served = await run_one(start_emulator, 7200, task)

    assert (info.result, info.exit_code, info.retry_count) == ("failure", 0, 0)
    assert info.failure_info is not None
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "FileUploadAccessDenied")
    assert "403 AuthenticationFailed: Signature not valid in the specified time frame" in str(
        info.failure_info.message
    )
    assert "sig=" not in str(info.failure_info.message)
    outputs = blobs.get_container_client(output_url.split("?")[0].rsplit("/", 1)[1])
    assert [blob.name async for blob in outputs.list_blobs()] == []
    assert served["faults"] == {"sas_expired": 1}


async def test_a_token_still_valid_at_upload_time_uploads(
    start_emulator: EmulatorFactory, blobs: BlobServiceClient, containers: tuple[str, str]
) -> None:
    input_url, output_url = containers
    task = shell_task(
        "t",
        "cp in.txt out.txt",
        resource_files=[m.ResourceFile(http_url=input_url, file_path="in.txt")],
        output_files=[upload_to(output_url)],
    )
    info, served = await run_one(start_emulator, 1800, task)  # half an hour late: still within the hour

    assert (info.result, info.exit_code, info.failure_info) == ("success", 0, None)
    outputs = blobs.get_container_client(output_url.split("?")[0].rsplit("/", 1)[1])
    assert await (await outputs.download_blob("out.txt")).readall() == b"input\n"
    assert served["faults"] == {}


async def test_a_resource_file_sas_expired_before_the_task_starts_fails_it_unrun(
    start_emulator: EmulatorFactory, containers: tuple[str, str]
) -> None:
    input_url, _output_url = containers
    task = shell_task(
        "t", "cat in.txt", resource_files=[m.ResourceFile(http_url=input_url, file_path="in.txt")]
    )
    info, served = await run_one(start_emulator, 7200, task)

    assert (info.result, info.exit_code) == ("failure", None)  # no exit code: the command never ran
    assert info.failure_info is not None
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "BlobAccessDenied")
    assert "403 AuthenticationFailed" in str(info.failure_info.message)
    assert served["faults"] == {"sas_expired": 1}


def test_sas_expiry_is_read_as_storage_reads_it() -> None:
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert sas_refusal("http://h/a/c?sv=1&se=2026-01-01T13%3A00%3A00Z&sig=s", at) is None
    assert sas_refusal("http://h/a/c?st=2026-01-01T10:00:00Z&se=2026-01-01T11:00:00Z&sig=s", at) == (
        "Signature not valid in the specified time frame: Start [Thu, 01 Jan 2026 10:00:00 GMT] - "
        "Expiry [Thu, 01 Jan 2026 11:00:00 GMT] - Current [Thu, 01 Jan 2026 12:00:00 GMT]"
    )
    assert sas_refusal("http://h/a/c?se=2026-01-01&sig=s", at) is not None  # a date alone: midnight UTC
    assert sas_refusal("http://h/a/c/blob.txt", at) is None  # no token, nothing to expire


# --- spot preemption --------------------------------------------------------------------------------------


async def test_preemption_requeues_tasks_on_spot_nodes_only_and_each_completes_once(
    start_emulator: EmulatorFactory,
) -> None:
    with start_emulator(faults=FaultConfig(preempt=1.0, preempt_after_s=0.1)) as emulator:
        async with batch_client(emulator) as client:
            await client.create_pool(sized_pool("spot", "STANDARD_A1_v2", spot=2))
            await client.create_pool(sized_pool("dedicated", "STANDARD_A1_v2", dedicated=2))
            await client.create_job(job_options("on-spot", "spot"))
            await client.create_job(job_options("on-dedicated", "dedicated"))
            spot_tasks = [shell_task(f"s{i}", "sleep 0.4") for i in range(3)]
            dedicated_tasks = [shell_task(f"d{i}", "sleep 0.4") for i in range(3)]
            await add_tasks(client, "on-spot", spot_tasks)
            await add_tasks(client, "on-dedicated", dedicated_tasks)
            await completed(client, "on-spot", 3)
            await completed(client, "on-dedicated", 3)
            on_spot = [task async for task in client.list_tasks("on-spot")]
            on_dedicated = [task async for task in client.list_tasks("on-dedicated")]
            counts = (await client.get_job_task_counts("on-spot")).task_counts
            served = await stats(emulator)

    def outcomes(tasks: list[m.BatchTask]) -> list[tuple[str, str | None, int | None]]:
        return [
            (task.state, task.execution_info.result, task.execution_info.requeue_count)
            for task in tasks
            if task.execution_info is not None
        ]

    assert outcomes(on_spot) == [("completed", "success", 1)] * 3  # each preempted once, then done
    assert outcomes(on_dedicated) == [("completed", "success", 0)] * 3
    assert (counts.completed, counts.succeeded, counts.failed) == (3, 3, 0)
    assert served["faults"] == {"preempted": 3}
    assert (served["attempts_started"], served["tasks_completed"]) == (9, 6)


def test_flags_map_onto_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--pool-quota", "2", "--job-quota", "3", "--core-quota", "8", "--spot-core-quota", "0",
         "--outage-after-s", "30", "--outage-s", "3600", "--outage-kinds", "task.list",
         "--outage-mode", "drop", "--sas-clock-ahead-s", "7200"]
    )  # fmt: skip
    faults = config_from_args(args).faults
    assert (faults.pool_quota, faults.job_quota, faults.core_quota, faults.spot_core_quota) == (2, 3, 8, 0)
    assert (faults.outage_after_s, faults.outage_s, faults.outage_mode) == (30.0, 3600.0, OutageMode.DROP)
    assert faults.outage_kinds == {RequestKind.TASK_LIST}
    assert faults.sas_clock_ahead_s == 7200.0
    defaults = config_from_args(parser.parse_args([])).faults
    assert defaults.outage_kinds == {RequestKind.TASK_LIST, RequestKind.TASK_COUNTS, RequestKind.TASK_GET}
    assert (defaults.pool_quota, defaults.outage_after_s, defaults.sas_clock_ahead_s) == (None, None, None)
    with pytest.raises(ConfigError, match="job_quota must not be negative"):
        config_from_args(parser.parse_args(["--job-quota", "-1"]))


def test_outage_needs_both_start_and_length_and_quotas_are_not_negative() -> None:
    with pytest.raises(ConfigError, match="outage_after_s"):
        FaultConfig(outage_s=10)
    with pytest.raises(ConfigError, match="outage_s"):
        FaultConfig(outage_after_s=10)
    with pytest.raises(ConfigError, match="pool_quota must not be negative"):
        FaultConfig(pool_quota=-1)
