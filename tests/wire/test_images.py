"""The Azure adapter asks List Supported Images (`GET /supportedimages`) before a pool is created.

The service's own answer comes from the Azure SDK for Python's recording of the real service (read from
../shared/recordings, never copied): 68 entries, September 2023, api-version 2023-05-01.17.0.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from batchpilot.backends.azure import AzureBackend
from batchpilot.backends.azure.check import check
from batchpilot.config import AzureSettings
from batchpilot.engine import check_pool_image
from batchpilot.errors import ImageCheckError, UnsupportedImageError
from batchpilot.images import Reason, Verdict
from batchpilot.spec import ImageReference, PoolSpec
from tests.emulator import recordings

from .conftest import BATCH, BLOBS, Http

CREATE_POOLS = "test_batch.pyTestBatchtest_batch_create_pools[async].json"
FOCAL = {
    "publisher": "canonical",
    "offer": "0001-com-ubuntu-server-focal",
    "sku": "20_04-lts",
    "version": "latest",
}


def recorded_images() -> list[dict[str, Any]]:
    [answer] = [ex for ex in recordings.load(CREATE_POOLS) if ex.path.endswith("/supportedimages")]
    assert answer.status == 200
    images: list[dict[str, Any]] = answer.response_body["value"]
    return images


def entry(image: dict[str, str], agent: str, *, end: str | None = None, gen2: bool = False) -> dict[str, Any]:
    """One entry shaped as the service writes it (field names as in the recording)."""
    return {
        "imageReference": image,
        "verificationType": "verified",
        "nodeAgentSKUId": agent,
        "osType": "linux",
        **({"capabilities": ["Generation2VMImage"]} if gen2 else {}),
        **({"batchSupportEndOfLife": end} if end else {}),
    }


# Today's list as Azure/Batch#174 and #178 describe it: 20.04 past its end, 24.04 in both generations.
TODAY = [
    entry(FOCAL, "batch.node.ubuntu 20.04", end="2025-04-23T00:00:00Z"),
    entry(
        {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
        "batch.node.ubuntu 24.04",
        gen2=True,
    ),
    entry(
        {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server-gen1", "version": "latest"},
        "batch.node.ubuntu 24.04",
    ),
]
TUTORIAL_POOL = PoolSpec(
    "tutorial-pool",
    vm_size="STANDARD_A1_v2",
    image=ImageReference("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts"),
    node_agent_sku_id="batch.node.ubuntu 20.04",
)


async def test_every_page_of_the_services_recorded_answer_is_read(http: Http, backend: AzureBackend) -> None:
    recorded = recorded_images()
    half = len(recorded) // 2
    http.batch(
        "GET",
        "/supportedimages",
        payload={"value": recorded[:half], "odata.nextLink": f"{BATCH}/supportedimages?page=2&api-version=x"},
    )
    http.batch("GET", "/supportedimages", payload={"value": recorded[half:]})

    images = await backend.compute.supported_images()

    assert len(images) == len(recorded) == 68
    assert [sent.path for sent in http.sent()] == ["/supportedimages", "/supportedimages"]
    centos = next(
        image for image in images if image.image.offer == "centos" and image.image.sku == "7_9-gen2"
    )
    assert centos.node_agent_sku_id == "batch.node.centos 7"
    assert centos.capabilities == ("Generation2VMImage",)
    assert centos.generation == 2
    assert (centos.os_type, centos.verification_type) == ("linux", "verified")
    assert centos.end_of_life == datetime(2024, 6, 30, tzinfo=UTC)
    focal = next(image for image in images if image.image.sku == "20_04-lts")
    assert (focal.end_of_life, focal.capabilities, focal.generation) == (None, (), 1)


async def test_the_recorded_list_refuses_what_it_does_not_name(http: Http, backend: AzureBackend) -> None:
    # In 2023 the service listed no Ubuntu 24.04: the list wins over our defaults, and the replacement is one
    # it lists, still supported at the backend's clock (2026-01-01).
    http.batch("GET", "/supportedimages", payload={"value": recorded_images()})
    http.batch_error("GET", "/pools/p", 404, "PoolNotFound")

    verdict = await backend.compute.check_pool_image(PoolSpec("p"))

    assert (verdict.verdict, verdict.reason) == (Verdict.REFUSED, Reason.NOT_LISTED)
    assert verdict.replacement is not None
    assert verdict.replacement.os_type == "linux"
    assert verdict.replacement.end_of_life is None
    assert verdict.replacement.describe() in verdict.message


async def test_a_retired_image_is_refused_before_anything_is_created(
    http: Http, backend: AzureBackend
) -> None:
    http.batch("GET", "/supportedimages", payload={"value": TODAY})
    http.batch_error("GET", "/pools/tutorial-pool", 404, "PoolNotFound")

    with pytest.raises(UnsupportedImageError) as raised:
        await check_pool_image(backend.compute, TUTORIAL_POOL)

    message = str(raised.value)
    assert "Canonical/0001-com-ubuntu-server-focal/20_04-lts" in message
    assert "2025-04-23" in message
    # Standard_A1_v2 boots Generation 1 only: the replacement is the Generation 1 image of 24.04.
    assert "canonical/ubuntu-24_04-lts/server-gen1 with node agent 'batch.node.ubuntu 24.04'" in message
    assert "\n" not in message
    assert {sent.method for sent in http.sent()} == {"GET"}
    pool_read = http.sent()[1]
    assert pool_read.query["$select"] == "id,vmSize,virtualMachineConfiguration"


async def test_a_reused_pool_past_its_end_is_a_warning_not_a_refusal(
    http: Http, backend: AzureBackend
) -> None:
    http.batch("GET", "/supportedimages", payload={"value": TODAY})
    http.batch(
        "GET",
        "/pools/tutorial-pool",
        payload={
            "id": "tutorial-pool",
            "vmSize": "standard_a1_v2",
            "virtualMachineConfiguration": {
                "imageReference": FOCAL,
                "nodeAgentSKUId": "batch.node.ubuntu 20.04",
            },
        },
    )

    verdict = await check_pool_image(backend.compute, TUTORIAL_POOL)

    assert (verdict.verdict, verdict.reason) == (Verdict.WARNING, Reason.REUSED_PAST_END_OF_LIFE)
    assert "Batch may scale it to zero" in verdict.message
    assert "batchpilot cleanup --backend azure --pool tutorial-pool" in verdict.message


async def test_an_unreachable_service_stops_the_check_it_is_not_skipped(
    http: Http, backend: AzureBackend
) -> None:
    for _ in range(3):  # the first attempt and the backend's 2 retries
        http.batch_error("GET", "/supportedimages", 503, "ServerBusy")

    with pytest.raises(
        ImageCheckError, match=r"could not check pool p's image.*nothing was created"
    ) as raised:
        await check_pool_image(backend.compute, PoolSpec("p"))

    assert raised.value.code == "ServerBusy"
    assert "\n" not in str(raised.value)
    assert [sent.path for sent in http.sent()] == ["/supportedimages"] * 3


async def _answer_check(http: Http) -> None:
    http.batch("GET", "/pools", payload={"value": []})
    http.add(
        BLOBS + "/?restype=account&comp=properties",
        "GET",
        headers={"x-ms-sku-name": "Standard_LRS", "x-ms-account-kind": "StorageV2"},
    )
    http.batch("GET", "/supportedimages", payload={"value": TODAY})


async def test_check_names_the_image_the_service_takes(
    http: Http, settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    await _answer_check(http)
    http.batch_error("GET", "/pools/batchpilot-azure-pool", 404, "PoolNotFound")

    lines = await check(settings, pool=PoolSpec("batchpilot-azure-pool"))

    assert lines[-1] == (
        "Image: canonical/ubuntu-24_04-lts/server with 'batch.node.ubuntu 24.04' on Standard_D2s_v5: listed"
        " by the service, no end of Batch support within 90 days"
    )
    assert {sent.method for sent in http.sent()} == {"GET"}


async def test_check_refuses_the_tutorials_pool_in_one_line(
    http: Http, settings: AzureSettings, retry_sleeps: list[float]
) -> None:
    await _answer_check(http)
    http.batch_error("GET", "/pools/tutorial-pool", 404, "PoolNotFound")

    with pytest.raises(
        UnsupportedImageError, match=r"^pool tutorial-pool: image .*20_04-lts .*2025-04-23.*gen1"
    ):
        await check(settings, pool=TUTORIAL_POOL)
