"""Is a pool's image one the service takes today? A pure judgement over List Supported Images.

Batch lists, per Marketplace image, the node agent SKU that goes with it, its capabilities
(`Generation2VMImage` for a Hyper-V Generation 2 image, `DockerCompatible`, ...), whether Batch verifies
it, and
`batchSupportEndOfLife`: the time Batch stops accepting new pools with it (REST: `GET /supportedimages`,
"Account - List Supported Images"). After that date Batch refuses to create or grow such pools and may scale
existing ones to zero (Azure/Batch#174 for Ubuntu 20.04, #200 for 22.04).

`judge` takes that list (as `SupportedImage` records; the backend fetched it), a pool spec, the pool the
service already has under that id (if any) and the time now, and returns an `ImageVerdict`: ok, a warning
(end of support within `WARN_WITHIN`, or a reused pool past it), or refused (not listed, a node agent that
does not go with the image, support ended, or a Generation 2 image on a size that boots only Generation 1, or
the reverse) with a replacement taken from the same list. No I/O, no clock: the caller passes `now`.

The service does not say which Hyper-V generations a VM size boots; `size_generations` answers from a small
table of sizes documented as booting one generation only, and says nothing of sizes it does not know.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .errors import BackendError, ImageCheckError, UnsupportedImageError
from .spec import ImageReference, PoolSpec

# A warning this long before an image's end of Batch support.
WARN_WITHIN = timedelta(days=90)
_LISTED = "listed by the service, no end of Batch support within 90 days"
GENERATION_2_CAPABILITY = "Generation2VMImage"

# VM sizes that boot one Hyper-V generation only, by Azure's size names (matched case-insensitively on the
# whole name). Sources: learn.microsoft.com/azure/virtual-machines/generation-2 ("Generation 2 VM sizes":
# Av2, Dv2, Dv3 and Ev3 list Generation 1 only), the Av2-series page ("VM Generation Support: Generation 1"),
# Azure-Samples/azure-batch-samples#328 (Standard_D1_v2 boots Generation 1 only), coreos/coreos-assembler#4120
# (Standard_D2_v3 is not Generation 2), cloudfoundry/bosh-deployment#530 (Dsv6 is Generation 2 only). Basic
# and Standard A (v1) sizes predate Generation 2. Sizes not listed here are not judged.
_GENERATION_1_ONLY = re.compile(
    r"basic_a\d+|standard_a\d+|standard_a\d+m?_v2|standard_d\d+|standard_d\d+_v2(_promo)?|standard_d\d+_v3"
    r"|standard_e\d+_v3",
    re.IGNORECASE,
)
_GENERATION_2_ONLY = re.compile(r"standard_d\d+[a-z]*_v6", re.IGNORECASE)
_AGENT_VERSION = re.compile(r"\s*[\d.]+\Z")


class Verdict(enum.StrEnum):
    """Whether the service takes a pool's image: OK, WARNING (taken, but its support ends soon or has
    ended for a reused pool) or REFUSED (nothing is created)."""

    OK = "ok"
    WARNING = "warning"
    REFUSED = "refused"


class Reason(enum.StrEnum):
    """Why a verdict is not a plain ok."""

    NO_IMAGES = "no-images"  # the backend has no image list (local): nothing to judge
    NEAR_END_OF_LIFE = "near-end-of-life"
    REUSED_PAST_END_OF_LIFE = "reused-past-end-of-life"
    NOT_LISTED = "not-listed"
    AGENT_MISMATCH = "agent-mismatch"
    END_OF_LIFE = "end-of-life"
    GENERATION_MISMATCH = "generation-mismatch"


@dataclass(frozen=True, slots=True)
class SupportedImage:
    """One entry of List Supported Images. `end_of_life` is `batchSupportEndOfLife` (None when unset)."""

    node_agent_sku_id: str
    image: ImageReference
    os_type: str = "linux"
    capabilities: tuple[str, ...] = ()
    verification_type: str = "verified"
    end_of_life: datetime | None = None

    @property
    def generation(self) -> int:
        """The image's Hyper-V generation: 2 when it lists the `Generation2VMImage` capability, else 1."""
        return 2 if GENERATION_2_CAPABILITY in self.capabilities else 1

    def describe(self) -> str:
        """`publisher/offer/sku` with `batch.node.ubuntu 24.04`: how a user writes it in a workload file."""
        return f"{_image_name(self.image)} with node agent {self.node_agent_sku_id!r}"


@dataclass(frozen=True, slots=True)
class ExistingPool:
    """What the service says an existing pool runs: it is reused as it is, whatever the spec asks."""

    pool_id: str
    image: ImageReference | None
    node_agent_sku_id: str | None
    vm_size: str


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    """The judgement, with `message` as one line for the user (problem and fix) when it is not plain ok."""

    verdict: Verdict
    reason: Reason | None = None
    message: str = ""
    end_of_life: datetime | None = None
    replacement: SupportedImage | None = None

    @property
    def refused(self) -> bool:
        """True when the service would not take the image: the run stops before creating anything."""
        return self.verdict is Verdict.REFUSED


OK = ImageVerdict(Verdict.OK)


def size_generations(vm_size: str) -> frozenset[int] | None:
    """The Hyper-V generations `vm_size` boots, when the documented table knows it; None otherwise."""
    if _GENERATION_1_ONLY.fullmatch(vm_size):
        return frozenset({1})
    if _GENERATION_2_ONLY.fullmatch(vm_size):
        return frozenset({2})
    return None


def judge(
    images: Sequence[SupportedImage],
    pool: PoolSpec,
    now: datetime,
    *,
    existing: ExistingPool | None = None,
) -> ImageVerdict:
    """The verdict on creating (or reusing) `pool`, given the service's supported images at `now` (aware).

    An `existing` pool is what a run reuses, as it is: its own image is judged, and an end of support already
    passed is a warning (Batch may scale it to zero), not a refusal, since nothing is created.
    """
    if existing is not None and existing.image is not None and existing.node_agent_sku_id is not None:
        verdict = _judge(images, existing.image, existing.node_agent_sku_id, existing.vm_size, now)
        if verdict.reason is Reason.END_OF_LIFE:
            fix = _replacement_text(verdict.replacement)
            return ImageVerdict(
                Verdict.WARNING,
                Reason.REUSED_PAST_END_OF_LIFE,
                f"pool {existing.pool_id} is reused, but its node agent {existing.node_agent_sku_id!r}"
                f" ({_image_name(existing.image)}) passed the end of Batch support on"
                f" {_day(verdict.end_of_life)}: Batch may scale it to zero nodes at any time; delete it"
                f" (batchpilot cleanup --backend azure --pool {existing.pool_id}) and run again to get a"
                f" pool on {fix}",
                verdict.end_of_life,
                verdict.replacement,
            )
        if verdict.refused:
            # The pool exists and runs, whatever the list says now: say so, do not refuse to use it.
            return ImageVerdict(
                Verdict.WARNING, verdict.reason, f"pool {existing.pool_id} is reused: {verdict.message}"
            )
        if verdict.verdict is Verdict.OK:
            # Said in full: what passed is the pool that exists, not the spec (which may differ).
            return ImageVerdict(
                Verdict.OK,
                message=f"pool {existing.pool_id} exists and is reused as it is:"
                f" {_image_name(existing.image)} with {existing.node_agent_sku_id!r} on {existing.vm_size}:"
                f" {_LISTED}",
            )
        return replace(verdict, message=f"pool {existing.pool_id} is reused: {verdict.message}")
    return _judge(images, pool.image, pool.node_agent_sku_id, pool.vm_size, now)


def _judge(
    images: Sequence[SupportedImage], image: ImageReference, agent: str, vm_size: str, now: datetime
) -> ImageVerdict:
    name = _image_name(image)
    same_image = [entry for entry in images if _same_image(entry.image, image)]
    if not same_image:
        replacement = _replacement(images, agent, vm_size, now)
        return ImageVerdict(
            Verdict.REFUSED,
            Reason.NOT_LISTED,
            f"image {name} is not in the service's supported images (List Supported Images); use"
            f" {_replacement_text(replacement)}",
            replacement=replacement,
        )
    entry = next((entry for entry in same_image if entry.node_agent_sku_id.lower() == agent.lower()), None)
    if entry is None:
        replacement = _best(same_image, vm_size, now) or _replacement(images, agent, vm_size, now)
        agents = ", ".join(sorted({repr(entry.node_agent_sku_id) for entry in same_image}))
        return ImageVerdict(
            Verdict.REFUSED,
            Reason.AGENT_MISMATCH,
            f"node agent {agent!r} does not go with image {name} (the service pairs it with {agents}); use"
            f" {_replacement_text(replacement)}",
            replacement=replacement,
        )
    if entry.end_of_life is not None and now >= entry.end_of_life:
        replacement = _replacement(images, agent, vm_size, now)
        return ImageVerdict(
            Verdict.REFUSED,
            Reason.END_OF_LIFE,
            f"image {name} with node agent {agent!r} reached the end of Batch support on"
            f" {_day(entry.end_of_life)}: Batch refuses new pools with it;"
            f" use {_replacement_text(replacement)}",
            entry.end_of_life,
            replacement,
        )
    generations = size_generations(vm_size)
    if generations is not None and entry.generation not in generations:
        replacement = _best(
            [other for other in images if other.node_agent_sku_id.lower() == agent.lower()], vm_size, now
        ) or _replacement(images, agent, vm_size, now)
        boots = "Generation 1" if generations == {1} else "Generation 2"
        return ImageVerdict(
            Verdict.REFUSED,
            Reason.GENERATION_MISMATCH,
            f"image {name} is a Generation {entry.generation} image and VM size {vm_size} boots only {boots};"
            f" use {_replacement_text(replacement)}, or a VM size that boots both, such as Standard_D2s_v5",
            replacement=replacement,
        )
    if entry.end_of_life is not None and entry.end_of_life - now <= WARN_WITHIN:
        replacement = _replacement(images, agent, vm_size, now + WARN_WITHIN)
        days = (entry.end_of_life - now).days
        return ImageVerdict(
            Verdict.WARNING,
            Reason.NEAR_END_OF_LIFE,
            f"image {name} with node agent {agent!r}: Batch support ends on {_day(entry.end_of_life)} (in"
            f" {days} days); after that Batch refuses new pools with it and may scale existing ones to zero;"
            f" move to {_replacement_text(replacement)}",
            entry.end_of_life,
            replacement,
        )
    return OK


def _replacement(
    images: Sequence[SupportedImage], agent: str, vm_size: str, now: datetime
) -> SupportedImage | None:
    """The best entry of the same node agent family (`batch.node.ubuntu`), else of the same OS, else any."""
    family = _AGENT_VERSION.sub("", agent).lower()
    same_family = [
        entry for entry in images if _AGENT_VERSION.sub("", entry.node_agent_sku_id).lower() == family
    ]
    linux = not family.startswith("batch.node.windows")
    same_os = [entry for entry in images if (entry.os_type.lower() == "linux") == linux]
    return _best(same_family, vm_size, now) or _best(same_os, vm_size, now) or _best(images, vm_size, now)


def _best(candidates: Sequence[SupportedImage], vm_size: str, now: datetime) -> SupportedImage | None:
    """Among entries still supported at `now`: those that boot on `vm_size`, verified, with no end of support
    (or the latest), of the newest node agent; ties keep the service's order."""
    usable = [entry for entry in candidates if entry.end_of_life is None or entry.end_of_life > now]
    generations = size_generations(vm_size)
    if not usable:
        return None

    def rank(entry: SupportedImage) -> tuple[bool, bool, bool, datetime, tuple[int, ...]]:
        return (
            generations is None or entry.generation in generations,
            entry.verification_type.lower() == "verified",
            entry.end_of_life is None,
            entry.end_of_life or now,
            _version(entry.node_agent_sku_id),
        )

    return max(usable, key=rank)  # max keeps the first of equals


def _version(agent: str) -> tuple[int, ...]:
    found = _AGENT_VERSION.search(agent)
    if found is None:
        return ()
    return tuple(int(part) for part in found.group().strip().split(".") if part.isdigit())


def _same_image(listed: ImageReference, wanted: ImageReference) -> bool:
    # The list names `latest`; any version of a listed image is that image. Batch compares names without case.
    return (listed.publisher.lower(), listed.offer.lower(), listed.sku.lower()) == (
        wanted.publisher.lower(),
        wanted.offer.lower(),
        wanted.sku.lower(),
    )


def _image_name(image: ImageReference) -> str:
    return f"{image.publisher}/{image.offer}/{image.sku}"


def _replacement_text(replacement: SupportedImage | None) -> str:
    if replacement is None:
        return "an image the service lists (az batch pool supported-images list); it lists none usable now"
    return replacement.describe()


def _day(moment: datetime | None) -> str:
    return moment.date().isoformat() if moment is not None else "an unknown date"


def enforced(spec: PoolSpec, verdict: ImageVerdict) -> ImageVerdict:
    """`verdict`, unless it is a refusal: then UnsupportedImageError, one line naming the pool, the image,
    the date where one applies and a replacement from the service's list."""
    if verdict.refused:
        raise UnsupportedImageError(f"pool {spec.pool_id}: {verdict.message}")
    return verdict


def unchecked(spec: PoolSpec, cause: BackendError) -> ImageCheckError:
    """The error to raise when the supported images could not be read: the check is never skipped."""
    return ImageCheckError(
        f"could not check pool {spec.pool_id}'s image with the service ({cause}); nothing was created:"
        " run again once the service answers",
        code=cause.code,
    )


def describe(spec: PoolSpec, verdict: ImageVerdict) -> str:
    """The line `check` and `plan` print for an image the service takes (a refusal is raised instead)."""
    what = f"{_image_name(spec.image)} with {spec.node_agent_sku_id!r}"
    if verdict.verdict is Verdict.WARNING:
        return f"Image: WARNING: {verdict.message}"
    if verdict.reason is Reason.NO_IMAGES:
        return f"Image: {what}: the backend lists no images; nothing to check"
    if verdict.message:  # a pool that exists, judged by what it runs
        return f"Image: {verdict.message}"
    return f"Image: {what} on {spec.vm_size}: {_LISTED}"
