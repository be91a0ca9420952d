"""The CLI turns each typed backend error into one line: what happened (the error's own message, which names
no command) and the remedy, with the `batchpilot cleanup ...` command where one helps."""

from __future__ import annotations

import pytest

from batchpilot.cli_errors import backend_error_line
from batchpilot.errors import (
    AllocationFailedError,
    AuthenticationError,
    BackendError,
    JobEndedError,
    LostContactError,
    PoolBeingDeletedError,
    Quota,
    QuotaReachedError,
)
from batchpilot.subscribers.cleanup import cleanup_command

QUOTAS = "in the Azure portal (Batch account > Quotas)"
CLEANUP_POOL = "batchpilot cleanup --backend azure --pool p1"


@pytest.mark.parametrize(
    ("error", "remedy"),
    [
        (
            QuotaReachedError(
                "create pool p1: the pool quota is reached (409 PoolQuotaReached)", quota=Quota.POOLS
            ),
            f"raise the pool quota {QUOTAS}, or delete unused pools:"
            " batchpilot cleanup --backend azure --pool ID",
        ),
        (
            QuotaReachedError("create job j1: jobs quota", quota=Quota.ACTIVE_JOBS, kept_pool="p1"),
            f"raise the job quota {QUOTAS}, or delete jobs you no longer need:"
            f" batchpilot cleanup --backend azure --job ID; pool p1 is kept, to remove it: {CLEANUP_POOL}",
        ),
        (
            QuotaReachedError("pool p1 got no nodes: cores", quota=Quota.DEDICATED_CORES, kept_pool="p1"),
            f"raise the dedicated core quota {QUOTAS}, lower the pool's node counts or VM size (--nodes,"
            " --spot-nodes, --vm-size, or the workload's pool), or delete unused pools;"
            f" pool p1 is kept, to remove it: {CLEANUP_POOL}",
        ),
        (
            QuotaReachedError("pool p1 got no nodes: spot", quota=Quota.SPOT_CORES, kept_pool="p1"),
            f"raise the spot core quota {QUOTAS}, use dedicated nodes instead, or lower the pool's node"
            " counts or VM size (--nodes, --spot-nodes, --vm-size, or the workload's pool);"
            f" pool p1 is kept, to remove it: {CLEANUP_POOL}",
        ),
        (
            AllocationFailedError("pool p1 got no nodes: Azure could not allocate the VMs", kept_pool="p1"),
            "try again later, or change the pool's node counts or VM size (--nodes, --spot-nodes, --vm-size,"
            f" or the workload's pool), or use another region; pool p1 is kept, to remove it: {CLEANUP_POOL}",
        ),
        (
            PoolBeingDeletedError(
                "create pool p1: a pool of that id is still being deleted (409 PoolBeingDeleted)"
            ),
            "wait until it is gone (a few minutes) and run again, or choose another pool id",
        ),
        (
            JobEndedError("job j1 has ended (AllTasksComplete)", job_id="j1", reason="AllTasksComplete"),
            "delete it (batchpilot cleanup --backend azure --job j1) and run again,"
            " or run under another name",
        ),
        (
            JobEndedError(
                "job j1 has ended, and so have its 2 later generations (j1-g2 ... j1-g3)",
                job_id="j1",
                reason="AllTasksComplete",
                generations=("j1", "j1-g2", "j1-g3"),
            ),
            "delete them (batchpilot cleanup --backend azure --job j1, and the same for each of"
            " j1-g2 ... j1-g3) and run again, or run under another name",
        ),
    ],
)
def test_each_kind_gets_its_remedy_after_what_happened(error: BackendError, remedy: str):
    line = backend_error_line(error, "azure")
    assert line == f"batchpilot: BackendError: {error}; {remedy}"
    assert "batchpilot cleanup" not in str(error)


def test_the_cleanup_commands_name_the_backend_in_use():
    error = QuotaReachedError("no", quota=Quota.ACTIVE_JOBS, kept_pool="p1")
    assert backend_error_line(error, "local").endswith("batchpilot cleanup --backend local --pool p1")


@pytest.mark.parametrize(
    "error",
    [BackendError("refused"), AuthenticationError("credentials refused"), LostContactError("polls failed")],
)
def test_errors_without_a_remedy_are_named_by_their_type(error: BackendError):
    assert backend_error_line(error, "azure") == f"batchpilot: {type(error).__name__}: {error}"


def test_the_cleanup_command_names_each_resource_given():
    assert cleanup_command("azure", pool="p1") == "batchpilot cleanup --backend azure --pool p1"
    assert cleanup_command("local", job="j1", container="c-1") == (
        "batchpilot cleanup --backend local --job j1 --container c-1"
    )
