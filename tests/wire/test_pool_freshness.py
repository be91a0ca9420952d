"""State read from the service is judged for freshness (issue 15 item 6; nextflow#7312, #4792): a reused pool
below its target with resize errors kept them from its last resize, perhaps days ago, and Batch clears them
only with the next resize. So it is resized again, to its own targets, and wait_for_nodes counts only an
error from that new resize: while a resize is under way, an older one's errors say nothing."""

from __future__ import annotations

import pytest

from batchpilot.backends.azure import AzureBackend
from batchpilot.errors import QuotaReachedError
from tests.wire.conftest import Http
from tests.wire.test_compute import EXISTING_POOL, POOL

QUOTA = [{"code": "AccountCoreQuotaReached", "message": "The specified account has reached core quota"}]


def _existing(allocation: str, current: int, errors: list[dict[str, str]]) -> dict[str, object]:
    return {
        **EXISTING_POOL,
        "allocationState": allocation,
        "targetDedicatedNodes": 2,
        "targetLowPriorityNodes": 0,
        "currentDedicatedNodes": current,
        "currentLowPriorityNodes": 0,
        "resizeErrors": errors,
    }


async def test_a_reused_pool_stuck_below_its_target_with_an_old_error_is_resized_again(
    http: Http, backend: AzureBackend
) -> None:
    http.batch_error("POST", "/pools", 409, "PoolExists")
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("steady", 0, QUOTA), repeat=True)
    http.batch("POST", "/pools/tutorial-pool/resize", status=202)

    ensured = await backend.compute.ensure_pool(POOL)

    assert ensured.created is False
    [resize] = http.sent("POST")[1:]
    assert resize.path == "/pools/tutorial-pool/resize"
    assert resize.json()["targetDedicatedNodes"] == 2
    assert resize.json()["targetLowPriorityNodes"] == 0


@pytest.mark.parametrize(
    ("current", "errors"),
    [(2, QUOTA), (0, [])],  # at its target (the error is history), or short without an error: still coming
)
async def test_a_pool_without_a_stale_error_is_left_alone(
    http: Http, backend: AzureBackend, current: int, errors: list[dict[str, str]]
) -> None:
    http.batch_error("POST", "/pools", 409, "PoolExists")
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("steady", current, errors))

    await backend.compute.ensure_pool(POOL)

    assert [sent.method for sent in http.sent()] == ["POST", "GET"]


async def test_a_resize_in_progress_is_stopped_then_the_pool_is_resized_again(
    http: Http, backend: AzureBackend
) -> None:
    """Stuck at zero with an error, then found resizing (another run's resize): stopped, then asked again."""
    http.batch_error("POST", "/pools", 409, "PoolExists")
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("steady", 0, QUOTA))
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("resizing", 0, []))
    http.batch("POST", "/pools/tutorial-pool/stopresize", status=202)
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("steady", 0, QUOTA))
    http.batch("POST", "/pools/tutorial-pool/resize", status=202)

    await backend.compute.ensure_pool(POOL)

    assert [sent.path for sent in http.sent("POST")][1:] == [
        "/pools/tutorial-pool/stopresize",
        "/pools/tutorial-pool/resize",
    ]


async def test_only_the_new_resize_error_is_reported(http: Http, backend: AzureBackend) -> None:
    """While the new resize runs, an older error (had it been returned) is not taken for its outcome; once
    steady again with an error and no node, that error is the new resize's, and it is reported."""
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("resizing", 0, QUOTA))
    http.batch("GET", "/pools/tutorial-pool/nodes", payload={"value": []})
    http.batch("GET", "/pools/tutorial-pool", payload=_existing("steady", 0, QUOTA))
    http.batch("GET", "/pools/tutorial-pool/nodes", payload={"value": []})

    with pytest.raises(QuotaReachedError, match="AccountCoreQuotaReached"):
        await backend.compute.wait_for_nodes("tutorial-pool")
    paths = [sent.path for sent in http.sent()]
    assert paths == ["/pools/tutorial-pool", "/pools/tutorial-pool/nodes", "/pools/tutorial-pool"]
