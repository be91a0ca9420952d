"""List Supported Images on the emulator, held to the real service's recorded answer, and the refusal of a
pool (or a resize up) whose node agent the account does not support any more."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchpilot.emulator import images as images_module
from batchpilot.emulator.cli import add_arguments, config_from_args
from batchpilot.emulator.images import DEFAULT_IMAGES, SupportedImage, check_agent_for_growth, load_images
from batchpilot.errors import ConfigError
from tests.conftest import EmulatorFactory
from tests.waiting import eventually

from . import recordings
from .support import batch_client, pool_options

CREATE_POOLS = "test_batch.pyTestBatchtest_batch_create_pools[async].json"


def recorded_images() -> dict[str, Any]:
    found = [ex for ex in recordings.load(CREATE_POOLS) if ex.path.endswith("/supportedimages")]
    assert found, "the create_pools recording holds a List Supported Images exchange"
    body: dict[str, Any] = found[0].response_body
    return body


def vm_pool(pool_id: str, agent: str, publisher: str, offer: str, sku: str) -> m.BatchPoolCreateOptions:
    options = pool_options(pool_id)
    options.virtual_machine_configuration = m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(publisher=publisher, offer=offer, sku=sku),
        node_agent_sku_id=agent,
    )
    return options


async def test_answer_has_the_recorded_shape(client: BatchClient) -> None:
    recorded = recorded_images()
    # Every key and key order the service used for an entry, and the top-level keys.
    recorded_orders = {tuple(entry) for entry in recorded["value"]}
    images = [image async for image in client.list_supported_images()]
    assert len(images) == len(DEFAULT_IMAGES)
    # The raw answer, signed by the SDK's own pipeline.
    response = await client.send_request(HttpRequest("GET", "/supportedimages?api-version=2025-06-01"))
    body = response.json()
    assert set(body) == set(recorded) == {"odata.metadata", "value"}
    assert body["odata.metadata"].endswith("/$metadata#supportedimages")
    for entry in body["value"]:
        assert tuple(entry) in recorded_orders, entry
        assert set(entry["imageReference"]) == set(recorded["value"][0]["imageReference"])
    ended = [e for e in recorded["value"] if "batchSupportEndOfLife" in e]
    assert ended
    assert all(e["batchSupportEndOfLife"].endswith("T00:00:00Z") for e in ended)
    mine = {e["imageReference"]["sku"]: e.get("batchSupportEndOfLife") for e in body["value"]}
    assert mine["20_04-lts"] == "2025-04-23T00:00:00Z"
    assert mine["22_04-lts"] == mine["22_04-lts-gen2"] == "2027-06-30T00:00:00Z"
    assert mine["server"] is None
    assert mine["server-gen1"] is None


async def test_sdk_reads_capabilities_and_end_of_life(client: BatchClient) -> None:
    by_sku = {image.image_reference.sku: image async for image in client.list_supported_images()}
    server, gen1 = by_sku["server"], by_sku["server-gen1"]
    assert (server.node_agent_sku_id, server.os_type, server.verification_type) == (
        "batch.node.ubuntu 24.04",
        "linux",
        "verified",
    )
    assert server.capabilities == ["Generation2VMImage"]
    assert not gen1.capabilities
    assert server.batch_support_end_of_life is None
    assert by_sku["20_04-lts"].batch_support_end_of_life == datetime(2025, 4, 23, tzinfo=UTC)
    assert "DockerCompatible" in (by_sku["2404"].capabilities or [])


async def test_filter_and_paging_follow_the_next_link(client: BatchClient) -> None:
    verified = [
        image async for image in client.list_supported_images(filter="verificationType eq 'verified'")
    ]
    assert verified
    assert all(image.verification_type == "verified" for image in verified)
    assert len(verified) == sum(1 for image in DEFAULT_IMAGES if image.verification_type == "verified")
    # Two per page: the SDK follows odata.nextLink, which must carry the filter and the page size.
    paged = [
        image
        async for image in client.list_supported_images(
            filter="osType eq 'linux' and nodeAgentSKUId ne 'batch.node.ubuntu 20.04'", max_results=2
        )
    ]
    expected = [
        image.sku
        for image in DEFAULT_IMAGES
        if image.os_type == "linux" and image.node_agent_sku_id != "batch.node.ubuntu 20.04"
    ]
    assert [image.image_reference.sku for image in paged] == expected
    assert len(expected) > 2


@pytest.mark.parametrize(
    "bad", ["verificationType gt 'verified'", "vmSize eq 'x'", "osType eq", "startswith(osType,'l')"]
)
async def test_filter_the_service_does_not_allow_is_400(client: BatchClient, bad: str) -> None:
    with pytest.raises(HttpResponseError) as refused:
        [image async for image in client.list_supported_images(filter=bad)]
    assert refused.value.status_code == 400
    assert refused.value.error is not None
    assert refused.value.error.code == "InvalidQueryParameterValue"


async def test_retired_node_agent_is_refused_with_a_replacement(client: BatchClient) -> None:
    focal = vm_pool(
        "old", "batch.node.ubuntu 20.04", "Canonical", "0001-com-ubuntu-server-focal", "20_04-lts"
    )
    with pytest.raises(HttpResponseError) as refused:
        await client.create_pool(focal)
    error = refused.value.error
    assert refused.value.status_code == 400
    assert error is not None
    assert error.code == "InvalidPropertyValue"
    assert error.message is not None
    assert "2025-04-23" in error.message
    assert "batch.node.ubuntu 24.04" in error.message
    assert [pool async for pool in client.list_pools()] == []


@pytest.mark.parametrize(
    ("agent", "image"),
    [
        ("batch.node.ubuntu 18.04", ("Canonical", "UbuntuServer", "18.04-LTS")),  # not listed at all
        ("batch.node.ubuntu 24.04", ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts")),  # mismatch
    ],
)
async def test_unlisted_agent_or_image_is_refused(
    client: BatchClient, agent: str, image: tuple[str, str, str]
) -> None:
    with pytest.raises(HttpResponseError) as refused:
        await client.create_pool(vm_pool("p", agent, *image))
    assert refused.value.status_code == 400
    assert refused.value.error is not None
    assert refused.value.error.code == "InvalidPropertyValue"


async def test_supported_images_are_accepted(client: BatchClient) -> None:
    await client.create_pool(vm_pool("jammy", "batch.node.ubuntu 22.04", "Canonical",
                                     "0001-com-ubuntu-server-jammy", "22_04-lts"))  # fmt: skip
    await client.create_pool(
        vm_pool("noble", "batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server")
    )
    assert sorted([pool.id async for pool in client.list_pools()]) == ["jammy", "noble"]


@pytest.fixture
def images_file(tmp_path: Path) -> Path:
    """A supported-images file saved as the service's answer, as a user would save it."""
    path = tmp_path / "images.json"
    images = [
        SupportedImage("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server-gen1").to_json()
    ]
    path.write_text(json.dumps({"value": images}))
    return path


async def test_configured_list_is_what_the_account_supports(start_emulator: EmulatorFactory) -> None:
    ended = SupportedImage("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server-gen1",
                           end_of_life=datetime(2020, 1, 1, tzinfo=UTC))  # fmt: skip
    with start_emulator(supported_images=(ended,)) as emulator:
        async with batch_client(emulator) as client:
            assert [i.image_reference.sku async for i in client.list_supported_images()] == ["server-gen1"]
            with pytest.raises(HttpResponseError) as refused:
                await client.create_pool(pool_options("p", nodes=1))
            assert refused.value.error is not None
            assert refused.value.error.code == "InvalidPropertyValue"


async def test_resize_up_of_a_pool_whose_agent_ended_is_refused(
    client: BatchClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchpilot.emulator import app as emulator_app

    await client.create_pool(vm_pool("jammy", "batch.node.ubuntu 22.04", "canonical",
                                     "0001-com-ubuntu-server-jammy", "22_04-lts"))  # fmt: skip

    async def steady() -> bool | None:
        return True if (await client.get_pool("jammy")).allocation_state == "steady" else None

    await eventually(steady)
    # Ubuntu 22.04's end of life (2027-06-30) passes while the pool lives: the growth check's clock moves
    # on (only its clock: requests are still signed and dated now).
    judge = check_agent_for_growth
    later = datetime(2027, 7, 1, tzinfo=UTC)

    def check_later(images: tuple[SupportedImage, ...], body: dict[str, object], _now: datetime) -> None:
        judge(images, body, later)

    monkeypatch.setattr(emulator_app, "check_agent_for_growth", check_later)
    with pytest.raises(HttpResponseError) as refused:
        await client.begin_resize_pool("jammy", m.BatchPoolResizeOptions(target_dedicated_nodes=2))
    assert refused.value.status_code == 409
    assert refused.value.error is not None
    assert refused.value.error.code == "OperationNotValidOnPool"
    assert refused.value.error.message is not None
    assert "2027-06-30" in refused.value.error.message
    # Shrinking is still allowed: that is what Batch asks of such pools.
    await client.begin_resize_pool("jammy", m.BatchPoolResizeOptions(target_dedicated_nodes=0))
    assert (await client.get_pool("jammy")).target_dedicated_nodes == 0


def test_cli_flag_reads_the_services_answer(tmp_path: Path, images_file: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--supported-images", str(images_file)]))
    assert [image.sku for image in config.supported_images] == ["server-gen1"]
    assert config_from_args(parser.parse_args([])).supported_images == DEFAULT_IMAGES
    # The recorded answer itself loads: the format is the service's.
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps(recorded_images()))
    assert len(load_images(recorded)) == len(recorded_images()["value"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{", "not JSON"), ('{"value": 3}', "expected a list"), ('[{"imageReference": {}}]', "nodeAgentSKUId")],
)
def test_bad_images_file_is_one_line(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "images.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_images(path)
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError):
        load_images(tmp_path / "missing.json")


def test_an_images_file_that_never_ends_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # Found by hand: `--supported-images /dev/zero` (a size of 0 to stat) was read to a MemoryError.
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_images(Path("/dev/zero"))
    fifo = tmp_path / "images.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_images(fifo)  # refused before opening it, which would wait for a writer


def test_an_images_file_is_read_only_up_to_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file growing while it is read (or lying about its size) is cut at the bound, not read to the end.
    monkeypatch.setattr(images_module, "MAX_IMAGES_FILE_BYTES", 64)
    path = tmp_path / "images.json"
    path.write_text(json.dumps({"value": []}) + " " * 100)
    with pytest.raises(ConfigError, match="64"):
        load_images(path)
