"""images.judge: the verdict on a pool's image, from a supported-images list and a date, with no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchpilot.engine import Orchestrator
from batchpilot.errors import BackendError, ImageCheckError, UnsupportedImageError
from batchpilot.images import (
    ExistingPool,
    ImageVerdict,
    Reason,
    SupportedImage,
    Verdict,
    describe,
    judge,
    size_generations,
)
from batchpilot.spec import (
    DEFAULT_NODE_AGENT_SKU_ID,
    DEFAULT_VM_SIZE,
    ImageReference,
    PoolSpec,
    TaskTemplate,
    Workload,
)
from batchpilot.testing import FakeClock, InMemoryBackend

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
GEN2 = "Generation2VMImage"

FOCAL = ImageReference("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts")
JAMMY = ImageReference("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2")
NOBLE = ImageReference("canonical", "ubuntu-24_04-lts", "server")
NOBLE_GEN1 = ImageReference("canonical", "ubuntu-24_04-lts", "server-gen1")
WINDOWS = ImageReference("microsoftwindowsserver", "windowsserver", "2022-datacenter")

# Shaped as the service answers (Azure/Batch#178 shows the 24.04 entry): 20.04 past its end of support
# (2025-04-23, Azure/Batch#174), 22.04 ending 2027-06-30 (#200), 24.04 without an end.
IMAGES = [
    SupportedImage("batch.node.ubuntu 20.04", FOCAL, end_of_life=datetime(2025, 4, 23, tzinfo=UTC)),
    SupportedImage(
        "batch.node.ubuntu 22.04", JAMMY, capabilities=(GEN2,), end_of_life=datetime(2027, 6, 30, tzinfo=UTC)
    ),
    SupportedImage("batch.node.ubuntu 24.04", NOBLE, capabilities=(GEN2,)),
    SupportedImage("batch.node.ubuntu 24.04", NOBLE_GEN1),
    SupportedImage("batch.node.windows amd64", WINDOWS, os_type="windows", capabilities=(GEN2,)),
]


def pool(
    image: ImageReference = NOBLE, agent: str = "batch.node.ubuntu 24.04", size: str = DEFAULT_VM_SIZE
) -> PoolSpec:
    return PoolSpec("p", vm_size=size, image=image, node_agent_sku_id=agent)


@pytest.mark.parametrize(
    ("spec", "now", "verdict", "reason", "in_message", "replacement"),
    [
        pytest.param(pool(), NOW, Verdict.OK, None, (), None, id="default-ok"),
        pytest.param(
            pool(NOBLE_GEN1, size="Standard_A1_v2"), NOW, Verdict.OK, None, (), None, id="gen1-on-a1v2"
        ),
        pytest.param(
            pool(FOCAL, "batch.node.ubuntu 20.04", "STANDARD_A1_v2"),
            NOW,
            Verdict.REFUSED,
            Reason.END_OF_LIFE,
            ("Canonical/0001-com-ubuntu-server-focal/20_04-lts", "2025-04-23"),
            NOBLE_GEN1,  # A1_v2 boots Generation 1 only: the replacement must too
            id="tutorial-pool-retired",
        ),
        pytest.param(
            pool(FOCAL, "batch.node.ubuntu 20.04"),
            NOW,
            Verdict.REFUSED,
            Reason.END_OF_LIFE,
            ("2025-04-23", "ubuntu-24_04-lts/server "),
            NOBLE,
            id="retired-on-gen2-size",
        ),
        pytest.param(
            pool(FOCAL, "batch.node.ubuntu 20.04"),
            datetime(2025, 4, 22, tzinfo=UTC),
            Verdict.WARNING,
            Reason.NEAR_END_OF_LIFE,
            ("2025-04-23", "in 1 days"),
            NOBLE,
            id="day-before-end",
        ),
        pytest.param(
            pool(JAMMY, "batch.node.ubuntu 22.04"),
            datetime(2027, 4, 1, tzinfo=UTC),
            Verdict.WARNING,
            Reason.NEAR_END_OF_LIFE,
            ("2027-06-30", "in 90 days"),
            NOBLE,
            id="jammy-within-90-days",
        ),
        pytest.param(
            pool(JAMMY, "batch.node.ubuntu 22.04"),
            datetime(2027, 3, 31, tzinfo=UTC),
            Verdict.OK,
            None,
            (),
            None,
            id="jammy-91-days-before",
        ),
        pytest.param(
            pool(JAMMY, "batch.node.ubuntu 22.04"),
            datetime(2027, 6, 30, tzinfo=UTC),
            Verdict.REFUSED,
            Reason.END_OF_LIFE,
            ("2027-06-30",),
            NOBLE,
            id="jammy-on-its-end-day",
        ),
        pytest.param(
            pool(ImageReference("canonical", "ubuntu-26_04-lts", "server")),
            NOW,
            Verdict.REFUSED,
            Reason.NOT_LISTED,
            ("canonical/ubuntu-26_04-lts/server is not in the service's supported images",),
            NOBLE,
            id="not-listed",
        ),
        pytest.param(
            pool(NOBLE, "batch.node.ubuntu 22.04"),
            NOW,
            Verdict.REFUSED,
            Reason.AGENT_MISMATCH,
            ("node agent 'batch.node.ubuntu 22.04' does not go with image", "'batch.node.ubuntu 24.04'"),
            NOBLE,
            id="agent-mismatch",
        ),
        pytest.param(
            pool(NOBLE, size="Standard_A1_v2"),
            NOW,
            Verdict.REFUSED,
            Reason.GENERATION_MISMATCH,
            ("Generation 2 image", "Standard_A1_v2 boots only Generation 1"),
            NOBLE_GEN1,
            id="gen2-on-gen1-only-size",
        ),
        pytest.param(
            pool(NOBLE_GEN1, size="Standard_D2s_v6"),
            NOW,
            Verdict.REFUSED,
            Reason.GENERATION_MISMATCH,
            ("Generation 1 image", "boots only Generation 2"),
            NOBLE,
            id="gen1-on-gen2-only-size",
        ),
        pytest.param(
            pool(ImageReference("CANONICAL", "Ubuntu-24_04-LTS", "Server", "24.04.202511010")),
            NOW,
            Verdict.OK,
            None,
            (),
            None,
            id="names-without-case-any-version",
        ),
    ],
)
def test_judge(
    spec: PoolSpec,
    now: datetime,
    verdict: Verdict,
    reason: Reason | None,
    in_message: tuple[str, ...],
    replacement: ImageReference | None,
) -> None:
    result = judge(IMAGES, spec, now)
    assert (result.verdict, result.reason) == (verdict, reason)
    for text in in_message:
        assert text in result.message
    if replacement is None:
        assert result.replacement is None
    else:
        assert result.replacement is not None
        assert result.replacement.image == replacement
        # The replacement comes from the list and is named in the message, as a user writes it.
        assert result.replacement in IMAGES
        assert result.replacement.describe() in result.message
    assert "\n" not in result.message


def test_the_defaults_are_what_the_service_lists_today() -> None:
    spec = PoolSpec("p")
    assert (spec.image, spec.node_agent_sku_id, spec.vm_size) == (
        NOBLE,
        DEFAULT_NODE_AGENT_SKU_ID,
        "Standard_D2s_v5",
    )
    assert judge(IMAGES, spec, NOW).verdict is Verdict.OK
    assert size_generations(spec.vm_size) is None  # boots both: not in the one-generation table


def test_a_windows_image_is_replaced_by_a_windows_one() -> None:
    old = ImageReference("microsoftwindowsserver", "windowsserver", "2016-datacenter")
    result = judge(IMAGES, pool(old, "batch.node.windows amd64"), NOW)
    assert result.reason is Reason.NOT_LISTED
    assert result.replacement is not None
    assert result.replacement.image == WINDOWS


def test_no_replacement_left_says_so() -> None:
    only_retired = [IMAGES[0]]
    result = judge(only_retired, pool(FOCAL, "batch.node.ubuntu 20.04"), NOW)
    assert result.refused
    assert result.replacement is None
    assert "lists none usable now" in result.message


def test_a_reused_pool_past_its_end_is_a_warning_with_the_fix() -> None:
    existing = ExistingPool("tutorial", FOCAL, "batch.node.ubuntu 20.04", "standard_a1_v2")
    result = judge(IMAGES, pool(FOCAL, "batch.node.ubuntu 20.04"), NOW, existing=existing)
    assert (result.verdict, result.reason) == (Verdict.WARNING, Reason.REUSED_PAST_END_OF_LIFE)
    assert "scale it to zero" in result.message
    assert "2025-04-23" in result.message
    assert "batchpilot cleanup --backend azure --pool tutorial" in result.message
    assert result.replacement is not None
    assert result.replacement.image == NOBLE_GEN1


def test_a_reused_pool_is_judged_by_what_it_runs_not_by_the_spec() -> None:
    existing = ExistingPool("p", NOBLE, "batch.node.ubuntu 24.04", "standard_d2s_v5")
    # The spec names the retired image, but the pool that exists (and is reused as it is) runs 24.04.
    assert judge(IMAGES, pool(FOCAL, "batch.node.ubuntu 20.04"), NOW, existing=existing).verdict is Verdict.OK
    unlisted = ExistingPool("p", ImageReference("x", "y", "z"), "batch.node.ubuntu 24.04", "standard_d2s_v5")
    result = judge(IMAGES, pool(), NOW, existing=unlisted)
    assert result.verdict is Verdict.WARNING
    assert result.message.startswith("pool p is reused: ")


def test_check_and_plan_say_what_a_reused_pool_runs_not_what_the_spec_asks() -> None:
    # Found by hand: `check --workload` naming an existing pool (24.04 on Standard_D2s_v5) with a spec of the
    # Generation 2 image on Standard_A1_v2 printed "... on Standard_A1_v2: listed by the service", a
    # combination Batch refuses to create; what was judged, and passed, was the pool that exists.
    existing = ExistingPool("p", NOBLE, "batch.node.ubuntu 24.04", "standard_d2s_v5")
    spec = pool(NOBLE, size="Standard_A1_v2")
    line = describe(spec, judge(IMAGES, spec, NOW, existing=existing))
    assert line == (
        "Image: pool p exists and is reused as it is: canonical/ubuntu-24_04-lts/server with"
        " 'batch.node.ubuntu 24.04' on standard_d2s_v5: listed by the service, no end of Batch support"
        " within 90 days"
    )
    assert judge(IMAGES, spec, NOW).refused  # without the pool, the spec is judged: refused, as Batch would


def test_a_gallery_pool_without_a_marketplace_name_is_judged_by_the_spec() -> None:
    existing = ExistingPool("p", None, "batch.node.ubuntu 24.04", "standard_d2s_v5")
    assert judge(IMAGES, pool(), NOW, existing=existing).verdict is Verdict.OK


@pytest.mark.parametrize(
    ("size", "generations"),
    [
        ("Standard_A1_v2", {1}),
        ("standard_a2m_v2", {1}),
        ("Basic_A1", {1}),
        ("Standard_D1_v2", {1}),
        ("Standard_D2_v3", {1}),
        ("Standard_E2_v3", {1}),
        ("Standard_D2s_v6", {2}),
        ("Standard_D2as_v6", {2}),
        ("Standard_D2s_v5", None),
        ("Standard_D2s_v3", None),
        ("Standard_DS1_v2", None),
        ("something_new", None),
    ],
)
def test_size_generations(size: str, generations: set[int] | None) -> None:
    assert size_generations(size) == (frozenset(generations) if generations is not None else None)


def test_warn_boundary_is_90_days() -> None:
    end = NOW + timedelta(days=90)
    listed = [
        *IMAGES,
        SupportedImage("batch.node.ubuntu 99.04", ImageReference("a", "b", "c"), end_of_life=end),
    ]
    spec = pool(ImageReference("a", "b", "c"), "batch.node.ubuntu 99.04")
    assert judge(listed, spec, NOW).verdict is Verdict.WARNING
    assert judge(listed, spec, NOW - timedelta(seconds=1)).verdict is Verdict.OK


# --- the engine asks before it creates anything ----------------------------------------------------------


def _workload(tmp_path: Path, spec: PoolSpec) -> Workload:
    (tmp_path / "a.txt").write_text("a")
    return Workload(
        name="images",
        inputs=(tmp_path / "a.txt",),
        # The in-memory backend's tasks write no file: an output would be missing (not what this tests).
        template=TaskTemplate(command="cp {input} {stem}.out", outputs=()),
        pool=spec,
        download_to=tmp_path / "out",
    )


async def test_a_refused_image_stops_the_run_before_anything_is_created(tmp_path: Path) -> None:
    backend = InMemoryBackend(clock=FakeClock(NOW))
    backend.compute.supported_images = list(IMAGES)
    tutorial = PoolSpec(
        "tutorial", vm_size="STANDARD_A1_v2", image=FOCAL, node_agent_sku_id="batch.node.ubuntu 20.04"
    )

    async with Orchestrator(backend, clock=FakeClock(NOW)) as orchestrator:
        with pytest.raises(UnsupportedImageError, match=r"^pool tutorial: image .*2025-04-23.*server-gen1"):
            await orchestrator.run(_workload(tmp_path, tutorial))

    assert [name for name, _ in backend.compute.calls] == ["check_pool_image"]
    assert backend.compute.pools == {}
    assert backend.compute.jobs == {}
    assert backend.storage.containers == {}


async def test_a_warning_reaches_the_summary_and_the_check_is_asked_once(tmp_path: Path) -> None:
    backend = InMemoryBackend(clock=FakeClock(datetime(2027, 5, 1, tzinfo=UTC)))
    backend.compute.supported_images = list(IMAGES)
    jammy = PoolSpec("jammy", image=JAMMY, node_agent_sku_id="batch.node.ubuntu 22.04")

    async with Orchestrator(backend, clock=FakeClock()) as orchestrator:
        first = await orchestrator.run(_workload(tmp_path, jammy))
        again = await orchestrator.run(_workload(tmp_path, jammy))

    assert first.ok
    [warning] = first.warnings
    assert "Batch support ends on 2027-06-30 (in 60 days)" in warning
    assert again.warnings == first.warnings
    assert [name for name, _ in backend.compute.calls].count("check_pool_image") == 1


async def test_an_unreadable_list_stops_the_run_it_is_never_skipped(tmp_path: Path) -> None:
    backend = InMemoryBackend(clock=FakeClock(NOW))

    async def fail(spec: PoolSpec) -> ImageVerdict:
        raise BackendError("list supported images: connection refused", code="ServiceUnavailable")

    backend.compute.check_pool_image = fail  # type: ignore[method-assign]
    async with Orchestrator(backend, clock=FakeClock(NOW)) as orchestrator:
        with pytest.raises(ImageCheckError, match=r"could not check pool p's image .*nothing was created"):
            await orchestrator.run(_workload(tmp_path, pool()))
    assert backend.compute.pools == {}
    assert backend.storage.containers == {}
