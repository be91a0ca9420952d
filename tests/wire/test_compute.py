from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from batchpilot.backends.azure import AzureBackend
from batchpilot.errors import (
    AllocationFailedError,
    AuthenticationError,
    BackendError,
    JobEndedError,
    NotFoundError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
    RequestTooLargeError,
    TransientBackendError,
)
from batchpilot.records import AddStatus, TaskCounts, TaskResult, TaskState, TaskView
from batchpilot.spec import (
    JobSpec,
    OutputFile,
    PoolSpec,
    ResourceFile,
    StartTask,
    TaskConstraints,
    TaskSpec,
    UploadCondition,
)
from tests.helpers import FakeClock

from .conftest import BATCH, BATCH_KEY, Http

API = "2025-06-01"
POOL = PoolSpec(
    pool_id="tutorial-pool",
    dedicated_nodes=1,
    spot_nodes=4,
    task_slots_per_node=2,
    start_task=StartTask("/bin/bash -c 'apt-get update && apt-get install -y ffmpeg'"),
)
EXISTING_POOL = {
    "id": "tutorial-pool",
    "url": "https://x/pools/tutorial-pool",
    "state": "active",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {
            "publisher": "canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        },
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
    },
    "targetDedicatedNodes": 1,
    "targetLowPriorityNodes": 4,
    "taskSlotsPerNode": 2,
    "startTask": {"commandLine": "/bin/bash -c 'apt-get update && apt-get install -y ffmpeg'"},
}


def task(n: int) -> TaskSpec:
    return TaskSpec(
        task_id=f"task-{n:03d}",
        command_line=f"ffmpeg -i in{n}.mp4 out{n}.mp3",
        resource_files=(
            ResourceFile(
                url=f"https://store.blob.core.windows.net/in/in{n}.mp4?sig=x", file_path=f"in{n}.mp4"
            ),
        ),
        output_files=(
            OutputFile(
                file_pattern="*.mp3",
                container_url="https://store.blob.core.windows.net/out?sp=cw&sig=y",
                path=f"task-{n:03d}",
                upload_condition=UploadCondition.TASK_SUCCESS,
            ),
        ),
        constraints=TaskConstraints(
            max_wall_clock=timedelta(hours=1), max_task_retry_count=2, retention=timedelta(days=1)
        ),
    )


# --- pools ------------------------------------------------------------------------------------------------


async def test_ensure_pool_creates_the_tutorial_pool(http: Http, backend: AzureBackend) -> None:
    http.batch("POST", "/pools", status=201)

    ensured = await backend.compute.ensure_pool(POOL)

    assert (ensured.resource_id, ensured.created, ensured.warnings) == ("tutorial-pool", True, ())
    [sent] = http.sent()
    assert (sent.method, sent.path, sent.query) == ("POST", "/pools", {"api-version": API})
    assert sent.headers["authorization"].startswith("SharedKey acct:")
    assert sent.json() == {
        "id": "tutorial-pool",
        # The defaults (spec.py): Ubuntu 24.04 (Generation 2) on Standard_D2s_v5, not the retired 20.04.
        "vmSize": "Standard_D2s_v5",
        "virtualMachineConfiguration": {
            "imageReference": {
                "publisher": "canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "latest",
            },
            "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        },
        "targetDedicatedNodes": 1,
        "targetLowPriorityNodes": 4,
        "taskSlotsPerNode": 2,
        "startTask": {
            "commandLine": "/bin/bash -c 'apt-get update && apt-get install -y ffmpeg'",
            "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}},
            "maxTaskRetryCount": 1,
            "waitForSuccess": True,
        },
    }


async def test_existing_pool_is_reused_with_a_warning_per_difference(
    http: Http, backend: AzureBackend
) -> None:
    http.batch_error("POST", "/pools", 409, "PoolExists")
    http.batch("GET", "/pools/tutorial-pool", payload=EXISTING_POOL)

    ensured = await backend.compute.ensure_pool(POOL)

    assert ensured.created is False
    assert len(ensured.warnings) == 1
    assert "vm size 'standard_d2s_v3'" in ensured.warnings[0]
    assert [(s.method, s.path) for s in http.sent()] == [("POST", "/pools"), ("GET", "/pools/tutorial-pool")]


async def test_pool_being_deleted_is_a_clear_error(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/pools", 409, "PoolExists")
    http.batch("GET", "/pools/tutorial-pool", payload={**EXISTING_POOL, "state": "deleting"})

    with pytest.raises(PoolBeingDeletedError, match="tutorial-pool is being deleted") as raised:
        await backend.compute.ensure_pool(POOL)
    assert raised.value.pool_id == "tutorial-pool"


async def test_other_conflict_on_pool_create_is_not_mistaken_for_exists(
    http: Http, backend: AzureBackend
) -> None:
    http.batch_error("POST", "/pools", 409, "PoolBeingDeleted")

    with pytest.raises(PoolBeingDeletedError, match="409 PoolBeingDeleted") as raised:
        await backend.compute.ensure_pool(POOL)
    assert raised.value.code == "PoolBeingDeleted"


async def test_delete_pool_and_job_accept_already_gone(http: Http, backend: AzureBackend) -> None:
    http.batch_error("DELETE", "/pools/tutorial-pool", 404, "PoolNotFound")
    http.batch("DELETE", "/jobs/job-1", status=202)

    await backend.compute.delete_pool("tutorial-pool")
    await backend.compute.delete_job("job-1")

    assert [(s.method, s.path) for s in http.sent()] == [
        ("DELETE", "/pools/tutorial-pool"),
        ("DELETE", "/jobs/job-1"),
    ]


# --- resizing ---------------------------------------------------------------------------------------------


def _pool_size(allocation: str, dedicated: int, spot: int, **extra: object) -> dict[str, object]:
    return {
        "id": "tutorial-pool",
        "state": "active",
        "allocationState": allocation,
        "targetDedicatedNodes": dedicated,
        "targetLowPriorityNodes": spot,
        **extra,
    }


async def test_resize_pool_sends_the_counts_and_lets_removed_nodes_finish_their_tasks(
    http: Http, backend: AzureBackend
) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("steady", 1, 4))
    http.batch("POST", "/pools/tutorial-pool/resize", status=202)

    await backend.compute.resize_pool("tutorial-pool", 0, 0)

    get, resize = http.sent()
    assert (get.method, get.path) == ("GET", "/pools/tutorial-pool")
    assert get.query["$select"] == "id,state,allocationState,targetDedicatedNodes,targetLowPriorityNodes"
    assert (resize.method, resize.path, resize.query) == (
        "POST",
        "/pools/tutorial-pool/resize",
        {"api-version": API},
    )
    assert resize.json() == {
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 0,
        "nodeDeallocationOption": "taskcompletion",
    }


async def test_resize_pool_stops_a_resize_under_way_and_waits_for_steady_first(
    http: Http, backend: AzureBackend, clock: FakeClock
) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("resizing", 0, 0))
    http.batch("POST", "/pools/tutorial-pool/stopresize", status=202)
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("stopping", 0, 0))
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("steady", 0, 0))
    http.batch("POST", "/pools/tutorial-pool/resize", status=202)

    await backend.compute.resize_pool("tutorial-pool", 1, 4)

    assert [(s.method, s.path) for s in http.sent()] == [
        ("GET", "/pools/tutorial-pool"),
        ("POST", "/pools/tutorial-pool/stopresize"),
        ("GET", "/pools/tutorial-pool"),
        ("GET", "/pools/tutorial-pool"),
        ("POST", "/pools/tutorial-pool/resize"),
    ]
    assert clock.sleeps == [2.0, 3.0]
    assert http.sent("POST")[-1].json()["targetLowPriorityNodes"] == 4


async def test_resize_pool_that_lost_a_race_to_another_resize_stops_that_one(
    http: Http, backend: AzureBackend
) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("steady", 0, 0))
    http.batch_error("POST", "/pools/tutorial-pool/resize", 409, "PoolBeingResized")
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("resizing", 2, 0))
    http.batch("POST", "/pools/tutorial-pool/stopresize", status=202)
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("steady", 1, 0))
    http.batch("POST", "/pools/tutorial-pool/resize", status=202)

    await backend.compute.resize_pool("tutorial-pool", 1, 4)

    assert [(s.method, s.path.rsplit("/", 1)[-1]) for s in http.sent("POST")] == [
        ("POST", "resize"),
        ("POST", "stopresize"),
        ("POST", "resize"),
    ]


async def test_resize_pool_sends_nothing_when_the_targets_are_already_those(
    http: Http, backend: AzureBackend
) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("resizing", 1, 4))

    await backend.compute.resize_pool("tutorial-pool", 1, 4)

    assert [s.method for s in http.sent()] == ["GET"]


async def test_resize_pool_errors_are_clear(http: Http, backend: AzureBackend) -> None:
    http.batch_error("GET", "/pools/gone", 404, "PoolNotFound")
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_size("steady", 1, 4, state="deleting"))

    with pytest.raises(NotFoundError):
        await backend.compute.resize_pool("gone", 0, 0)
    with pytest.raises(PoolBeingDeletedError, match="tutorial-pool is being deleted; it cannot be resized"):
        await backend.compute.resize_pool("tutorial-pool", 0, 0)


# --- waiting for nodes ------------------------------------------------------------------------------------


def _pool_status(**extra: object) -> dict[str, object]:
    return {
        "id": "tutorial-pool",
        "state": "active",
        "targetDedicatedNodes": 1,
        "targetLowPriorityNodes": 1,
        **extra,
    }


async def test_wait_for_nodes_backs_off_until_a_node_is_ready(
    http: Http, backend: AzureBackend, clock: FakeClock
) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_status(), repeat=True)
    http.batch("GET", "/pools/tutorial-pool/nodes", payload={"value": [{"id": "n1", "state": "creating"}]})
    http.batch("GET", "/pools/tutorial-pool/nodes", payload={"value": [{"id": "n1", "state": "starting"}]})
    http.batch(
        "GET",
        "/pools/tutorial-pool/nodes",
        payload={"value": [{"id": "n1", "state": "idle"}, {"id": "n2", "state": "x"}]},
    )
    ready = await backend.compute.wait_for_nodes("tutorial-pool", min_nodes=1)

    assert ready == 1
    assert clock.sleeps == [2.0, 3.0]
    pool_get = http.sent("GET")[0]
    assert pool_get.query["$select"] == (
        "id,state,allocationState,resizeErrors,targetDedicatedNodes,targetLowPriorityNodes,"
        "currentDedicatedNodes,currentLowPriorityNodes"
    )


async def test_wait_for_nodes_surfaces_a_quota_error(http: Http, backend: AzureBackend) -> None:
    errors = [{"code": "AccountCoreQuotaReached", "message": "The core quota was reached."}]
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_status(resizeErrors=errors))

    with pytest.raises(
        QuotaReachedError, match="AccountCoreQuotaReached: The core quota was reached"
    ) as raised:
        await backend.compute.wait_for_nodes("tutorial-pool")
    assert raised.value.code == "AccountCoreQuotaReached"
    assert (raised.value.quota, raised.value.kept_pool) == (Quota.DEDICATED_CORES, "tutorial-pool")
    # What happened only: the remedy and the cleanup command are the CLI's.
    assert "batchpilot" not in str(raised.value)


async def test_wait_for_nodes_surfaces_an_allocation_failure(http: Http, backend: AzureBackend) -> None:
    errors = [{"code": "SomethingNew", "message": "No capacity."}]
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_status(resizeErrors=errors))

    with pytest.raises(AllocationFailedError, match="got no nodes: Batch could not allocate them") as raised:
        await backend.compute.wait_for_nodes("tutorial-pool")
    assert raised.value.kept_pool == "tutorial-pool"


@pytest.mark.parametrize(
    ("code", "quota"),
    [("PoolQuotaReached", Quota.POOLS), ("AccountVmSeriesCoreQuotaReached", Quota.VM_SERIES_CORES)],
)
async def test_a_quota_refusal_is_typed_by_its_quota(
    http: Http, backend: AzureBackend, code: str, quota: Quota
) -> None:
    http.batch_error("POST", "/pools", 409, code)

    with pytest.raises(QuotaReachedError, match=f"create pool tutorial-pool: .* \\(409 {code}\\)$") as raised:
        await backend.compute.ensure_pool(POOL)
    assert (raised.value.quota, raised.value.kept_pool, raised.value.code) == (quota, None, code)


async def test_the_job_quota_names_the_pool_it_leaves(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/jobs", 409, "ActiveJobAndScheduleQuotaReached")

    with pytest.raises(QuotaReachedError, match="quota of active jobs is reached") as raised:
        await backend.compute.ensure_job(JobSpec("job-1", "tutorial-pool"))
    assert (raised.value.quota, raised.value.kept_pool) == (Quota.ACTIVE_JOBS, "tutorial-pool")
    assert "batchpilot" not in str(raised.value)


async def test_wait_for_nodes_surfaces_a_failed_start_task(http: Http, backend: AzureBackend) -> None:
    http.batch("GET", "/pools/tutorial-pool", payload=_pool_status())
    node = {
        "id": "n1",
        "state": "starttaskfailed",
        "startTaskInfo": {
            "state": "completed",
            "startTime": "2030-01-01T00:00:00Z",
            "exitCode": 100,
            "retryCount": 1,
            "failureInfo": {"category": "usererror", "code": "FailureExitCode", "message": "exit code 100"},
        },
    }
    http.batch("GET", "/pools/tutorial-pool/nodes", payload={"value": [node]})

    with pytest.raises(BackendError, match=r"start task failed on node n1 .*exit code 100"):
        await backend.compute.wait_for_nodes("tutorial-pool")


# --- jobs -------------------------------------------------------------------------------------------------


async def test_ensure_job_creates_a_job_with_a_max_wall_clock(http: Http, backend: AzureBackend) -> None:
    http.batch("POST", "/jobs", status=201)

    ensured = await backend.compute.ensure_job(
        JobSpec("job-1", "tutorial-pool", max_wall_clock=timedelta(hours=1, minutes=30))
    )

    assert ensured.created is True
    [sent] = http.sent()
    assert (sent.path, sent.query) == ("/jobs", {"api-version": API})
    assert sent.json() == {
        "id": "job-1",
        "poolInfo": {"poolId": "tutorial-pool"},
        "onAllTasksComplete": "noaction",  # set once every task is added, or the job could end in between
        "constraints": {"maxWallClockTime": "PT01H30M00S"},  # the SDK's ISO 8601 form
    }


async def test_end_job_when_done_lets_the_service_end_the_job(http: Http, backend: AzureBackend) -> None:
    http.batch("PATCH", "/jobs/job-1", status=200)

    await backend.compute.end_job_when_done("job-1")

    [sent] = http.sent()
    assert (sent.method, sent.path) == ("PATCH", "/jobs/job-1")
    assert sent.json() == {"onAllTasksComplete": "terminatejob"}


async def test_existing_active_job_is_reused(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/jobs", 409, "JobExists")
    http.batch(
        "GET",
        "/jobs/job-1",
        payload={"id": "job-1", "state": "active", "poolInfo": {"poolId": "tutorial-pool"}},
    )

    ensured = await backend.compute.ensure_job(JobSpec("job-1", "tutorial-pool"))

    assert (ensured.created, ensured.warnings, ensured.ended) == (False, (), None)
    assert http.sent("GET")[0].query["$select"].startswith("id,state,poolInfo,")
    assert http.sent("PATCH") == []  # nothing to renew: no wall clock, and it never ends by itself


async def test_a_reused_job_is_renewed_for_a_resumed_run(
    http: Http, backend: AzureBackend, clock: FakeClock
) -> None:
    http.batch_error("POST", "/jobs", 409, "JobExists")
    created = clock.now() - timedelta(hours=2)  # "now" is the backend's clock's
    http.batch(
        "GET",
        "/jobs/job-1",
        payload={
            "id": "job-1",
            "state": "active",
            "poolInfo": {"poolId": "tutorial-pool"},
            "creationTime": created.isoformat(),
            "onAllTasksComplete": "terminatejob",
        },
    )
    http.batch("PATCH", "/jobs/job-1", status=200)

    await backend.compute.ensure_job(JobSpec("job-1", "tutorial-pool", max_wall_clock=timedelta(hours=1)))

    [patch] = http.sent("PATCH")
    body = patch.json()
    # Tasks may be added again, and the job lives its wall clock from now: 2 h lived + 1 h.
    assert body["onAllTasksComplete"] == "noaction"
    assert body["constraints"]["maxWallClockTime"].startswith("PT03H00M")


async def test_a_completed_job_is_reused_for_reading_and_says_why_it_ended(
    http: Http, backend: AzureBackend
) -> None:
    http.batch_error("POST", "/jobs", 409, "JobExists")
    http.batch(
        "GET",
        "/jobs/job-1",
        payload={
            "id": "job-1",
            "state": "completed",
            "poolInfo": {"poolId": "tutorial-pool"},
            "executionInfo": {"startTime": "2026-01-01T00:00:00Z", "terminateReason": "AllTasksComplete"},
        },
    )

    ensured = await backend.compute.ensure_job(JobSpec("job-1", "tutorial-pool"))

    assert (ensured.created, ensured.ended) == (False, "AllTasksComplete")


@pytest.mark.parametrize("state", ["terminating", "deleting"])
async def test_finished_job_is_a_clear_error(http: Http, backend: AzureBackend, state: str) -> None:
    http.batch_error("POST", "/jobs", 409, "JobExists")
    http.batch(
        "GET", "/jobs/job-1", payload={"id": "job-1", "state": state, "poolInfo": {"poolId": "tutorial-pool"}}
    )

    with pytest.raises(BackendError, match=f"job job-1 is {state}: ") as raised:
        await backend.compute.ensure_job(JobSpec("job-1", "tutorial-pool"))
    assert "\n" not in str(raised.value)


# --- tasks ------------------------------------------------------------------------------------------------


async def test_add_tasks_sends_one_collection_of_100(http: Http, backend: AzureBackend) -> None:
    tasks = [task(n) for n in range(100)]
    http.batch(
        "POST",
        "/jobs/job-1/addtaskcollection",
        payload={"value": [{"status": "success", "taskId": t.task_id} for t in reversed(tasks)]},
    )

    results = await backend.compute.add_tasks("job-1", tasks)

    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    assert {r.status for r in results} == {AddStatus.ADDED}
    [sent] = http.sent()
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/jobs/job-1/addtaskcollection",
        {"api-version": API},
    )
    body = sent.json()
    assert len(body["value"]) == 100
    assert body["value"][7] == {
        "id": "task-007",
        "commandLine": "ffmpeg -i in7.mp4 out7.mp3",
        "resourceFiles": [
            {"httpUrl": "https://store.blob.core.windows.net/in/in7.mp4?sig=x", "filePath": "in7.mp4"}
        ],
        "outputFiles": [
            {
                "filePattern": "*.mp3",
                "destination": {
                    "container": {
                        "containerUrl": "https://store.blob.core.windows.net/out?sp=cw&sig=y",
                        "path": "task-007",
                    }
                },
                "uploadOptions": {"uploadCondition": "tasksuccess"},
            }
        ],
        "constraints": {"maxWallClockTime": "PT01H00M00S", "maxTaskRetryCount": 2, "retentionTime": "P1D"},
    }


async def test_adding_tasks_to_an_ended_job_is_a_job_ended_error(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/jobs/job-1/addtaskcollection", 409, "JobCompleted")

    with pytest.raises(JobEndedError, match="job job-1 has ended and takes no new tasks") as raised:
        await backend.compute.add_tasks("job-1", [task(1)])
    assert (raised.value.job_id, raised.value.code) == ("job-1", "JobCompleted")


async def test_add_tasks_reports_each_task_of_a_partial_result(http: Http, backend: AzureBackend) -> None:
    def error(code: str) -> dict[str, object]:
        return {"code": code, "message": {"lang": "en-US", "value": f"{code} happened"}}

    http.batch(
        "POST",
        "/jobs/job-1/addtaskcollection",
        payload={
            "value": [
                {"status": "success", "taskId": "task-000"},
                {"status": "clienterror", "taskId": "task-001", "error": error("TaskExists")},
                {"status": "servererror", "taskId": "task-002", "error": error("ServerBusy")},
                {"status": "clienterror", "taskId": "task-003", "error": error("InvalidPropertyValue")},
            ]
        },
    )

    results = await backend.compute.add_tasks("job-1", [task(n) for n in range(5)])

    assert [(r.task_id, r.status, r.error_code) for r in results] == [
        ("task-000", AddStatus.ADDED, None),
        ("task-001", AddStatus.EXISTS, "TaskExists"),
        ("task-002", AddStatus.SERVER_ERROR, "ServerBusy"),
        ("task-003", AddStatus.CLIENT_ERROR, "InvalidPropertyValue"),
        ("task-004", AddStatus.SERVER_ERROR, "NoResult"),
    ]
    assert results[3].message == "InvalidPropertyValue happened"


async def test_too_large_collection_raises_request_too_large(http: Http, backend: AzureBackend) -> None:
    http.batch_error("POST", "/jobs/job-1/addtaskcollection", 413, "RequestBodyTooLarge")

    with pytest.raises(RequestTooLargeError, match="413 RequestBodyTooLarge"):
        await backend.compute.add_tasks("job-1", [task(0)])
    assert len(http.sent()) == 1


async def test_throttling_is_retried_by_the_sdk_then_raised_with_retry_after(
    http: Http, backend: AzureBackend, retry_sleeps: list[float]
) -> None:
    http.batch_error(
        "POST",
        "/jobs/job-1/addtaskcollection",
        429,
        "TooManyRequests",
        headers={"Retry-After": "7"},
        repeat=True,
    )

    with pytest.raises(TransientBackendError) as raised:
        await backend.compute.add_tasks("job-1", [task(0)])

    assert raised.value.retry_after == 7.0
    assert raised.value.code == "TooManyRequests"
    # retry_total=2: the SDK tried three times, waiting as the service asked; no retry loop of ours on top.
    assert len(http.sent()) == 3
    assert retry_sleeps == [7.0, 7.0]


async def test_server_error_after_sdk_retries_is_transient(
    http: Http, backend: AzureBackend, retry_sleeps: list[float]
) -> None:
    http.batch_error("GET", "/jobs/job-1/taskcounts", 500, "InternalError", repeat=True)

    with pytest.raises(TransientBackendError, match=r"500 InternalError: InternalError message$") as raised:
        await backend.compute.task_counts("job-1")

    assert raised.value.retry_after is None
    assert len(http.sent()) == 3
    assert retry_sleeps  # the SDK's backoff went through the patched, instant sleep


async def test_task_counts(http: Http, backend: AzureBackend) -> None:
    counts = {"active": 3, "running": 2, "completed": 5, "succeeded": 4, "failed": 1}
    slots = {"active": 3, "running": 2, "completed": 5, "succeeded": 4, "failed": 1}
    http.batch("GET", "/jobs/job-1/taskcounts", payload={"taskCounts": counts, "taskSlotCounts": slots})

    assert await backend.compute.task_counts("job-1") == TaskCounts(3, 2, 5, 4, 1)


async def test_list_tasks_filters_selects_and_follows_pages(http: Http, backend: AzureBackend) -> None:
    since = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    next_link = (
        "https://acct.westeurope.batch.azure.com/jobs/job-1/tasks?api-version=2025-06-01&$skiptoken=abc"
        "&$filter=stateTransitionTime%20ge%20datetime'2030-01-02T03:04:05.678Z'"
        "&$select=id,state,stateTransitionTime,executionInfo,nodeInfo"
    )
    http.batch(
        "GET",
        "/jobs/job-1/tasks",
        payload={
            "value": [
                {
                    "id": "a",
                    "state": "running",
                    "stateTransitionTime": "2030-01-02T03:05:00Z",
                    "nodeInfo": {"nodeId": "n1"},
                }
            ],
            "odata.nextLink": next_link,
        },
    )
    completed = {
        "id": "b",
        "state": "completed",
        "stateTransitionTime": "2030-01-02T03:06:00Z",
        "executionInfo": {
            "startTime": "2030-01-02T03:05:00Z",
            "endTime": "2030-01-02T03:06:00Z",
            "exitCode": 1,
            "retryCount": 2,
            "requeueCount": 1,
            "result": "failure",
            "failureInfo": {"category": "usererror", "code": "FailureExitCode", "message": "exit code 1"},
        },
    }
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": [completed]})

    views = await backend.compute.list_tasks("job-1", changed_since=since)

    first, second = http.sent()
    assert first.query == {
        "api-version": API,
        "$filter": "stateTransitionTime ge datetime'2030-01-02T03:04:05.678Z'",
        "$select": "id,state,stateTransitionTime,executionInfo,nodeInfo",
    }
    assert second.query["$skiptoken"] == "abc"
    assert [(v.task_id, v.state, v.node_id) for v in views] == [
        ("a", TaskState.RUNNING, "n1"),
        ("b", TaskState.COMPLETED, None),
    ]
    failed = views[1]
    assert (failed.exit_code, failed.result, failed.retry_count, failed.requeue_count) == (
        1,
        TaskResult.FAILURE,
        2,
        1,
    )
    assert failed.failure is not None
    assert failed.failure.code == "FailureExitCode"
    assert failed.state_transition_time == datetime(2030, 1, 2, 3, 6, tzinfo=UTC)


async def test_list_all_tasks_sends_no_filter(http: Http, backend: AzureBackend) -> None:
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": []})

    assert await backend.compute.list_tasks("job-1") == []
    assert "$filter" not in http.sent()[0].query


async def test_read_task_file(http: Http, backend: AzureBackend) -> None:
    http.add(
        "https://acct.westeurope.batch.azure.com/jobs/job-1/tasks/t1/files/stderr.txt?api-version=2025-06-01",
        body=b"ffmpeg: no such file\n",
        content_type="application/octet-stream",
    )
    http.batch_error("GET", "/jobs/job-1/tasks/t2/files/stderr.txt", 404, "FileNotFound")

    assert await backend.compute.read_task_file("job-1", "t1", "stderr.txt") == b"ffmpeg: no such file\n"
    # Streamed downloads lose the service's error code (the SDK parses the body before reading it).
    with pytest.raises(NotFoundError, match="404"):
        await backend.compute.read_task_file("job-1", "t2", "stderr.txt")


# --- credentials ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(401, "AuthenticationFailed"), (403, "AuthenticationFailed")])
async def test_bad_credentials_are_one_clear_line_without_secrets(
    http: Http, backend: AzureBackend, caplog: pytest.LogCaptureFixture, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    http.batch_error("GET", "/jobs/job-1/taskcounts", status, code)

    with pytest.raises(AuthenticationError) as raised:
        await backend.compute.task_counts("job-1")

    message = str(raised.value)
    assert "\n" not in message
    assert f"credentials refused ({status} {code})" in message
    sent = http.sent()[0]
    signature = sent.headers["authorization"].split(":", 1)[1]
    for secret in (BATCH_KEY, signature):
        assert secret not in message
        assert secret not in caplog.text
    assert len(http.sent()) == 1  # never retried


async def test_a_bounded_listing_leaving_out_new_queued_tasks_says_so_and_hands_out_each_page(
    http: Http, backend: AzureBackend
) -> None:
    since = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    until = datetime(2030, 1, 2, 3, 4, 9, 123000, tzinfo=UTC)
    next_link = f"{BATCH}/jobs/job-1/tasks?api-version={API}&$skiptoken=abc"
    running = {"id": "a", "state": "running", "stateTransitionTime": "2030-01-02T03:04:06Z"}
    done = {"id": "b", "state": "completed", "stateTransitionTime": "2030-01-02T03:04:07Z"}
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": [running], "odata.nextLink": next_link})
    http.batch("GET", "/jobs/job-1/tasks", payload={"value": [done]})
    pages: list[list[str]] = []

    async def page(views: list[TaskView]) -> None:
        pages.append([view.task_id for view in views])
        assert len(http.sent()) == len(pages)  # handed out before the next page is asked for

    listed = await backend.compute.list_tasks(
        "job-1", changed_since=since, changed_until=until, queued=False, on_page=page
    )

    assert listed == []
    assert pages == [["a"], ["b"]]
    assert http.sent()[0].query["$filter"] == (
        "stateTransitionTime ge datetime'2030-01-02T03:04:05.678Z'"
        " and (state ne 'active' or creationTime lt datetime'2030-01-02T03:04:05.678Z')"
        " and stateTransitionTime le datetime'2030-01-02T03:04:09.123Z'"
    )
