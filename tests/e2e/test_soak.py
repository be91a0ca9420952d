"""The soak of `batchpilot serve` (benchmarks/soak.py; `scripts/soak` runs it with 10,000 inputs) at a small
size, with every kind of fault injected often enough that each one fires."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks.soak import FAULTS, SIMULATE_S, SoakResult, SoakSettings, soak
from tests.conftest import EmulatorFactory
from tests.emulator.support import Azurite

INPUTS = 300
# Far above the soak's rates: a few hundred requests and tasks must see every fault at least once.
OFTEN = replace(FAULTS, rate_429=0.05, rate_500=0.05, drop_after_apply=0.5, preempt=0.2)


def test_serve_loses_and_duplicates_nothing_under_faults(
    tmp_path: Path, start_emulator: EmulatorFactory, azurite: Azurite
) -> None:
    # Small drops make many runs and task collections for the faults to hit; shorter tasks fit the budget.
    settings = SoakSettings(inputs=INPUTS, batch=20, max_pending=100, nodes=2, spot_nodes=8, stall_s=45)
    simulate = (SIMULATE_S[0] / 5, SIMULATE_S[1] / 5)
    with start_emulator(simulate_s=simulate, faults=OFTEN) as emulator:
        result = soak(settings, emulator, azurite.connection_string, tmp_path)

    assert result.problems() == []
    assert (result.exit_code, result.tasks_in_job, result.completions) == (0, 300, 300)
    # A collection whose answer was cut off (dropped_after_apply, below) is sent again: its tasks are found,
    # not added twice, and count as added by serve, which did add them (issue 15, part 7).
    assert result.added + result.found_existing == INPUTS
    assert (result.duplicates, result.lost_outputs, result.wrong_outputs) == (0, 0, 0)
    for fault in ("throttled", "server_error", "dropped_after_apply", "preempted"):
        assert result.faults.get(fault, 0) > 0, f"no {fault} fault was injected: {result.faults}"
    # A preempted attempt runs again: counted once as a requeue, and its task still completes once.
    assert result.requeues == result.faults["preempted"]
    assert result.attempts == INPUTS + result.requeues
    assert "serve stopped: 300 inputs seen," in result.summary_line
    assert "300 succeeded, 0 failed" in result.summary_line


def test_the_soak_names_what_went_wrong() -> None:
    clean = SoakResult(
        inputs=3, exit_code=0, tasks_in_job=3, completions=3, attempts=4, requeues=1, added=3,
        faults={"preempted": 1}, peak_rss_mb=100.0, memory_bound_mb=400.0,
    )  # fmt: skip
    assert clean.problems() == []
    broken = replace(clean, lost_outputs=1, fetched_twice=1, completions=4, peak_rss_mb=500.0)
    assert broken.problems() == [
        "2 duplicates (extra tasks, completions or downloads)",
        "4 completions for 3 tasks",
        "1 outputs lost",
        "peak RSS 500 MB is over the bound of 400 MB",
    ]
