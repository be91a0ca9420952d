"""The images and node agents the emulated account supports (List Supported Images), and the check that
refuses a pool built on one the service no longer supports.

Entries have the shape of the service's answer to `GET /supportedimages` (recorded from the real service
in the Azure SDK for Python's tests, create_pools recording): `imageReference`, `verificationType`,
`nodeAgentSKUId`, `capabilities` (left out when empty), `batchSupportEndOfLife` (left out when none is
set) and `osType`, in that order. The default list follows the Azure/Batch retirement notices: Ubuntu 20.04
(`batch.node.ubuntu 20.04`) ended on 2025-04-23 (Azure/Batch #174), Ubuntu 22.04 ends on 2027-06-30
(#200), Ubuntu 24.04 (`batch.node.ubuntu 24.04`) has no end set; its `server` SKU is a Generation 2 image,
`server-gen1` Generation 1 (Azure-Samples/azure-batch-samples #328).

Pure: no I/O but `load_images`, which reads a file given on the command line.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .query import EQUALITY, Property
from .state import ServiceError

GENERATION_2 = "Generation2VMImage"
DOCKER = "DockerCompatible"
# A supported-images file larger than this is refused: the service lists under a hundred entries.
MAX_IMAGES_FILE_BYTES = 4 * 1024 * 1024
MAX_IMAGES = 10_000


@dataclass(frozen=True, slots=True)
class SupportedImage:
    """One entry of List Supported Images. `end_of_life` is `batchSupportEndOfLife` (None: none set)."""

    node_agent_sku_id: str
    publisher: str
    offer: str
    sku: str
    version: str = "latest"
    os_type: str = "linux"
    verification_type: str = "verified"
    capabilities: tuple[str, ...] = ()
    end_of_life: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "imageReference": {
                "publisher": self.publisher,
                "offer": self.offer,
                "sku": self.sku,
                "version": self.version,
            },
            "verificationType": self.verification_type,
            "nodeAgentSKUId": self.node_agent_sku_id,
        }
        if self.capabilities:
            body["capabilities"] = list(self.capabilities)
        if self.end_of_life is not None:
            body["batchSupportEndOfLife"] = self.end_of_life.strftime("%Y-%m-%dT%H:%M:%SZ")
        body["osType"] = self.os_type
        return body

    @classmethod
    def from_json(cls, body: object) -> SupportedImage:
        """An entry in the service's shape; ValueError naming what is wrong."""
        if not isinstance(body, dict):
            raise ValueError(f"an entry must be an object, got {body!r:.60}")
        reference = body.get("imageReference")
        if not isinstance(reference, dict):
            raise ValueError("an entry needs imageReference {publisher, offer, sku}")
        fields = {
            "nodeAgentSKUId": body.get("nodeAgentSKUId"),
            "publisher": reference.get("publisher"),
            "offer": reference.get("offer"),
            "sku": reference.get("sku"),
        }
        for name, value in fields.items():
            if not isinstance(value, str) or not value.strip() or len(value) > 256:
                raise ValueError(f"{name} must be a non-empty string, got {value!r:.60}")
        capabilities = body.get("capabilities") or []
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise ValueError("capabilities must be a list of strings")
        end = body.get("batchSupportEndOfLife")
        end_of_life = None
        if end is not None:
            try:
                end_of_life = datetime.fromisoformat(str(end))
            except ValueError:
                raise ValueError(f"batchSupportEndOfLife {end!r:.60} is not an ISO 8601 time") from None
            end_of_life = end_of_life if end_of_life.tzinfo else end_of_life.replace(tzinfo=UTC)
        return cls(
            node_agent_sku_id=str(fields["nodeAgentSKUId"]),
            publisher=str(fields["publisher"]),
            offer=str(fields["offer"]),
            sku=str(fields["sku"]),
            version=str(reference.get("version") or "latest"),
            os_type=str(body.get("osType") or "linux"),
            verification_type=str(body.get("verificationType") or "verified"),
            capabilities=tuple(capabilities),
            end_of_life=end_of_life,
        )

    def matches(self, publisher: str, offer: str, sku: str) -> bool:
        """Marketplace names compare without regard to case, as Batch compares them."""
        return (self.publisher.lower(), self.offer.lower(), self.sku.lower()) == (
            publisher.lower(),
            offer.lower(),
            sku.lower(),
        )

    def ended(self, now: datetime) -> bool:
        return self.end_of_life is not None and self.end_of_life <= now


def _eol(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T00:00:00+00:00")


_UBUNTU_2004_END = _eol("2025-04-23")  # Azure/Batch #174
_UBUNTU_2204_END = _eol("2027-06-30")  # Azure/Batch #200

DEFAULT_IMAGES: tuple[SupportedImage, ...] = (
    SupportedImage("batch.node.el 9", "almalinux", "almalinux-x86_64", "9-gen2",
                   verification_type="unverified", capabilities=(GENERATION_2,)),
    SupportedImage("batch.node.ubuntu 20.04", "canonical", "0001-com-ubuntu-server-focal", "20_04-lts",
                   end_of_life=_UBUNTU_2004_END),
    SupportedImage("batch.node.ubuntu 20.04", "canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2",
                   capabilities=(GENERATION_2,), end_of_life=_UBUNTU_2004_END),
    SupportedImage("batch.node.ubuntu 22.04", "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts",
                   end_of_life=_UBUNTU_2204_END),
    SupportedImage("batch.node.ubuntu 22.04", "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2",
                   capabilities=(GENERATION_2,), end_of_life=_UBUNTU_2204_END),
    SupportedImage("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server",
                   capabilities=(GENERATION_2,)),
    SupportedImage("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server-gen1"),
    SupportedImage("batch.node.ubuntu 20.04", "microsoft-azure-batch", "ubuntu-server-container", "20-04-lts",
                   capabilities=(DOCKER, "NvidiaTeslaDriverInstalled", "NvidiaGridDriverInstalled"),
                   end_of_life=_UBUNTU_2004_END),
    SupportedImage("batch.node.ubuntu 22.04", "microsoft-dsvm", "ubuntu-hpc", "2204",
                   capabilities=(DOCKER, "SupportsRDMAOnly", GENERATION_2, "IntelMPIRuntimeInstalled"),
                   end_of_life=_UBUNTU_2204_END),
    SupportedImage("batch.node.ubuntu 24.04", "microsoft-dsvm", "ubuntu-hpc", "2404",
                   capabilities=(DOCKER, "SupportsRDMAOnly", GENERATION_2, "IntelMPIRuntimeInstalled")),
    SupportedImage("batch.node.windows amd64", "microsoftwindowsserver", "windowsserver", "2022-datacenter",
                   os_type="windows"),
)  # fmt: skip

# List Supported Images filters on these, with eq and ne ("OData filters in Batch").
IMAGE_PROPERTIES: dict[str, Property[SupportedImage]] = {
    "osType": Property(lambda image: image.os_type, EQUALITY),
    "verificationType": Property(lambda image: image.verification_type, EQUALITY),
    "nodeAgentSKUId": Property(lambda image: image.node_agent_sku_id, EQUALITY),
}


def load_images(path: Path) -> tuple[SupportedImage, ...]:
    """A supported-images file: the service's answer (`{"value": [...]}`) or a list of its entries.
    ConfigError (one line naming the file and the problem) when it cannot be used."""
    try:
        # A device or a pipe (/dev/zero) has no size to check and may never end: only a regular file.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(f"{path} is not a regular file; give a JSON file of List Supported Images")
        with path.open("rb") as file:
            raw = file.read(MAX_IMAGES_FILE_BYTES + 1)  # bounded, even for a file that grows meanwhile
        if len(raw) > MAX_IMAGES_FILE_BYTES:
            raise ConfigError(
                f"{path}: over {MAX_IMAGES_FILE_BYTES} bytes, more than a supported-images file may hold"
            )
        body = json.loads(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read the supported-images file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not JSON ({exc}); give List Supported Images' answer") from None
    entries = body.get("value") if isinstance(body, dict) else body
    if not isinstance(entries, list):
        raise ConfigError(f'{path}: expected a list of images or {{"value": [...]}}')
    if len(entries) > MAX_IMAGES:
        raise ConfigError(f"{path}: {len(entries)} images; at most {MAX_IMAGES}")
    try:
        return tuple(SupportedImage.from_json(entry) for entry in entries)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_pool_image(images: Iterable[SupportedImage], body: Mapping[str, Any], now: datetime) -> None:
    """Refuse a pool whose node agent the account does not list, or lists past its end of life, or whose
    Marketplace image is not listed with that agent.

    Batch documents no error code of its own for a retired node agent (the notices say only that "create
    pool and resize up operations ... may fail"); the emulator answers 400 InvalidPropertyValue, the code
    the service gives for a pool whose image and node agent it will not take (seen in hashicorp/terraform
    #36698), naming the property, the end of life and a supported replacement.
    """
    images = tuple(images)
    vm = body.get("virtualMachineConfiguration")
    if not isinstance(vm, dict):
        raise ServiceError(
            400, "MissingRequiredProperty", "The required property virtualMachineConfiguration is missing."
        )
    agent = vm.get("nodeAgentSKUId")
    if not isinstance(agent, str) or not agent:
        raise ServiceError(400, "MissingRequiredProperty", "The required property nodeAgentSKUId is missing.")
    listed = [image for image in images if image.node_agent_sku_id.lower() == agent.lower()]
    if not listed:
        raise _invalid(
            "virtualMachineConfiguration.nodeAgentSKUId",
            f"The node agent SKU {agent!r} is not supported by this account (List Supported Images does not "
            f"list it).{_instead(images, now)}",
        )
    ended = [image for image in listed if image.ended(now)]
    if len(ended) == len(listed):
        end = max(image.end_of_life for image in ended if image.end_of_life is not None)
        raise _invalid(
            "virtualMachineConfiguration.nodeAgentSKUId",
            f"The node agent SKU {agent!r} reached its Batch support end of life on {end:%Y-%m-%d}; "
            f"new pools and resizing up are refused.{_instead(images, now)}",
        )
    reference = vm.get("imageReference")
    if not isinstance(reference, dict):
        raise ServiceError(400, "MissingRequiredProperty", "The required property imageReference is missing.")
    if reference.get("virtualMachineImageId"):
        return  # a custom image: Batch checks only its node agent
    names = [reference.get(name) for name in ("publisher", "offer", "sku")]
    if not all(isinstance(name, str) and name for name in names):
        raise _invalid("virtualMachineConfiguration.imageReference", "publisher, offer and sku are required.")
    publisher, offer, sku = (str(name) for name in names)
    if not any(image.matches(publisher, offer, sku) for image in listed):
        raise _invalid(
            "virtualMachineConfiguration.imageReference",
            f"The image {publisher}/{offer}/{sku} is not supported with node agent SKU {agent!r}."
            f"{_instead(images, now)}",
        )


def check_agent_for_growth(images: Iterable[SupportedImage], body: Mapping[str, Any], now: datetime) -> None:
    """Refuse to grow a pool whose node agent has ended (or is no longer listed). Batch documents no code
    for this either; the emulator answers 409 OperationNotValidOnPool, the documented code for an operation
    the pool's state does not allow."""
    images = tuple(images)
    vm = body.get("virtualMachineConfiguration")
    agent = vm.get("nodeAgentSKUId") if isinstance(vm, dict) else None
    if not isinstance(agent, str):
        return
    listed = [image for image in images if image.node_agent_sku_id.lower() == agent.lower()]
    if listed and not all(image.ended(now) for image in listed):
        return
    ended = [image.end_of_life for image in listed if image.end_of_life is not None]
    why = f"reached its Batch support end of life on {max(ended):%Y-%m-%d}" if ended else "is not supported"
    raise ServiceError(
        409,
        "OperationNotValidOnPool",
        f"The pool's node agent SKU {agent!r} {why}; the pool cannot grow.{_instead(images, now)}",
    )


def replacement(
    images: Iterable[SupportedImage], now: datetime, os_type: str = "linux"
) -> SupportedImage | None:
    """A verified image of `os_type` with no end of life set, else the one supported longest."""
    usable = [
        image
        for image in images
        if image.os_type == os_type and image.verification_type == "verified" and not image.ended(now)
    ]
    if not usable:
        return None
    far = datetime.max.replace(tzinfo=UTC)
    return max(usable, key=lambda image: (image.end_of_life or far, GENERATION_2 not in image.capabilities))


def _instead(images: Iterable[SupportedImage], now: datetime) -> str:
    found = replacement(images, now)
    if found is None:
        return ""
    return (
        f" A supported one: {found.publisher}/{found.offer}/{found.sku} with node agent SKU "
        f"{found.node_agent_sku_id!r}."
    )


def _invalid(field: str, reason: str) -> ServiceError:
    return ServiceError(400, "InvalidPropertyValue", f"The value provided for {field} is invalid. {reason}")
